"""Checker details that mutation testing (``make mutation``) showed no test held.

Each test pins a behaviour that a one-token change of ``taskdash/checker.py`` broke while the
rest of the suite stayed green: the state machine's bounds, the reasons recorded, the window
mass silence is judged over, the readiness details, the expiry log, ``on_change``, and the
background loop (which only the daemon subprocess tests ran, out of mutmut's reach).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest
import structlog
from support import async_wait_for, free_port
from test_checker import T0, Clock, beat, settings, setup, status

from taskdash.checker import Checker, Plan
from taskdash.store import Store
from taskdash.store.status import history
from taskdash.store.times import ms_before

STALE_CUT, OFFLINE_CUT = 100_000, 55_000  # ms: 15 s and 60 s before a "now" of 115 s


@pytest.mark.parametrize(
    ("state", "alive", "beats", "move", "reset"),
    [
        ("online", STALE_CUT - 1, 3, "stale", False),
        ("online", STALE_CUT, 3, None, False),  # exactly stale_after of silence: not yet
        ("unknown", STALE_CUT, 1, "online", False),  # a first beat exactly stale_after ago
        ("unknown", STALE_CUT - 1, 1, None, False),  # one beat, then quiet: still unknown
        ("unknown", OFFLINE_CUT, 1, None, False),  # exactly offline_after: not yet offline
        ("unknown", OFFLINE_CUT - 1, 0, "offline", False),
        ("stale", STALE_CUT, 2, "online", False),  # recover_beats, the last at the bound
        ("stale", STALE_CUT, 1, None, False),
        ("stale", STALE_CUT - 1, 1, None, True),  # quiet again: its beats were not consecutive
        ("stale", OFFLINE_CUT, 0, None, False),  # exactly offline_after: not yet offline
        ("stale", OFFLINE_CUT - 1, 0, "offline", False),
        ("offline", OFFLINE_CUT - 1, 1, None, True),  # already offline: no second move
        ("offline", STALE_CUT - 1, 1, None, True),
    ],
)
def test_plan_moves_each_state_at_its_bounds(
    state: str, alive: int, beats: int, move: str | None, reset: bool
) -> None:
    """The plan on its own (no I/O), on both sides of every cut (``alive < cut`` is quiet).

    At the pass level some of these are also held by ``_apply``'s conditional updates, which
    re-check the same bounds in the store; the plan is what a pass counts and logs by.
    """
    checker = Checker(None, settings(), node_id="n1")  # type: ignore[arg-type]
    doc = {"_id": "s", "status": state, "alive_at": alive, "beats": beats}
    plan = checker.plan([doc], STALE_CUT, OFFLINE_CUT)
    assert plan.moves == ({(state, move): ["s"]} if move else {})
    assert plan.reset == (["s"] if reset else [])
    assert plan.quiet == (1 if (state, move) == ("online", "stale") else 0)


async def test_a_first_heartbeat_exactly_stale_after_ago_still_counts(store: Store) -> None:
    clock = Clock()
    await setup(store, clock, 1)
    await beat(store, clock, "s0")
    clock.advance(15)
    result = await Checker(store, settings(), node_id="n1", clock=clock).check_once()
    assert [(c["from"], c["to"]) for c in result.changes] == [("unknown", "online")]


async def test_each_change_records_why(store: Store) -> None:
    clock = Clock()
    checker = Checker(store, settings(recover_beats=2), node_id="n1", clock=clock)
    await setup(store, clock, 2)  # s1 never beats
    await beat(store, clock, "s0")
    await checker.check_once()
    clock.advance(16)
    await checker.check_once()
    clock.advance(45)  # 61 s
    await checker.check_once()
    for _ in range(2):
        clock.advance(1)
        await beat(store, clock, "s0")
    await checker.check_once()
    assert [(e["from"], e["to"], e["reason"]) for e in await history(store, "s0")] == [
        ("offline", "online", "2 consecutive heartbeats"),
        ("stale", "offline", "no heartbeat"),
        ("online", "stale", "no heartbeat"),
        ("unknown", "online", "first heartbeat"),
    ]
    assert [(e["from"], e["to"], e["reason"]) for e in await history(store, "s1")] == [
        ("unknown", "offline", "no first heartbeat")
    ]


async def test_an_offline_service_silent_again_is_not_moved_again(store: Store) -> None:
    """One beat while offline (fewer than recover_beats), then silence past offline_after
    before the next pass: the beat is forgotten, and no offline -> offline event appears."""
    clock = Clock()
    checker = Checker(store, settings(recover_beats=2), node_id="n1", clock=clock)
    await setup(store, clock, 1)
    await beat(store, clock, "s0")
    await checker.check_once()
    clock.advance(16)
    await checker.check_once()
    clock.advance(45)
    await checker.check_once()
    assert await status(store, "s0") == "offline"
    clock.advance(1)
    await beat(store, clock, "s0")
    clock.advance(61)
    result = await checker.check_once()
    assert result.changes == []
    doc = await store.services.find_one({"_id": "s0"})
    assert doc["status"] == "offline" and doc["beats"] == 0
    assert len(await history(store, "s0")) == 3


async def test_self_preservation_min_of_one_holds_a_lone_silent_service(store: Store) -> None:
    """Only an empty population has nothing to judge; one of one is 100 % silent."""
    clock = Clock()
    checker = Checker(store, settings(self_preservation_min=1), node_id="n1", clock=clock)
    await setup(store, clock, 1)
    await beat(store, clock, "s0")
    await checker.check_once()
    clock.advance(20)
    result = await checker.check_once()
    assert result.self_preservation and result.changes == []
    assert (result.silent, result.online) == (1, 1)


async def test_services_flagged_before_the_window_are_not_part_of_a_new_silence(
    store: Store,
) -> None:
    """4 of 10 go quiet and are flagged; 24 s later 2 more: the 4 went quiet 40 s ago, more
    than 2 x stale_after, so they are not counted with the 2 (6 of 10 would be the mode)."""
    clock = Clock()
    checker = Checker(store, settings(), node_id="n1", clock=clock)
    ids = await setup(store, clock, 10)
    await beat(store, clock, *ids)
    await checker.check_once()
    clock.advance(16)
    await beat(store, clock, *ids)
    await checker.check_once()  # the grace is over; s0..s3 stop now (alive at 16 s)
    clock.advance(16)  # 32 s
    await beat(store, clock, *ids[4:])
    result = await checker.check_once()
    assert sorted(c["service_id"] for c in result.changes) == ids[:4]
    clock.advance(8)  # 40 s: the last beat of s4, s5
    await beat(store, clock, *ids[4:])
    await checker.check_once()
    for _ in range(2):  # 48 s, 56 s
        clock.advance(8)
        await beat(store, clock, *ids[6:])
        result = await checker.check_once()
    assert (result.silent, result.online) == (2, 6) and not result.self_preservation
    assert sorted((c["service_id"], c["to"]) for c in result.changes) == [
        ("s4", "stale"),
        ("s5", "stale"),
    ]


async def test_stale_services_heard_from_again_are_not_part_of_a_silence(store: Store) -> None:
    """4 of 10 are flagged, then beat once (fewer than recover_beats: still stale, but
    alive); 2 more go quiet. The 4 are not silent: 2 of 6, flagged, not 6 of 10 held."""
    clock = Clock()
    checker = Checker(store, settings(self_preservation_min=2), node_id="n1", clock=clock)
    ids = await setup(store, clock, 10)
    await beat(store, clock, *ids)
    await checker.check_once()
    clock.advance(16)
    await beat(store, clock, *ids)
    await checker.check_once()  # s0..s3 stop now (alive at 16 s)
    clock.advance(16)  # 32 s
    await beat(store, clock, *ids[4:])
    result = await checker.check_once()
    assert sorted(c["service_id"] for c in result.changes) == ids[:4]
    clock.advance(8)  # 40 s: the last beat of s4, s5
    await beat(store, clock, *ids[4:])
    await checker.check_once()
    clock.advance(4)  # 44 s: s0..s3 beat once
    await beat(store, clock, *ids[:4])
    await checker.check_once()
    clock.advance(4)  # 48 s
    await beat(store, clock, *ids[6:])
    await checker.check_once()
    clock.advance(8)  # 56 s: s4, s5 silent for 16 s; s0..s3 heard from 12 s ago
    await beat(store, clock, *ids[6:])
    result = await checker.check_once()
    assert (result.silent, result.online) == (2, 6) and not result.self_preservation
    assert sorted((c["service_id"], c["to"]) for c in result.changes) == [
        ("s4", "stale"),
        ("s5", "stale"),
    ]
    assert {await status(store, i) for i in ids[:4]} == {"stale"}


async def test_the_expiry_of_self_preservation_is_logged_once_with_its_numbers(
    store: Store,
) -> None:
    clock = Clock()
    checker = Checker(store, settings(self_preservation_max=300), node_id="n1", clock=clock)
    ids = await setup(store, clock, 10)
    await beat(store, clock, *ids)
    await checker.check_once()
    with structlog.testing.capture_logs() as logs:
        for _ in range(17):  # 7 of 10 silent from the start; the mode begins at 20 s
            clock.advance(20)
            await beat(store, clock, *ids[7:])
            await checker.check_once()
    expired = [e for e in logs if e.get("event") == "self_preservation_expired"]
    assert expired == [
        {
            "event": "self_preservation_expired",
            "log_level": "warning",
            "silent": 7,
            "population": 10,
            "after_seconds": 300,
        }
    ]


async def test_on_change_hears_of_passes_with_new_events_only(store: Store) -> None:
    clock = Clock()
    told: list[int] = []

    async def on_change() -> None:
        told.append(checker.passes)

    checker = Checker(store, settings(), node_id="n1", clock=clock, on_change=on_change)
    await setup(store, clock, 1)
    await checker.check_once()
    await beat(store, clock, "s0")
    await checker.check_once()  # unknown -> online
    await checker.check_once()
    assert told == [2]


class CountingClock(Clock):
    """The test clock, also counting how many passes began (each reads it once)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __call__(self) -> datetime:
        self.reads += 1
        return self.now


async def test_the_loop_runs_every_check_interval_through_store_errors_and_crashes(
    store: Store,
) -> None:
    """Checker.start() in-process: passes repeat; a store outage is reported once, shown in
    the readiness details and restarts the grace; a crashing callback does not stop it."""
    clock = CountingClock()
    calls: list[int] = []

    async def on_change() -> None:
        calls.append(checker.passes)
        raise RuntimeError("the publisher broke")

    down = Store(f"mongodb://127.0.0.1:{free_port()}", store.db.name, server_selection_timeout=0.2)
    checker = Checker(
        store, settings(check_interval=0.01), node_id="n1", clock=clock, on_change=on_change
    )
    assert checker.check() == (
        True,
        {"mode": "normal", "watching_since": None, "passes": 0, "last_pass_ms": None},
    )
    await setup(store, clock, 1)
    await beat(store, clock, "s0")
    try:
        with structlog.testing.capture_logs() as logs:
            await checker.start()
            assert "checker" in {t.get_name() for t in asyncio.all_tasks()}
            await async_wait_for(lambda: checker.passes >= 3, timeout=60)
            assert calls == [1]  # the first pass moved s0; its callback raised
            crashed = [e for e in logs if e.get("event") == "checker_pass_crashed"]
            assert len(crashed) == 1 and crashed[0]["exc_info"] is True
            ready, details = checker.check()
            assert ready and "error" not in details
            assert details["watching_since"] == T0.isoformat()
            assert isinstance(details["last_pass_ms"], float)

            checker.store = down  # MongoDB goes away for a while
            clock.advance(100)
            reads = clock.reads
            await async_wait_for(lambda: clock.reads > reads, timeout=60)
            passes = checker.passes  # a pass begun before the swap has ended by now
            await async_wait_for(lambda: clock.reads >= reads + 6, timeout=60)
            assert checker.passes == passes  # at least 5 passes failed
            ready, details = checker.check()
            assert ready and details["watching_since"] is None
            assert ": MongoDB unreachable: 127.0.0.1:" in details["error"]
            failed = [e for e in logs if e.get("event") == "checker_pass_failed"]  # once an outage
            assert [(e["log_level"], sorted(e)) for e in failed] == [
                ("error", ["error", "event", "log_level"])
            ]
            assert ": MongoDB unreachable: 127.0.0.1:" in failed[0]["error"]

            checker.store = store  # it is back: passes go on, the grace starts anew
            await async_wait_for(lambda: checker.passes >= passes + 2, timeout=60)
            ready, details = checker.check()
            assert ready and "error" not in details
            assert details["watching_since"] == clock.now.isoformat() != T0.isoformat()
            assert len([e for e in logs if e.get("event") == "checker_pass_failed"]) == 1
    finally:
        await checker.stop()
        await down.close()
    assert "checker" not in {t.get_name() for t in asyncio.all_tasks()}


async def test_a_pass_with_nothing_to_flag_judges_no_silence_and_times_itself(
    store: Store,
) -> None:
    clock = Clock()
    await setup(store, clock, 2)
    await beat(store, clock, "s0", "s1")
    checker = Checker(store, settings(), node_id="n1", clock=clock)
    before = time.perf_counter()
    result = await checker.check_once()
    took = time.perf_counter() - before
    # no online service to flag: mass silence not judged, reported as 0 of 0 ("not judged")
    assert (result.silent, result.online, result.quiet) == (0, 0, 0)
    assert 0 <= result.seconds <= took
    assert checker.last_pass_ms == round(result.seconds * 1000, 3)
    assert result.grace == (
        "watching for 0.0 s of stale_after (15 s) since a start or a store outage; "
        "heartbeats queued meanwhile may still arrive"
    )


async def test_a_recovery_is_made_even_when_a_held_move_comes_first(store: Store) -> None:
    """In grace (a new checker), an online service gone quiet is held; a first heartbeat
    found later in the same pass still brings its service online."""
    clock = Clock()
    await setup(store, clock, 2)
    await beat(store, clock, "s0")
    await Checker(store, settings(), node_id="n1", clock=clock).check_once()  # s0 online
    clock.advance(16)
    await beat(store, clock, "s1")
    restarted = Checker(store, settings(), node_id="n2", clock=clock)
    result = await restarted.check_once()
    assert result.grace and result.quiet == 1
    assert (await status(store, "s0"), await status(store, "s1")) == ("online", "online")
    assert [(c["service_id"], c["to"], c["node"]) for c in result.changes] == [
        ("s1", "online", "n2")
    ]


async def test_the_offline_bound_is_checked_again_in_the_store(store: Store) -> None:
    """A plan read before a beat (a stale service not yet past offline_after, planned offline
    by a pass that read it earlier) is not applied: the update re-checks ``offline_after``."""
    clock = Clock()
    await setup(store, clock, 1)
    await beat(store, clock, "s0")
    checker = Checker(store, settings(), node_id="n1", clock=clock)
    await checker.check_once()  # online
    clock.advance(16)
    watching = Checker(store, settings(), node_id="n1", clock=clock)
    watching.watching_since = T0  # no grace: the move to stale is made
    await watching.check_once()
    assert await status(store, "s0") == "stale"
    clock.advance(10)  # 26 s quiet: past stale_after, 34 s short of offline_after
    now = clock()
    plan = Plan(moves={("stale", "offline"): ["s0"]})
    await watching._apply(plan, now, ms_before(now, 15), ms_before(now, 60), held=False)
    assert await status(store, "s0") == "stale"


async def test_each_change_is_logged_with_its_states_and_reason(store: Store) -> None:
    clock = Clock()
    await setup(store, clock, 1)
    await beat(store, clock, "s0")
    with structlog.testing.capture_logs() as logs:
        await Checker(store, settings(), node_id="n1", clock=clock).check_once()
    [line] = [e for e in logs if e["event"] == "service_status_changed"]
    assert {k: line[k] for k in ("service_id", "old", "new", "reason")} == {
        "service_id": "s0",
        "old": "unknown",
        "new": "online",
        "reason": "first heartbeat",
    }


async def test_leaving_self_preservation_is_logged_with_the_reason_it_had(store: Store) -> None:
    checker = Checker(store, settings(), node_id="n1", clock=Clock())
    with structlog.testing.capture_logs() as logs:
        checker._set_mode("9 of 10 went quiet", T0)
        checker._set_mode("", T0)
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("self_preservation_entered", "warning"),
        ("self_preservation_left", "info"),
    ]
    assert logs[1]["was"] == "9 of 10 went quiet"
