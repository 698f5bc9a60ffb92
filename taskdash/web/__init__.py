"""The HTTP side: health endpoints, the JSON API and (later) the dashboard."""
