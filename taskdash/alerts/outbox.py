"""How any producer raises an alert: one call, one event document, whatever runs the webhooks.

A producer needs no webhook settings: the event waits in ``alert_events`` until a daemon with
webhooks fans it out. ``key`` must be derived from the event itself (the state change's id,
the task and the time it died), never random: then a producer that runs on several nodes,
or retries after a crash, records the event once.
"""

from __future__ import annotations

from typing import Any

from taskdash.alerts.payloads import title as default_title
from taskdash.store import Store
from taskdash.store.alerts import insert_event
from taskdash.store.times import to_ms, utcnow

#: what :func:`enqueue` keeps an event for when its caller does not say (the settings' default)
KEEP_DAYS = 30.0


async def enqueue(
    store: Store,
    *,
    kind: str,
    subject: str,
    details: dict[str, Any],
    key: str,
    title: str = "",
    at: int | None = None,
    keep_days: float = KEEP_DAYS,
) -> bool:
    """Record an alert event (``kind`` one of :data:`~taskdash.settings.ALERT_KINDS`).

    ``subject`` is what the event is about (a service id): rate limits and the service page
    go by it. ``title`` defaults to the kind's template over ``details``; ``at`` (epoch ms)
    to now. False when ``key`` was recorded already.
    """
    return await insert_event(
        store,
        key=key,
        kind=kind,
        subject=subject,
        details=details,
        title=title or default_title(kind, subject, details),
        at=to_ms(utcnow()) if at is None else at,
        keep_days=keep_days,
    )
