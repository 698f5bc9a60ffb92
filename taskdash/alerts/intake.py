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
from taskdash.store.alerts import mark_alerted, unalerted_service_events
from taskdash.store.times import to_ms


async def service_changes(store: Store, settings: AlertsSettings, now: int) -> int:
    """Turn one batch of new state changes into events; how many were enqueued."""
    changes = await unalerted_service_events(store, settings.batch_size)
    oldest = now - int(settings.max_event_age * 1000)
    too_old = [c["_id"] for c in changes if to_ms(c["at"]) < oldest]
    fresh = [c for c in changes if to_ms(c["at"]) >= oldest]
    for change in fresh:
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
    await mark_alerted(store, too_old, "too_old")
    await mark_alerted(store, [c["_id"] for c in fresh], "queued")
    return len(fresh)
