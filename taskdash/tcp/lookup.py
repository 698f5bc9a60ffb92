"""Find requests: answered from the read cache, else batched into one store query.

A Find whose id is cached (:mod:`taskdash.tcp.cache`) is answered without the store. The
others wait for the next lookup: the ids asked while one lookup runs go together into the
next, one ``$in`` query on ``_id`` (the binding lives in the task's document), so Finds from
many connections cost one round trip per batch, not one each. A Find of an id that the
running lookup is already reading joins it (when the cache is on), so concurrent Finds of
one id cost one read. A write by this server (:meth:`FindBatcher.invalidate`) drops the
id's entry and keeps a lookup already running from caching, or handing a later Find, what
it may have read before the write.

:meth:`FindBatcher.look` reads the tasks changed since its last look (their ``changed_at``
stamp, one indexed range query), puts those the cache holds, and confirms the others
(:mod:`taskdash.tcp.cache`): a hot entry no one changes is then read again only every
``max_age``, not every ``ttl``. The window starts ``lookback`` before the previous look began,
so a write stamped a little earlier than it committed, or by a daemon whose clock is a little
behind, is still seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from taskdash.store import Store
from taskdash.store.assignments import Assignment
from taskdash.store.mongo import Doc
from taskdash.store.tasks import WINDOW, changed_since, get_tasks
from taskdash.tcp.cache import MISS, Fields, FindCache

MAX_BATCH = 1000
#: the most changed tasks one look reads; more than that breaks the chain of confirmations
LOOK_LIMIT = 10_000
#: what Find reads: the task's record and its binding
FIELDS = ("name", "url", "description", "status", *WINDOW, "assignee", "assignment")


def found_fields(doc: Doc) -> dict[str, str]:
    """The seed's task record of a stored task, as Find returns it."""
    binding = Assignment.from_doc(doc)
    fields = {key: str(doc.get(key) or "") for key in ("name", "url")}
    fields["user"] = binding.user
    fields["group_id"] = binding.group_id
    fields.update({key: str(doc.get(key) or "") for key in ("description", "status", *WINDOW)})
    return fields


Waiters = dict[str, list["asyncio.Future[Fields | None]"]]


class LookOverflow(Exception):
    """More tasks changed since the last look than one look reads."""


class FindBatcher:
    """Cached lookups; the misses coalesced into one query at a time."""

    def __init__(
        self,
        store: Store,
        cache: FindCache,
        *,
        now_ms: Callable[[], int],
        lookback: float = 5.0,
        look_limit: int = LOOK_LIMIT,
    ) -> None:
        self.store = store
        self.cache = cache
        self.now_ms = now_ms
        self.lookback_ms = int(lookback * 1000)
        self.look_limit = look_limit
        self._waiting: Waiters = {}  # ids for the next query
        self._batch: Waiters = {}  # ids the running query reads
        self._stale: set[str] = set()  # of those, ids written meanwhile: not cached, not joined
        self._runner: asyncio.Task[None] | None = None
        self._looking: set[str] | None = None  # ids written during the running look
        self._looked_ms: int | None = None  # wall clock at the last look's start, chain unbroken
        self.queries = 0  # store round trips
        self.reads = 0  # ids read from the store
        self.joined = 0  # Finds answered by a lookup already running for their id
        self.looks = 0  # change looks that succeeded
        self.look_reads = 0  # changed tasks they read

    async def find(self, task_id: str) -> Fields | None:
        """The task's fields (None if unknown); raises the store's error if the lookup failed."""
        cached = self.cache.get(task_id)
        if cached is not MISS:
            return cached
        future: asyncio.Future[Fields | None] = asyncio.get_running_loop().create_future()
        running = self._batch.get(task_id)
        if running is not None and self.cache.enabled and task_id not in self._stale:
            running.append(future)
            self.joined += 1
        else:
            self._waiting.setdefault(task_id, []).append(future)
            if self._runner is None or self._runner.done():
                self._runner = asyncio.create_task(self._run(), name="tcp-find-batch")
        return await future

    def reading(self, task_id: str) -> bool:
        """Whether the running lookup reads ``task_id``."""
        return task_id in self._batch

    @property
    def looking(self) -> bool:
        """Whether a change look is running."""
        return self._looking is not None

    def invalidate(self, task_id: str) -> None:
        """This server wrote ``task_id``: the next Find of it reads the store."""
        self.cache.invalidate(task_id)
        if task_id in self._batch:
            self._stale.add(task_id)
        if self._looking is not None:
            self._looking.add(task_id)

    async def look(self) -> None:
        """Put what changed since the last look into the cache and confirm the rest.

        Raises the store's error after breaking the chain (entries then live ``ttl`` after
        their own read); so does a look that finds more than ``look_limit`` changes, after
        putting those it read.
        """
        started, wall = self.cache.clock(), self.now_ms()
        since = (wall if self._looked_ms is None else self._looked_ms) - self.lookback_ms
        self._looking = written = set()
        try:
            docs = await changed_since(self.store, since, FIELDS, self.look_limit)
        except BaseException:
            self._break()
            raise
        finally:
            self._looking = None
        for doc in docs:
            task_id = doc["_id"]
            if task_id not in written and self.cache.holds(task_id):
                self.cache.put(task_id, found_fields(doc), read_at=started)
        self.look_reads += len(docs)
        if len(docs) > self.look_limit:
            self._break()
            raise LookOverflow(f"more than {self.look_limit} tasks changed since the last look")
        self.cache.confirm(started)
        self._looked_ms = wall
        self.looks += 1

    def _break(self) -> None:
        self.cache.unconfirm()
        self._looked_ms = None

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
            self._batch = {task_id: self._waiting.pop(task_id) for task_id in ids}
            self._stale = set()
            started = self.cache.clock()
            error: Exception | None = None
            try:
                found = await self._lookup(ids)
            except Exception as exc:  # every waiter gets the error: the caller answers 1001
                found, error = {}, exc
            finally:
                batch, stale, self._batch, self._stale = self._batch, self._stale, {}, set()
            for task_id, futures in batch.items():
                fields = found.get(task_id)
                if error is None and task_id not in stale:
                    self.cache.put(task_id, fields, read_at=started)
                for future in futures:
                    if future.done():
                        continue
                    if error is not None:
                        future.set_exception(error)
                    else:
                        future.set_result(fields)

    async def _lookup(self, ids: list[str]) -> dict[str, Fields]:
        self.queries += 1
        self.reads += len(ids)
        tasks = await get_tasks(self.store, ids, FIELDS)
        return {tid: found_fields(doc) for tid, doc in tasks.items()}
