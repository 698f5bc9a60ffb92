"""pynsq's Reader made closable, and the progress a reader makes: what readiness looks at.

Kept apart from :mod:`taskdash.nsq.consumer` (which decides what happens to each message) as
pynsq keeps its connection apart from its reader: this module knows pynsq's internals, the
consumer only its public calls.
"""

from __future__ import annotations

import functools
import ssl
import time
from datetime import UTC, datetime
from typing import Any

import nsq
import structlog
from nsq import event
from nsq import protocol as nsq_protocol
from tornado.ioloop import IOLoop

log = structlog.get_logger("taskdash.nsq.reader")


class Progress:
    """Messages in flight and when one was last settled: tells a stalled reader from an idle one.

    Each delivery is tracked by identity (pynsq builds one Message object per delivery), not
    merely counted: a message we give up on (left to nsqd's timeout) can be let go without
    knowing whether some later path still answers it, and neither leaks nor counts twice.
    """

    def __init__(self) -> None:
        # id() -> (the message, kept so ids stay unique; when it was handed to us)
        self._in_flight: dict[int, tuple[object, float]] = {}
        self.since = time.monotonic()  # last settle, or when messages started being in flight
        self.last_settled_at: datetime | None = None

    @property
    def in_flight(self) -> int:
        """Messages handed to us and neither answered nor let go."""
        return len(self._in_flight)

    def received(self, message: object) -> None:
        """One more message handed to us and not yet answered."""
        if not self._in_flight:
            self.since = time.monotonic()
        self._in_flight[id(message)] = (message, time.monotonic())

    def settled(self, message: object) -> float | None:
        """One message answered (FIN or REQ): the reader makes progress.

        Returns the seconds since it was handed to us (None if it was not tracked).
        """
        entry = self._in_flight.pop(id(message), None)
        self.since = time.monotonic()
        self.last_settled_at = datetime.now(UTC)
        return None if entry is None else self.since - entry[1]

    def let_go(self, message: object) -> None:
        """A message we will not answer (nsqd redelivers it after its timeout): not ours now.

        Not progress either: the stall clock of the others still in flight keeps running.
        """
        self._in_flight.pop(id(message), None)

    def stalled_for(self, now: float) -> float:
        """Seconds with messages in flight and none settled (0 when nothing is in flight)."""
        return now - self.since if self._in_flight else 0.0


class ClosableReader(nsq.Reader):  # type: ignore[misc]
    """pynsq's Reader, made closable: no reconnects or lookups once closing (pynsq #196, #261).

    It also remembers when each nsqd connection was lost, for readiness.
    """

    closing = False

    def __init__(
        self, *args: Any, tls_context: ssl.SSLContext | None = None, **kwargs: Any
    ) -> None:
        self.started = time.monotonic()
        self.lost_at: dict[str, float] = {}
        self.tls_context = tls_context
        self.negotiation = Negotiation()
        super().__init__(*args, **kwargs)

    def missing_for(self, addresses: list[str], now: float) -> dict[str, float]:
        """Each configured ``host:port`` without a connection, and for how long."""
        return {
            address: now - self.lost_at.get(address, self.started)
            for address in addresses
            if address not in self.conns
        }

    def _run(self) -> None:
        if not self.closing:
            super()._run()

    def connect_to_nsqd(self, host: str, port: int) -> Any:
        if self.closing:
            return None
        conn = super().connect_to_nsqd(host, port)
        if conn is not None and self.tls_context is not None:
            # before nsqd can answer IDENTIFY: pynsq's own upgrade takes a dict, not a context
            conn.upgrade_to_tls = functools.partial(upgrade_to_tls, conn, self.tls_context)
        return conn

    def _on_connection_identify_response(self, conn: Any, data: Any, **kwargs: Any) -> None:
        super()._on_connection_identify_response(conn, data, **kwargs)
        self.negotiation.identified(conn, data)
        if conn.tls_v1 and not data.get("tls_v1"):
            # pynsq would go on in clear text (and send the AUTH secret so): never
            log.error("nsqd_refused_tls", nsqd=conn.id, topic=self.topic)
            conn.auth_secret = None
            IOLoop.current().add_callback(conn.close)

    def _on_connection_auth_response(self, conn: Any, data: Any, **kwargs: Any) -> None:
        super()._on_connection_auth_response(conn, data, **kwargs)
        self.negotiation.authenticated(conn, data)

    def _on_connection_ready(self, conn: Any, **kwargs: Any) -> None:
        self.negotiation.ready(conn)
        super()._on_connection_ready(conn, **kwargs)

    def query_lookupd(self) -> Any:
        if not self.closing:
            return super().query_lookupd()
        return None

    def _on_connection_error(self, conn: Any, error: Exception, **kwargs: Any) -> None:
        # Closing our own socket makes pynsq report "failed to unpack size" at ERROR level:
        # not an error on a clean stop.
        if not self.closing:
            super()._on_connection_error(conn, error, **kwargs)

    def _on_connection_close(self, conn: Any, **kwargs: Any) -> None:
        self.negotiation.closed(conn)
        if conn.id in self.conns:  # a failed connect attempt was never connected: not a loss
            self.lost_at[conn.id] = time.monotonic()
        # pynsq warns "connection closed" and plans a reconnect; on a clean stop neither applies.
        if not self.closing:
            super()._on_connection_close(conn, **kwargs)
            return
        self.conns.pop(conn.id, None)
        self.total_rdy = max(self.total_rdy - conn.rdy, 0)
        if conn.rdy_timeout:
            self.io_loop.remove_timeout(conn.rdy_timeout)
            conn.rdy_timeout = None

    def shut(self) -> None:
        """Close every connection and periodic callback; safe before the reader has started."""
        self.closing = True
        for conn in list(self.conns.values()):
            conn.close()
        for periodic in (self.redist_periodic, self.query_periodic):
            if periodic is not None:
                periodic.stop()


def upgrade_to_tls(conn: Any, context: ssl.SSLContext, options: Any = None) -> None:
    """pynsq's AsyncConn.upgrade_to_tls with our SSLContext (hostname check, client cert).

    As pynsq: the stream is replaced once the handshake is done, then reading resumes; a
    failed handshake closes the socket (tornado keeps the close callback) and is reported.
    ``options`` (pynsq's tls_options dict) is ignored: the context says it all.
    """
    future = conn.stream.start_tls(False, ssl_options=context, server_hostname=conn.host)
    conn.stream = None

    def finish(done: Any) -> None:
        try:
            conn.stream = done.result()
            conn.socket = conn.stream.socket
            conn._start_read()
        except Exception as exc:
            log.error("nsqd_tls_failed", nsqd=conn.id, error=str(exc))
            conn.trigger(
                event.ERROR,
                conn=conn,
                error=nsq_protocol.SendError("failed to upgrade to TLS", exc),
            )

    IOLoop.current().add_future(future, finish)


class Negotiation:
    """What each nsqd connection negotiated (TLS, compression, AUTH identity), for /readyz."""

    def __init__(self) -> None:
        self._by_conn: dict[str, dict[str, Any]] = {}

    def identified(self, conn: Any, data: dict[str, Any]) -> None:
        """nsqd's IDENTIFY answer: the features it granted among those asked for."""
        compression = "none"
        if conn.snappy and data.get("snappy"):
            compression = "snappy"
        elif conn.deflate and data.get("deflate"):
            compression = f"deflate (level {data.get('deflate_level')})"
        self._by_conn[conn.id] = {
            "tls": bool(conn.tls_v1 and data.get("tls_v1")),
            "compression": compression,
            "auth_required": bool(data.get("auth_required")),
            "ready": False,
        }

    def authenticated(self, conn: Any, data: dict[str, Any]) -> None:
        """nsqd's AUTH answer: who the secret says we are."""
        doc = self._by_conn.setdefault(conn.id, {})
        doc["auth_identity"] = data.get("identity", "")
        doc["auth_permissions"] = data.get("permission_count", 0)

    def ready(self, conn: Any) -> None:
        """Upgrades done: the TLS version and cipher in use."""
        doc = self._by_conn.setdefault(conn.id, {})
        doc["ready"] = True
        sock = getattr(conn, "socket", None)
        while sock is not None and not isinstance(sock, ssl.SSLSocket):
            sock = getattr(sock, "_socket", None)  # pynsq's deflate/snappy wrappers
        if isinstance(sock, ssl.SSLSocket):
            cipher = sock.cipher()
            doc["tls_version"] = sock.version()
            doc["tls_cipher"] = cipher[0] if cipher else ""

    def closed(self, conn: Any) -> None:
        """The connection is gone: nothing to report for it."""
        self._by_conn.pop(conn.id, None)

    def report(self) -> dict[str, dict[str, Any]]:
        """Per nsqd ``host:port``, what its connection negotiated."""
        return {address: dict(doc) for address, doc in sorted(self._by_conn.items())}
