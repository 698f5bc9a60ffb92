"""The periodic task service's collections: services, queues, tasks and the task-id counter.

Only queries live here; the rules (who may do what, when a task is dead) are in
:mod:`taskdash.periodic.leasing`. Times are epoch milliseconds (see :mod:`.times`).

A task document::

    {_id: <uint64 id>, seq: <the id again, for listing>, service, queue, service_inc,
     queue_inc, task_type, task_data: <JSON text>, size: <bytes it adds to a lease reply>,
     state, attempts,
     created_at, updated_at, due: <ms it may be handed out from; absent when done or dead>,
     lease: <token of the last lease>, lease_until: <ms>}

Every service and queue document gets a random ``incarnation`` when it is created, and a
task carries both of its owners' (``service_inc``, ``queue_inc``). Tasks are found by their
queue's incarnation, not by names: a name deregistered and registered again (or a queue
destroyed and created again) is a new incarnation, so a task that a stale node inserted for
the old one after its deletion can never be handed to the new owner.

``state`` is ``pending`` (never handed out), ``leased``, ``failed``, ``done`` or ``dead``. A
task can be handed out exactly when ``due <= now``: a new or failed task is due at once, a
leased one when its lease expires. So one index (service, queue, due) answers "what can be
leased", whatever the reason, and a claim that sets ``due`` into the future is what keeps a
second worker from taking the same task.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from taskdash.store.mongo import Doc, Store, count_matching, eq, insert_new, translated

PENDING, LEASED, FAILED, DONE, DEAD = "pending", "leased", "failed", "done", "dead"
STATES = (PENDING, LEASED, FAILED, DONE, DEAD)

_COUNTER_ID = "periodic_task_id"

T = TypeVar("T")
R = TypeVar("R")


def queue_key(service: str, service_inc: str, queue: str) -> str:
    """The queue document's ``_id``: unambiguous for any names (a JSON array as text).

    The service's incarnation is part of it, so a queue that a stale node created for a
    deregistered service never blocks (or is found by) the name's next owner.
    """
    return json.dumps([service, service_inc, queue], ensure_ascii=False)


def new_incarnation() -> str:
    """A random id for a new service or queue document (never reused)."""
    return secrets.token_hex(12)


def sample_filter(state: str) -> Doc:
    """The metadata listing's query: equality on ``state`` alone, answered by the
    ``by_state`` index (``$eq``: a bare value would scan on nx-27017, see :func:`eq`)."""
    return {"state": eq(state)}


def list_filter(queue_inc: str, state: str | None, after: int) -> tuple[Doc, str]:
    """The task listing's query and sort field: ``seq``, a copy of the id.

    Not ``_id``: nx-27017 answers an ``_id`` range by scanning the collection (1.4-2.8 s a
    page at 100,000 tasks) and refuses ``_id`` in a compound index; ``seq`` in the indexes
    ``(queue_inc, seq)`` and ``(queue_inc, state, seq)`` makes every page an index range.
    """
    query: Doc = {**_in_queue(queue_inc)}
    if state:
        query["state"] = eq(state)
    query["seq"] = {"$gt": after}
    return query, "seq"


def _in_queue(queue_inc: str) -> Doc:
    return {"queue_inc": eq(queue_inc)}


class PeriodicStore:
    """The queries of the periodic task service, on TaskDash's store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.services = store["periodic_services"]
        self.queues = store["periodic_queues"]
        self.tasks = store["periodic_tasks"]
        self.counters = store["periodic_counters"]
        # schedules go with their queue (their own queries are in store/schedules.py)
        self.schedules = store["periodic_schedules"]
        self.schedule_states = store["periodic_schedule_state"]
        self._inserts: Group[Doc, None] = Group("periodic_inserts", self._insert_many)

    # services ---------------------------------------------------------------------------

    async def insert_service(self, name: str, secret_hash: str, now: int) -> str | None:
        """Register ``name``: its new incarnation; None if it exists (secret handed out)."""
        inc = new_incarnation()
        doc = {"_id": name, "secret_hash": secret_hash, "incarnation": inc, "created_at": now}
        async with translated("periodic_insert_service"):
            return inc if await insert_new(self.services, doc) else None

    async def service_auth(self, name: str) -> tuple[str, str] | None:
        """``name``'s (secret hash, incarnation), None for an unknown service."""
        async with translated("periodic_service_auth"):
            doc = await self.services.find_one(
                {"_id": eq(name)}, {"secret_hash": 1, "incarnation": 1}
            )
        return (doc["secret_hash"], doc["incarnation"]) if doc else None

    async def list_services(self, after: str, limit: int) -> list[Doc]:
        """Services by name, after ``after`` (a page cursor), without their hashes."""
        query = {"_id": {"$gt": after}} if after else {}
        async with translated("periodic_list_services"):
            projection = {"secret_hash": 0, "incarnation": 0}
            cursor = self.services.find(query, projection).sort("_id", 1).limit(limit)
            return [doc async for doc in cursor]

    async def delete_service(self, name: str, inc: str) -> bool:
        """Delete incarnation ``inc`` of a service with its schedules, queues and tasks; itself
        last.

        If this is cut short, the service still exists and deregistering again (with the same
        secret) finishes the job; nothing is left behind unreachable. A stale node asking for
        an incarnation that is already gone deletes nothing of the name's next owner.
        """
        async with translated("periodic_delete_service"):
            mine = {"service": eq(name), "service_inc": eq(inc)}
            queues = self.queues.find(mine, {"incarnation": 1})
            for queue_inc in [doc["incarnation"] async for doc in queues]:
                await self._delete_schedules(queue_inc)
            await self.tasks.delete_many({"service_inc": eq(inc)})
            await self.queues.delete_many(mine)
            result = await self.services.delete_one({"_id": eq(name), "incarnation": eq(inc)})
        return result.deleted_count == 1

    # queues -----------------------------------------------------------------------------

    async def insert_queue(
        self, service: str, service_inc: str, queue: str, now: int
    ) -> str | None:
        """Create a queue: its new incarnation; None if the service has one by that name."""
        inc = new_incarnation()
        doc = {
            "_id": queue_key(service, service_inc, queue),
            "service": service,
            "service_inc": service_inc,
            "queue": queue,
            "incarnation": inc,
            "created_at": now,
        }
        async with translated("periodic_insert_queue"):
            return inc if await insert_new(self.queues, doc) else None

    async def queue_incarnation(self, service: str, service_inc: str, queue: str) -> str | None:
        """The incarnation of this service incarnation's queue, None if it has no such queue."""
        key = queue_key(service, service_inc, queue)
        async with translated("periodic_queue_incarnation"):
            doc = await self.queues.find_one({"_id": eq(key)}, {"incarnation": 1})
        return doc["incarnation"] if doc else None

    async def live_queues(self, incarnations: list[str]) -> set[str]:
        """Which of these queue incarnations still exist (for the metadata listing)."""
        if not incarnations:
            return set()
        async with translated("periodic_live_queues"):
            cursor = self.queues.find({"incarnation": {"$in": incarnations}}, {"incarnation": 1})
            return {doc["incarnation"] async for doc in cursor}

    async def list_queues(self, service: str, service_inc: str) -> list[Doc]:
        """The service's queues, by name."""
        query = {"service": eq(service), "service_inc": eq(service_inc)}
        async with translated("periodic_list_queues"):
            projection = {"queue": 1, "created_at": 1, "incarnation": 1}
            cursor = self.queues.find(query, projection).sort("queue", 1)
            return [doc async for doc in cursor]

    async def some_queues(self, limit: int) -> list[Doc]:
        """Up to ``limit`` queues of any service (names, incarnation), for the metrics."""
        async with translated("periodic_some_queues"):
            projection = {"service": 1, "queue": 1, "incarnation": 1}
            return [doc async for doc in self.queues.find({}, projection).limit(limit)]

    async def depth(self, queue_inc: str, state: str) -> int:
        """A queue's tasks in ``state``: the ``count`` command on an index range (metrics)."""
        query = {**_in_queue(queue_inc), "state": eq(state)}
        async with translated("periodic_depth"):
            return await count_matching(self.tasks, query)

    async def delete_queue(self, service: str, service_inc: str, queue: str, inc: str) -> bool:
        """Delete a queue, its schedules and its tasks (the queue last: a cut-short call can
        be repeated; schedules before tasks, so that no fire adds one after)."""
        async with translated("periodic_delete_queue"):
            await self._delete_schedules(inc)
            await self.tasks.delete_many(_in_queue(inc))
            result = await self.queues.delete_one(
                {"_id": eq(queue_key(service, service_inc, queue)), "incarnation": eq(inc)}
            )
        return result.deleted_count == 1

    async def _delete_schedules(self, queue_inc: str) -> None:
        """A queue's schedules, states first (see store/schedules.py), so none fires after."""
        await self.schedule_states.delete_many(_in_queue(queue_inc))
        await self.schedules.delete_many(_in_queue(queue_inc))

    # tasks ------------------------------------------------------------------------------

    async def reserve_ids(self, count: int) -> int:
        """Reserve ``count`` task ids for this node; returns the last one.

        One ``$inc`` on a counter document: every node sharing the store gets its own range,
        so ids are unique without coordination.
        """
        async with translated("periodic_reserve_ids"):
            doc = await self.counters.find_one_and_update(
                {"_id": _COUNTER_ID},
                {"$inc": {"value": count}},
                upsert=True,
                return_document=True,
            )
        return int(doc["value"])

    async def insert_task(self, doc: Doc) -> None:
        """Store a new task (its id comes from :meth:`reserve_ids`); returns once it is stored.

        Concurrent calls share one ``insert_many`` (see :class:`Group`).
        """
        await self._inserts.add(doc)

    async def _insert_many(self, docs: list[Doc]) -> list[None]:
        async with translated("periodic_insert_tasks"):
            await self.tasks.insert_many(docs, ordered=False)
        return [None] * len(docs)

    async def candidates(self, queue_inc: str, now: int, limit: int) -> list[Doc]:
        """Up to ``limit`` tasks that may be handed out now, longest waiting first.

        Read without claiming: the claim is the conditional update that follows. The sort is
        exactly the index's order, so this stays an index range read however long the queue
        is; a second sort key (the id, for ties) would make the database sort every task due
        in the same millisecond — all of them after a mass redrive. Ties come in index order,
        which is insertion order on MongoDB and nx-27017 alike.
        """
        query = {**_in_queue(queue_inc), "due": {"$lte": now}}
        async with translated("periodic_candidates"):
            cursor = self.tasks.find(query, {"attempts": 1, "due": 1, "size": 1, "state": 1})
            cursor = cursor.sort("due", 1).limit(limit)
            return [doc async for doc in cursor]

    async def claim(
        self, ids: list[int], *, now: int, until: int, token: str, max_attempts: int
    ) -> None:
        """Lease those of ``ids`` still due and under ``max_attempts`` to ``token``.

        Each document is matched and updated atomically, and the update moves ``due`` past
        ``now``: of two workers (or nodes) claiming the same task, exactly one matches it.
        """
        query = {"_id": {"$in": ids}, "due": {"$lte": now}, "attempts": {"$lt": max_attempts}}
        update = {
            "$set": {
                "state": LEASED,
                "lease": token,
                "lease_until": until,
                "due": until,
                "updated_at": now,
            },
            "$inc": {"attempts": 1},
        }
        async with translated("periodic_claim"):
            await self.tasks.update_many(query, update)

    async def bury(self, ids: list[int], *, now: int, max_attempts: int) -> int:
        """Move those of ``ids`` that are due but delivered ``max_attempts`` times to dead."""
        query = {"_id": {"$in": ids}, "due": {"$lte": now}, "attempts": {"$gte": max_attempts}}
        update = {"$set": {"state": DEAD, "updated_at": now}, "$unset": {"due": ""}}
        async with translated("periodic_bury"):
            result = await self.tasks.update_many(query, update)
        return result.modified_count

    async def leased_to(self, token: str) -> list[Doc]:
        """The tasks one claim won (read back by its token)."""
        async with translated("periodic_leased_to"):
            return [doc async for doc in self.tasks.find({"lease": eq(token)})]

    async def get_task(self, task_id: int) -> Doc | None:
        """One task by id."""
        async with translated("periodic_get_task"):
            return await self.tasks.find_one({"_id": eq(task_id)})

    async def settle(
        self,
        queue_inc: str,
        task_id: int,
        now: int,
        changes: Doc,
        attempts: Doc | None = None,
    ) -> bool:
        """Apply ``changes`` to a task of this queue only while it is leased and unexpired.

        One conditional update: an answer that comes after the lease ended, or for a task
        that is not leased, matches nothing and changes nothing (the caller says why).
        """
        query: Doc = {
            "_id": eq(task_id),
            **_in_queue(queue_inc),
            "state": eq(LEASED),
            "lease_until": {"$gt": now},
        }
        if attempts is not None:
            query["attempts"] = attempts
        set_, unset = _split(changes)
        update: Doc = {"$set": {**set_, "updated_at": now}}
        if unset:
            update["$unset"] = unset
        async with translated("periodic_settle"):
            result = await self.tasks.update_one(query, update)
        return result.modified_count == 1

    async def delete_task(self, queue_inc: str, task_id: int) -> bool:
        """Delete one task of this queue; False if there is none."""
        async with translated("periodic_delete_task"):
            result = await self.tasks.delete_one({"_id": eq(task_id), **_in_queue(queue_inc)})
        return result.deleted_count == 1

    async def redrive(self, queue_inc: str, now: int, task_id: int | None) -> int:
        """Dead tasks of the queue (or just ``task_id``) become pending again, attempts reset."""
        query: Doc = {**_in_queue(queue_inc), "state": eq(DEAD)}
        if task_id is not None:
            query["_id"] = eq(task_id)
        update = {"$set": {"state": PENDING, "attempts": 0, "due": now, "updated_at": now}}
        async with translated("periodic_redrive"):
            result = await self.tasks.update_many(query, update)
        return result.modified_count

    async def list_tasks(
        self, queue_inc: str, *, state: str | None, after: int, limit: int
    ) -> list[Doc]:
        """A page of the queue's tasks by id, optionally in one state."""
        query, order = list_filter(queue_inc, state, after)
        async with translated("periodic_list_tasks"):
            cursor = self.tasks.find(query).sort(order, 1).limit(limit)
            return [doc async for doc in cursor]

    async def delete_tasks(self, ids: list[int]) -> int:
        """Delete these tasks (orphans of a deleted queue incarnation)."""
        async with translated("periodic_delete_tasks"):
            result = await self.tasks.delete_many({"_id": {"$in": ids}})
        return result.deleted_count

    async def sample(self, state: str, limit: int) -> list[Doc]:
        """Up to ``limit`` tasks in ``state`` (for the metadata listing), without their data."""
        async with translated("periodic_sample"):
            cursor = self.tasks.find(sample_filter(state), {"task_data": 0}).limit(limit)
            return [doc async for doc in cursor]


class Group(Generic[T, R]):
    """Group commit: writes that arrive while one batch is in flight go together in the next.

    Alone, a write costs one round trip as before; under load (many clients at once) one
    round trip and one commit carry many, which is most of what CreateTask costs (measured:
    CompleteTask, answered by few workers one at a time, gained nothing, so it is not
    grouped). Every caller returns only once its own write is acknowledged, with its own result;
    if a batch fails, every caller in it gets the error (as with any lost reply, some of its
    writes may have been applied).
    """

    MAX_BATCH = 500

    def __init__(self, name: str, write: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self.name = name
        self.write = write
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def add(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name=self.name)
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self.MAX_BATCH]
            del self._pending[: self.MAX_BATCH]
            try:
                results = await self.write([item for item, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)


def _split(changes: dict[str, Any]) -> tuple[Doc, Doc]:
    """``None`` values are fields to remove (``$unset``), the rest to set."""
    set_ = {k: v for k, v in changes.items() if v is not None}
    unset = {k: "" for k, v in changes.items() if v is None}
    return set_, unset
