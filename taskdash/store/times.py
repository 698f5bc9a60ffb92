"""Times in stored documents: integer milliseconds since the Unix epoch, UTC.

Fields that are updated after insert (``alive_at``, ``last_heartbeat_at``...) are kept as
numbers rather than BSON dates: ``$max``/``$lt`` on numbers behave the same on every server we
run against, while nx-27017 (our embedded and test server) stores a date written by an update as
a string. Fields written only at insert and read by TTL indexes stay BSON dates.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The daemon's own clock (receipt times are ours, never a sender's); tests pass another."""
    return datetime.now(UTC)


def to_ms(when: datetime) -> int:
    """An aware datetime as epoch milliseconds."""
    return int(when.timestamp() * 1000)


def from_ms(ms: int | float) -> datetime:
    """Epoch milliseconds as an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def ms_before(when: datetime, seconds: float) -> int:
    """Epoch milliseconds of ``seconds`` before ``when``."""
    return to_ms(when - timedelta(seconds=seconds))


def iso(value: object) -> object:
    """A stored time (epoch ms or datetime) as ISO-8601 text; anything else unchanged."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return from_ms(value).isoformat()
    return value
