"""The heartbeat checker's state machine against a real MongoDB, on a controlled clock."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest
import structlog
from pymongo import AsyncMongoClient, monitoring

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


@pytest.mark.parametrize(
    ("quiet", "total", "held"),
    [
        (4, 4, False),  # 100 %, but fewer than self_preservation_min (5)
        (5, 6, True),  # exactly the minimum, 83 %
        (5, 10, False),  # exactly 50 %: not more than the ratio
        (6, 10, True),
    ],
)
async def test_self_preservation_needs_more_than_the_ratio_and_at_least_the_minimum(
    store: Store, quiet: int, total: int, held: bool
) -> None:
    clock = Clock()
    checker = Checker(store, settings(self_preservation_min=5), node_id="n1", clock=clock)
    ids = await setup(store, clock, total)
    await beat(store, clock, *ids)
    await checker.check_once()
    clock.advance(20)
    await beat(store, clock, *ids[quiet:])
    result = await checker.check_once()
    assert result.self_preservation is held and result.quiet == quiet
    assert len(result.changes) == (0 if held else quiet)


async def test_one_beat_right_after_going_stale_does_not_bring_a_service_back(
    store: Store,
) -> None:
    """Flap damping counts beats from the change, not the beats counted while online."""
    clock = Clock()
    checker = Checker(store, settings(recover_beats=2), node_id="n1", clock=clock)
    await setup(store, clock, 1)
    for _ in range(5):
        clock.advance(1)
        await beat(store, clock, "s0")
    await checker.check_once()
    clock.advance(16)
    await checker.check_once()
    assert await status(store, "s0") == "stale"
    await beat(store, clock, "s0")
    await checker.check_once()
    assert await status(store, "s0") == "stale", "one beat < recover_beats"


async def test_a_second_self_preservation_starts_its_own_clock(store: Store) -> None:
    """The maximum counts from each entry into the mode, not from the first one."""
    clock = Clock()
    checker = Checker(store, settings(self_preservation_max=300), node_id="n1", clock=clock)
    ids = await setup(store, clock, 10)
    await beat(store, clock, *ids)
    await checker.check_once()
    clock.advance(20)  # 7 of 10 quiet: the mode
    await beat(store, clock, *ids[7:])
    assert (await checker.check_once()).self_preservation
    clock.advance(1)  # they are back: the mode ends
    await beat(store, clock, *ids)
    assert not (await checker.check_once()).self_preservation
    clock.advance(400)  # later, a new mass silence: held, not expired at once
    await beat(store, clock, *ids)
    await checker.check_once()
    clock.advance(20)
    await beat(store, clock, *ids[7:])
    result = await checker.check_once()
    assert result.self_preservation and result.changes == []


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
    # never heard from, registered 20 s ago: not a candidate until offline_after
    await register_services(store, [TaskService(id="u")], clock.now - timedelta(seconds=20))
    states = {i: await status(store, i) for i in ids}
    assert states == {"s0": "online", "s1": "online", **{f"s{i}": "offline" for i in range(2, 6)}}
    assert await status(store, "u") == "unknown"
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


class ChangeBetweenReadAndClear(monitoring.CommandListener):
    """Another daemon's transition, landing after ``record_events`` read an outbox.

    ``record_events`` reads outboxes, inserts their events, then clears the outboxes. Just
    as it sends the insert, a second daemon (its own thread, loop and client: a real
    ``transition``) moves the service again. The listener blocks the first daemon's loop
    meanwhile, so the interleaving is certain, not a matter of timing.
    """

    def __init__(self, uri: str, database: str, when: datetime) -> None:
        self.uri, self.database, self.when = uri, database, when
        self.fired = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        moving = event.command_name == "insert" and event.command["insert"] == "service_events"
        if moving and not self.fired:
            self.fired += 1
            thread = threading.Thread(target=asyncio.run, args=(self._other_daemon(),))
            thread.start()
            thread.join()

    async def _other_daemon(self) -> None:
        other = Store(self.uri, self.database)
        try:
            await transition(
                other, {"_id": {"$in": ["s0"]}, "status": "online"},
                to="stale", now=self.when, node="n2", reason="no heartbeat",
            )  # fmt: skip
        finally:
            await other.close()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_a_later_change_is_not_lost_while_an_outbox_is_being_moved(
    store: Store, mongo_uri: str
) -> None:
    """The outbox is emptied only if nothing moved the service since it was read."""
    clock = Clock()
    await setup(store, clock, 1)
    await beat(store, clock, "s0")
    query = {"_id": {"$in": ["s0"]}, "status": "unknown"}
    await transition(store, query, to="online", now=clock.now, node="n1", reason="first")
    race = ChangeBetweenReadAndClear(mongo_uri, store.db.name, clock.advance(20))
    mover = Store(mongo_uri, store.db.name)  # the first daemon, its client listened to
    await mover.client.close()
    mover.client = AsyncMongoClient(mongo_uri, event_listeners=[race], tz_aware=True)
    mover.db = mover.client[store.db.name]
    try:
        first = await record_events(mover)
    finally:
        await mover.close()
    assert race.fired == 1 and await status(store, "s0") == "stale"
    assert [(e["from"], e["to"]) for e in first] == [("unknown", "online")]
    second = await record_events(store)  # the next pass moves what came meanwhile
    assert [(e["from"], e["to"], e["node"]) for e in second] == [("online", "stale", "n2")]
    assert [(e["from"], e["to"]) for e in await history(store, "s0")] == [
        ("online", "stale"),
        ("unknown", "online"),
    ]
    assert await record_events(store) == []


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


async def run_passes(checker: Checker, clock: Clock, seconds: float, every: float = 2.0) -> list:
    """Passes every ``every`` seconds of the test clock, as the checker's loop would run them."""
    results = []
    for _ in range(int(seconds / every)):
        clock.advance(every)
        results.append(await checker.check_once())
    return results


@pytest.mark.parametrize("older", [20, 2])
async def test_a_total_silence_split_by_the_heartbeat_resolution_flags_nobody(
    store: Store, older: int
) -> None:
    """200 services fall silent at once; 20 (or 2) of them were last stored 1 s earlier.

    Their stored beats lag by up to ``heartbeat_resolution``, so a per-pass judgement sees
    10 % go quiet first (flagged), then the rest (the mode): a mass silence must flag nobody,
    even when the first few are fewer than ``self_preservation_min``. Passes run every 0.5 s
    of the test clock so that one of them sees the first few alone.
    """
    clock = Clock()
    checker = Checker(store, settings(), node_id="n1", clock=clock)
    ids = await setup(store, clock, 200)
    await checker.check_once()
    for _ in range(10):  # 20 s of steady beats: everyone online, the grace over
        clock.advance(2)
        await beat(store, clock, *ids)
        await checker.check_once()
    clock.advance(1)
    await beat(store, clock, *ids[older:])  # the last stored beat of a few is 1 s older; silence
    with structlog.testing.capture_logs() as logs:
        results = await run_passes(checker, clock, 30, every=0.5)
    assert any(r.quiet == older for r in results), "a pass saw the few alone past stale_after"
    assert [c for r in results for c in r.changes] == []
    assert {await status(store, i) for i in ids} == {"online"}
    entered = [e for e in logs if e["event"] == "self_preservation_entered"]
    assert len(entered) == 1 and "200 of 200" in entered[0]["reason"]
    assert checker.check()[1]["mode"] == "self_preservation"


async def test_a_total_silence_of_services_beating_every_5_s_flags_nobody(store: Store) -> None:
    """The Announcer's period: last beats spread over 5 s, a pass every 2 s sees ~40 % first."""
    clock = Clock()
    checker = Checker(store, settings(), node_id="n1", clock=clock)
    ids = await setup(store, clock, 200)
    await checker.check_once()
    for second in range(1, 31):  # each service beats every 5 s, phases spread evenly
        clock.advance(1)
        await beat(store, clock, *ids[second % 5 :: 5])
        if second % 2 == 0:
            await checker.check_once()
    with structlog.testing.capture_logs() as logs:
        results = await run_passes(checker, clock, 30)
    assert [c for r in results for c in r.changes] == []
    assert [e["event"] for e in logs] == ["self_preservation_entered"]
    assert "200 of 200" in logs[0]["reason"]


async def test_a_small_silence_among_many_is_flagged_at_the_first_pass_past_stale_after(
    store: Store,
) -> None:
    """3 of 200 die; the others beat every 2 s, half of them stored 1 s after the other half."""
    clock = Clock()
    checker = Checker(store, settings(), node_id="n1", clock=clock)
    ids = await setup(store, clock, 200)
    await beat(store, clock, *ids)
    await checker.check_once()
    others = ids[3:]
    for second in range(1, 17):
        clock.advance(1)
        await beat(store, clock, *others[second % 2 :: 2])
        if second % 2:
            continue
        result = await checker.check_once()  # a pass every 2 s
        assert not result.self_preservation
        if second < 16:
            assert result.changes == []
    # 16 s after their last beat: the first pass past stale_after flags them
    assert sorted(c["service_id"] for c in result.changes) == ["s0", "s1", "s2"]


async def test_a_silence_spread_over_stale_after_is_judged_as_one(store: Store) -> None:
    """80 of 200 go quiet (40 %: flagged), 10 s later 60 more: 70 % within the window.

    Judged pass by pass, the 60 are 50 % of those still online and would be flagged too.
    The mode then lasts, counting the 80, until heartbeats come back.
    """
    clock = Clock()
    checker = Checker(store, settings(), node_id="n1", clock=clock)
    ids = await setup(store, clock, 200)
    await checker.check_once()
    for _ in range(10):
        clock.advance(2)
        await beat(store, clock, *ids)
        await checker.check_once()
    first, second, rest = ids[:80], ids[80:140], ids[140:]
    flagged: list[str] = []
    for step in range(60):  # 2 minutes: the first 80 stop now, the next 60 after 10 s
        clock.advance(2)
        await beat(store, clock, *(rest if step >= 5 else second + rest))
        result = await checker.check_once()
        flagged += [c["service_id"] for c in result.changes]
    assert sorted(flagged) == sorted(first)
    assert result.self_preservation and "140 of 200" in checker.check()[1]["reason"]
    assert {await status(store, i) for i in second} == {"online"}
    clock.advance(2)
    await beat(store, clock, *second, *rest)  # the 60 were our path's fault: they are back
    result = await checker.check_once()
    assert not result.self_preservation
    # silence is trusted again: the first 80, quiet for two minutes, go offline
    assert sorted((c["service_id"], c["to"]) for c in result.changes) == sorted(
        (i, "offline") for i in first
    )
    assert {await status(store, i) for i in second} == {"online"}


async def test_a_service_that_never_beats_is_unknown_then_offline(store: Store) -> None:
    """Unknown means "registered, no heartbeat yet"; none for offline_after means offline."""
    clock = Clock()
    checker = Checker(store, settings(), node_id="n1", clock=clock)
    await setup(store, clock, 1)
    await run_passes(checker, clock, 58)
    assert await status(store, "s0") == "unknown", "silent past stale_after: still unknown"
    clock.advance(10)  # 68 s: a re-registration is a sign of life, not a heartbeat
    await register_services(store, [TaskService(id="s0", url="http://h/s0")], clock.now)
    await run_passes(checker, clock, 58)
    assert await status(store, "s0") == "unknown"
    results = await run_passes(checker, clock, 4)
    changes = [(c["from"], c["to"], c["reason"]) for r in results for c in r.changes]
    assert changes == [("unknown", "offline", "no first heartbeat")]
    assert [r.quiet for r in results] == [0, 0], "never online: not part of a silence"
    for _ in range(2):  # it starts beating after all: online after recover_beats
        clock.advance(1)
        await beat(store, clock, "s0")
    await checker.check_once()
    assert await status(store, "s0") == "online"


async def test_status_changes_above_the_threshold_are_logged_as_one_summary_per_pass(
    store: Store,
) -> None:
    clock = Clock()
    checker = Checker(store, settings(), node_id="n1", clock=clock)  # threshold 20 by default
    ids = await setup(store, clock, 5200)
    await beat(store, clock, *ids)
    with structlog.testing.capture_logs() as logs:
        result = await checker.check_once()
    assert len(result.changes) == 5200
    assert [e["event"] for e in logs] == ["service_status_changed_summary"]
    assert logs[0]["count"] == 5200 and logs[0]["by_change"] == {"unknown->online": 5200}
    assert len(logs[0]["examples"]) == 5 and set(logs[0]["examples"]) <= set(ids)
    assert await store.service_events.count_documents({}) == 5200
    # a few changes: one line each
    await register_services(store, [TaskService(id=f"new{i}") for i in range(3)], clock.now)
    clock.advance(1)
    await beat(store, clock, "new0", "new1", "new2")
    with structlog.testing.capture_logs() as logs:
        await checker.check_once()
    assert sorted((e["event"], e["service_id"], e["change"]) for e in logs) == [
        ("service_status_changed", f"new{i}", "unknown->online") for i in range(3)
    ]


async def test_status_changes_at_the_threshold_are_logged_one_by_one(store: Store) -> None:
    clock = Clock()
    checker = Checker(store, settings(), node_id="n1", clock=clock, summary_threshold=3)
    ids = await setup(store, clock, 4)
    await beat(store, clock, *ids[:3])
    with structlog.testing.capture_logs() as logs:
        await checker.check_once()
    assert [e["event"] for e in logs] == ["service_status_changed"] * 3
    clock.advance(16)  # three go quiet (fewer than self_preservation_min) as one comes online
    await beat(store, clock, ids[3])
    with structlog.testing.capture_logs() as logs:
        await checker.check_once()
    summary = [e for e in logs if e["event"].startswith("service_status_changed")]
    assert summary == [
        {
            "event": "service_status_changed_summary",
            "log_level": "info",
            "count": 4,
            "by_change": {"online->stale": 3, "unknown->online": 1},
            "examples": summary[0]["examples"],
        }
    ]
