"""pynsq's Reader made closable, and the progress a reader makes: what readiness looks at.

Kept apart from :mod:`taskdash.nsq.consumer` (which decides what happens to each message) as
pynsq keeps its connection apart from its reader: this module knows pynsq's internals, the
consumer only its public calls.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import nsq


class Progress:
    """Messages in flight and when one was last settled: tells a stalled reader from an idle one.

    Each delivery is tracked by identity (pynsq builds one Message object per delivery), not
    merely counted: a message we give up on (left to nsqd's timeout) can be let go without
    knowing whether some later path still answers it, and neither leaks nor counts twice.
    """

    def __init__(self) -> None:
        self._in_flight: dict[int, object] = {}  # id() -> the message, kept so ids stay unique
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
        self._in_flight[id(message)] = message

    def settled(self, message: object) -> None:
        """One message answered (FIN or REQ): the reader makes progress."""
        self._in_flight.pop(id(message), None)
        self.since = time.monotonic()
        self.last_settled_at = datetime.now(UTC)

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.started = time.monotonic()
        self.lost_at: dict[str, float] = {}
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

    def connect_to_nsqd(self, host: str, port: int) -> None:
        if not self.closing:
            super().connect_to_nsqd(host, port)

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
