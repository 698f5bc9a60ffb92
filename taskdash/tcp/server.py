"""The tcpx server: connections, limits, idle timeout, clean stop, readiness.

Each connection answers its requests one at a time, in order (a tcpx client matches replies
to requests by order); many connections are served concurrently, and their Finds share
store round trips (:mod:`taskdash.tcp.lookup`). Limits on everything an outsider controls:
frame size (``max_frame_size``), connections (``max_connections``), unread replies
(``max_write_buffer``), frames waiting per connection (reading pauses), silence
(``idle_timeout``). A broken frame closes its own connection only, after the requests
framed before it are answered.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import structlog

from taskdash.background import Background
from taskdash.errors import StoreError
from taskdash.logs import RateLimitedLog
from taskdash.settings import TcpSettings
from taskdash.store import Store
from taskdash.tcp.cache import Clock, FindCache
from taskdash.tcp.handler import RequestHandler
from taskdash.tcp.lookup import LookOverflow
from taskdash.tcp.protocol import HEARTBEAT_ID, Frame, FrameDecoder, FrameError
from taskdash.tcp.requests import BadRequest, Request, parse_request

log = structlog.get_logger("taskdash.tcp")

MAX_QUEUED = 64  # frames read but not answered, per connection, before reading pauses


class Connection(asyncio.Protocol):
    """One client: frames in, replies out, in order."""

    def __init__(self, server: TcpServer) -> None:
        self.server = server
        self.decoder = FrameDecoder(server.settings.max_frame_size)
        self.queue: deque[Frame | Request | BadRequest] = deque()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.last_seen = time.monotonic()
        self.closing = False  # no more reading: answer what is queued, then close
        self._worker: asyncio.Task[None] | None = None
        self._paused = False

    @property
    def busy(self) -> bool:
        """Whether requests are being answered (such a connection is not idle)."""
        return self._worker is not None and not self._worker.done()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        bound = self.server.settings.max_write_buffer
        transport.set_write_buffer_limits(high=bound, low=bound // 2)
        self.server.opened(self)

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        if self.closing:
            return
        frames, error = self.decoder.feed(data)
        self.queue.extend(frames)
        if error is not None:
            self.server.frame_error(self, error)
            self.close_after_answers()
        elif self._backlogged() and self.transport and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._kick()

    def _backlogged(self) -> bool:
        """Too much read and not answered: ``MAX_QUEUED`` frames, or a max-size frame's worth.

        Bounds the memory one connection holds to about two maximum frames.
        """
        if len(self.queue) >= MAX_QUEUED:
            return True
        queued = sum(len(f.header) + len(f.body) for f in self.queue if isinstance(f, Frame))
        return queued >= self.server.settings.max_frame_size

    def eof_received(self) -> bool:
        """The client has sent everything: answer it, then close (half-close is not kept)."""
        self.close_after_answers()
        return True

    def pause_writing(self) -> None:
        """Unread replies passed ``max_write_buffer``: drop the client rather than buffer."""
        self.server.too_slow(self)
        if self.transport:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.queue.clear()
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        self.server.closed(self)

    def close_after_answers(self) -> None:
        """Stop reading; close once the frames already read are answered."""
        self.closing = True
        if self.transport and not self.transport.is_closing():
            if not self._paused:
                self._paused = True
                self.transport.pause_reading()
            if not self.busy and not self.queue:
                self.transport.close()

    def _kick(self) -> None:
        """Answer what needs no waiting at once; a task answers the rest, in order.

        A Find the cache holds, a bad request and a heartbeat are answered here, inside
        ``data_received``: most Finds never cost a task (creating and scheduling one costs
        more than answering a hit). The first request that must wait for the store, and all
        after it, go to the task.
        """
        if not self.queue or self.busy:
            return
        transport = self._open_transport()
        while (request := self._next(transport)) is not None:
            answer = self._answer_now(request, transport)
            if answer is None:
                self.queue.appendleft(request)
                self._worker = asyncio.create_task(self._answer(), name=f"tcp-conn-{self.peer}")
                return
            if not self._sent(answer, transport):
                return
        self._close_if_asked(transport)

    def _close_if_asked(self, transport: asyncio.Transport) -> None:
        """Everything read is answered: close if the connection was to close after that."""
        if self.closing and not transport.is_closing():
            transport.close()

    def _open_transport(self) -> asyncio.Transport:
        assert self.transport is not None, "requests are queued only once connected"
        return self.transport

    def _next(self, transport: asyncio.Transport) -> Request | BadRequest | None:
        """The next queued request, parsed, heartbeats skipped (None: nothing left).

        Resumes reading if the queue was too long and is no longer.
        """
        while self.queue:
            item = self.queue.popleft()
            if self._paused and not self.closing and not self._backlogged():
                self._paused = False
                transport.resume_reading()
            if not isinstance(item, Frame):
                return item  # parsed already, put back by _kick for the task
            if item.message_id != HEARTBEAT_ID:
                return parse_request(item)  # never raises: unreadable bytes are errid 1000
            self.server.heartbeats += 1
        return None

    def _answer_now(
        self, request: Request | BadRequest, transport: asyncio.Transport
    ) -> bytes | None:
        try:
            return self.server.handler.answer_now(request, self.peer)
        except Exception:  # a bug, not the client's fault: no errid fits, so close
            self.server.internal_error(self)
            transport.abort()
            return b""

    def _sent(self, answer: bytes, transport: asyncio.Transport) -> bool:
        """Write one reply; False when the connection is closing (stop answering)."""
        if transport.is_closing():
            return False
        self.server.requests += 1
        transport.write(answer)
        return True

    async def _answer(self) -> None:
        """Answer queued requests in order; heartbeats only keep the connection alive."""
        transport = self._open_transport()
        while (request := self._next(transport)) is not None:
            try:
                answer = await self.server.handler.handle(request, self.peer)
            except Exception:  # a bug, not the client's fault: no errid fits, so close
                self.server.internal_error(self)
                transport.abort()
                return
            if not self._sent(answer, transport):
                return
        self._close_if_asked(transport)


class TcpServer:
    """The tcpx listener with ``start()`` / ``stop()`` and a readiness check."""

    def __init__(
        self,
        store: Store,
        settings: TcpSettings,
        *,
        drain_timeout: float = 5.0,
        clock: Clock = time.monotonic,
        look_for_changes: bool = True,
    ) -> None:
        self.settings = settings
        cache = FindCache(
            settings.find_cache_ttl,
            settings.find_cache_size,
            max_age=settings.find_cache_max_age,
            clock=clock,
        )
        self.handler = RequestHandler(store, cache, lookback=settings.find_cache_lookback)
        # the change looks keep hot entries confirmed (taskdash.tcp.cache); tests driving a
        # manual clock call ``look()`` themselves
        self._looker = (
            Background("tcp-find-changes", self._look_for_changes)
            if look_for_changes and cache.enabled
            else None
        )
        self.drain_timeout = drain_timeout
        self.connections: set[Connection] = set()
        self.port: int | None = None
        self.requests = 0
        self.accepted = 0  # connections admitted, and heartbeat frames (for the metrics)
        self.heartbeats = 0
        self.counts = {
            "refused_connections": 0,
            "frame_errors": 0,
            "slow_clients": 0,
            "idle": 0,
            "internal_errors": 0,
        }
        self._server: asyncio.Server | None = None
        self._stopping = False
        self._sweeper = Background("tcp-idle-sweeper", self._sweep_idle)
        self._gone = asyncio.Event()
        self._logs = {
            name: RateLimitedLog(log, f"tcp_{name}")
            for name in (
                "connection_refused",
                "frame_error",
                "client_too_slow",
                "idle_closed",
                "internal_error",
                "find_look_failed",
            )
        }

    async def start(self) -> None:
        """Listen on ``[tcp] host:port``; raises OSError if the port cannot be bound."""
        cfg = self.settings
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self),
            cfg.host,
            cfg.port,
            reuse_address=True,
            backlog=max(128, min(cfg.max_connections, 4096)),
        )
        self.port = self._server.sockets[0].getsockname()[1]
        await self._sweeper.start()
        if self._looker is not None:
            await self._looker.start()
        log.info("tcp_listening", host=cfg.host, port=self.port)

    # -- connection events ---------------------------------------------------------------------

    def opened(self, conn: Connection) -> None:
        """Admit a connection, or close it at once when ``max_connections`` are open."""
        if self._stopping or len(self.connections) >= self.settings.max_connections:
            self.counts["refused_connections"] += 1
            self._logs["connection_refused"](peer=conn.peer, open=len(self.connections))
            assert conn.transport is not None
            conn.closing = True
            conn.transport.abort()
            return
        self.connections.add(conn)
        self.accepted += 1
        self._gone.clear()

    def closed(self, conn: Connection) -> None:
        """Forget a connection; wakes :meth:`stop` when the last one is gone."""
        self.connections.discard(conn)
        if not self.connections:
            self._gone.set()

    def frame_error(self, conn: Connection, error: FrameError) -> None:
        """A frame that cannot be trusted: log it; the connection closes after its answers."""
        self.counts["frame_errors"] += 1
        self._logs["frame_error"](peer=conn.peer, error=str(error))

    def internal_error(self, conn: Connection) -> None:
        """A request whose handling raised (a bug): counted, logged with its traceback.

        Rate-limited like every event a client can cause at will: if some input reaches a
        bug, repeating it must not flood the log with tracebacks. Call it from ``except``.
        """
        self.counts["internal_errors"] += 1
        self._logs["internal_error"](peer=conn.peer, exc_info=True)

    def too_slow(self, conn: Connection) -> None:
        """A client that does not read its replies."""
        self.counts["slow_clients"] += 1
        self._logs["client_too_slow"](peer=conn.peer, bound=self.settings.max_write_buffer)

    async def _sweep_idle(self) -> None:
        """Close connections silent for ``idle_timeout`` (a heartbeat counts as a sign)."""
        timeout = self.settings.idle_timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            limit = time.monotonic() - timeout
            for conn in list(self.connections):
                if conn.last_seen < limit and not conn.busy and not conn.queue:
                    self.counts["idle"] += 1
                    self._logs["idle_closed"](peer=conn.peer, idle_timeout=timeout)
                    conn.close_after_answers()

    # -- lifecycle -----------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop accepting, answer the requests already read, close. Idempotent.

        Connections still busy after ``drain_timeout`` (a store that hangs) are aborted.
        """
        if self._server is None:
            return
        server, self._server = self._server, None
        self._stopping = True
        server.close()
        await self._sweeper.stop()
        for conn in list(self.connections):
            conn.close_after_answers()
        if self.connections:
            try:
                async with asyncio.timeout(self.drain_timeout):
                    await self._gone.wait()
            except TimeoutError:
                log.warning("tcp_drain_timed_out", left=len(self.connections))
                for conn in list(self.connections):
                    if conn.transport:
                        conn.transport.abort()
        await server.wait_closed()
        if self._looker is not None:
            await self._looker.stop()
        await self.handler.finder.stop()
        log.info("tcp_stopped", requests=self.requests)

    async def _look_for_changes(self) -> None:
        """Every ``ttl / 2``: a change look; a failure is logged (rate-limited) and retried."""
        finder = self.handler.finder
        while True:
            await asyncio.sleep(finder.cache.ttl / 2)
            try:
                await finder.look()
            except (StoreError, LookOverflow) as exc:
                self._logs["find_look_failed"](error=str(exc))
            except Exception as exc:  # a bug here must not end the looks: entries use the TTL
                self._logs["find_look_failed"](error=f"{type(exc).__name__}: {exc}")

    def find_stats(self) -> dict[str, Any]:
        """The Find cache's counters, with the store reads its misses cost."""
        finder = self.handler.finder
        return {
            **finder.cache.stats(),
            "queries": finder.queries,
            "reads": finder.reads,
            "joined": finder.joined,
            "looks": finder.looks,
            "look_reads": finder.look_reads,
        }

    def check(self) -> tuple[bool, dict[str, Any]]:
        """Readiness for ``/readyz``: listening, with the connection and error counts."""
        details: dict[str, Any] = {
            "port": self.port,
            "connections": len(self.connections),
            "max_connections": self.settings.max_connections,
            "requests": self.requests,
            "store_failures": self.handler.store_failures,
            **self.counts,
            "find_cache": self.find_stats(),
        }
        if self._server is None:
            details["reason"] = "stopped" if self._stopping else "not started"
        return self._server is not None, details
