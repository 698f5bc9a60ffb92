"""When schedules run and what a late fire does: pure functions, tables of inputs and outputs."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from taskdash.periodic.errors import Kind, PeriodicError
from taskdash.periodic.timing import (
    MAX_COUNTED,
    ONCE,
    SKIP,
    Timing,
    check_interval,
    check_misfire,
    check_seconds,
    check_zone,
    plan,
)

S = 1000
MIN = 60 * S
HOUR = 60 * MIN


def ms(text: str, zone: str = "UTC") -> int:
    """``2026-03-29 02:30`` in ``zone`` as epoch ms."""
    local = datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))
    return int(local.timestamp() * 1000)


def utc(t: int) -> str:
    return datetime.fromtimestamp(t / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


EVERY_10S = Timing(interval_ms=10 * S, anchor_ms=1_000)


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (1_000, 11_000),  # the anchor itself is not a run: the first is one interval on
        (10_999, 11_000),
        (11_000, 21_000),  # strictly after
        (11_001, 21_000),
        (0, 1_000),  # before the anchor
        (1_000 + 10**6 * 10 * S, 1_000 + (10**6 + 1) * 10 * S),  # no drift, however far
    ],
)
def test_interval_next_run(t: int, expected: int) -> None:
    assert EVERY_10S.next_after(t) == expected


@pytest.mark.parametrize(
    ("cron", "zone", "after", "expected"),
    [
        ("*/15 * * * *", "UTC", "2026-01-05 12:07", "2026-01-05 12:15:00"),
        ("0 9 * * *", "Europe/Paris", "2026-01-05 12:00", "2026-01-06 08:00:00"),  # winter
        ("0 9 * * *", "Europe/Paris", "2026-07-05 12:00", "2026-07-06 07:00:00"),  # summer
        ("0 9 * * 1-5", "America/New_York", "2026-01-09 10:00", "2026-01-12 14:00:00"),  # Fri→Mon
        ("0 0 1 * *", "Asia/Tokyo", "2026-01-31 23:59", "2026-01-31 15:00:00"),
        # spring forward: 02:30 does not exist that night in Paris; the run is at 03:00 local
        ("30 2 * * *", "Europe/Paris", "2026-03-28 12:00", "2026-03-29 01:00:00"),
    ],
)
def test_cron_next_run_in_its_zone(cron: str, zone: str, after: str, expected: str) -> None:
    timing = Timing.for_cron(cron, zone, ms(after, zone))
    assert utc(timing.next_after(ms(after, zone))) == expected


def test_cron_fall_back_hour_runs_each_time_it_happens() -> None:
    """02:30 happens twice in Paris on 2026-10-25 (CEST, then CET): croniter runs it at both,
    one hour apart; the runs always increase."""
    timing = Timing.for_cron("30 2 * * *", "Europe/Paris", 0)
    runs = timing.upcoming(timing.next_after(ms("2026-10-24 12:00", "Europe/Paris")), 3)
    assert [utc(t) for t in runs] == [
        "2026-10-25 00:30:00",
        "2026-10-25 01:30:00",
        "2026-10-26 01:30:00",
    ]


def test_cron_is_normalised_and_last_run_found() -> None:
    timing = Timing.for_cron("  0   *  * * * ", "UTC", 0)
    assert timing.cron == "0 * * * *"
    now = ms("2026-01-05 12:30")
    assert utc(timing.last_at_or_before(now)) == "2026-01-05 12:00:00"
    assert timing.last_at_or_before(ms("2026-01-05 12:00")) == ms("2026-01-05 12:00")


@pytest.mark.parametrize(
    ("now", "misfire", "grace", "due", "missed", "create", "next_run"),
    [
        # on time, or a little late: fires its own run
        (100 * S, ONCE, 60 * S, 100 * S, 0, True, 110 * S),
        (105 * S, SKIP, 60 * S, 100 * S, 0, True, 110 * S),
        # 2.5 intervals late: the latest due run (120 s) stands for three, two missed
        (125 * S, SKIP, 60 * S, 120 * S, 2, True, 130 * S),
        (125 * S, ONCE, 60 * S, 120 * S, 2, True, 130 * S),
        # the latest due run is itself past the grace: skip creates nothing, once catches up
        (125 * S, SKIP, 4 * S, 120 * S, 2, False, 130 * S),
        (125 * S, ONCE, 4 * S, 120 * S, 2, True, 130 * S),
        # exactly at the grace is still on time
        (124 * S, SKIP, 4 * S, 120 * S, 2, True, 130 * S),
    ],
)
def test_interval_plan(
    now: int, misfire: str, grace: int, due: int, missed: int, create: bool, next_run: int
) -> None:
    timing = Timing(interval_ms=10 * S, anchor_ms=0)
    got = plan(timing, 100 * S, now, misfire, grace)
    assert (got.due, got.missed, got.create, got.next_run_at) == (due, missed, create, next_run)
    assert not got.missed_more


@pytest.mark.parametrize(
    ("misfire", "grace", "create"),
    [(ONCE, 60 * S, True), (SKIP, 60 * S, True), (SKIP, 10 * S, False), (ONCE, 10 * S, True)],
)
def test_cron_node_down_for_an_hour_fires_at_most_once(
    misfire: str, grace: int, create: bool
) -> None:
    """A per-minute cron last fired at 12:00, back at 13:00:30: sixty runs were due; one fire
    stands for them (13:00), the 59 before it are missed. 30 s late: on time within a 60 s
    grace, a misfire within 10 s."""
    timing = Timing.for_cron("* * * * *", "UTC", 0)
    got = plan(timing, ms("2026-01-05 12:01"), ms("2026-01-05 13:00") + 30 * S, misfire, grace)
    assert (utc(got.due), got.missed, got.create) == ("2026-01-05 13:00:00", 59, create)
    assert utc(got.next_run_at) == "2026-01-05 13:01:00"


def test_cron_catch_up_counting_is_bounded() -> None:
    timing = Timing.for_cron("* * * * *", "UTC", 0)
    start = ms("2026-01-05 00:00")
    now = start + (MAX_COUNTED + 500) * MIN + 7 * S
    got = plan(timing, start, now, SKIP, 60 * S)
    assert got.missed_more and got.missed == MAX_COUNTED
    assert got.due == start + (MAX_COUNTED + 500) * MIN  # still the latest run, found directly
    assert got.next_run_at == got.due + MIN and got.create


def test_hourly_cron_misfire_after_a_stop() -> None:
    """An hourly cron whose 11:00 run comes 20 minutes late: skip leaves it, once fires it."""
    timing = Timing.for_cron("0 * * * *", "UTC", 0)
    now = ms("2026-01-05 11:20")
    skipped = plan(timing, ms("2026-01-05 11:00"), now, SKIP, 60 * S)
    caught_up = plan(timing, ms("2026-01-05 11:00"), now, ONCE, 60 * S)
    assert (skipped.create, skipped.missed) == (False, 0)
    assert (caught_up.create, caught_up.missed) == (True, 0)
    assert skipped.next_run_at == caught_up.next_run_at == ms("2026-01-05 12:00")


@pytest.mark.parametrize(
    ("cron", "zone", "fragment"),
    [
        ("* * * *", "UTC", "5 fields (minute hour day-of-month month day-of-week), got 4"),
        ("* * * * * *", "UTC", "got 6"),  # croniter would read seconds: refused
        ("@hourly", "UTC", "got 1"),
        ("", "UTC", "got 0"),
        ("61 * * * *", "UTC", "cron '61 * * * *' is not valid"),
        ("0 0 30 2 *", "UTC", "is not valid: failed to find next date"),  # February 30th
        ("a b c d e", "UTC", "is not valid"),
        ("*/0 * * * *", "UTC", "is not valid"),
        ("H * * * *", "UTC", "is not valid"),
        ("1 " * 200, "UTC", "longer than 256"),
        ("* * * * *", "Mars/Olympus", "'Mars/Olympus' is not an IANA time zone name"),
        ("* * * * *", "localtime", "depends on the machine"),
        ("* * * * *", "../etc/passwd", "not an IANA"),
        ("* * * * *", "/etc/localtime", "not an IANA"),
        ("* * * * *", "America", "not an IANA"),  # a directory of zones
        ("* * * * *", "", "not an IANA"),
        ("* * * * *", "Europe/Paris ", "not an IANA"),
        ("* * * * *", "europe/paris", "not an IANA"),
        ("* * * * *", "E" * 5000, "not an IANA"),
    ],
)
def test_bad_cron_or_zone(cron: str, zone: str, fragment: str) -> None:
    with pytest.raises(PeriodicError) as err:
        Timing.for_cron(cron, zone, ms("2026-01-05 12:00"))
    assert err.value.kind is Kind.INVALID_ARGUMENT
    assert fragment in str(err.value)
    assert len(str(err.value)) < 400


@pytest.mark.parametrize("seconds", [0, 0.999, -1, 366 * 86400 + 1, float("inf")])
def test_bad_interval(seconds: float) -> None:
    with pytest.raises(PeriodicError, match="interval must be between 1 and 31622400 seconds"):
        check_interval(seconds)


def test_good_values() -> None:
    assert check_interval(1) == 1000 and check_interval(2.5) == 2500
    assert check_interval(366 * 86400) == 366 * 86400 * 1000
    assert check_zone("America/New_York").key == "America/New_York"
    assert check_seconds("jitter", 0, 0, 3600) == 0
    assert check_misfire("skip") == SKIP


def test_bad_misfire_and_seconds() -> None:
    with pytest.raises(PeriodicError, match="misfire must be one of skip, once, got 'never'"):
        check_misfire("never")
    with pytest.raises(PeriodicError, match="jitter must be between 0 and 3600 seconds"):
        check_seconds("jitter", 3601, 0, 3600)
