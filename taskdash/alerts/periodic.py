"""Periodic tasks that die raise ``periodic.task_dead`` alerts, on whichever node buried them.

A task dies in one of two conditional updates of :class:`~taskdash.store.periodic.PeriodicStore`
(a bury when a lease round finds it spent, or a failed completion at ``max_attempts``); this
store does the same and then enqueues the deaths it can see. The key is the task and the time
it died, so two nodes that both see one death record one event, and a task redriven and dead
again is a new one. An alert that cannot be enqueued (store trouble) is logged, never allowed
to fail the task operation that caused it.
"""

from __future__ import annotations

from typing import Any

import structlog

from taskdash.alerts.outbox import enqueue
from taskdash.errors import StoreError
from taskdash.store import Store
from taskdash.store.alerts import dead_tasks
from taskdash.store.mongo import Doc
from taskdash.store.periodic import DEAD, PeriodicStore

log = structlog.get_logger("taskdash.alerts")

KIND = "periodic.task_dead"


class AlertingPeriodicStore(PeriodicStore):
    """The periodic service's store, enqueuing an alert for every task it moves to dead."""

    def __init__(self, store: Store, *, keep_days: float) -> None:
        super().__init__(store)
        self.keep_days = keep_days

    async def bury(self, ids: list[int], *, now: int, max_attempts: int) -> int:
        buried = await super().bury(ids, now=now, max_attempts=max_attempts)
        if buried:
            await self._alert(ids, now)
        return buried

    async def settle(
        self,
        queue_inc: str,
        task_id: int,
        now: int,
        changes: Doc,
        attempts: Doc | None = None,
    ) -> bool:
        settled = await super().settle(queue_inc, task_id, now, changes, attempts)
        if settled and changes.get("state") == DEAD:
            await self._alert([task_id], now)
        return settled

    async def _alert(self, ids: list[int], now: int) -> None:
        try:
            for task in await dead_tasks(self.store, ids, now):
                await enqueue(
                    self.store,
                    kind=KIND,
                    subject=f"{task['service']}/{task['queue']}",
                    details=_details(task),
                    key=f"{KIND}:{task['_id']}:{now}",
                    at=now,
                    keep_days=self.keep_days,
                )
        except StoreError as exc:
            log.error("alert_enqueue_failed", kind=KIND, tasks=ids, error=str(exc))


def _details(task: Doc) -> dict[str, Any]:
    return {
        "task_id": task["_id"],
        "task_type": task.get("task_type", ""),
        "service": task["service"],
        "queue": task["queue"],
        "attempts": task.get("attempts", 0),
    }
