"""A message as the broker holds it, and the factory of its 16-hex-character ids."""

from __future__ import annotations

import time
from dataclasses import dataclass

_EPOCH = 1288834974288  # nsqd's id epoch in pseudo-ms (ns >> 20), keeps ids well inside 63 bits


@dataclass(slots=True, eq=False)
class Message:
    """One channel's copy of a published message plus its in-flight/deferred bookkeeping."""

    id: bytes
    body: bytes
    timestamp: int  # ns since the epoch, set at publish time, shared by every channel's copy
    attempts: int = 0
    defer_ms: int = 0  # DPUB delay still to apply when the topic hands the message to channels
    client_id: int = 0  # owner while in flight
    delivered_at: float = 0.0  # loop clock
    due: float = 0.0  # loop clock: in-flight deadline or deferred release time
    token: int = 0  # bumps on every (re)schedule so stale timer entries are ignored
    disk_seq: int = -1  # its record in the channel's disk queue while in flight/deferred (-1 none)
    due_wall_ns: int = 0  # wall clock: a deferred message's release time, kept on disk

    def copy_for_channel(self) -> Message:
        """One channel's own copy: same id, body, timestamp and attempts; bookkeeping fresh."""
        return Message(self.id, self.body, self.timestamp, self.attempts)


class IdFactory:
    """Unique, increasing 64-bit ids rendered as 16 lowercase hex ASCII bytes, like nsqd's."""

    def __init__(self) -> None:
        self._last = 0

    def observe(self, msg_id: bytes) -> None:
        """Never hand out an id at or below one loaded from disk."""
        try:
            value = int(msg_id, 16)
        except ValueError:
            return
        self._last = max(self._last, value)

    def next(self) -> bytes:
        """Time-ordered (pseudo-ms in the high bits) with a sequence in the low 22 bits."""
        candidate = ((time.time_ns() >> 20) - _EPOCH) << 22
        self._last = max(candidate, self._last + 1)
        return b"%016x" % self._last
