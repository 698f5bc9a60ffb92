"""Events become deliveries: one per webhook that wants the event's kind, within rate limits.

The rate limit counts deliveries per webhook, subject and fixed window (``rate_window``,
aligned to the epoch, judged by the event's time) in one atomic counter per window, so it holds
across daemons. Past ``rate_limit`` a delivery is recorded as ``suppressed``; the first one
held back also creates the window's one ``alerts.suppressed`` summary, due when the window
ends and written then, from the final count.
"""

from __future__ import annotations

from typing import Any

from taskdash.alerts.payloads import SUMMARY
from taskdash.settings import AlertsSettings, WebhookSettings
from taskdash.store import Store
from taskdash.store.alerts import (
    PENDING,
    SUPPRESSED,
    claim_events,
    count_in_window,
    existing_deliveries,
    fanned_out,
    insert_deliveries,
)
from taskdash.store.mongo import Doc


def delivery(event: Doc, hook: WebhookSettings, state: str, due: int | None) -> Doc:
    """A delivery document of ``event`` to ``hook``."""
    doc: Doc = {
        "_id": f"{event['_id']}|{hook.name}",
        "event": event["_id"],
        "webhook": hook.name,
        "kind": event["kind"],
        "subject": event["subject"],
        "title": event["title"],
        "details": event.get("details") or {},
        "at": event["at"],
        "state": state,
    }
    if due is not None:
        doc["due"] = due
    return doc


def window_of(at: int, seconds: float) -> tuple[int, int]:
    """The rate window holding epoch-ms ``at``: (its number, its end in epoch ms)."""
    size = max(1, int(seconds * 1000))
    number = at // size
    return number, (number + 1) * size


class FanOut:
    """Turns claimed events into deliveries, applying each webhook's filter and rate limit."""

    def __init__(self, store: Store, settings: AlertsSettings) -> None:
        self.store = store
        self.settings = settings

    async def once(self, now: int) -> int:
        """Fan out one batch of due events; how many deliveries were made."""
        s = self.settings
        until = now + int(s.claim_lease * 1000)
        made = 0
        for event in await claim_events(self.store, now, until, s.batch_size):
            if event["at"] < now - int(s.max_event_age * 1000):
                await fanned_out(self.store, event["_id"], event["claim"], now, "too_old")
                continue
            made += await self._event(event, now)
            await fanned_out(self.store, event["_id"], event["claim"], now)
        return made

    async def _event(self, event: Doc, now: int) -> int:
        hooks = [h for h in self.settings.webhooks if h.wants(event["kind"])]
        have = await existing_deliveries(self.store, [f"{event['_id']}|{h.name}" for h in hooks])
        docs: list[Doc] = []
        for hook in hooks:
            if f"{event['_id']}|{hook.name}" in have:
                continue  # fanned out before a crash; its count is in the window already
            state, summary = await self._admit(event, hook)
            docs.append(delivery(event, hook, state, now if state == PENDING else None))
            if summary is not None:
                docs.append(summary)
        await insert_deliveries(self.store, docs, self.settings.keep_days)
        return len(docs)

    async def _admit(self, event: Doc, hook: WebhookSettings) -> tuple[str, Doc | None]:
        """(the delivery's state, the window's summary if this is the first held back)."""
        s = self.settings
        if not s.rate_limit or event["kind"] == SUMMARY:
            return PENDING, None
        number, end = window_of(event["at"], s.rate_window)
        key = f"{hook.name}|{event['subject']}|{number}"
        count = await count_in_window(
            self.store,
            key,
            kind=event["kind"],
            title=event["title"],
            expires_at=end,
            keep_days=s.keep_days,
        )
        if count <= s.rate_limit:
            return PENDING, None
        if count > s.rate_limit + 1 or not hook.wants(SUMMARY):
            return SUPPRESSED, None
        return SUPPRESSED, self._summary(event, hook, key, end)

    def _summary(self, event: Doc, hook: WebhookSettings, key: str, end: int) -> Doc:
        details: dict[str, Any] = {
            "window": key,
            "limit": self.settings.rate_limit,
            "window_seconds": self.settings.rate_window,
            "window_end": end,
        }
        summary = {
            "_id": f"{SUMMARY}:{key}",
            "kind": SUMMARY,
            "subject": event["subject"],
            "title": "",  # written when sent, from the window's final count
            "details": details,
            "at": end,
        }
        return delivery(summary, hook, PENDING, end)
