"""An HTTP server whose stop answers the requests already read before closing connections.

Tornado's ``close_all_connections`` closes every connection at once, so a request whose handler
is still awaiting (MongoDB, say) loses its answer. Here a connection counts as busy from the
moment a request's headers are read until the server is asked for the next request on it
(Tornado does that right after the response is written) or the connection ends; :meth:`drain`
stops listening, waits for the busy ones within a deadline, then closes them all.

It also answers a request whose announced body is over ``max_body_size`` with a JSON 413
before reading the body (:mod:`taskdash.oversized`), where Tornado alone writes a bare 400.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
import tornado.httpserver
import tornado.httputil

from taskdash.oversized import Refusals

log = structlog.get_logger("taskdash.http")


class _Watched(tornado.httputil.HTTPMessageDelegate):
    """Passes every call on; marks the connection busy once the headers are in."""

    def __init__(
        self,
        inner: tornado.httputil.HTTPMessageDelegate,
        server: DrainingHTTPServer,
        conn: object,
        request_conn: tornado.httputil.HTTPConnection,
    ) -> None:
        self.inner, self.server, self.conn = inner, server, conn
        self.request_conn = request_conn

    def headers_received(self, start_line: Any, headers: tornado.httputil.HTTPHeaders) -> Any:
        self.server._busy.add(self.conn)
        if self.server.refusals.refuse(self.request_conn, start_line, headers):
            return None  # answered 413 on a connection taken from Tornado: nothing more here
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self.inner.finish()

    def on_connection_close(self) -> None:
        self.inner.on_connection_close()


class DrainingHTTPServer(tornado.httpserver.HTTPServer):
    """``HTTPServer`` + :meth:`drain` + a JSON 413 for a body over ``max_body_size``.

    ``limit_setting`` names the setting behind ``max_body_size`` in that 413's message.
    """

    _busy: set[object]
    _idle: asyncio.Event
    refusals: Refusals

    def initialize(self, *args: Any, limit_setting: str = "", **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self._busy = set()
        self._idle = asyncio.Event()
        # no max_body_size: Tornado's own limit is the stream's buffer size, 100 MiB by default
        limit = self.conn_params.max_body_size or self.max_buffer_size or 100 << 20
        self.refusals = Refusals(limit, limit_setting)

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        self._done(server_conn)  # the previous request on this connection was answered
        inner = super().start_request(server_conn, request_conn)
        return _Watched(inner, self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self._done(server_conn)
        super().on_close(server_conn)

    def _done(self, server_conn: object) -> None:
        self._busy.discard(server_conn)
        if not self._busy:
            self._idle.set()

    async def close_all_connections(self) -> None:
        """Tornado's, and the refused requests' connections too (taken from Tornado, it no
        longer knows them): a stop does not wait for their lingering answers."""
        await super().close_all_connections()
        await self.refusals.close()

    @property
    def in_flight(self) -> int:
        """Connections with a request read and not yet answered."""
        return len(self._busy)

    async def drain(self, timeout: float) -> None:
        """Stop listening, answer what was read (at most ``timeout`` s), close everything."""
        self.stop()
        if self._busy:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                log.warning("http_drain_timed_out", unanswered=len(self._busy), timeout=timeout)
        await self.close_all_connections()
