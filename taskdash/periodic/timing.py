"""When a schedule runs (an interval, or a 5-field cron in a time zone) and what a late fire does.

Pure functions on epoch milliseconds, no I/O: the firer, the HTTP views and the tests share
them. Every refusal is an INVALID_ARGUMENT :class:`PeriodicError` with a sentence saying what
is wrong.

A schedule's runs are nominal times: ``anchor + n * interval`` for an interval (no drift, however
late a fire was), each match of the cron expression in its zone for a cron. A *fire* looks at
the runs due since the last one and creates at most one task (see :func:`plan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from taskdash.errors import ValidationError
from taskdash.periodic.errors import Kind, PeriodicError
from taskdash.zones import zone

MIN_INTERVAL_MS = 1000
MAX_INTERVAL_MS = 366 * 86400 * 1000
MAX_CRON_LENGTH = 256
MAX_GRACE_S = 86400
MAX_JITTER_S = 3600
# runs counted one by one when a cron schedule catches up; past this, the count is a lower bound
# (croniter takes about 90 us a step: a node down for a year on a per-minute cron must not
# spend a minute counting)
MAX_COUNTED = 1000
SKIP, ONCE = "skip", "once"
MISFIRE = (SKIP, ONCE)


def _bad(message: str) -> PeriodicError:
    return PeriodicError(Kind.INVALID_ARGUMENT, message)


def check_zone(name: str) -> ZoneInfo:
    """An IANA time zone name (``Europe/Paris``), as :func:`taskdash.zones.zone` checks it."""
    try:
        return zone(name)
    except ValidationError as exc:
        raise _bad(str(exc)) from None


def check_interval(seconds: float) -> int:
    """An interval in seconds (1 s to 366 days, millisecond resolution) as milliseconds."""
    if not MIN_INTERVAL_MS / 1000 <= seconds <= MAX_INTERVAL_MS / 1000:
        raise _bad(
            f"interval must be between 1 and {MAX_INTERVAL_MS // 1000} seconds, got {seconds}"
        )
    return round(seconds * 1000)


def check_seconds(name: str, seconds: float, low: float, high: float) -> int:
    """A duration field (``misfire_grace``, ``jitter``) within ``[low, high]`` seconds, in ms."""
    if not low <= seconds <= high:
        raise _bad(f"{name} must be between {low:g} and {high:g} seconds, got {seconds}")
    return round(seconds * 1000)


def check_misfire(value: str) -> str:
    if value not in MISFIRE:
        raise _bad(f"misfire must be one of {', '.join(MISFIRE)}, got {value[:40]!r}")
    return value


@dataclass(frozen=True)
class Timing:
    """How a schedule's runs are computed: ``interval_ms`` from ``anchor_ms``, or ``cron`` in
    ``timezone``."""

    interval_ms: int | None = None
    anchor_ms: int = 0
    cron: str | None = None
    timezone: str = "UTC"

    @classmethod
    def for_cron(cls, expression: str, timezone: str, now: int) -> Timing:
        """A validated cron timing: 5 fields, a known zone, and at least one run to come."""
        zone = check_zone(timezone)
        if len(expression) > MAX_CRON_LENGTH:
            raise _bad(f"cron is longer than {MAX_CRON_LENGTH} characters")
        fields = expression.split()
        if len(fields) != 5:
            raise _bad(
                "cron must have 5 fields (minute hour day-of-month month day-of-week), "
                f"got {len(fields)} in {expression[:80]!r}"
            )
        text = " ".join(fields)
        try:
            croniter(text, _at(now, zone)).get_next(float)
        except Exception as exc:  # croniter raises several types; any is the expression's fault
            raise _bad(f"cron {text!r} is not valid: {exc}") from None
        return cls(cron=text, timezone=timezone)

    def next_after(self, t: int) -> int:
        """The first run strictly after ``t`` (epoch ms)."""
        if self.interval_ms is not None:
            return max(self.anchor_ms, self.last_at_or_before(t) + self.interval_ms)
        found = round(self._cron(t).get_next(float) * 1000)
        return found if found > t else self.next_after(t + 1000)  # never the same run twice

    def last_at_or_before(self, t: int) -> int:
        """The latest run at or before ``t`` (for an interval, before the anchor: a run that
        never happens, never returned as due)."""
        if self.interval_ms is not None:
            steps = (t - self.anchor_ms) // self.interval_ms
            return self.anchor_ms + steps * self.interval_ms
        return round(self._cron(t + 1).get_prev(float) * 1000)

    def _cron(self, start: int) -> croniter:
        assert self.cron is not None
        return croniter(self.cron, _at(start, ZoneInfo(self.timezone)))

    def upcoming(self, start: int, count: int) -> list[int]:
        """``start`` (a run) and the runs after it: ``count`` in all."""
        runs = [start]
        while len(runs) < count:
            runs.append(self.next_after(runs[-1]))
        return runs


def _at(ms: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(zone)


@dataclass(frozen=True)
class Plan:
    """What one fire does: the run it stands for, whether it creates a task, what comes next.

    ``missed`` counts the due runs before ``due`` that get no task of their own (folded into
    this fire); ``missed_more`` says the count stopped at :data:`MAX_COUNTED`.
    """

    due: int
    next_run_at: int
    missed: int
    create: bool
    missed_more: bool = False


def plan(timing: Timing, next_run_at: int, now: int, misfire: str, grace_ms: int) -> Plan:
    """The fire of a schedule whose next run (``next_run_at``) is due at ``now``.

    A fire creates at most one task, for the latest due run; the runs due before it (a node
    that could not fire for a while, a store outage) are *missed* and folded into it, whatever
    the policy, so a node down for an hour fires once, not sixty times. The latest run is on
    time when it is at most ``grace_ms`` late: it creates its task. Otherwise it is a misfire:
    ``once`` creates one task anyway (catching up), ``skip`` creates none.
    """
    assert next_run_at <= now
    if timing.interval_ms is not None:
        behind = (now - next_run_at) // timing.interval_ms
        due, missed, more = next_run_at + behind * timing.interval_ms, behind, False
    else:
        due, missed, more = _last_cron_run(timing, next_run_at, now)
    create = misfire == ONCE or now - due <= grace_ms
    return Plan(due, timing.next_after(due), missed, create, more)


def _last_cron_run(timing: Timing, first: int, now: int) -> tuple[int, int, bool]:
    """(latest run at or before ``now``, runs before it since ``first``, whether counting
    stopped at :data:`MAX_COUNTED`)."""
    due, missed = first, 0
    while missed < MAX_COUNTED:
        following = timing.next_after(due)
        if following > now:
            return due, missed, False
        due, missed = following, missed + 1
    return timing.last_at_or_before(now), missed, True
