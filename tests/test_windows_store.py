"""Daily-window verdicts in the store: the TCP and fetch paths set the flag, the re-judge loop
flips it on a fake clock, stale judgements never win, flag changes become events once."""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import structlog.testing
from fetcher_site import Clock as AlertsClock
from support import async_wait_for, free_port
from test_alerts import alerts, dispatcher, hook, started_receivers

from taskdash.alerts.windows import window_changes
from taskdash.errors import StoreUnavailable
from taskdash.models import TaskMetaData
from taskdash.settings import AlertsSettings
from taskdash.store import Store
from taskdash.store.task_windows import (
    FLAGGED_EVENT,
    _read,
    _verdict_update,
    backfill_minutes,
    boundary_conditions,
    judge_tasks,
    judge_where,
    minute_runs,
    record_window_events,
    window_events,
)
from taskdash.store.tasklist import TaskQuery, every_task, get_task
from taskdash.store.tasks import ServiceListing, apply_listings, load_known, write_registered
from taskdash.store.times import iso, to_ms
from taskdash.window_judge import WindowJudge
from taskdash.windows import IDLE_INSIDE, OK, RUNNING_OUTSIDE, Rules, minute_of_day

PARIS = ZoneInfo("Europe/Paris")
DAY = {"start_time": "12:00", "stop_time": "18:00"}
NIGHT = {"start_time": "22:00", "stop_time": "06:00"}


def at(text: str, tz: ZoneInfo = PARIS) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=tz).timestamp() * 1000)


@pytest.fixture
def paris(store: Store) -> Store:
    """The store, judging windows in Paris time."""
    store.window_rules = Rules(PARIS)
    return store


async def tcp(store: Store, task_id: str, now: int, window: dict[str, str] | None = None,
              create: bool = True, **fields: str) -> str:  # fmt: skip
    written = await write_registered(
        store, task_id, fields, window or {}, create=create, now_ms=now
    )
    return written.outcome


async def window_of(store: Store, task_id: str) -> dict[str, Any] | None:
    task = await get_task(store, task_id)
    assert task is not None
    window: dict[str, Any] | None = task["window"]
    return window


async def events(store: Store) -> list[dict[str, Any]]:
    return [e async for e in store["task_events"].find({}).sort("at", 1)]


async def test_tcp_writes_set_the_verdict_and_flag_changes_are_events(paris: Store) -> None:
    store = paris
    assert await tcp(store, "t", at("2026-01-15 19:00"), DAY, status="running") == "created"
    window = await window_of(store, "t")
    assert window == {
        "start": "12:00",
        "stop": "18:00",
        "verdict": RUNNING_OUTSIDE,
        "out_of_window": True,
        "since": "2026-01-15T18:00:00+00:00",
    }
    # the status alone, then the window alone: each judged with the stored other half
    await tcp(store, "t", at("2026-01-15 19:05"), create=False, status="finish")
    assert (await window_of(store, "t"))["verdict"] == OK  # type: ignore[index]
    await tcp(store, "t", at("2026-01-15 19:10"), {"stop_time": "20:00"}, create=False)
    assert (await window_of(store, "t"))["verdict"] == IDLE_INSIDE  # type: ignore[index]
    # no window any more: no verdict, no flag
    await tcp(store, "t", at("2026-01-15 19:15"), {"start_time": ""}, create=False)
    assert await window_of(store, "t") is None
    doc = await store.tasks.find_one({"_id": "t"})
    assert doc is not None and doc["window_verdict"] is None and not doc["out_of_window"]
    assert (doc["window_start"], doc["window_stop"]) == (None, 1200)
    kinds = [(e["kind"], e["verdict"], e["previous"], e["status"]) for e in await events(store)]
    assert kinds == [
        ("window_flagged", RUNNING_OUTSIDE, None, "running"),
        ("window_cleared", OK, RUNNING_OUTSIDE, "finish"),
        ("window_flagged", IDLE_INSIDE, OK, "finish"),
        ("window_cleared", None, IDLE_INSIDE, "finish"),
    ]
    first = (await events(store))[0]
    assert first["task_id"] == "t" and first["published"] is False
    assert first["stop_time"] == "18:00" and first["at"].isoformat().startswith("2026-01-15T18")
    shown = await window_events(store, "t")
    assert next(e["kind"] for e in shown) == "window_cleared"  # newest first
    # every outbox was moved, and emptied
    assert await store.tasks.count_documents({"window_outbox_pending": {"$gt": 0}}) == 0


async def test_a_task_without_status_or_window_is_not_judged(paris: Store) -> None:
    await tcp(paris, "a", at("2026-01-15 19:00"), DAY)  # no status
    await tcp(paris, "b", at("2026-01-15 19:00"), status="running")  # no window
    await tcp(paris, "c", at("2026-01-15 19:00"), {"start_time": "12:00"}, status="running")
    for task_id in "abc":
        doc = await paris.tasks.find_one({"_id": task_id})
        assert doc is not None and not doc.get("out_of_window"), task_id
    assert (await window_of(paris, "a")) == {
        "start": "12:00", "stop": "18:00", "verdict": None, "out_of_window": False, "since": None
    }  # fmt: skip
    assert await window_of(paris, "c") is None
    assert await events(paris) == []


async def harvest(store: Store, service_id: str, tasks: list[TaskMetaData], now: int) -> None:
    known = (await load_known(store, [service_id]))[service_id]
    await apply_listings(store, [ServiceListing(service_id, tasks, known)], now)


async def test_the_fetch_path_sets_the_flag(paris: Store) -> None:
    store = paris
    await harvest(store, "svc", [TaskMetaData(id="f", status="finish")], at("2026-01-15 11:00"))
    # a service's task: TCP sets its window only (the status is the service's)
    assert await tcp(store, "f", at("2026-01-15 11:30"), DAY, create=False, status="x") == "owned"
    assert (await window_of(store, "f"))["verdict"] == OK  # type: ignore[index]
    await harvest(store, "svc", [TaskMetaData(id="f", status="running")], at("2026-01-15 19:00"))
    assert (await window_of(store, "f"))["verdict"] == RUNNING_OUTSIDE  # type: ignore[index]
    await harvest(store, "svc", [TaskMetaData(id="f", status="finish")], at("2026-01-15 19:01"))
    assert (await window_of(store, "f"))["out_of_window"] is False  # type: ignore[index]
    # a task registered over TCP, then adopted by the service listing it, keeps its window
    await tcp(store, "g", at("2026-01-15 13:00"), DAY, status="running")
    assert (await window_of(store, "g"))["verdict"] == OK  # type: ignore[index]
    listed = [TaskMetaData(id="f", status="finish"), TaskMetaData(id="g", status="shutdown")]
    await harvest(store, "svc", listed, at("2026-01-15 13:01"))
    doc = await store.tasks.find_one({"_id": "g"})
    assert doc is not None and doc["service_id"] == "svc"
    assert (await window_of(store, "g"))["verdict"] == IDLE_INSIDE  # type: ignore[index]


async def test_a_listing_never_sets_a_window(paris: Store) -> None:
    """The seed's TaskMetaData has no window: a service sending one (bad or not) is ignored,
    and the window set over TCP stays."""
    from taskdash.models import decode

    await harvest(paris, "svc", [TaskMetaData(id="w", status="running")], at("2026-01-15 11:00"))
    await tcp(paris, "w", at("2026-01-15 11:01"), DAY, create=False)
    raw = b'{"id": "w", "status": "running", "start_time": "25:00", "stop_time": "x"}'
    task = decode(TaskMetaData, raw)
    await harvest(paris, "svc", [task], at("2026-01-15 11:02"))
    doc = await paris.tasks.find_one({"_id": "w"})
    assert doc is not None and (doc["start_time"], doc["window_start"]) == ("12:00", 720)
    assert (await window_of(paris, "w"))["verdict"] == RUNNING_OUTSIDE  # type: ignore[index]


async def test_a_bad_stored_time_is_no_window(paris: Store) -> None:
    """Written by hand, or by another program: judged as no window, the pass goes on."""
    await paris.tasks.insert_many([
        {"_id": "bad", "key": "bad", "status": "running", "start_time": "25:00",
         "stop_time": "06:00", "window_start": 0, "window_stop": 360, "out_of_window": True},
        {"_id": "good", "key": "good", "status": "running", "start_time": "12:00",
         "stop_time": "18:00", "window_start": 720, "window_stop": 1080},
    ])  # fmt: skip
    judged = await judge_tasks(paris, ["bad", "good"], at("2026-01-15 19:00"))
    assert judged.changed == 2
    bad = await paris.tasks.find_one({"_id": "bad"})
    assert bad is not None and bad["window_verdict"] is None and not bad["out_of_window"]
    good = await paris.tasks.find_one({"_id": "good"})
    assert good is not None and good["window_verdict"] == RUNNING_OUTSIDE


async def test_a_stale_judgement_never_overwrites_a_newer_status(paris: Store) -> None:
    store = paris
    await tcp(store, "s", at("2026-01-15 17:59"), DAY, status="running")  # ok
    # the loop reads the task as the window closes, and judges it running outside...
    [doc] = await _read(store, [{"_id": "s"}])
    stale = _verdict_update(doc, RUNNING_OUTSIDE, at("2026-01-15 18:00"), "loop")
    assert stale is not None
    # ...while the task reports it finished: ok outside its window, no verdict change
    await tcp(store, "s", at("2026-01-15 18:00"), create=False, status="finish")
    assert (await store.tasks.bulk_write([stale])).matched_count == 0  # the newer status wins
    fresh = await store.tasks.find_one({"_id": "s"})
    assert fresh is not None and (fresh["status"], fresh["window_verdict"]) == ("finish", OK)
    assert not fresh["out_of_window"] and fresh["window_version"] == 1
    # same state, but overtaken by another judgement: the version no longer matches
    [doc] = await _read(store, [{"_id": "s"}])
    late = _verdict_update(doc, IDLE_INSIDE, at("2026-01-15 18:01"), "late")
    await store.tasks.update_one({"_id": "s"}, {"$inc": {"window_version": 1}})  # another judge
    assert late is not None and (await store.tasks.bulk_write([late])).matched_count == 0
    assert await events(store) == []


async def test_concurrent_status_writes_and_judgements_end_on_the_last_state(
    paris: Store,
) -> None:
    """Writers and loop passes at once, many rounds: the verdict stored at the end is always
    the one of the stored state, and the events alternate flagged / cleared."""
    store, rng = paris, random.Random(14)
    await tcp(store, "r", at("2026-01-15 13:00"), DAY, status="running")
    for round_ in range(30):
        now = at("2026-01-15 13:00") + round_ * 1000
        writes = [
            tcp(store, "r", now, create=False, status=rng.choice(["running", "finish"]))
            for _ in range(3)
        ]
        passes = [judge_where(store, [{"window_start": {"$gte": 0}}], now) for _ in range(2)]
        await asyncio.gather(*writes, *passes)
        doc = await store.tasks.find_one({"_id": "r"})
        assert doc is not None
        expected = store.window_rules.judge(DAY["start_time"], DAY["stop_time"], doc["status"], now)
        assert doc["window_verdict"] == expected, round_
        assert bool(doc["out_of_window"]) is (expected == IDLE_INSIDE)
    await record_window_events(store)
    kinds = [e["kind"] for e in await events(store)]
    assert all(a != b for a, b in itertools.pairwise(kinds)), kinds


class FakeClock:
    def __init__(self, start: int) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def set(self, text: str, tz: ZoneInfo = PARIS) -> None:
        self.now = at(text, tz)


async def test_the_loop_flips_flags_when_windows_open_and_close(paris: Store) -> None:
    store = paris
    clock = FakeClock(at("2026-01-15 11:58:30"))
    await tcp(store, "day", clock(), DAY, status="running")
    await tcp(store, "night", clock(), NIGHT, status="running")
    await tcp(store, "idle", clock(), DAY, status="finish")
    await tcp(store, "other", clock(), {"start_time": "09:00", "stop_time": "10:00"},
              status="running")  # fmt: skip
    loop = WindowJudge(store, node_id="n1", clock=clock)
    assert (await loop.run_once()).changed == 0  # the first (full) pass: all judged already
    flags = {"day": True, "night": True, "idle": False, "other": True}
    assert {t: (await window_of(store, t))["out_of_window"] for t in flags} == flags  # type: ignore[index]

    clock.set("2026-01-15 11:59:45")
    assert (await loop.run_once()).changed == 0  # no minute of interest crossed
    clock.set("2026-01-15 12:00:00.05")  # the day window opens
    assert (await loop.run_once()).changed == 2
    assert (await window_of(store, "day"))["verdict"] == OK  # type: ignore[index]
    assert (await window_of(store, "idle"))["verdict"] == IDLE_INSIDE  # type: ignore[index]
    clock.set("2026-01-15 18:00:00")  # closes
    await loop.run_once()
    assert (await window_of(store, "day"))["verdict"] == RUNNING_OUTSIDE  # type: ignore[index]
    assert (await window_of(store, "idle"))["verdict"] == OK  # type: ignore[index]
    clock.set("2026-01-15 22:00:01")  # the night window opens, across midnight
    await loop.run_once()
    assert (await window_of(store, "night"))["verdict"] == OK  # type: ignore[index]
    clock.set("2026-01-16 05:59:59")
    await loop.run_once()
    assert (await window_of(store, "night"))["verdict"] == OK  # type: ignore[index]
    clock.set("2026-01-16 06:00:00")
    await loop.run_once()
    assert (await window_of(store, "night"))["verdict"] == RUNNING_OUTSIDE  # type: ignore[index]
    assert (await window_of(store, "other"))["out_of_window"] is True  # type: ignore[index]
    night = [e["kind"] for e in await events(store) if e["task_id"] == "night"]
    assert night == [FLAGGED_EVENT, "window_cleared", FLAGGED_EVENT]


async def test_two_loops_record_each_flag_change_once(paris: Store) -> None:
    store = paris
    clock = FakeClock(at("2026-01-15 11:59:00"))
    for i in range(20):
        await tcp(store, f"t{i:02d}", clock(), DAY, status="running")
    loops = [WindowJudge(store, node_id=f"n{i}", clock=clock) for i in range(2)]
    for loop in loops:
        await loop.run_once()
    assert len(await events(store)) == 20  # flagged when written
    clock.set("2026-01-15 12:00:00")
    await asyncio.gather(*(loop.run_once() for loop in loops))
    cleared = [e for e in await events(store) if e["kind"] == "window_cleared"]
    assert sorted(e["task_id"] for e in cleared) == [f"t{i:02d}" for i in range(20)]
    flagged = await every_task(store, TaskQuery(out_of_window=True), 100)
    assert flagged == []


async def test_the_loop_over_a_dst_jump(paris: Store) -> None:
    """Paris skips 02:00-03:00 on 2026-03-29: a window opening at 02:30 opens at 03:00."""
    clock = FakeClock(at("2026-03-29 00:58:00", ZoneInfo("UTC")))  # 01:58 CET
    await tcp(paris, "dst", clock(), {"start_time": "02:30", "stop_time": "04:00"},
              status="finish")  # fmt: skip
    loop = WindowJudge(paris, clock=clock)
    await loop.run_once()
    assert (await window_of(paris, "dst"))["verdict"] == OK  # type: ignore[index]
    clock.now = at("2026-03-29 01:00:00", ZoneInfo("UTC"))  # 03:00 CEST
    await loop.run_once()
    assert (await window_of(paris, "dst"))["verdict"] == IDLE_INSIDE  # type: ignore[index]


async def test_a_failed_pass_is_covered_by_the_next(paris: Store) -> None:
    clock = FakeClock(at("2026-01-15 11:59:00"))
    await tcp(paris, "x", clock(), DAY, status="running")
    loop = WindowJudge(paris, clock=clock)
    await loop.run_once()
    clock.set("2026-01-15 12:00:00")  # the window opens while the store is down
    down = Store(f"mongodb://127.0.0.1:{free_port()}/?directConnection=true", "x",
                 server_selection_timeout=0.2, window_rules=paris.window_rules)  # fmt: skip
    loop.store = down
    with pytest.raises(StoreUnavailable):
        await loop.run_once()
    await down.close()
    loop.store = paris
    clock.set("2026-01-15 12:03:00")  # back: the pass covers 12:00 too
    assert (await loop.run_once()).changed == 1
    assert (await window_of(paris, "x"))["verdict"] == OK  # type: ignore[index]


async def test_backfill_gives_old_tasks_their_minutes(paris: Store) -> None:
    await paris.tasks.insert_many([
        {"_id": "old", "key": "old", "start_time": "7:05", "stop_time": "9:00"},
        {"_id": "half", "key": "half", "status": "running", "start_time": "", "stop_time": "9:00"},
        {"_id": "none", "key": "none", "status": "running"},
    ])  # fmt: skip
    assert await backfill_minutes(paris) == 3  # fields written
    docs = {d["_id"]: d async for d in paris.tasks.find({})}
    assert (docs["old"]["window_start"], docs["old"]["window_stop"]) == (425, 540)
    assert "window_start" not in docs["half"] and docs["half"]["window_stop"] == 540
    assert "window_start" not in docs["none"]
    assert await backfill_minutes(paris) == 0


@pytest.mark.parametrize(
    ("minutes", "runs"),
    [(set(), []), ({5}, [(5, 5)]), ({1, 2, 3, 7}, [(1, 3), (7, 7)]),
     ({1439, 0, 1}, [(0, 1), (1439, 1439)])],
)  # fmt: skip
def test_minute_runs(minutes: set[int], runs: list[tuple[int, int]]) -> None:
    assert minute_runs(minutes) == runs


def test_boundary_conditions_are_index_ranges() -> None:
    assert boundary_conditions({720}) == [
        {"window_start": {"$eq": 720}},
        {"window_stop": {"$eq": 720}},
    ]
    assert boundary_conditions({120, 121, 122}) == [
        {"window_start": {"$gte": 120, "$lte": 122}},
        {"window_stop": {"$gte": 120, "$lte": 122}},
    ]


async def test_registering_again_judges_the_task_as_it_is_now(paris: Store) -> None:
    assert await tcp(paris, "again", at("2026-01-15 13:00"), DAY, status="finish") == "created"
    assert (await window_of(paris, "again"))["verdict"] == IDLE_INSIDE  # type: ignore[index]
    assert await tcp(paris, "again", at("2026-01-15 13:01"), status="running") == "updated"
    assert (await window_of(paris, "again"))["verdict"] == OK  # type: ignore[index]
    assert [e["kind"] for e in await events(paris)] == [FLAGGED_EVENT, "window_cleared"]


async def test_registering_again_judges_that_task_and_no_other(paris: Store) -> None:
    """The state a Register found is read by its id: another task stored before it is
    neither judged in its place nor changed."""
    assert await tcp(paris, "first", at("2026-01-15 13:00"), DAY, status="running") == "created"
    assert await tcp(paris, "again", at("2026-01-15 13:00"), DAY, status="finish") == "created"
    assert await tcp(paris, "again", at("2026-01-15 13:01"), status="running") == "updated"
    assert (await window_of(paris, "again"))["verdict"] == OK  # type: ignore[index]
    assert (await window_of(paris, "first"))["verdict"] == OK  # type: ignore[index]


async def test_flag_changes_become_alert_events_once(paris: Store) -> None:
    await tcp(paris, "al", at("2026-01-15 19:00"), DAY, status="running")  # flagged
    await tcp(paris, "al", at("2026-01-15 19:01"), create=False, status="finish")  # cleared
    settings = AlertsSettings()
    assert await window_changes(paris, settings, at("2026-01-15 19:02")) == 2
    assert await window_changes(paris, settings, at("2026-01-15 19:03")) == 0  # marked
    alerts = [a async for a in paris["alert_events"].find({}).sort("at", 1)]
    assert [(a["kind"], a["subject"]) for a in alerts] == [
        ("task.out_of_window", "al"),
        ("task.in_window", "al"),
    ]
    assert alerts[0]["title"] == "Task al is out of its daily window: running outside it"
    assert (
        alerts[0]["details"]["start_time"] == "12:00"
        and alerts[0]["details"]["status"] == "running"
    )
    assert alerts[1]["title"] == "Task al is back within its daily window"
    # a change older than max_event_age when first seen is marked, not sent
    await tcp(paris, "old", at("2026-01-15 19:00"), DAY, status="running")
    late = at("2026-01-15 19:00") + int(settings.max_event_age * 1000) + 1
    assert await window_changes(paris, settings, late) == 0
    assert await paris["alert_events"].count_documents({}) == 2
    marked = await paris["task_events"].find_one({"task_id": "old"})
    assert marked is not None and marked["alerted"] == "too_old"


async def test_a_window_alert_reaches_a_webhook(paris: Store) -> None:
    """Through the alerts dispatcher to a receiver on loopback, for a webhook that asks
    for the task kinds only."""
    clock = AlertsClock()
    now = to_ms(clock.now)
    minute = minute_of_day(now, PARIS)
    start, stop = ((minute + k) % 1440 for k in (120, 180))  # now is outside it
    window = {
        "start_time": f"{start // 60}:{start % 60:02d}",
        "stop_time": f"{stop // 60}:{stop % 60:02d}",
    }
    await tcp(paris, "wh", now, window, status="running")
    async with started_receivers() as start_receiver:
        receiver = await start_receiver()
        settings = alerts(hook(receiver, events=["task.*"]))
        assert await dispatcher(paris, settings, clock, node_id="d1").once() == 1
    [body] = receiver.bodies()
    assert (body["kind"], body["subject"]) == ("task.out_of_window", "wh")
    assert body["title"] == "Task wh is out of its daily window: running outside it"
    assert body["details"]["stop_time"] == window["stop_time"]


class Breaking(WindowJudge):
    """The real loop, whose first passes fail: a bug of a kind nobody foresaw, then the store."""

    def __init__(self, store: Store, failures: list[BaseException]) -> None:
        super().__init__(store, interval=0.01)
        self.failures = failures
        self.after_failures: tuple[bool, dict[str, Any]] | None = None  # check() then

    async def run_once(self) -> Any:
        if self.failures:
            raise self.failures.pop(0)
        if self.after_failures is None:
            self.after_failures = self.check()
        return await super().run_once()


async def test_the_loop_outlives_any_failed_pass_and_shows_it_in_readiness(paris: Store) -> None:
    judge = Breaking(paris, [KeyError("window_start"), StoreUnavailable("MongoDB is down")])
    with structlog.testing.capture_logs() as logs:
        await judge.start()
        try:
            await async_wait_for(lambda: judge.passes >= 1, timeout=10)
        finally:
            await judge.stop()
    assert judge.after_failures is not None
    ready, details = judge.after_failures
    assert ready and details["error"] == "MongoDB is down", "not ready would help nobody"
    ready, details = judge.check()
    assert ready and "error" not in details, "a pass that succeeds clears it"
    assert details["last_pass_at"] == iso(judge.last_ms) and details["last_full_pass_at"]
    crashed = [e for e in logs if e["event"] == "window_judge_crashed"]
    assert len(crashed) == 1 and crashed[0]["log_level"] == "error"
    assert [e["error"] for e in logs if e["event"] == "window_judge_failed"] == ["MongoDB is down"]


async def test_readiness_before_any_pass(paris: Store) -> None:
    assert WindowJudge(paris).check() == (
        True,
        {"passes": 0, "last_pass_at": None, "last_full_pass_at": None},
    )
