"""A name registered again is a new service: nothing of the old one reaches it.

Two nodes share one store. Node B has confirmed the old owner's secret and queue a moment
before the old owner deregisters on node A, so B still trusts them (its cache); whatever B
does with them afterwards must stay with the old, deleted service.
"""

from __future__ import annotations

import grpc
from conftest import Clock, NodeFactory, Registered, refused, register

from taskdash.periodic.cache import RecentlySeen
from taskdash.periodic.metadata import metadata
from taskdash.periodic.proto import periodic_task_pb2 as pb

Code = grpc.StatusCode


async def test_a_reregistered_name_never_gets_the_old_owners_tasks(
    make_node: NodeFactory, clock: Clock
) -> None:
    a, b = await make_node("node-a"), await make_node("node-b")
    old = await register(a.stub)
    old_on_b = Registered(b.stub, old.service, old.secret, old.queue)
    await b.stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**old_on_b.q()))

    await a.leasing.deregister(old.caller)
    # node B still trusts the old secret and queue (within its cache's second: the clock
    # is the test's and does not move), so this CreateTask passes its checks and inserts
    await old_on_b.create(1, task_type="old-owner")

    new = await register(a.stub)  # the same service and queue names, a new owner
    assert new.secret != old.secret
    assert await new.lease(0) == []  # nothing of the old owner's
    listed = await a.leasing.list_tasks(new.caller, new.queue, state=None, after=0, limit=10)
    assert listed == []
    records = await metadata(a.leasing, "http://x", 100)
    assert [r["name"] for r in records] == []  # the orphan is not shown either

    # the new owner's own task is served, and the stale secret on B cannot touch it
    await new.create(1, task_type="new-owner")
    [task] = await new.lease(0)
    assert task["task_type"] == "new-owner"
    async with refused(Code.NOT_FOUND):
        await old_on_b.complete(task["task_id"])
    await b.leasing.deregister(old_on_b.caller)  # stale: must not delete the new service
    await new.complete(task["task_id"])
    assert [q["queue_name"] for q in await a.leasing.list_queues(new.caller)] == ["q1"]


async def test_a_recreated_queue_never_gets_the_old_queues_tasks(make_node: NodeFactory) -> None:
    a, b = await make_node("node-a"), await make_node("node-b")
    who = await register(a.stub)
    on_b = Registered(b.stub, who.service, who.secret, who.queue)
    await b.stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**on_b.q()))
    await a.leasing.destroy_queue(who.caller, who.queue)
    await on_b.create(1, task_type="old-queue")  # B still trusts the destroyed queue
    await a.stub.CreatePeriodicTaskQueue(pb.CreatePeriodicTaskQueueRequest(**who.q()))
    await a.stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**who.q()))
    assert await who.lease(0) == []


def test_the_cache_trusts_no_longer_than_its_ttl_when_the_clock_goes_back() -> None:
    """The service's clock is wall time: set back an hour, an entry must not live an hour."""
    now = [1_000_000]
    seen = RecentlySeen(1000, lambda: now[0])
    seen.add("key", "inc")
    assert seen.get("key") == "inc"
    now[0] -= 3_600_000
    assert seen.get("key") is None
    now[0] += 3_600_000 + 1000
    assert seen.get("key") is None


async def test_metadata_removes_orphans_but_leaves_unstamped_tasks(make_node: NodeFactory) -> None:
    """Only a task stamped with a queue incarnation that is gone is provably unreachable."""
    node = await make_node()
    store = node.leasing.store
    base = {"service": "s", "queue": "q", "task_type": "", "task_data": "{}", "attempts": 0}
    base |= {"state": "pending", "created_at": 0, "updated_at": 0, "due": 0}
    await store.tasks.insert_many(
        [{"_id": 1, **base}, {"_id": 2, **base, "queue_inc": "gone", "service_inc": "gone"}]
    )
    assert await metadata(node.leasing, "http://x", 10) == []
    assert [doc["_id"] async for doc in store.tasks.find({})] == [1]
