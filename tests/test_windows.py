"""Daily windows: tables of fields, statuses and times, midnight and DST included."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from taskdash.errors import ValidationError
from taskdash.windows import (
    IDLE_INSIDE,
    OK,
    RUNNING_OUTSIDE,
    Rules,
    Window,
    check,
    clock_or_none,
    minute_of_day,
    minutes_crossed,
    parse_clock,
    verdict,
)
from taskdash.zones import machine_zone, zone

PARIS = ZoneInfo("Europe/Paris")
UTC = ZoneInfo("UTC")


def at(text: str, tz: ZoneInfo = PARIS) -> int:
    """Epoch ms of a wall-clock time in ``tz`` (the first one, when it happens twice)."""
    return int(datetime.fromisoformat(text).replace(tzinfo=tz).timestamp() * 1000)


def utc_ms(text: str) -> int:
    return at(text, UTC)


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("", None), ("0:00", 0), ("00:00", 0), ("7:05", 425), ("07:05", 425), ("12:00", 720),
     ("23:59", 1439), ("19:30", 1170)],
)  # fmt: skip
def test_parse_clock(text: str, minutes: int | None) -> None:
    assert parse_clock(text) == minutes


@pytest.mark.parametrize(
    "text",
    ["24:00", "12:60", "12", "12:0", "1200", " 12:00", "12:00 ", "12:00\n", "-1:00", "12:00:00",
     "ab:cd", "\u0661\u0662:\u0660\u0660", "\uff11\uff12:\uff10\uff10", "123:00", ":", "12h00"],
)  # fmt: skip
def test_bad_clock(text: str) -> None:
    with pytest.raises(ValidationError, match="a window time is HH:MM from 00:00 to 23:59"):
        parse_clock(text)


@pytest.mark.parametrize(
    ("start", "stop", "expected"),
    [
        ("12:00", "18:00", Window(720, 1080)),
        ("22:00", "6:00", Window(1320, 360)),
        ("", "18:00", None),
        ("12:00", "", None),
        ("", "", None),
        ("12:00", "12:00", None),  # neither "all day" nor "never" is guessed
        ("0:00", "00:00", None),
    ],
)
def test_window_of_fields(start: str, stop: str, expected: Window | None) -> None:
    assert Window.of(start, stop) == expected


DAYTIME = Window(720, 1080)  # 12:00-18:00
NIGHT = Window(1320, 360)  # 22:00-06:00, across midnight


@pytest.mark.parametrize(
    ("window", "minute", "inside"),
    [
        (DAYTIME, 719, False),
        (DAYTIME, 720, True),  # the start minute is inside
        (DAYTIME, 1079, True),
        (DAYTIME, 1080, False),  # the stop minute is not
        (DAYTIME, 0, False),
        (NIGHT, 1319, False),
        (NIGHT, 1320, True),
        (NIGHT, 1439, True),  # 23:59
        (NIGHT, 0, True),  # midnight
        (NIGHT, 359, True),  # 05:59
        (NIGHT, 360, False),  # 06:00
        (NIGHT, 720, False),
        (Window(0, 1), 0, True),
        (Window(0, 1), 1, False),
        (Window(1439, 0), 1439, True),  # the last minute of the day only
        (Window(1439, 0), 0, False),
        (Window(1, 0), 0, False),  # all day but midnight
        (Window(1, 0), 1439, True),
    ],
)
def test_contains(window: Window, minute: int, inside: bool) -> None:
    assert window.contains(minute) is inside


@pytest.mark.parametrize(
    ("window", "status", "minute", "expected"),
    [
        (DAYTIME, "running", 800, OK),
        (DAYTIME, "running", 1100, RUNNING_OUTSIDE),
        (DAYTIME, "finish", 800, IDLE_INSIDE),
        (DAYTIME, "shutdown", 1100, OK),
        (DAYTIME, "restart", 800, IDLE_INSIDE),  # only "running" is running
        (DAYTIME, " Running ", 1100, RUNNING_OUTSIDE),  # stripped, casefolded
        (DAYTIME, "RUNNING", 800, OK),
        (DAYTIME, "", 800, None),  # no status: nothing to judge
        (DAYTIME, "   ", 1100, None),
        (None, "running", 800, None),  # no window
        (NIGHT, "running", 30, OK),  # 00:30, inside a window across midnight
        (NIGHT, "running", 1300, RUNNING_OUTSIDE),
        (NIGHT, "pending", 1400, IDLE_INSIDE),
    ],
)
def test_verdict(window: Window | None, status: str, minute: int, expected: str | None) -> None:
    assert verdict(window, status, minute) == expected


def test_other_running_statuses() -> None:
    assert verdict(DAYTIME, "busy", 800, running=frozenset({"busy"})) == OK
    assert verdict(DAYTIME, "running", 800, running=frozenset({"busy"})) == IDLE_INSIDE


@pytest.mark.parametrize(
    ("utc", "tz", "minute"),
    [
        ("2026-01-15 11:00", PARIS, 720),  # 12:00 CET
        ("2026-07-15 10:00", PARIS, 720),  # 12:00 CEST
        ("2026-01-15 23:30", PARIS, 30),  # after midnight in Paris, before in UTC
        ("2026-03-29 00:59", PARIS, 119),  # 01:59 CET, just before the jump
        ("2026-03-29 01:00", PARIS, 180),  # 03:00 CEST: 02:xx never happens
        ("2026-10-25 00:30", PARIS, 150),  # 02:30 CEST
        ("2026-10-25 01:30", PARIS, 150),  # 02:30 CET: the same minute again
        ("2026-01-15 11:00", ZoneInfo("Asia/Kolkata"), 990),  # a half-hour offset
        ("2026-01-15 11:00", ZoneInfo("America/New_York"), 360),
    ],
)
def test_minute_of_day(utc: str, tz: ZoneInfo, minute: int) -> None:
    assert minute_of_day(utc_ms(utc), tz) == minute


@pytest.mark.parametrize(
    ("local", "status", "expected"),
    [
        ("2026-01-15 12:00", "running", OK),
        ("2026-01-15 18:00", "running", RUNNING_OUTSIDE),
        ("2026-01-15 17:59", "finish", IDLE_INSIDE),
        ("2026-07-15 12:30", "running", OK),  # summer time: the same wall-clock window
    ],
)
def test_check_in_a_zone(local: str, status: str, expected: str) -> None:
    assert check("12:00", "18:00", status, at(local), PARIS) == expected


def test_check_across_midnight_and_dst() -> None:
    # a night window across midnight, judged in New York
    ny = ZoneInfo("America/New_York")
    assert check("22:00", "06:00", "running", at("2026-01-15 23:00", ny), ny) == OK
    assert check("22:00", "06:00", "running", at("2026-01-16 05:59", ny), ny) == OK
    assert check("22:00", "06:00", "running", at("2026-01-16 06:00", ny), ny) == RUNNING_OUTSIDE
    # 02:30-04:00 on the night Paris skips 02:00-03:00: open at 03:00, not before
    night = "2026-03-29 00:59"
    assert check("02:30", "04:00", "running", utc_ms(night), PARIS) == RUNNING_OUTSIDE
    assert check("02:30", "04:00", "running", utc_ms("2026-03-29 01:00"), PARIS) == OK
    # the night Paris repeats 02:00-03:00: 02:30 CET is inside, like 02:30 CEST was
    assert check("02:30", "04:00", "finish", utc_ms("2026-10-25 01:30"), PARIS) == IDLE_INSIDE
    assert check("", "", "running", utc_ms(night), PARIS) is None


def test_check_refuses_a_bad_stored_time() -> None:
    with pytest.raises(ValidationError):
        check("25:00", "06:00", "running", 0, UTC)


@pytest.mark.parametrize(
    ("since", "now", "expected"),
    [
        ("2026-01-15 12:00:30", "2026-01-15 12:00:59", set()),  # no minute started
        ("2026-01-15 12:00:30", "2026-01-15 12:01:00", {721}),  # in UTC: 12:01
        ("2026-01-15 12:00:00", "2026-01-15 12:03:00", {721, 722, 723}),  # (since, now]
        ("2026-01-15 23:58:10", "2026-01-16 00:01:00", {1439, 0, 1}),  # across midnight
    ],
)
def test_minutes_crossed_in_utc(since: str, now: str, expected: set[int]) -> None:
    assert minutes_crossed(utc_ms(since), utc_ms(now), UTC) == expected


def test_minutes_crossed_over_dst_jumps() -> None:
    # spring forward: 01:59 CET -> 03:00 CEST crosses every skipped minute, 02:00-03:00
    crossed = minutes_crossed(utc_ms("2026-03-29 00:59"), utc_ms("2026-03-29 01:00"), PARIS)
    assert crossed == set(range(120, 181))
    # fall back: 02:59 CEST -> 02:00 CET goes back over 02:00-02:59 (02:30 crossed again)
    crossed = minutes_crossed(utc_ms("2026-10-25 00:59"), utc_ms("2026-10-25 01:00"), PARIS)
    assert crossed == set(range(120, 180))
    # a whole day, or more: every minute
    assert len(minutes_crossed(0, 86_400_000, PARIS)) == 1440
    assert len(minutes_crossed(0, 86_399_999, UTC)) == 1439


def test_zones(tmp_path: Path) -> None:
    assert zone("Europe/Paris").key == "Europe/Paris"
    for bad, fragment in (("Mars/Base", "not an IANA"), ("localtime", "depends on the machine")):
        with pytest.raises(ValidationError, match=fragment):
            zone(bad)
    here = machine_zone()
    assert minute_of_day(0, here) in range(1440)
    assert machine_zone(str(tmp_path / "missing")).key == "UTC"
    (tmp_path / "broken").write_bytes(b"not a zone file")
    assert machine_zone(str(tmp_path / "broken")).key == "UTC"
    paris = Path("/usr/share/zoneinfo/Europe/Paris")
    if paris.exists():  # a machine set to Paris: its DST rules come with it
        assert minute_of_day(utc_ms("2026-07-15 10:00"), machine_zone(str(paris))) == 720


# -- Rules: judging stored fields ------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "stop", "status", "local", "expected"),
    [
        # inside / outside x running / not, a daytime window
        ("12:00", "18:00", "running", "2026-01-15 12:00", OK),
        ("12:00", "18:00", "running", "2026-01-15 11:59", RUNNING_OUTSIDE),
        ("12:00", "18:00", "finish", "2026-01-15 17:59", IDLE_INSIDE),
        ("12:00", "18:00", "finish", "2026-01-15 18:00", OK),
        # the same across midnight
        ("22:00", "06:00", "running", "2026-01-15 23:30", OK),
        ("22:00", "06:00", "running", "2026-01-16 06:00", RUNNING_OUTSIDE),
        ("22:00", "06:00", "shutdown", "2026-01-16 00:00", IDLE_INSIDE),
        ("22:00", "06:00", "shutdown", "2026-01-15 21:59", OK),
        # the DST nights in Paris: 02:30 never happens in spring, twice in autumn
        ("02:30", "03:30", "running", "2026-03-29 01:59", RUNNING_OUTSIDE),
        ("02:30", "03:30", "running", "2026-03-29 03:00", OK),
        ("02:30", "03:30", "finish", "2026-10-25 02:45", IDLE_INSIDE),
        # stored values that make no window, or nothing to judge
        ("25:00", "06:00", "running", "2026-01-15 12:00", None),
        ("12:00", None, "running", "2026-01-15 12:00", None),
        (1200, "18:00", "running", "2026-01-15 12:00", None),
        ("12:00", "18:00", None, "2026-01-15 12:00", None),
        ("12:00", "18:00", 7, "2026-01-15 12:00", None),
    ],
)
def test_rules_judge_stored_fields(
    start: object, stop: object, status: object, local: str, expected: str | None
) -> None:
    assert Rules(PARIS).judge(start, stop, status, at(local)) == expected


def test_rules_in_other_zones_and_statuses() -> None:
    ny, tokyo = ZoneInfo("America/New_York"), ZoneInfo("Asia/Tokyo")
    moment = utc_ms("2026-01-15 23:30")  # 18:30 in New York, 08:30 in Tokyo (next day)
    assert Rules(ny).judge("12:00", "18:00", "running", moment) == RUNNING_OUTSIDE
    assert Rules(tokyo).judge("08:00", "09:00", "running", moment) == OK
    busy = Rules(tokyo, frozenset({"busy"}))
    assert busy.judge("08:00", "09:00", "Busy", moment) == OK
    assert busy.judge("08:00", "09:00", "running", moment) == IDLE_INSIDE


def test_clock_or_none() -> None:
    assert [clock_or_none(v) for v in ("7:05", "", "24:00", None, 705)] == [
        425,
        None,
        None,
        None,
        None,
    ]
