"""``/healthz`` (the process is alive) and ``/readyz`` (every component is ready)."""

from __future__ import annotations

from taskdash import __version__
from taskdash.health import Health
from taskdash.web.base import JsonHandler


class HealthzHandler(JsonHandler):
    """Liveness: answers as long as the event loop runs."""

    def get(self) -> None:
        self.send_json({"status": "ok", "version": __version__})


class ReadyzHandler(JsonHandler):
    """Readiness: 200 when every component is ready, else 503, with per-component details."""

    def initialize(self, health: Health) -> None:
        self.health = health

    def get(self) -> None:
        ready, components = self.health.report()
        body = {"status": "ready" if ready else "not ready", "components": components}
        self.send_json(body, 200 if ready else 503)
