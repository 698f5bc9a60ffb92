"""Schedules on real nodes over nx-27017, fired by hand on a fake clock (no sleeping)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import Clock, Node, NodeFactory, Registered, register

from taskdash.periodic.errors import Kind, PeriodicError
from taskdash.periodic.fires import WHOLE_QUEUE, fired_task, timing_of
from taskdash.periodic.firing import HOLD_MS, Firer
from taskdash.periodic.proto import periodic_task_pb2 as pb
from taskdash.periodic.views import encode, iso
from taskdash.store import Store
from taskdash.store.schedules import Fire, ScheduleStore, schedule_key

S = 1000


async def tasks_of(node: Node, who: Registered) -> list[dict[str, Any]]:
    """The queue's tasks as the HTTP listing shows them (JSON decoded)."""
    listed = await node.leasing.list_tasks(who.caller, who.queue, state=None, after=0, limit=1000)
    return list(json.loads(encode(listed)))


async def create(node: Node, who: Registered, **body: Any) -> dict[str, Any]:
    body.setdefault("task_data", {"report": "daily"})
    return await node.schedules.create(who.caller, who.queue, body)


async def test_interval_schedule_fires_each_run_once(node: Node, clock: Clock) -> None:
    who = await register(node.stub)
    created_at = clock.now
    view = await create(node, who, schedule_id="tick", interval=10, task_type="report")
    assert view["next_run_at"] == iso(created_at + 10 * S)
    assert view["next_runs"] == [iso(created_at + n * 10 * S) for n in range(1, 6)]
    assert view["state"] == "active" and view["last_run"] is None

    await node.firer.fire_due()
    assert await tasks_of(node, who) == []  # not due yet
    clock.advance(9.999)
    await node.firer.fire_due()
    assert await tasks_of(node, who) == []
    clock.advance(0.001)
    await node.firer.fire_due()
    await node.firer.fire_due()  # a second pass at the same moment fires nothing more
    [task] = await tasks_of(node, who)
    assert task["schedule_id"] == "tick" and task["scheduled_for"] == iso(created_at + 10 * S)
    assert (task["task_type"], task["task_data"], task["state"]) == (
        "report",
        {"report": "daily"},
        "pending",
    )

    # an ordinary task: leased with GetTaskList, completed with CompleteTask
    [item] = await who.lease()
    assert item["task_id"] == task["task_id"] and item["schedule_id"] == "tick"
    assert item["scheduled_for"] == iso(created_at + 10 * S)
    await who.complete(item["task_id"])

    clock.advance(10)
    await node.firer.fire_due()
    shown = await node.schedules.get(who.caller, who.queue, "tick")
    runs, more = await node.schedules.runs(who.caller, who.queue, "tick", 2**63, 0)
    assert [(r["due_at"], r["outcome"]) for r in runs] == [
        (iso(created_at + 20 * S), "pending"),
        (iso(created_at + 10 * S), "done"),
    ]
    assert more is None
    assert shown["last_run"] == {
        "due_at": iso(created_at + 20 * S),
        "fired_at": iso(created_at + 20 * S),
        "late_ms": 0,
        "task_id": runs[0]["task_id"],
        "missed": 0,
        "node": "node-a",
        "outcome": "pending",
    }
    assert runs[1]["task_id"] == item["task_id"]
    assert (shown["fired"], shown["skipped"], shown["missed"]) == (2, 0, 0)
    assert shown["next_run_at"] == iso(created_at + 30 * S)


async def test_cron_schedule_fires_in_its_time_zone(node: Node, clock: Clock) -> None:
    who = await register(node.stub)
    clock.now = int(datetime(2026, 1, 5, 13, 58, tzinfo=UTC).timestamp() * 1000)
    view = await create(
        node, who, schedule_id="nine", cron="0 9 * * *", timezone="America/New_York"
    )
    assert view["next_run_at"] == "2026-01-05T14:00:00.000Z"  # 09:00 EST
    assert view["next_runs"][1] == "2026-01-06T14:00:00.000Z"
    assert (view["cron"], view["timezone"]) == ("0 9 * * *", "America/New_York")
    clock.advance(120)
    await node.firer.fire_due()
    [task] = await tasks_of(node, who)
    assert task["scheduled_for"] == "2026-01-05T14:00:00.000Z"
    clock.advance(86400)
    await node.firer.fire_due()
    assert [t["scheduled_for"] for t in await tasks_of(node, who)] == [
        "2026-01-05T14:00:00.000Z",
        "2026-01-06T14:00:00.000Z",
    ]


async def test_misfire_skip_vs_once_after_a_node_was_stopped(
    make_node: NodeFactory, clock: Clock
) -> None:
    """Node A fires a per-minute schedule, stops, and node B takes the queue up an hour
    later: each schedule applies its policy once, not sixty times."""
    a = await make_node("node-a")
    who = await register(a.stub)
    start = clock.now
    await create(a, who, schedule_id="skip", interval=60, misfire="skip", misfire_grace=10)
    await create(a, who, schedule_id="once", interval=60, misfire="once", misfire_grace=10)
    clock.advance(60)
    await a.firer.fire_due()
    assert len(await tasks_of(a, who)) == 2
    assert await a.leasing.stop_queue(who.caller, who.queue)  # as if node A were down

    clock.advance(3600 + 30)  # 60 more runs came due; the latest one is 30 s late
    await a.firer.fire_due()
    assert len(await tasks_of(a, who)) == 2  # A no longer serves the queue
    b = await make_node("node-b")
    await b.stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**who.q()))
    await b.firer.fire_due()
    await b.firer.fire_due()
    late = start + 61 * 60 * S
    scheduled = sorted((t["schedule_id"], t["scheduled_for"]) for t in await tasks_of(b, who))
    assert scheduled == [
        ("once", iso(start + 60 * S)),
        ("once", iso(late)),  # caught up, once
        ("skip", iso(start + 60 * S)),
    ]
    skip = await b.schedules.get(who.caller, who.queue, "skip")
    once = await b.schedules.get(who.caller, who.queue, "once")
    assert skip["last_run"] == {
        "due_at": iso(late),
        "fired_at": iso(late + 30 * S),
        "late_ms": 30 * S,
        "task_id": None,
        "missed": 59,
        "node": "node-b",
        "outcome": "skipped",
    }
    assert (skip["fired"], skip["skipped"], skip["missed"]) == (1, 1, 59)
    assert (once["fired"], once["skipped"], once["missed"]) == (2, 0, 59)
    assert once["last_run"]["outcome"] == "pending" and once["last_run"]["missed"] == 59
    assert skip["next_run_at"] == once["next_run_at"] == iso(late + 60 * S)

    clock.advance(30)  # the next run, on time: both fire
    await b.firer.fire_due()
    assert len(await tasks_of(b, who)) == 5


async def test_pause_and_resume(node: Node, clock: Clock) -> None:
    who = await register(node.stub)
    await create(node, who, schedule_id="p", interval=10)
    paused = await node.schedules.pause(who.caller, who.queue, "p")
    assert paused["state"] == "paused" and paused["next_run_at"] is None
    assert paused["next_runs"] == []
    assert (await node.schedules.pause(who.caller, who.queue, "p"))["state"] == "paused"
    clock.advance(35)
    await node.firer.fire_due()
    assert await tasks_of(node, who) == []  # nothing fires while paused

    resumed_at = clock.now
    resumed = await node.schedules.resume(who.caller, who.queue, "p")
    assert resumed["state"] == "active"
    # from the next run after now, on the interval's own grid; nothing paused is caught up
    next_run = resumed_at + 5 * S
    assert resumed["next_run_at"] == iso(next_run)
    assert (await node.schedules.resume(who.caller, who.queue, "p"))["next_run_at"] == iso(next_run)
    await node.firer.fire_due()
    assert await tasks_of(node, who) == []
    clock.advance(5)
    await node.firer.fire_due()
    [task] = await tasks_of(node, who)
    assert task["scheduled_for"] == iso(next_run)
    shown = await node.schedules.get(who.caller, who.queue, "p")
    assert (shown["fired"], shown["missed"]) == (1, 0)


async def test_created_paused(node: Node, clock: Clock) -> None:
    who = await register(node.stub)
    view = await create(node, who, schedule_id="later", interval=1, paused=True)
    assert view["state"] == "paused"
    clock.advance(10)
    await node.firer.fire_due()
    assert await tasks_of(node, who) == []


async def test_delete_leaves_the_tasks_it_created(node: Node, clock: Clock) -> None:
    who = await register(node.stub)
    await create(node, who, schedule_id="d", interval=10)
    for _ in range(2):
        clock.advance(10)
        await node.firer.fire_due()
    before = await tasks_of(node, who)
    assert len(before) == 2
    await node.schedules.delete(who.caller, who.queue, "d")
    with pytest.raises(PeriodicError) as err:
        await node.schedules.get(who.caller, who.queue, "d")
    assert err.value.kind is Kind.NOT_FOUND and "no schedule 'd'" in str(err.value)
    clock.advance(60)
    await node.firer.fire_due()
    assert await tasks_of(node, who) == before  # untouched, and no more
    assert len(await who.lease()) == 2  # still ordinary tasks
    # the id can be used again: a new schedule, with no history of the old one
    again = await create(node, who, schedule_id="d", interval=10)
    assert again["last_run"] is None and again["fired"] == 0


async def test_only_nodes_that_started_the_queue_fire(make_node: NodeFactory, clock: Clock) -> None:
    a, b = await make_node("node-a"), await make_node("node-b")
    who = await register(a.stub)  # started on A only
    await create(b, who, interval=10)  # created through B: any node may create
    clock.advance(10)
    await b.firer.fire_due()
    assert await tasks_of(a, who) == []
    await a.firer.fire_due()
    assert len(await tasks_of(a, who)) == 1


async def test_jitter_delays_when_the_task_can_be_leased(node: Node, clock: Clock) -> None:
    who = await register(node.stub)
    await create(node, who, interval=60, jitter=30)
    clock.advance(60)
    fired_at = clock.now
    await node.firer.fire_due()
    [doc] = [d async for d in node.leasing.store.tasks.find({})]
    assert fired_at <= doc["due"] <= fired_at + 30 * S
    assert doc["scheduled_for"] == fired_at  # the run's due time is the nominal one
    clock.now = doc["due"] - 1
    assert await who.lease() == []
    clock.now = doc["due"]
    assert len(await who.lease()) == 1


async def claim_and_die(node: Node, who: Registered, schedule_id: str) -> tuple[int, Any]:
    """What a node that won a run and died before storing its task leaves behind: its batch
    open, the schedule moved on with the run recorded; the run's task id and its task."""
    ref = await node.leasing.queue_ref(who.caller, who.queue)
    key = schedule_key(ref.inc, schedule_id)
    definition = await node.schedules.store.definition(key)
    state = await node.schedules.store.state(key)
    assert definition is not None and state is not None
    [task_id] = await node.leasing.take_ids(1)
    due, token, now = state["next_run_at"], f"dead-{schedule_id}", node.leasing.clock()
    following = timing_of(definition).next_after(due)
    run = {"due": due, "at": now, "node": "dead", "missed": 0, "task_id": task_id,
           "token": token, "delay_ms": 0}  # fmt: skip
    changes = {"next_run_at": following, "wake_at": following, "last_run": run}
    await node.schedules.store.open_batch(token, "dead", now)
    await node.schedules.store.fire([Fire(key, due, changes, {"fired": 1})])
    return task_id, fired_task(definition, run, now)


async def test_a_fire_whose_node_died_is_finished_by_another(
    make_node: NodeFactory, clock: Clock
) -> None:
    """Node A won a run (its conditional update recorded the fire) and died before storing
    the task: node B stores that same task, under the id A reserved, once."""
    a, b = await make_node("node-a"), await make_node("node-b")
    who = await register(a.stub)
    await b.stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**who.q()))
    created = await create(a, who, schedule_id="c", interval=3600)
    clock.advance(3600)
    task_id, its_task = await claim_and_die(a, who, "c")
    shown = await b.schedules.get(who.caller, who.queue, "c")
    assert shown["last_run"]["outcome"] == "creating"
    await b.firer.fire_due()
    assert await tasks_of(b, who) == []  # A may only be slow: B waits HOLD_MS
    clock.advance(HOLD_MS / 1000)
    await b.firer.fire_due()
    [task] = await tasks_of(b, who)
    assert (task["task_id"], task["scheduled_for"]) == (task_id, created["next_run_at"])
    assert await b.schedules.store.open_batches(["dead-c"]) == set()
    # A was only slow after all: its own insert is a duplicate and changes nothing
    await a.schedules.store.insert_tasks([its_task])
    assert await tasks_of(b, who) == [task]
    shown = await b.schedules.get(who.caller, who.queue, "c")
    assert shown["last_run"]["outcome"] == "pending"


async def test_the_next_run_finishes_an_open_fire_first(node: Node, clock: Clock) -> None:
    """A schedule due again before a dead node's batch is stale: its firer stores the task
    of the previous fire before firing the next run."""
    who = await register(node.stub)
    await create(node, who, schedule_id="fast", interval=1)
    clock.advance(1)
    task_id, _ = await claim_and_die(node, who, "fast")
    clock.advance(1)
    await node.firer.fire_due()
    tasks = await tasks_of(node, who)
    assert len(tasks) == 2 and tasks[0]["task_id"] == task_id
    assert len({t["scheduled_for"] for t in tasks}) == 2


async def test_pause_and_delete_finish_an_open_fire(node: Node, clock: Clock) -> None:
    who = await register(node.stub)
    for name in ("x", "y"):
        await create(node, who, schedule_id=name, interval=3600)
    clock.advance(3600)
    ids = [(await claim_and_die(node, who, name))[0] for name in ("x", "y")]
    await node.schedules.pause(who.caller, who.queue, "x")
    await node.schedules.delete(who.caller, who.queue, "y")
    assert sorted(t["task_id"] for t in await tasks_of(node, who)) == sorted(ids)


async def test_runs_are_the_tasks_newest_first(node: Node, clock: Clock) -> None:
    who = await register(node.stub)
    start = clock.now
    await create(node, who, schedule_id="r", interval=1)
    await create(node, who, schedule_id="other", interval=1)
    for _ in range(25):
        clock.advance(1)
        await node.firer.fire_due()
    page, before = await node.schedules.runs(who.caller, who.queue, "r", 2**63, 10)
    assert [r["due_at"] for r in page] == [iso(start + n * S) for n in range(25, 15, -1)]
    assert before == start + 16 * S
    rest, end = await node.schedules.runs(who.caller, who.queue, "r", before, 0)
    assert [r["due_at"] for r in rest] == [iso(start + n * S) for n in range(15, 5, -1)]
    last, end = await node.schedules.runs(who.caller, who.queue, "r", start + 6 * S, 100)
    assert len(last) == 5 and end is None
    assert {r["task_id"] for r in page + rest + last} == {
        t["task_id"] for t in await tasks_of(node, who) if t["schedule_id"] == "r"
    }
    await node.leasing.delete_task(who.caller, who.queue, page[0]["task_id"])
    shown = await node.schedules.get(who.caller, who.queue, "r")
    assert shown["last_run"]["outcome"] == "deleted" and shown["fired"] == 25
    page, _ = await node.schedules.runs(who.caller, who.queue, "r", 2**63, 1)
    assert page[0]["due_at"] == iso(start + 24 * S)  # a deleted task is no run any more
    with pytest.raises(PeriodicError, match="limit must be between 0"):
        await node.schedules.runs(who.caller, who.queue, "r", 2**63, 5000)


async def test_schedules_go_with_their_queue_and_service(node: Node, clock: Clock) -> None:
    who = await register(node.stub)
    await create(node, who, schedule_id="q", interval=10)
    await node.leasing.destroy_queue(who.caller, who.queue)
    await node.leasing.create_queue(who.caller, who.queue)
    await node.leasing.start_queue(who.caller, who.queue)
    assert await node.schedules.list(who.caller, who.queue, "", 0) == []
    await create(node, who, schedule_id="q", interval=10)
    await node.leasing.deregister(who.caller)
    store = node.schedules.store
    assert [d async for d in store.definitions.find({})] == []
    assert [d async for d in store.states.find({})] == []
    clock.advance(10)
    await node.firer.fire_due()
    assert [d async for d in node.leasing.store.tasks.find({})] == []


async def test_list_pages_by_id(node: Node) -> None:
    who = await register(node.stub)
    for name in ("c", "a", "b"):
        await create(node, who, schedule_id=name, interval=10)
    page = await node.schedules.list(who.caller, who.queue, "", 2)
    assert [s["schedule_id"] for s in page] == ["a", "b"]
    rest = await node.schedules.list(who.caller, who.queue, "b", 0)
    assert [s["schedule_id"] for s in rest] == ["c"]
    assert "next_runs" not in rest[0]


async def test_a_schedule_left_without_its_state_is_paused_until_resumed(
    node: Node, clock: Clock
) -> None:
    """A create cut short between its two writes: the definition shows as paused, does not
    fire, and resume gives it a state."""
    who = await register(node.stub)
    await create(node, who, schedule_id="half", interval=10)
    await node.schedules.store.states.delete_many({})
    shown = await node.schedules.get(who.caller, who.queue, "half")
    assert (shown["state"], shown["next_run_at"], shown["last_run"]) == ("paused", None, None)
    [listed] = await node.schedules.list(who.caller, who.queue, "", 0)
    assert listed["state"] == "paused"
    assert (await node.schedules.pause(who.caller, who.queue, "half"))["state"] == "paused"
    clock.advance(20)
    await node.firer.fire_due()
    assert await tasks_of(node, who) == []
    resumed = await node.schedules.resume(who.caller, who.queue, "half")
    assert resumed["state"] == "active" and resumed["next_run_at"] == iso(clock.now + 10 * S)
    clock.advance(10)
    await node.firer.fire_due()
    assert len(await tasks_of(node, who)) == 1
    await node.schedules.delete(who.caller, who.queue, "half")
    await node.schedules.store.states.delete_many({})
    await create(node, who, schedule_id="half", interval=10)  # the id is free again


async def test_a_fire_read_before_a_pause_does_not_apply(node: Node, clock: Clock) -> None:
    """The race: a node reads a due schedule, the schedule is paused, the node fires what
    it read. The conditional update sees the pause: no task, still paused."""
    who = await register(node.stub)
    await create(node, who, schedule_id="race", interval=10)
    clock.advance(10)
    ref = await node.leasing.queue_ref(who.caller, who.queue)
    read = await node.schedules.store.due(ref.inc, clock.now, 10)
    await node.schedules.pause(who.caller, who.queue, "race")
    await node.firer._fire(read, clock.now)
    assert await tasks_of(node, who) == []
    shown = await node.schedules.get(who.caller, who.queue, "race")
    assert (shown["state"], shown["fired"], shown["last_run"]) == ("paused", 0, None)
    assert node.firer.lost == 1


async def test_a_schedule_created_again_fires_its_new_template(node: Node, clock: Clock) -> None:
    """A node remembers definitions; a schedule deleted and created again under the same id
    is a new incarnation, read again."""
    who = await register(node.stub)
    await create(node, who, schedule_id="again", interval=10, task_data="old")
    clock.advance(10)
    await node.firer.fire_due()
    await node.schedules.delete(who.caller, who.queue, "again")
    await create(node, who, schedule_id="again", interval=10, task_data="new")
    clock.advance(10)
    await node.firer.fire_due()
    assert [t["task_data"] for t in await tasks_of(node, who)] == ["old", "new"]


async def test_a_pass_fires_batch_after_batch(node: Node, store: Store, clock: Clock) -> None:
    who = await register(node.stub)
    for n in range(5):
        await create(node, who, interval=10, task_data=n)
    firer = Firer(node.leasing, ScheduleStore(store), clock=clock, batch=2)
    clock.advance(10)
    await firer.fire_due()
    assert firer.fired == 5


async def test_a_state_without_its_definition_is_left(node: Node, clock: Clock) -> None:
    """A schedule deleted while a node fires it: its state is read, its definition is gone;
    the others fire."""
    who = await register(node.stub)
    for name in ("gone", "kept"):
        await create(node, who, schedule_id=name, interval=10)
    ref = await node.leasing.queue_ref(who.caller, who.queue)
    await node.schedules.store.definitions.delete_one({"_id": schedule_key(ref.inc, "gone")})
    clock.advance(10)
    await node.firer.fire_due()
    assert [t["schedule_id"] for t in await tasks_of(node, who)] == ["kept"]


async def test_a_node_new_to_a_busy_queue_reads_its_definitions_at_once(
    node: Node, clock: Clock
) -> None:
    """More definitions missing than WHOLE_QUEUE: the queue's are read in one query."""
    who = await register(node.stub)
    for n in range(WHOLE_QUEUE + 6):
        await create(node, who, interval=10, task_data=n)
    clock.advance(10)
    await node.firer.fire_due()
    assert node.firer.fired == WHOLE_QUEUE + 6
    assert sorted(t["task_data"] for t in await tasks_of(node, who)) == list(range(WHOLE_QUEUE + 6))
