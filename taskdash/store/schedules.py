"""The periodic service's schedules and the tasks their fires create.

Only queries live here; when a schedule runs and what a fire does are in
:mod:`taskdash.periodic.timing` and :mod:`taskdash.periodic.firing`. Times are epoch ms.

A schedule is two documents under the same ``_id`` (JSON text ``[queue incarnation, schedule
id]``): its *definition* in ``periodic_schedules``, written once::

    {_id, schedule_id, incarnation, service, service_inc, queue, queue_inc,
     interval_ms + anchor_ms | cron + timezone, task_type, task_data: <JSON text>, size,
     misfire, grace_ms, jitter_ms, created_at}

and its *state* in ``periodic_schedule_state``, rewritten by every fire::

    {_id, queue_inc, incarnation, paused, next_run_at, wake_at: <the same; absent while
     paused>, last_run: {due, at, node, missed, task_id?, token?, delay_ms?, missed_more?},
     fired, skipped, missed, updated_at}

Split because nx-27017 parses and rewrites a whole document on each update (and parses it to
evaluate a condition that fails): a fire rewrites only the small state, whatever the size of
the task template. A definition without a state (a create or delete cut short) is a schedule
that does not fire, shown as paused; resuming it gives it a state again.

Exactly one task per run, without a lock: a fire is a conditional update of the state that
matches only while ``next_run_at`` is still the run being fired, and it moves ``next_run_at``
on; of two nodes firing the same run, one matches. The update records the run with a task id
reserved beforehand and the token of the node's batch of fires; the node then inserts the
tasks it won under those ids. Before its updates, the node writes a small *batch* document
(``periodic_fire_batches``, ``_id`` = the token) and deletes it once the tasks are stored. A
batch document that outlives its node names fires whose tasks may be missing: any node
finishing it (before firing one of its schedules again, or when it is older than a few
seconds) inserts the same tasks under the same ids, and a duplicate id means the task was
stored already. So each run's task is created once, even across crashes, for the price of
two writes per fire and two per batch.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, NamedTuple

from pymongo import UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from taskdash.store.mongo import (
    Doc,
    Store,
    deadline,
    duplicates_only,
    eq,
    insert_new,
    translated,
)

DEFINITIONS = "periodic_schedules"
STATES = "periodic_schedule_state"
BATCHES = "periodic_fire_batches"
FIRERS = "periodic_firers"
POINT_READS = 32  # concurrent single-document reads (nx-27017 scans for $in)
WON = {"last_run": 1, "incarnation": 1, "queue_inc": 1}  # what storing a run's task needs
LEAVE_TIMEOUT = 1.0  # seconds a stopping node waits to say it stops firing


def schedule_key(queue_inc: str, schedule_id: str) -> str:
    """The schedule's ``_id``: unambiguous for any id (a JSON array as text)."""
    return json.dumps([queue_inc, schedule_id], ensure_ascii=False)


class Fire(NamedTuple):
    """One conditional fire: matches only while the schedule's next run is ``expected``."""

    key: str
    expected: int
    set_: Doc  # next_run_at, wake_at, last_run, updated_at
    inc: Doc  # fired / skipped / missed counters


class ScheduleStore:
    """The queries on schedules (definitions, states), fire batches, firers, fired tasks."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.definitions = store[DEFINITIONS]
        self.states = store[STATES]
        self.batches = store[BATCHES]
        self.firers_ = store[FIRERS]
        self.tasks = store["periodic_tasks"]

    async def server_time(self) -> Any:
        """The store's own clock (``hello``'s ``localTime``), for nodes to agree on time."""
        async with translated("periodic_server_time"):
            reply = await self.store.client.admin.command("hello")
        return reply.get("localTime")

    # one schedule -----------------------------------------------------------------------

    async def insert(self, definition: Doc, state: Doc) -> bool:
        """Store a new schedule (its definition decides: False when the queue has one with
        that id), then its state."""
        async with translated("periodic_insert_schedule"):
            if not await insert_new(self.definitions, definition):
                return False
            await self.states.insert_one(state)
        return True

    async def definition(self, key: str) -> Doc | None:
        async with translated("periodic_get_schedule"):
            return await self.definitions.find_one({"_id": eq(key)})

    async def state(self, key: str) -> Doc | None:
        async with translated("periodic_get_schedule_state"):
            return await self.states.find_one({"_id": eq(key)})

    async def page(self, queue_inc: str, after: str, limit: int) -> list[Doc]:
        """The queue's definitions by id, after ``after`` (index ``queue_schedule``)."""
        query = {"queue_inc": eq(queue_inc), "schedule_id": {"$gt": after}}
        async with translated("periodic_list_schedules"):
            cursor = self.definitions.find(query).sort("schedule_id", 1).limit(limit)
            return [doc async for doc in cursor]

    async def states_of(self, keys: list[str]) -> dict[str, Doc]:
        """The states of these schedules (single reads, a few at a time)."""
        found = await self._point_reads(self.states, keys, None)
        return {doc["_id"]: doc for doc in found}

    async def definitions_of(self, keys: list[str]) -> list[Doc]:
        return await self._point_reads(self.definitions, keys, None)

    async def pause(self, key: str, next_run_at: int, now: int) -> bool:
        """Pause an active schedule still at ``next_run_at`` (no fire since it was read);
        False if it changed meanwhile."""
        query = {"_id": eq(key), "paused": eq(False), "next_run_at": eq(next_run_at)}
        update = {"$set": {"paused": True, "updated_at": now}, "$unset": {"wake_at": ""}}
        async with translated("periodic_pause_schedule"):
            result = await self.states.update_one(query, update)
        return result.matched_count == 1

    async def resume(self, state: Doc, next_run_at: int, now: int) -> bool:
        """Resume a paused schedule from ``next_run_at`` (a schedule without a state gets
        ``state``); False if it is not paused."""
        changes = {"paused": False, "next_run_at": next_run_at, "wake_at": next_run_at}
        update = {"$set": {**changes, "updated_at": now}, "$setOnInsert": state}
        async with translated("periodic_resume_schedule"):
            try:
                result = await self.states.update_one(
                    {"_id": eq(state["_id"]), "paused": eq(True)}, update, upsert=True
                )
            except DuplicateKeyError:  # it has a state, which is not paused
                return False
        return result.matched_count == 1 or result.upserted_id is not None

    async def delete(self, key: str) -> bool:
        """Delete a schedule: its state first (it stops firing), then its definition."""
        async with translated("periodic_delete_schedule"):
            await self.states.delete_one({"_id": eq(key)})
            result = await self.definitions.delete_one({"_id": eq(key)})
        return result.deleted_count == 1

    async def delete_queue(self, queue_inc: str) -> None:
        """Delete every schedule of a queue (the queue is being deleted)."""
        async with translated("periodic_delete_schedules"):
            await self.states.delete_many({"queue_inc": eq(queue_inc)})
            await self.definitions.delete_many({"queue_inc": eq(queue_inc)})

    # firing -----------------------------------------------------------------------------

    async def due(self, queue_inc: str, now: int, limit: int) -> list[Doc]:
        """The queue's schedule states to look at now, soonest first (index ``queue_wake``);
        paused ones have no ``wake_at`` and never match."""
        query = {"queue_inc": eq(queue_inc), "wake_at": {"$lte": now}}
        async with translated("periodic_due_schedules"):
            cursor = self.states.find(query).sort("wake_at", 1).limit(limit)
            return [doc async for doc in cursor]

    async def next_wake(self, queue_inc: str, now: int) -> int | None:
        """When the queue's next schedule is to be looked at (after ``now``), if any."""
        query = {"queue_inc": eq(queue_inc), "wake_at": {"$gt": now}}
        async with translated("periodic_next_wake"):
            cursor = self.states.find(query, {"wake_at": 1}).sort("wake_at", 1).limit(1)
            found = [doc async for doc in cursor]
        return found[0]["wake_at"] if found else None

    async def queue_definitions(self, queue_inc: str) -> list[Doc]:
        """Every definition of a queue (a node that fires it learns them at once)."""
        async with translated("periodic_queue_definitions"):
            cursor = self.definitions.find({"queue_inc": eq(queue_inc)})
            return [doc async for doc in cursor]

    async def beat(self, node: str, queues: list[str], now: int) -> None:
        """This node fires these queues (a heartbeat: see :mod:`taskdash.periodic.sharing`)."""
        async with translated("periodic_firer_beat"):
            await self.firers_.update_one(
                {"_id": eq(node)}, {"$set": {"queues": queues, "seen_at": now}}, upsert=True
            )

    async def firers(self, since: int) -> list[Doc]:
        """The firers heard of since ``since`` (a handful of documents: one per node)."""
        async with translated("periodic_firers"):
            return [doc async for doc in self.firers_.find({"seen_at": {"$gte": since}})]

    async def leave(self, node: str) -> None:
        """This node stops firing (best effort, bounded: it runs while the process stops)."""
        async with translated("periodic_firer_leave"):
            with deadline(LEAVE_TIMEOUT):
                await self.firers_.delete_one({"_id": eq(node)})

    async def open_batch(self, token: str, node: str, now: int) -> None:
        """Record a batch of fires about to be made (see the module's docstring)."""
        async with translated("periodic_open_batch"):
            await self.batches.insert_one({"_id": token, "node": node, "at": now})

    async def close_batch(self, token: str) -> None:
        """The batch's tasks are stored: forget it."""
        async with translated("periodic_close_batch"):
            await self.batches.delete_one({"_id": eq(token)})

    async def open_batches(self, tokens: list[str]) -> set[str]:
        """Which of these batches are not closed yet (the collection holds a handful: the
        batches in flight, and those of nodes that died in one)."""
        if not tokens:
            return set()
        async with translated("periodic_open_batches"):
            cursor = self.batches.find({"_id": {"$in": tokens}}, {"_id": 1})
            return {doc["_id"] async for doc in cursor}

    async def stale_batches(self, before: int, limit: int) -> list[str]:
        """Batches opened before ``before``: their node died or hangs (index ``at``)."""
        async with translated("periodic_stale_batches"):
            cursor = self.batches.find({"at": {"$lte": before}}, {"_id": 1}).limit(limit)
            return [doc["_id"] async for doc in cursor]

    async def fire(self, fires: list[Fire]) -> None:
        """Apply each fire whose schedule is still at its expected run, still active."""
        ops = []
        for f in fires:
            query = {"_id": eq(f.key), "next_run_at": eq(f.expected), "paused": eq(False)}
            ops.append(UpdateOne(query, {"$set": f.set_, "$inc": f.inc}))
        if ops:
            async with translated("periodic_fire"):
                await self.states.bulk_write(ops, ordered=False)

    async def fired_in(self, token: str) -> list[Doc]:
        """The states whose last run belongs to batch ``token`` (what it won; index
        ``run_token``)."""
        async with translated("periodic_fired_in"):
            found = self.states.find({"last_run.token": eq(token)}, WON)
            return [doc async for doc in found]

    # the tasks fires create ---------------------------------------------------------------

    async def insert_tasks(self, docs: list[Doc]) -> None:
        """Store fired tasks; one already stored under its id (another node did it, or an
        earlier try) is fine: ids are reserved per fire, so the same id is the same run."""
        if not docs:
            return
        async with translated("periodic_insert_fired"):
            try:
                await self.tasks.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                duplicates_only(exc)

    async def task_states(self, ids: list[int]) -> dict[int, str]:
        """The state of each of these tasks that exists."""
        found = await self._point_reads(self.tasks, sorted(set(ids)), {"state": 1})
        return {doc["_id"]: doc["state"] for doc in found}

    async def runs(self, schedule_inc: str, before: int, limit: int) -> list[Doc]:
        """The tasks one schedule created, newest run first, runs before ``before`` (ms;
        index ``schedule_runs``)."""
        query = {"schedule_inc": eq(schedule_inc), "scheduled_for": {"$lt": before}}
        async with translated("periodic_schedule_runs"):
            cursor = self.tasks.find(query).sort("scheduled_for", -1).limit(limit)
            return [doc async for doc in cursor]

    async def _point_reads(
        self, collection: Any, ids: list[Any], projection: Doc | None
    ) -> list[Doc]:
        """Documents by ``_id``, a few single reads at a time (``$in`` scans on nx-27017)."""
        limit = asyncio.Semaphore(POINT_READS)

        async def read(doc_id: Any) -> Doc | None:
            async with limit:
                found: Doc | None = await collection.find_one({"_id": eq(doc_id)}, projection)
                return found

        async with translated("periodic_point_reads"):
            found = await asyncio.gather(*(read(i) for i in ids))
        return [doc for doc in found if doc is not None]
