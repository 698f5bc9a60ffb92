"""The periodic service's tasks as TaskDash ``TaskMetaData`` records (what ``/metadata`` lists).

Status mapping (the seed's examples are running, finish, shutdown, restart):

==========  ============  ==============================================
task state  ``status``    meaning
==========  ============  ==============================================
pending     ``pending``   created, never handed out
leased      ``running``   a worker holds it (lease not yet ended)
leased      ``restart``   its lease expired: it will be handed out again
failed      ``restart``   its worker reported failure; it will run again
done        ``finish``    completed successfully
dead        ``shutdown``  failed or expired ``max_attempts`` times
==========  ============  ==============================================

Every node lists the same shared store under one TaskDash service id, so the records are
the same whichever node the fetcher asks. Tasks whose queue no longer exists (inserted by a
node that still trusted a queue or service deleted a moment before) are never listed: they
can never be handed out, and the listing removes them.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from taskdash.periodic.leasing import Leasing
from taskdash.periodic.views import iso
from taskdash.store.periodic import DEAD, DONE, FAILED, LEASED, PENDING

STATUS = {
    PENDING: "pending",
    LEASED: "running",
    FAILED: "restart",
    DONE: "finish",
    DEAD: "shutdown",
}
# listed first when there are more tasks than the limit: what needs attention
ORDER = (LEASED, FAILED, PENDING, DEAD, DONE)


def task_url(base: str, service: str, queue: str, task_id: int) -> str:
    """The HTTP address of one task (``GET`` it with the service's secret)."""
    quote = urllib.parse.quote
    return (
        f"{base.rstrip('/')}/v1/services/{quote(service, safe='')}/queues/"
        f"{quote(queue, safe='')}/tasks/{task_id}"
    )


def status(doc: dict[str, Any], now: int) -> str:
    """The TaskMetaData status: a lease that has ended is not running any more."""
    if doc["state"] == LEASED and doc["lease_until"] <= now:
        return "restart"
    return STATUS[doc["state"]]


def record(doc: dict[str, Any], base: str, now: int) -> dict[str, str]:
    """One task as ``TaskMetaData {id, name, url, description, status, reserved}``."""
    extra = {
        "service_name": doc["service"],
        "queue_name": doc["queue"],
        "state": doc["state"],
        "attempts": doc["attempts"],
        "created_at": iso(doc["created_at"]),
    }
    if "schedule_id" in doc:
        extra["schedule_id"] = doc["schedule_id"]
    return {
        "id": f"periodic-{doc['_id']}",
        "name": doc["task_type"] or f"task {doc['_id']}",
        "url": task_url(base, doc["service"], doc["queue"], doc["_id"]),
        "description": f"{doc['service']} / {doc['queue']}",
        "status": status(doc, now),
        "reserved": json.dumps(extra, ensure_ascii=False, separators=(",", ":")),
    }


async def metadata(leasing: Leasing, base: str, limit: int) -> list[dict[str, str]]:
    """Up to ``limit`` tasks of existing queues, the ones in progress first."""
    store = leasing.store
    docs: list[dict[str, Any]] = []
    for state in ORDER:
        if len(docs) >= limit:
            break
        docs += await store.sample(state, limit - len(docs))
    live = await store.live_queues(sorted({d.get("queue_inc", "") for d in docs}))
    # a task stamped with a queue incarnation that is gone can never be reached again (ids
    # are random, never reused); one without a stamp predates incarnations: left alone
    orphans = [d["_id"] for d in docs if d.get("queue_inc") and d["queue_inc"] not in live]
    if orphans:
        await store.delete_tasks(orphans)
    now = leasing.clock()
    return [record(doc, base, now) for doc in docs if doc.get("queue_inc") in live]
