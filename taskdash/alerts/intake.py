"""State changes of services (``service_events``, written by the checker) become alert events.

Read, not hooked: the checker stays as it is, and a change recorded by any daemon is picked
up by whichever daemon looks first. Marking a change ``alerted`` comes after its event is
enqueued, so a crash in between only enqueues it again, under the same key (a no-op). A
change older than ``max_event_age`` (after an outage, or the first start with alerts on a
store with history) is marked without an alert.
"""

from __future__ import annotations

from taskdash.alerts.outbox import enqueue
from taskdash.settings import AlertsSettings
from taskdash.store import Store
from taskdash.store.alerts import (
    mark_alerted,
    skip_old_service_events,
    unalerted_service_events,
)
from taskdash.store.times import to_ms


async def service_changes(store: Store, settings: AlertsSettings, now: int) -> int:
    """Turn one batch of new state changes into events; how many were enqueued."""
    await skip_old_service_events(store, now - int(settings.max_event_age * 1000))
    changes = await unalerted_service_events(store, settings.batch_size)
    for change in changes:
        await enqueue(
            store,
            kind=f"service.{change['to']}",
            subject=change["service_id"],
            details={
                "from": change["from"],
                "to": change["to"],
                "reason": change["reason"],
                "node": change["node"],
            },
            key=f"service:{change['_id']}",
            at=to_ms(change["at"]),
            keep_days=settings.keep_days,
        )
    await mark_alerted(store, [c["_id"] for c in changes])
    return len(changes)
