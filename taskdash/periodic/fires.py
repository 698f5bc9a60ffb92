"""What a fire leaves behind, and how any node completes it: shared by the firer and the
schedule operations (pausing or deleting a schedule completes its last fire first).

See :mod:`taskdash.store.schedules` for the documents and why a fire is recoverable.
"""

from __future__ import annotations

import structlog

from taskdash.periodic.timing import Timing
from taskdash.store.mongo import Doc
from taskdash.store.periodic import PENDING
from taskdash.store.schedules import ScheduleStore

log = structlog.get_logger("taskdash.periodic.fires")

WHOLE_QUEUE = 64  # definitions missing at once above which the whole queue's are read
MAX_KNOWN = 200_000  # definitions remembered per node (forgotten all at once beyond)


def timing_of(definition: Doc) -> Timing:
    """A schedule definition's :class:`Timing`."""
    if "interval_ms" in definition:
        return Timing(interval_ms=definition["interval_ms"], anchor_ms=definition["anchor_ms"])
    return Timing(cron=definition["cron"], timezone=definition["timezone"])


def fired_task(definition: Doc, run: Doc, now: int) -> Doc:
    """The task of a run: the schedule's template under the id its fire reserved.

    Whichever node stores it (the winner, or one finishing a batch whose node died) stores
    the same task under the same id, so only one can be stored.
    """
    return {
        "_id": run["task_id"],
        "seq": run["task_id"],
        "service": definition["service"],
        "queue": definition["queue"],
        "service_inc": definition["service_inc"],
        "queue_inc": definition["queue_inc"],
        "task_type": definition["task_type"],
        "task_data": definition["task_data"],
        "size": definition["size"],
        "state": PENDING,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
        "due": now + run["delay_ms"],
        "schedule_id": definition["schedule_id"],
        "schedule_inc": definition["incarnation"],
        "scheduled_for": run["due"],
    }


class Definitions:
    """Schedule definitions as this node has read them.

    A definition never changes (a schedule deleted and created again under the same id is a
    new incarnation, read again), so a node reads each once, not at every fire.
    """

    def __init__(self, store: ScheduleStore) -> None:
        self.store = store
        self._known: dict[str, Doc] = {}

    async def of(self, states: list[Doc]) -> dict[str, Doc]:
        """The definition of each of these schedule states (those that have one)."""
        missing = [s for s in states if not self._matches(s)]
        if len(missing) > WHOLE_QUEUE:
            found = []
            for queue_inc in sorted({s["queue_inc"] for s in missing}):
                found += await self.store.queue_definitions(queue_inc)
        else:
            found = await self.store.definitions_of([s["_id"] for s in missing])
        if len(self._known) + len(found) > MAX_KNOWN:
            self._known.clear()
        self._known.update((doc["_id"], doc) for doc in found)
        return {s["_id"]: self._known[s["_id"]] for s in states if self._matches(s)}

    def _matches(self, state: Doc) -> bool:
        known = self._known.get(state["_id"])
        return known is not None and known["incarnation"] == state["incarnation"]


async def finish_open_fires(
    store: ScheduleStore, definitions: Definitions, states: list[Doc], now: int
) -> None:
    """Store the task of each schedule's last run if that fire's batch is still open (its
    node died, or is slow): before a schedule fires again, pauses or goes."""
    fired = [s for s in states if "token" in s.get("last_run", {})]
    open_ = await store.open_batches(sorted({s["last_run"]["token"] for s in fired}))
    unsure = [s for s in fired if s["last_run"]["token"] in open_]
    await store_tasks(store, definitions, unsure, now)


async def finish_batch(
    store: ScheduleStore, definitions: Definitions, token: str, now: int
) -> None:
    """Store every task of batch ``token`` (those missing), then close it."""
    await store_tasks(store, definitions, await store.fired_in(token), now)
    await store.close_batch(token)


async def store_tasks(
    store: ScheduleStore, definitions: Definitions, states: list[Doc], now: int
) -> int:
    """Store the task of each state's last run (a duplicate is one already stored)."""
    known = await definitions.of(states)
    tasks = [fired_task(known[s["_id"]], s["last_run"], now) for s in states if s["_id"] in known]
    await store.insert_tasks(tasks)
    return len(tasks)
