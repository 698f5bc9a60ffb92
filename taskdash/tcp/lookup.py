"""Find requests, batched: the ids asked while one lookup runs go together into the next.

One ``$in`` query on ``_id`` answers every Find that arrived meanwhile (the binding lives in
the task's document), so Finds from many connections cost one round trip per batch, not one
each. On nx-27017 a query for 50 ids costs about as much as a query for one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from taskdash.store import Store
from taskdash.store.assignments import Assignment
from taskdash.store.mongo import Doc
from taskdash.store.tasks import WINDOW, get_tasks

MAX_BATCH = 1000
#: what Find returns: the task's record and its binding
FIELDS = ("name", "url", "description", "status", *WINDOW, "assignee", "assignment")


@dataclass(frozen=True, slots=True)
class Found:
    """A stored task (its binding included)."""

    task: Doc

    @property
    def assignment(self) -> Assignment:
        """The task's current binding (empty if never assigned)."""
        return Assignment.from_doc(self.task)


class FindBatcher:
    """Coalesces concurrent lookups into one query at a time."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._waiting: dict[str, list[asyncio.Future[Found | None]]] = {}
        self._runner: asyncio.Task[None] | None = None
        self.queries = 0

    async def find(self, task_id: str) -> Found | None:
        """The task (None if unknown); raises the store's error if the lookup failed."""
        future: asyncio.Future[Found | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(task_id, []).append(future)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="tcp-find-batch")
        return await future

    async def stop(self) -> None:
        """Cancel a lookup still running (its waiters are gone once connections are closed)."""
        runner, self._runner = self._runner, None
        if runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait({runner})

    async def _run(self) -> None:
        """Serve batches until nobody waits; each batch takes the ids gathered meanwhile."""
        while self._waiting:
            ids = list(self._waiting)[:MAX_BATCH]
            batch = {task_id: self._waiting.pop(task_id) for task_id in ids}
            try:
                found = await self._lookup(ids)
            except Exception as exc:  # every waiter gets the error: the caller answers 1001
                for futures in batch.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                continue
            for task_id, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(found.get(task_id))

    async def _lookup(self, ids: list[str]) -> dict[str, Found]:
        self.queries += 1
        tasks = await get_tasks(self.store, ids, FIELDS)
        return {tid: Found(doc) for tid, doc in tasks.items()}
