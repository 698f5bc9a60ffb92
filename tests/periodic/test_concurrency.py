"""8 workers over 2 nodes sharing one store: no task is held twice at once, none is lost."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from conftest import NodeFactory, Registered, register

from taskdash.periodic.proto import periodic_task_pb2 as pb

TASKS = 300
WORKERS_PER_NODE = 4


async def test_eight_workers_two_nodes(make_node: NodeFactory) -> None:
    a, b = await make_node("node-a"), await make_node("node-b")
    on_a = await register(a.stub)
    on_b = Registered(b.stub, on_a.service, on_a.secret, on_a.queue)
    await b.stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**on_b.q()))
    # both nodes create at once: ids come from one counter, so they must not collide
    await asyncio.gather(on_a.create(TASKS // 2), on_b.create(TASKS // 2))

    held: set[int] = set()
    deliveries: Counter[int] = Counter()
    done: set[int] = set()
    overlaps: list[int] = []

    async def worker(who: Registered, seed: int) -> None:
        rng = random.Random(seed)
        while len(done) < TASKS:
            tasks = await who.lease(rng.randint(1, 17))
            if not tasks:
                await asyncio.sleep(0.005)  # let the others finish; not a timing assertion
                continue
            for task in tasks:
                task_id = task["task_id"]
                if task_id in held:
                    overlaps.append(task_id)
                held.add(task_id)
                deliveries[task_id] += 1
            await asyncio.sleep(0)  # others lease meanwhile, while these are held
            for task in tasks:
                task_id = task["task_id"]
                fail = task["attempts"] == 1 and task_id % 5 == 0
                held.discard(task_id)  # released once the answer is sent, not when it returns
                await who.complete(task_id, success=not fail)
                if not fail:
                    done.add(task_id)

    workers = [worker(on_a, i) for i in range(WORKERS_PER_NODE)]
    workers += [worker(on_b, 100 + i) for i in range(WORKERS_PER_NODE)]
    await asyncio.wait_for(asyncio.gather(*workers), timeout=90)

    assert overlaps == []
    assert len(deliveries) == TASKS  # every task created was handed out: none lost
    expected = {task_id: 2 if task_id % 5 == 0 else 1 for task_id in deliveries}
    assert dict(deliveries) == expected  # each exactly once more per failure
    listed = await a.leasing.list_tasks(on_a.caller, on_a.queue, state="done", after=0, limit=1000)
    assert len(listed) == TASKS
