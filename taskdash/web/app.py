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


#: an id in a path, still percent-encoded: ids are at most 128 characters once decoded, and one
#: character may take 4 bytes of UTF-8, each written as 3 characters (%XX)
_ID = r"([^/]{1,1536})"


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
            (rf"/api/services/{_ID}", ServiceHandler, store),
            (rf"/api/services/{_ID}/history", ServiceHistoryHandler, store),
            (rf"/api/services/{_ID}/fetch", FetchResultHandler, store),
            (r"/api/tasks", TasksHandler, store),
            (r"/api/dead-letters", DeadLettersHandler, store),
        ],
        default_handler_class=NotFoundHandler,
        log_function=lambda handler: None,
        max_body_size=1024 * 1024,
    )
