"""Shared handler behaviour: JSON in and out, one error shape, the store behind a gate.

Every error is ``{"error": <code>, "message": <text>, "status": <N>}``; ``code`` is stable
(``store_unavailable``, ``not_found``, ``bad_request``...), ``message`` is for people.
"""

from __future__ import annotations

import functools
import http
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
import tornado.escape
import tornado.web

from taskdash.errors import StoreError, StoreUnavailable
from taskdash.store import Store, deadline
from taskdash.store.monitor import StoreMonitor

if TYPE_CHECKING:
    from taskdash.web.context import WebContext

log = structlog.get_logger("taskdash.web")

STORE_STARTING = "MongoDB is not connected yet (TaskDash is starting); see /readyz"
STORE_DOWN = "MongoDB is unreachable; TaskDash keeps retrying in the background; see /readyz"
STORE_STOPPING = "TaskDash is stopping"


class StoreGate:
    """The API's way to the store: refused at once while the store is not there or known down.

    The daemon starts the web server before MongoDB is reachable (so that ``/healthz`` answers
    from the first second) and attaches the store and its monitor once they exist. Asking the
    monitor first turns an outage into an immediate 503 instead of a server selection timeout
    per request, and an unexpected failure wakes the monitor, which logs the outage once.
    """

    def __init__(self, *, request_timeout: float = 5.0) -> None:
        self.request_timeout = request_timeout
        self.store: Store | None = None
        self.monitor: StoreMonitor | None = None
        self.closing = False

    def attach(self, store: Store, monitor: StoreMonitor) -> None:
        """The store exists now; requests go through once the monitor says it is up."""
        self.store, self.monitor = store, monitor

    def close(self) -> None:
        """The store is being closed (shutdown): refuse from now on."""
        self.closing = True

    def acquire(self) -> Store:
        """The store, or StoreUnavailable at once if it is not usable now."""
        if self.closing:
            raise StoreUnavailable(STORE_STOPPING)
        if self.store is None or self.monitor is None:
            raise StoreUnavailable(STORE_STARTING)
        if not self.monitor.ready:
            seen_down = self.monitor.failures or self.monitor.outages
            raise StoreUnavailable(STORE_DOWN if seen_down else STORE_STARTING)
        return self.store

    def failed(self) -> None:
        """A request met an outage the monitor had not seen yet: have it probe now."""
        if self.monitor is not None:
            self.monitor.suspect()


def error_code(status: int) -> str:
    """``404`` -> ``not_found``: a stable machine-readable name for an HTTP status."""
    try:
        return http.HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


class JsonHandler(tornado.web.RequestHandler):
    """Writes JSON bodies and JSON errors; never leaks a traceback to the client."""

    ctx: WebContext

    def initialize(self, ctx: WebContext) -> None:
        self.ctx = ctx

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def send_json(self, body: Any, status: int = 200) -> None:
        """Finish the request with ``body`` as JSON (a HEAD request gets the headers only)."""
        self.set_status(status)
        self.finish(tornado.escape.json_encode(body))

    def send_failure(self, status: int, code: str, message: str) -> None:
        """Finish with the one error shape, unless an answer already went out."""
        if self._finished:
            return
        self.clear()
        self.send_json({"error": code, "message": message, "status": status}, status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        message = self._reason
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        self.send_failure(status_code, error_code(status_code), message)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, tornado.web.HTTPError):
            return
        log.error("handler_failed", path=self.request.path, exc_info=(typ, value, tb))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, StoreUnavailable):
            # the outage is the monitor's to log (once), not every request's
            self.store_failed()
            self.send_failure(503, "store_unavailable", str(e) if _ours(e) else STORE_DOWN)
            return
        if isinstance(e, StoreError):
            log.error("handler_store_error", path=self.request.path, error=str(e))
            self.send_failure(500, "store_error", "the store refused the operation")
            return
        super()._handle_request_exception(e)  # type: ignore[arg-type]

    def store_failed(self) -> None:
        """Hook for handlers that use the store (see :class:`StoreHandler`)."""

    def int_argument(self, name: str, default: int, low: int, high: int) -> int:
        """An integer query argument within [low, high], else a 400 naming it."""
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise tornado.web.HTTPError(400, "%s must be an integer", name) from None
        if not low <= value <= high:
            raise tornado.web.HTTPError(400, "%s must be between %d and %d", name, low, high)
        return value


def _ours(exc: StoreUnavailable) -> bool:
    """Whether the message is one of the gate's (safe to show) rather than a driver's text."""
    return str(exc) in (STORE_STARTING, STORE_DOWN, STORE_STOPPING)


class StoreHandler(JsonHandler):
    """A handler that reads MongoDB: through the gate, within the request timeout."""

    store: Store

    def initialize(self, ctx: WebContext) -> None:
        super().initialize(ctx)
        self.gate = ctx.gate

    def prepare(self) -> None:
        self.store = self.gate.acquire()

    def store_failed(self) -> None:
        self.gate.failed()


def bounded(
    method: Callable[..., Awaitable[None]],
) -> Callable[..., Awaitable[None]]:
    """Run a handler method with every MongoDB operation bounded by the request timeout.

    A store that froze since the monitor's last probe answers nothing; the request gives up
    after ``request_timeout`` with a 503 rather than after the driver's socket timeout.
    """

    @functools.wraps(method)
    async def wrapper(self: StoreHandler, *args: Any, **kwargs: Any) -> None:
        with deadline(self.gate.request_timeout):
            await method(self, *args, **kwargs)

    return wrapper
