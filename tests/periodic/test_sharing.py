"""Nodes share a queue's schedules (rendezvous ranks), take over a silent node's, never race."""

from __future__ import annotations

from collections import Counter

from conftest import Clock, Node, NodeFactory, Registered, register
from support import async_wait_for

from taskdash.periodic.proto import periodic_task_pb2 as pb
from taskdash.periodic.sharing import BEAT_MS, FIRER_TTL_MS, TAKEOVER_MS, rank

SCHEDULES = 40
LONG = 600  # seconds: an interval longer than the takeover


async def setup(make_node: NodeFactory, interval: int = 10) -> tuple[Node, Node, Registered]:
    a, b = await make_node("node-a"), await make_node("node-b")
    who = await register(a.stub)
    await b.stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**who.q()))
    for n in range(SCHEDULES):
        await a.schedules.create(who.caller, who.queue, {"interval": interval, "task_data": n})
    for node in (a, b):
        await node.firer.fire_due()  # each says it fires the queue, and learns of the other
    return a, b, who


async def beat(node: Node, clock: Clock) -> None:
    """The node's heartbeat alone, as a node whose loop runs but fires nothing in time."""
    await node.firer.peers.refresh({key[2] for key in node.leasing.started}, clock.now)


async def runs(node: Node) -> Counter[tuple[str, int]]:
    """Tasks per run (schedule, due time)."""
    docs = [d async for d in node.leasing.store.tasks.find({})]
    return Counter((d["schedule_inc"], d["scheduled_for"]) for d in docs)


async def test_two_nodes_split_a_queue_without_racing(make_node: NodeFactory, clock: Clock) -> None:
    a, b, _ = await setup(make_node)
    clock.advance(10)
    await a.firer.fire_due()
    await b.firer.fire_due()
    assert 0 < a.firer.fired < SCHEDULES  # each fired its share...
    assert a.firer.fired + b.firer.fired == SCHEDULES  # ...together all of them
    assert a.firer.lost == b.firer.lost == 0  # and neither tried the other's
    assert sum((await runs(a)).values()) == SCHEDULES
    # the same share at every run: rendezvous ranks do not move while the nodes stay
    first = a.firer.fired
    clock.advance(10)
    await b.firer.fire_due()
    await a.firer.fire_due()
    assert a.firer.fired == 2 * first and b.firer.lost == a.firer.lost == 0


async def test_a_slow_node_is_taken_over_a_dead_one_dropped(
    make_node: NodeFactory, clock: Clock
) -> None:
    a, b, _ = await setup(make_node, interval=LONG)
    for _ in range(LONG // (BEAT_MS // 1000)):  # B lives on till the run
        clock.advance(BEAT_MS / 1000)
        await beat(b, clock)
    await a.firer.fire_due()
    share = a.firer.fired
    assert 0 < share < SCHEDULES
    # B's loop runs (it beats) but fires nothing: A leaves B's share until TAKEOVER_MS late
    for _ in range(TAKEOVER_MS // BEAT_MS - 1):
        clock.advance(BEAT_MS / 1000)
        await beat(b, clock)
        await a.firer.fire_due()
    assert a.firer.fired == share
    clock.advance(BEAT_MS / 1000)
    await beat(b, clock)
    await a.firer.fire_due()
    assert a.firer.fired == SCHEDULES  # B's share, TAKEOVER_MS late
    docs = [d async for d in a.schedules.store.states.find({}, {"last_run": 1})]
    assert sorted({d["last_run"]["at"] - d["last_run"]["due"] for d in docs}) == [0, TAKEOVER_MS]
    # B dies: once its heartbeat is older than FIRER_TTL_MS, A fires everything on time
    clock.advance(FIRER_TTL_MS / 1000)
    await a.firer.fire_due()
    clock.advance(LONG - (FIRER_TTL_MS + TAKEOVER_MS) / 1000)
    await a.firer.fire_due()
    assert a.firer.lost == 0 and b.firer.fired == 0
    assert set((await runs(a)).values()) == {1}
    docs = [d async for d in a.schedules.store.states.find({})]
    assert {d["last_run"]["at"] - d["last_run"]["due"] for d in docs} == {0}


async def test_a_node_that_leaves_hands_its_share_over_at_once(
    make_node: NodeFactory, clock: Clock
) -> None:
    a, b, _ = await setup(make_node)
    await b.firer.peers.leave()
    clock.advance(BEAT_MS / 1000)
    await a.firer.fire_due()  # A refreshes: B is gone
    clock.advance(10 - BEAT_MS / 1000)
    await a.firer.fire_due()
    assert a.firer.fired == SCHEDULES
    docs = [d async for d in a.schedules.store.states.find({})]
    assert all(d["last_run"]["at"] == d["last_run"]["due"] for d in docs)


async def test_stopping_a_running_firer_leaves(node: Node) -> None:
    await register(node.stub)
    await node.firer.start()
    [beat] = await async_wait_for(lambda: node.firer.store.firers(0))
    assert beat["_id"] == "node-a" and len(beat["queues"]) == 1
    await node.firer.stop()
    assert await node.firer.store.firers(0) == []


def test_ranks_are_the_same_everywhere() -> None:
    assert rank("node-a", "k") == rank("node-a", "k") != rank("node-b", "k")
    wins = Counter(
        max(("a", "b", "c"), key=lambda n, k=k: rank(n, k)) for k in map(str, range(3000))
    )
    assert all(800 < count < 1200 for count in wins.values())  # about a third each
