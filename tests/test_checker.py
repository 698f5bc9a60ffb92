"""The heartbeat checker's state machine against a real MongoDB, on a controlled clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from taskdash.checker import Checker
from taskdash.models import TaskService
from taskdash.settings import CheckerSettings
from taskdash.store import Store
from taskdash.store.services import get_service, record_heartbeats, register_services
from taskdash.store.status import candidates, history, record_events, transition
from taskdash.store.times import to_ms

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class Clock:
    """The daemon's clock, moved by the test instead of by waiting."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def settings(**overrides: object) -> CheckerSettings:
    values = {"stale_after": 15.0, "offline_after": 60.0, "recover_beats": 2, **overrides}
    return CheckerSettings(**values)  # type: ignore[arg-type]


async def status(store: Store, sid: str) -> str:
    return (await get_service(store, sid))["status"]


async def beat(store: Store, clock: Clock, *ids: str) -> None:
    await record_heartbeats(store, {sid: (1, clock.now) for sid in ids})


async def setup(store: Store, clock: Clock, n: int) -> list[str]:
    ids = [f"s{i}" for i in range(n)]
    await register_services(store, [TaskService(id=i, url=f"http://h/{i}") for i in ids], clock.now)
    return ids


async def test_registration_is_unknown_until_the_first_heartbeat(store: Store) -> None:
    clock = Clock()
    checker = Checker(store, settings(), node_id="n1", clock=clock)
    await setup(store, clock, 1)
    await checker.check_once()
    assert await status(store, "s0") == "unknown"
    clock.advance(1)
    await beat(store, clock, "s0")
    result = await checker.check_once()
    assert await status(store, "s0") == "online"
    assert [(c["service_id"], c["from"], c["to"]) for c in result.changes] == [
        ("s0", "unknown", "online")
    ]


async def test_silence_goes_stale_then_offline_at_the_configured_times(store: Store) -> None:
    clock = Clock()
    checker = Checker(store, settings(), node_id="n1", clock=clock)
    await setup(store, clock, 1)
    await beat(store, clock, "s0")
    await checker.check_once()
    clock.advance(14.9)
    await checker.check_once()
    assert await status(store, "s0") == "online"
    clock.advance(0.2)  # 15.1 s of silence
    await checker.check_once()
    assert await status(store, "s0") == "stale"
    clock.advance(44.8)  # 59.9 s
    await checker.check_once()
    assert await status(store, "s0") == "stale"
    clock.advance(0.2)  # 60.1 s
    await checker.check_once()
    assert await status(store, "s0") == "offline"
    events = await history(store, "s0")
    assert [(e["from"], e["to"]) for e in events] == [
        ("stale", "offline"),
        ("online", "stale"),
        ("unknown", "online"),
    ]


async def test_recovery_needs_consecutive_beats(store: Store) -> None:
    clock = Clock()
    checker = Checker(store, settings(recover_beats=3), node_id="n1", clock=clock)
    await setup(store, clock, 1)
    await beat(store, clock, "s0")
    await checker.check_once()
    clock.advance(70)
    await checker.check_once()
    await checker.check_once()
    assert await status(store, "s0") == "offline"
    # two beats, then a long gap: they are not consecutive with the next one
    await beat(store, clock, "s0")
    await beat(store, clock, "s0")
    await checker.check_once()
    assert await status(store, "s0") == "offline", "2 beats < recover_beats=3"
    clock.advance(20)
    await checker.check_once()  # the gap resets the count
    await beat(store, clock, "s0")
    await checker.check_once()
    assert await status(store, "s0") == "offline"
    clock.advance(1)
    await beat(store, clock, "s0")
    clock.advance(1)
    await beat(store, clock, "s0")
    result = await checker.check_once()
    assert await status(store, "s0") == "online"
    assert result.changes[0]["reason"] == "3 consecutive heartbeats"


async def test_self_preservation_holds_a_mass_silence(store: Store) -> None:
    clock = Clock()
    checker = Checker(store, settings(), node_id="n1", clock=clock)
    ids = await setup(store, clock, 10)
    await beat(store, clock, *ids)
    await checker.check_once()
    clock.advance(20)
    await beat(store, clock, *ids[:3])  # 7 of 10 went quiet: 70 % > 50 %, >= 5
    result = await checker.check_once()
    assert result.self_preservation and result.quiet == 7 and result.changes == []
    assert all([await status(store, i) == "online" for i in ids])
    ready, details = checker.check()
    assert ready and details["mode"] == "self_preservation" and "7 of 10" in details["reason"]
    # heartbeats come back for most: the mode ends and the truly quiet one is flagged
    clock.advance(1)
    await beat(store, clock, *ids[:9])
    result = await checker.check_once()
    assert not result.self_preservation
    assert [(c["service_id"], c["to"]) for c in result.changes] == [("s9", "stale")]
    assert checker.check()[1]["mode"] == "normal"


async def test_small_silences_are_flagged_normally(store: Store) -> None:
    clock = Clock()
    checker = Checker(store, settings(self_preservation_min=5), node_id="n1", clock=clock)
    ids = await setup(store, clock, 4)
    await beat(store, clock, *ids)
    await checker.check_once()
    clock.advance(20)  # all 4 quiet: 100 % but fewer than 5 services
    result = await checker.check_once()
    assert not result.self_preservation and len(result.changes) == 4


async def test_two_checkers_record_each_change_once(store: Store) -> None:
    clock = Clock()
    checkers = [Checker(store, settings(), node_id=f"n{i}", clock=clock) for i in range(2)]
    ids = await setup(store, clock, 40)
    await beat(store, clock, *ids)
    await asyncio.gather(*(c.check_once() for c in checkers))
    clock.advance(16)
    await beat(store, clock, *ids[:30])  # 10 of 40 go quiet: 25 %, no self-preservation
    results = await asyncio.gather(
        *(c.check_once() for c in checkers), *(c.check_once() for c in checkers)
    )
    won = [c["service_id"] for r in results for c in r.changes]
    assert sorted(won) == sorted(ids[30:])
    assert await store.service_events.count_documents({"to": "stale"}) == 10
    assert await store.service_events.count_documents({"to": "online"}) == 40


async def test_unknown_heartbeats_register_nothing(store: Store) -> None:
    clock = Clock()
    await setup(store, clock, 1)
    unknown = await record_heartbeats(store, {"s0": (2, clock.now), "ghost": (3, clock.now)})
    assert unknown == ["ghost"]
    assert await store.services.count_documents({}) == 1
    doc = await store.services.find_one({"_id": "s0"})
    assert doc["beats"] == 2 and doc["heartbeats_total"] == 2


async def test_an_older_redelivered_beat_never_moves_time_back(store: Store) -> None:
    clock = Clock()
    await setup(store, clock, 1)
    clock.advance(10)
    await beat(store, clock, "s0")
    await record_heartbeats(store, {"s0": (1, T0)})
    doc = await store.services.find_one({"_id": "s0"})
    assert doc["last_heartbeat_at"] == to_ms(clock.now)


async def test_reregistration_keeps_first_registered_at_and_status(store: Store) -> None:
    clock = Clock()
    await setup(store, clock, 1)
    await beat(store, clock, "s0")
    await Checker(store, settings(), node_id="n", clock=clock).check_once()
    clock.advance(5)
    await register_services(store, [TaskService(id="s0", name="renamed")], clock.now)
    doc = await store.services.find_one({"_id": "s0"})
    assert doc["registered_at"] == to_ms(T0) and doc["updated_at"] == to_ms(clock.now)
    assert doc["name"] == "renamed" and doc["status"] == "online"


async def test_last_registration_in_a_batch_wins(store: Store) -> None:
    batch = [TaskService(id="a", name="first"), TaskService(id="a", name="second")]
    assert await register_services(store, batch, T0) == 1
    assert (await get_service(store, "a"))["name"] == "second"


@pytest.mark.parametrize("bad", [{"stale_after": 60.0, "offline_after": 60.0}])
def test_offline_must_exceed_stale(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="offline_after must be greater"):
        CheckerSettings(**bad)


async def test_settled_services_are_not_read_by_a_pass(store: Store) -> None:
    """Online, stale and long-offline services with nothing to do are no candidates at all."""
    clock = Clock()
    checker = Checker(store, settings(), node_id="n1", clock=clock)
    ids = await setup(store, clock, 6)
    await beat(store, clock, *ids)
    await checker.check_once()
    clock.advance(20)
    await beat(store, clock, *ids[:2])  # s0, s1 stay online; the rest go stale
    await checker.check_once()
    clock.advance(50)
    await beat(store, clock, *ids[:2])
    await checker.check_once()  # s2..s5 offline now
    clock.advance(10)
    await beat(store, clock, *ids[:2])
    await register_services(store, [TaskService(id="s5", url="http://h/s5")], clock.now)
    await checker.check_once()  # s5 re-registered: alive, but still offline (no beat)
    states = {i: await status(store, i) for i in ids}
    assert states == {"s0": "online", "s1": "online", **{f"s{i}": "offline" for i in range(2, 6)}}
    now = clock.now
    stale_cut = to_ms(now - timedelta(seconds=15))
    assert await candidates(store, stale_cut, to_ms(now - timedelta(seconds=60))) == []
    result = await checker.check_once()
    assert result.changes == [] and result.quiet == 0


async def test_a_change_cut_short_before_recording_is_recorded_by_the_next_pass(
    store: Store,
) -> None:
    """A crash between the state change and its history write loses neither."""
    clock = Clock()
    await setup(store, clock, 2)
    await beat(store, clock, "s0", "s1")
    # what a pass does first, then the process dies before recording the events
    moved = await transition(
        store, {"_id": {"$in": ["s0", "s1"]}, "status": "unknown"},
        to="online", now=clock.now, node="crashed", reason="first heartbeat",
    )  # fmt: skip
    assert moved == 2 and await status(store, "s0") == "online"
    assert await history(store, "s0") == []
    # any daemon's next pass records them, once, with the winner's node and time
    result = await Checker(store, settings(), node_id="n2", clock=clock).check_once()
    assert sorted(c["service_id"] for c in result.changes) == ["s0", "s1"]
    assert {c["node"] for c in result.changes} == {"crashed"}
    events = [e async for e in store.service_events.find({"service_id": "s0"})]
    assert [(e["from"], e["to"], e["at"].replace(tzinfo=UTC)) for e in events] == [
        ("unknown", "online", clock.now)
    ]
    again = await Checker(store, settings(), node_id="n3", clock=clock).check_once()
    assert again.changes == []
    assert await store.service_events.count_documents({}) == 2


async def test_events_moved_by_two_daemons_at_once_are_recorded_once(store: Store) -> None:
    clock = Clock()
    ids = await setup(store, clock, 20)
    await beat(store, clock, *ids)
    await transition(
        store, {"_id": {"$in": ids}, "status": "unknown"},
        to="online", now=clock.now, node="n1", reason="first heartbeat",
    )  # fmt: skip
    first, second = await asyncio.gather(record_events(store), record_events(store))
    assert len(first) + len(second) == 20
    assert {e["service_id"] for e in first + second} == set(ids)
    assert await store.service_events.count_documents({}) == 20
    assert await record_events(store) == []
    assert await store.services.count_documents({"outbox_pending": {"$gt": 0}}) == 0


async def test_a_later_change_is_not_lost_while_an_outbox_is_being_moved(store: Store) -> None:
    """The outbox is emptied only if nothing moved the service since it was read."""
    clock = Clock()
    await setup(store, clock, 1)
    await beat(store, clock, "s0")
    query = {"_id": {"$in": ["s0"]}, "status": "unknown"}
    await transition(store, query, to="online", now=clock.now, node="n1", reason="first")
    read = await store.services.find_one({"_id": "s0"})
    clock.advance(20)
    await transition(
        store, {"_id": {"$in": ["s0"]}, "status": "online"},
        to="stale", now=clock.now, node="n2", reason="no heartbeat",
    )  # fmt: skip
    # a mover that read the outbox before the second change clears nothing
    stale_clear = await store.services.update_one(
        {"_id": "s0", "status_version": read["status_version"]},
        {"$set": {"outbox": [], "outbox_pending": 0}},
    )
    assert stale_clear.modified_count == 0
    recorded = await record_events(store)
    assert [(e["from"], e["to"]) for e in sorted(recorded, key=lambda e: e["at"])] == [
        ("unknown", "online"),
        ("online", "stale"),
    ]


async def test_silence_before_the_checker_watched_for_stale_after_is_not_evidence(
    store: Store,
) -> None:
    """After a start, heartbeats queued while we were down may still be on their way."""
    clock = Clock()
    ids = await setup(store, clock, 3)
    await beat(store, clock, *ids)
    await Checker(store, settings(), node_id="n0", clock=clock).check_once()
    clock.advance(100)  # the daemon was down; s0 beat all along (still queued), s1 died
    checker = Checker(store, settings(self_preservation=False), node_id="n1", clock=clock)
    result = await checker.check_once()
    assert result.changes == [] and "stale_after" in result.grace
    assert checker.check()[1]["watching_since"] == clock.now.isoformat()
    clock.advance(5)
    await beat(store, clock, "s0")  # the queued beats arrive
    await beat(store, clock, "s2")
    result = await checker.check_once()
    assert result.changes == []
    clock.advance(10)  # 15 s watched: silence is evidence now
    await beat(store, clock, "s0", "s2")
    result = await checker.check_once()
    assert result.grace == ""
    assert [(c["service_id"], c["to"]) for c in result.changes] == [("s1", "stale")]


async def test_recovery_is_not_held_by_the_grace(store: Store) -> None:
    clock = Clock()
    await setup(store, clock, 1)
    await beat(store, clock, "s0")
    checker = Checker(store, settings(), node_id="n1", clock=clock)
    result = await checker.check_once()
    assert result.grace and [(c["from"], c["to"]) for c in result.changes] == [
        ("unknown", "online")
    ]


async def test_self_preservation_ends_after_its_maximum(store: Store) -> None:
    """If the silent majority really died, statuses tell the truth after a bounded time."""
    clock = Clock()
    checker = Checker(store, settings(self_preservation_max=300), node_id="n1", clock=clock)
    ids = await setup(store, clock, 10)
    await beat(store, clock, *ids)
    await checker.check_once()
    for _ in range(10):  # 7 of 10 stay silent; 3 keep beating
        clock.advance(20)
        await beat(store, clock, *ids[7:])
        result = await checker.check_once()
        assert result.self_preservation and result.changes == []
    clock.advance(120)  # 300 s since the mode began (first quiet pass at +20 s)
    await beat(store, clock, *ids[7:])
    result = await checker.check_once()
    assert not result.self_preservation
    assert sorted(c["service_id"] for c in result.changes) == sorted(ids[:7])
    assert checker.check()[1]["mode"] == "normal"
