"""Two nodes fire the same schedules at the same moments: each run creates exactly one task."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from conftest import Clock, NodeFactory, register

from taskdash.periodic.proto import periodic_task_pb2 as pb

RUNS = 1000


@pytest.mark.slow
async def test_two_nodes_fire_a_schedule_a_thousand_times(
    make_node: NodeFactory, clock: Clock
) -> None:
    # no share: both nodes try every run at once, only the conditional update separates them
    a, b = await make_node("node-a", takeover_ms=0), await make_node("node-b", takeover_ms=0)
    who = await register(a.stub)
    await b.stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**who.q()))
    view = await a.schedules.create(who.caller, who.queue, {"interval": 1, "task_data": 1})
    first = clock.now + 1000
    for step in range(RUNS):
        clock.advance(1)
        pair = (a, b) if step % 2 else (b, a)  # both read the due schedule, then both fire
        await asyncio.gather(*(node.firer.fire_due() for node in pair))

    docs = [d async for d in a.leasing.store.tasks.find({}, {"scheduled_for": 1})]
    per_run = Counter(d["scheduled_for"] for d in docs)
    assert [run for run, n in per_run.items() if n > 1] == []  # no duplicate
    assert sorted(per_run) == [first + n * 1000 for n in range(RUNS)]  # no run missed
    assert a.firer.fired + b.firer.fired == RUNS
    assert a.firer.lost + b.firer.lost > 0  # they did race
    shown = await b.schedules.get(who.caller, who.queue, view["schedule_id"])
    assert (shown["fired"], shown["skipped"], shown["missed"]) == (RUNS, 0, 0)
    assert shown["last_run"]["node"] in {"node-a", "node-b"}
