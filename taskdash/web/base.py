"""Shared handler behaviour: JSON in and out, store errors mapped to HTTP statuses."""

from __future__ import annotations

from typing import Any

import structlog
import tornado.web

from taskdash.errors import StoreError, StoreUnavailable

log = structlog.get_logger("taskdash.web")


class JsonHandler(tornado.web.RequestHandler):
    """Writes JSON bodies and JSON errors; never leaks a traceback to the client."""

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def send_json(self, body: Any, status: int = 200) -> None:
        """Finish the request with ``body`` as JSON."""
        self.set_status(status)
        self.finish(tornado.escape.json_encode(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        message = self._reason
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        self.finish(tornado.escape.json_encode({"error": message, "status": status_code}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, tornado.web.HTTPError):
            return
        log.error("handler_failed", path=self.request.path, exc_info=(typ, value, tb))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, StoreUnavailable):
            e = tornado.web.HTTPError(503, "store unavailable")
        elif isinstance(e, StoreError):
            e = tornado.web.HTTPError(500, "store error")
        super()._handle_request_exception(e)  # type: ignore[arg-type]

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
