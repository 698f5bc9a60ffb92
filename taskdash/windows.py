"""Daily windows (seed 002's ``start_time`` / ``stop_time``): is a task out of its window?

A task may carry a daily window, ``"HH:MM"`` to ``"HH:MM"`` (``"12:00"`` to ``"18:00"``), read
in one configured time zone. Its reported status puts it *out of its window* when it says
running outside the window (:data:`RUNNING_OUTSIDE`), or anything else inside it
(:data:`IDLE_INSIDE`); otherwise it is :data:`OK`. Pure functions, no I/O.

- A window is ``[start, stop)``: the start minute is inside, the stop minute is not.
- ``start > stop`` crosses midnight: ``"22:00"``-``"06:00"`` is 22:00 to 06:00 the next day.
- ``start == stop``, or either one empty, is no window: nothing is judged (an equal pair
  could mean "all day" or "never"; neither is guessed).
- Times are wall-clock minutes in the zone: when DST skips 02:00-03:00, a window opening at
  02:30 opens at 03:00 that day; when it repeats 02:00-03:00, those minutes happen twice.
- No status (``""``) is nothing to judge; statuses are compared stripped and casefolded.

A verdict depends on the time as well as on the task: it changes when the local minute of
the day crosses a window's start or stop, with no write to the task. :func:`minutes_crossed`
says which minutes of the day were crossed between two moments, so that whoever keeps a
stored verdict re-judges only the tasks whose window starts or stops at one of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from taskdash.errors import ValidationError

OK, RUNNING_OUTSIDE, IDLE_INSIDE = "ok", "running_outside", "idle_inside"
VERDICTS = (OK, RUNNING_OUTSIDE, IDLE_INSIDE)
FLAGGED = frozenset({RUNNING_OUTSIDE, IDLE_INSIDE})
"""The verdicts that put a task *out of its window* (the flag)."""
#: The seed's status for a task at work. Of its other examples, ``finish`` and ``shutdown``
#: are not running, and neither is ``restart``: a task restarting is not at work this minute.
RUNNING = frozenset({"running"})
DAY = 1440  # minutes
MINUTE_MS = 60_000
# the TCP interface's own pattern (taskdash/tcp/requests.py): "7:05" and "07:05", ASCII only
_CLOCK = re.compile(r"(?:[01]?[0-9]|2[0-3]):[0-5][0-9]\Z", re.ASCII)


def parse_clock(text: str) -> int | None:
    """``"HH:MM"`` as minutes since midnight; ``""`` is None (not set); ValidationError else."""
    if text == "":
        return None
    if not _CLOCK.match(text):
        raise ValidationError(f"a window time is HH:MM from 00:00 to 23:59, got {text[:20]!r}")
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


@dataclass(frozen=True)
class Window:
    """A daily window ``[start, stop)`` in minutes of the day; ``start != stop``."""

    start: int
    stop: int

    @classmethod
    def of(cls, start_time: str, stop_time: str) -> Window | None:
        """The window of a task's two fields, or None when they make none."""
        start, stop = parse_clock(start_time), parse_clock(stop_time)
        if start is None or stop is None or start == stop:
            return None
        return cls(start, stop)

    @property
    def crosses_midnight(self) -> bool:
        return self.start > self.stop

    def contains(self, minute: int) -> bool:
        """Whether minute ``minute`` of the day (0-1439) is inside."""
        if self.crosses_midnight:
            return minute >= self.start or minute < self.stop
        return self.start <= minute < self.stop


def minute_of_day(epoch_ms: int, zone: tzinfo) -> int:
    """The wall-clock minute of the day (0-1439) at ``epoch_ms`` in ``zone``."""
    local = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).astimezone(zone)
    return local.hour * 60 + local.minute


def is_running(status: str, running: frozenset[str] = RUNNING) -> bool:
    return status.strip().casefold() in running


def verdict(
    window: Window | None, status: str, minute: int, running: frozenset[str] = RUNNING
) -> str | None:
    """:data:`OK`, :data:`RUNNING_OUTSIDE` or :data:`IDLE_INSIDE`; None: nothing to judge."""
    if window is None or not status.strip():
        return None
    inside, busy = window.contains(minute), is_running(status, running)
    if busy and not inside:
        return RUNNING_OUTSIDE
    if inside and not busy:
        return IDLE_INSIDE
    return OK


def check(
    start_time: str,
    stop_time: str,
    status: str,
    epoch_ms: int,
    zone: tzinfo,
    running: frozenset[str] = RUNNING,
) -> str | None:
    """The verdict for a task's fields at ``epoch_ms`` in ``zone`` (see :func:`verdict`)."""
    return verdict(Window.of(start_time, stop_time), status, minute_of_day(epoch_ms, zone), running)


def minutes_crossed(since_ms: int, now_ms: int, zone: tzinfo) -> set[int]:
    """The minutes of the day whose start was crossed in ``(since_ms, now_ms]``, either way.

    Every minute passed is in, the ones a DST jump skips forward too (a window opening at
    02:30 opens when 01:59 becomes 03:00), and, when the clock goes back, the ones it goes
    back over (02:59 becoming 02:00 crosses 02:30 again, backwards). A day or more: all.
    """
    if now_ms - since_ms >= DAY * MINUTE_MS:
        return set(range(DAY))
    crossed: set[int] = set()
    boundary = (since_ms // MINUTE_MS + 1) * MINUTE_MS
    previous = minute_of_day(boundary - MINUTE_MS, zone)
    while boundary <= now_ms:
        current = minute_of_day(boundary, zone)
        step = (current - previous) % DAY
        if step <= DAY // 2:  # forward: one minute, or a jump over the skipped ones
            crossed.update((previous + k) % DAY for k in range(1, step + 1))
        else:  # backward: the minutes gone back over, and the one now current
            crossed.update((current + k) % DAY for k in range(DAY - step + 1))
        previous, boundary = current, boundary + MINUTE_MS
    return crossed


def clock_or_none(text: object) -> int | None:
    """:func:`parse_clock` for a stored value: anything that is not a valid time is None."""
    if not isinstance(text, str):
        return None
    try:
        return parse_clock(text)
    except ValidationError:
        return None


@dataclass(frozen=True)
class Rules:
    """How windows are judged: in which zone, and which statuses mean running.

    Every daemon sharing a store should be given the same rules (``[tasks]`` settings), or
    they judge the same task differently at the same moment.
    """

    zone: tzinfo
    running: frozenset[str] = RUNNING

    def judge(
        self, start_time: object, stop_time: object, status: object, epoch_ms: int
    ) -> str | None:
        """The verdict for a stored task's fields (see :func:`verdict`).

        A stored time that is not ``HH:MM`` (a hand edit, an older version) makes no
        window, like an empty one: nothing is judged, rather than the whole pass failing.
        """
        start, stop = clock_or_none(start_time), clock_or_none(stop_time)
        if start is None or stop is None or start == stop or not isinstance(status, str):
            return None
        minute = minute_of_day(epoch_ms, self.zone)
        return verdict(Window(start, stop), status, minute, self.running)
