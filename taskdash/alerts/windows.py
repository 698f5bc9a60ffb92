"""Daily-window flag changes (``task_events``, store/task_windows.py) become alert events.

Read, not hooked, like the services' state changes (:mod:`taskdash.alerts.intake`): a change
recorded by any daemon is picked up by whichever daemon's dispatcher looks first, enqueued
under a key derived from the change (enqueued twice: one event), then marked. A change older
than ``max_event_age`` is marked without an alert. Kinds: ``task.out_of_window`` (flagged)
and ``task.in_window`` (cleared); the subject is the task id. Wiring: the dispatcher's round
calls :func:`window_changes` after ``intake.service_changes``, and
``settings.ALERT_KINDS`` names the two kinds so that webhooks may filter on them.
"""

from __future__ import annotations

from taskdash.alerts.outbox import enqueue
from taskdash.settings import AlertsSettings
from taskdash.store import Store
from taskdash.store.task_windows import FLAGGED_EVENT, mark_window_events, unalerted_window_events
from taskdash.store.times import to_ms

OUT_OF_WINDOW, IN_WINDOW = "task.out_of_window", "task.in_window"
TITLES = {
    OUT_OF_WINDOW: "Task {subject} is out of its daily window: {verdict}",
    IN_WINDOW: "Task {subject} is back within its daily window",
}
_VERDICT_WORDS = {
    "running_outside": "running outside it",
    "idle_inside": "not running inside it",
}


async def window_changes(store: Store, settings: AlertsSettings, now: int) -> int:
    """Turn one batch of new flag changes into alert events; how many were enqueued."""
    changes = await unalerted_window_events(store, settings.batch_size)
    cutoff = now - int(settings.max_event_age * 1000)
    old = [c["_id"] for c in changes if to_ms(c["at"]) < cutoff]
    await mark_window_events(store, old, alerted="too_old")
    fresh = [c for c in changes if to_ms(c["at"]) >= cutoff]
    for change in fresh:
        kind = OUT_OF_WINDOW if change["kind"] == FLAGGED_EVENT else IN_WINDOW
        verdict = change.get("verdict") or ""
        await enqueue(
            store,
            kind=kind,
            subject=change["task_id"],
            details={
                "verdict": verdict,
                "previous": change.get("previous") or "",
                **{k: change.get(k) or "" for k in ("status", "start_time", "stop_time")},
                "service_id": change.get("service_id") or "",
                "node": change.get("node", ""),
            },
            key=f"task_window:{change['_id']}",
            title=TITLES[kind].format(
                subject=change["task_id"], verdict=_VERDICT_WORDS.get(verdict, verdict)
            ),
            at=to_ms(change["at"]),
            keep_days=settings.keep_days,
        )
    await mark_window_events(store, [c["_id"] for c in fresh])
    return len(fresh)
