"""``/healthz`` (the process is alive) and ``/readyz`` (every component is ready).

Both answer ``HEAD`` like ``GET`` (same status and headers, no body): load balancers and
orchestrators often probe with HEAD.
"""

from __future__ import annotations

from taskdash import __version__
from taskdash.web.base import JsonHandler


class HealthzHandler(JsonHandler):
    """Liveness: answers as long as the event loop runs, from the first second of the process."""

    def get(self) -> None:
        self.send_json({"status": "ok", "version": __version__})

    head = get


class ReadyzHandler(JsonHandler):
    """Readiness: 200 when every component is ready, else 503, with per-component details."""

    def get(self) -> None:
        ready, components = self.ctx.health.report()
        body = {
            "status": "ready" if ready else "not ready",
            "phase": self.ctx.health.phase,
            "components": components,
        }
        self.send_json(body, 200 if ready else 503)

    head = get


ROUTES = [
    (r"/healthz", HealthzHandler),
    (r"/readyz", ReadyzHandler),
]
