"""A GetTaskList reply fits a gRPC client's default 4 MiB receive limit, whatever ``limit`` is.

A reply the client refuses (RESOURCE_EXHAUSTED) would still have leased every task in it,
with one more attempt each: repeated polls could make tasks dead that never ran. So the lease
stops adding tasks once the reply would pass ``[periodic] max_reply_size``; the rest stay
pending for the next call.
"""

from __future__ import annotations

import json

from conftest import NodeFactory, Registered, register

from taskdash.periodic.proto import periodic_task_pb2 as pb

BIG = 64000  # bytes of task_data, under the default max_task_data_size (65536)


async def create_big(who: Registered, count: int, size: int = BIG) -> None:
    for n in range(count):
        data = json.dumps({"n": n, "pad": "x" * (size - 30)})
        await who.stub.CreateTask(pb.CreateTaskRequest(**who.q(task_type="big", task_data=data)))


async def test_a_lease_reply_stays_under_the_clients_limit(make_node: NodeFactory) -> None:
    node = await make_node()
    who = await register(node.stub)
    await create_big(who, 70)  # ~4.5 MB: more than one default-sized reply can carry
    reply = await node.stub.GetTaskList(pb.GetTaskListRequest(**who.q(limit=100)))
    first = json.loads(reply.task_list)
    assert len(reply.task_list.encode()) <= node.leasing.settings.max_reply_size
    assert 0 < len(first) < 70
    listed = await node.leasing.list_tasks(who.caller, who.queue, state=None, after=0, limit=100)
    leased = [t for t in listed if t["state"] == "leased"]
    pending = [t for t in listed if t["state"] == "pending"]
    assert {t["task_id"] for t in leased} == {t["task_id"] for t in first}
    assert len(pending) == 70 - len(first) and all(t["attempts"] == 0 for t in pending)
    # the rest come in the next replies, each within the limit, each task once
    seen = [t["task_id"] for t in first]
    while len(seen) < 70:
        more = json.loads((await node.stub.GetTaskList(pb.GetTaskListRequest(**who.q()))).task_list)
        assert more
        seen += [t["task_id"] for t in more]
    assert sorted(seen) == sorted(t["task_id"] for t in listed)


async def test_one_task_always_fits_even_over_the_budget(make_node: NodeFactory) -> None:
    # node a takes big tasks; node b (same store) has a small reply budget, set later
    a = await make_node("node-a")
    b = await make_node("node-b", max_task_data_size=4096, max_reply_size=8192)
    who = await register(a.stub)
    await create_big(who, 2, size=20000)  # each over b's whole budget
    await create_big(who, 3, size=3000)
    on_b = Registered(b.stub, who.service, who.secret, who.queue)
    await b.stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**on_b.q()))
    sizes = []
    for _ in range(4):
        sizes.append([len(t["task_data"]["pad"]) for t in await on_b.lease(10)])
    # one big task alone, twice; then two small ones fit (3 would not); then the last one
    assert sizes == [[19970], [19970], [2970, 2970], [2970]]
