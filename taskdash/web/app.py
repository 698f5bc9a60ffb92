"""The Tornado application: routes and the shared resources handlers need."""

from __future__ import annotations

import tornado.web

from taskdash.health import Health
from taskdash.store import Store
from taskdash.web.api import (
    DeadLettersHandler,
    FetchResultHandler,
    ServiceHandler,
    ServiceHistoryHandler,
    ServicesHandler,
    TasksHandler,
)
from taskdash.web.base import JsonHandler
from taskdash.web.health import HealthzHandler, ReadyzHandler


class NotFoundHandler(JsonHandler):
    """A JSON 404 for every unknown path."""

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, "not found")


def make_app(*, health: Health, store: Store) -> tornado.web.Application:
    """Build the application; resources are passed in, never looked up globally."""
    return tornado.web.Application(
        [
            (r"/healthz", HealthzHandler),
            (r"/readyz", ReadyzHandler, {"health": health}),
            (r"/api/services", ServicesHandler, {"store": store}),
            (r"/api/services/([^/]{1,128})", ServiceHandler, {"store": store}),
            (r"/api/services/([^/]{1,128})/history", ServiceHistoryHandler, {"store": store}),
            (r"/api/services/([^/]{1,128})/fetch", FetchResultHandler, {"store": store}),
            (r"/api/tasks", TasksHandler, {"store": store}),
            (r"/api/dead-letters", DeadLettersHandler, {"store": store}),
        ],
        default_handler_class=NotFoundHandler,
        log_function=lambda handler: None,
        max_body_size=1024 * 1024,
    )
