"""The Tornado application: routes and the shared resources handlers need."""

from __future__ import annotations

import tornado.web

from taskdash.health import Health
from taskdash.web.api import (
    DeadLettersHandler,
    FetchResultHandler,
    ServiceHandler,
    ServiceHistoryHandler,
    ServicesHandler,
    TasksHandler,
)
from taskdash.web.base import JsonHandler, StoreGate
from taskdash.web.health import HealthzHandler, ReadyzHandler


class NotFoundHandler(JsonHandler):
    """A JSON 404 for every unknown path."""

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, "not found")


def make_app(*, health: Health, gate: StoreGate) -> tornado.web.Application:
    """Build the application; resources are passed in, never looked up globally.

    The store comes through ``gate``, attached once it exists: the application serves
    ``/healthz`` before MongoDB is reachable.
    """
    store = {"gate": gate}
    return tornado.web.Application(
        [
            (r"/healthz", HealthzHandler),
            (r"/readyz", ReadyzHandler, {"health": health}),
            (r"/api/services", ServicesHandler, store),
            (r"/api/services/([^/]{1,128})", ServiceHandler, store),
            (r"/api/services/([^/]{1,128})/history", ServiceHistoryHandler, store),
            (r"/api/services/([^/]{1,128})/fetch", FetchResultHandler, store),
            (r"/api/tasks", TasksHandler, store),
            (r"/api/dead-letters", DeadLettersHandler, store),
        ],
        default_handler_class=NotFoundHandler,
        log_function=lambda handler: None,
        max_body_size=1024 * 1024,
    )
