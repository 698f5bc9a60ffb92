"""Alerts in MongoDB: the events' outbox, the deliveries, their attempts, the rate windows.

Collections (docs/alerts.md):

- ``alert_events``: what happened, one document per event under a key its producer derives
  from the event itself, so that an event enqueued twice (two daemons, a retry) is one event.
  ``due`` is set while the event waits to be fanned out to the webhooks.
- ``alert_deliveries``: one per (event, webhook), ``_id`` = ``<event>|<webhook>``; ``due`` is
  set while a delivery waits for an attempt. Claimed like periodic tasks: a conditional
  ``update_many`` moves ``due`` past the lease and stamps a token, so of two daemons exactly
  one matches a delivery; one that dies holding it loses it when the lease runs out.
- ``alert_attempts``: one per HTTP attempt (outcome, status code, error, when, by whom).
- ``alert_limits``: per webhook, subject and rate window, how many deliveries were made.

Times are epoch milliseconds, except ``expires_at`` (a date, for the TTL indexes).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.errors import BulkWriteError

from taskdash.store.mongo import (
    Doc,
    Store,
    count_matching,
    duplicates_only,
    eq,
    insert_new,
    translated,
)
from taskdash.store.times import from_ms, iso

EVENTS, DELIVERIES, ATTEMPTS, LIMITS = (
    "alert_events",
    "alert_deliveries",
    "alert_attempts",
    "alert_limits",
)
PENDING, DELIVERED, FAILED, REFUSED, SUPPRESSED = (
    "pending",
    "delivered",
    "failed",
    "refused",
    "suppressed",
)

INDEXES: dict[str, list[IndexModel]] = {
    EVENTS: [IndexModel([("due", ASCENDING)], name="due")],
    DELIVERIES: [
        IndexModel([("due", ASCENDING)], name="due"),
        IndexModel([("claim", ASCENDING)], name="claim"),
        IndexModel([("subject", ASCENDING), ("at", ASCENDING)], name="subject_at"),
    ],
    ATTEMPTS: [IndexModel([("delivery", ASCENDING)], name="delivery")],
    LIMITS: [],
    # which state changes were turned into alert events already (absent = not yet)
    "service_events": [IndexModel([("alerted", ASCENDING)], name="alerted")],
}
TTL = IndexModel([("expires_at", ASCENDING)], name="ttl", expireAfterSeconds=0)


async def ensure_indexes(store: Store) -> None:
    """Create the alerts' indexes, TTLs included (idempotent)."""
    async with translated("ensure_alert_indexes"):
        for name, models in INDEXES.items():
            extra = [TTL] if name != "service_events" else []
            await store[name].create_indexes([*models, *extra])


def _expires(at: int, keep_days: float) -> Any:
    return from_ms(at) + timedelta(days=keep_days)


async def insert_event(
    store: Store,
    *,
    key: str,
    kind: str,
    subject: str,
    details: Doc,
    title: str,
    at: int,
    keep_days: float,
) -> bool:
    """Record an event for the webhooks; False when ``key`` was recorded already."""
    doc = {
        "_id": key,
        "kind": kind,
        "subject": subject,
        "details": details,
        "title": title,
        "at": at,
        "due": at,
        "expires_at": _expires(at, keep_days),
    }
    async with translated("insert_alert_event"):
        return await insert_new(store[EVENTS], doc)


async def _claim(
    store: Store, name: str, now: int, until: int, limit: int, inc: Doc, only: Doc | None = None
) -> list[Doc]:
    """Claim up to ``limit`` due documents of ``name`` (matching ``only``) until ``until``."""
    due = {"due": {"$lte": now}, **(only or {})}
    ids = [d["_id"] async for d in store[name].find(due, {"_id": 1}).limit(limit)]
    return await claim_ids(store, name, ids, now=now, until=until, inc=inc) if ids else []


async def claim_ids(
    store: Store, name: str, ids: list[Any], *, now: int, until: int, inc: Doc
) -> list[Doc]:
    """Claim those of ``ids`` still due at ``now``; the ones this call won, oldest first.

    The ids were read a moment ago, and another daemon may have claimed some since: only
    the condition on ``due`` in the update, checked atomically per document, decides.
    """
    token = uuid.uuid4().hex
    update: Doc = {"$set": {"due": until, "claim": token}}
    if inc:
        update["$inc"] = inc
    collection = store[name]
    await collection.update_many({"_id": {"$in": ids}, "due": {"$lte": now}}, update)
    return [doc async for doc in collection.find({"claim": eq(token)}).sort("at", ASCENDING)]


async def claim_events(store: Store, now: int, until: int, limit: int) -> list[Doc]:
    """Events waiting to be fanned out, claimed by this daemon until ``until``."""
    async with translated("claim_alert_events"):
        return await _claim(store, EVENTS, now, until, limit, {})


async def fanned_out(store: Store, event_id: str, claim: str, now: int, skipped: str = "") -> None:
    """The event's deliveries exist (or, ``skipped``, never will): it waits no more."""
    fields: Doc = {"fanned_at": now}
    if skipped:
        fields["skipped"] = skipped
    async with translated("alert_fanned_out"):
        await store[EVENTS].update_one(
            {"_id": eq(event_id), "claim": eq(claim)}, {"$set": fields, "$unset": {"due": ""}}
        )


async def existing_deliveries(store: Store, ids: list[str]) -> set[str]:
    """Which of ``ids`` are deliveries already (an event fanned out again after a crash)."""
    async with translated("existing_alert_deliveries"):
        return {d["_id"] async for d in store[DELIVERIES].find({"_id": {"$in": ids}}, {"_id": 1})}


async def count_in_window(
    store: Store, key: str, *, kind: str, title: str, expires_at: int, keep_days: float
) -> int:
    """Count one more delivery in a rate window (atomic across daemons); the new count."""
    async with translated("count_alert_window"):
        doc = await store[LIMITS].find_one_and_update(
            {"_id": key},
            {
                "$inc": {"count": 1},
                "$set": {"last_kind": kind, "last_title": title},
                "$setOnInsert": {"expires_at": _expires(expires_at, keep_days)},
            },
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
    return int(doc["count"])


async def window(store: Store, key: str) -> Doc | None:
    """One rate window (for the summary of what it held back)."""
    async with translated("alert_window"):
        return await store[LIMITS].find_one({"_id": key})


async def insert_deliveries(store: Store, docs: list[Doc], keep_days: float) -> None:
    """Store new deliveries; one stored already (another daemon, a retry) is kept as it is."""
    if not docs:
        return
    for doc in docs:
        doc.setdefault("attempts", 0)
        doc["expires_at"] = _expires(doc["at"], keep_days)
    async with translated("insert_alert_deliveries"):
        try:
            await store[DELIVERIES].insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            duplicates_only(exc)


async def claim_deliveries(
    store: Store, now: int, until: int, limit: int, webhooks: list[str]
) -> list[Doc]:
    """Deliveries to ``webhooks`` due for an attempt, claimed until ``until``; each attempt is
    counted now (a daemon that dies mid-attempt has spent one)."""
    only = {"webhook": {"$in": webhooks}}
    async with translated("claim_alert_deliveries"):
        return await _claim(store, DELIVERIES, now, until, limit, {"attempts": 1}, only)


async def settle_delivery(
    store: Store,
    delivery: Doc,
    *,
    state: str,
    due: int | None,
    code: int | None,
    error: str,
    now: int,
) -> bool:
    """Record an attempt's outcome, if the delivery is still ours (else another daemon has it).

    ``due`` set: another attempt then; None: ``state`` is final.
    """
    fields: Doc = {"state": state, "last_code": code, "last_error": error, "updated_at": now}
    update: Doc = {"$set": fields}
    if due is None:
        update["$unset"] = {"due": ""}
    else:
        fields["due"] = due
    query = {"_id": eq(delivery["_id"]), "claim": eq(delivery["claim"])}
    async with translated("settle_alert_delivery"):
        result = await store[DELIVERIES].update_one(query, update)
    return result.modified_count == 1


async def pending_deliveries(store: Store, webhook: str) -> int:
    """Deliveries to ``webhook`` not settled yet (waiting, backing off or being attempted).

    The collection holds ``keep_days`` of deliveries, so the count has no index of its own.
    """
    query = {"webhook": eq(webhook), "state": eq(PENDING)}
    async with translated("count_alert_deliveries"):
        return await count_matching(store[DELIVERIES], query)


async def record_attempt(store: Store, attempt: Doc, keep_days: float) -> None:
    """One HTTP attempt, kept for the service page and the API."""
    attempt["expires_at"] = _expires(attempt["at"], keep_days)
    async with translated("record_alert_attempt"):
        await store[ATTEMPTS].insert_one(attempt)


async def skip_old_service_events(store: Store, before: int) -> int:
    """Mark the state changes from before ``before`` (epoch ms) that will never be alerted.

    One update however long the history (the first start with alerts on a store that has
    30 days of it), so that no backlog delays the changes that are news.
    """
    query = {"alerted": eq(None), "at": {"$lt": from_ms(before)}}
    async with translated("skip_old_service_events"):
        result = await store.service_events.update_many(query, {"$set": {"alerted": "too_old"}})
    return result.modified_count


async def unalerted_service_events(store: Store, limit: int) -> list[Doc]:
    """State changes not yet turned into alert events, oldest first."""
    async with translated("unalerted_service_events"):
        cursor = store.service_events.find({"alerted": eq(None)}).limit(limit)
        return sorted([doc async for doc in cursor], key=lambda d: d["at"])


async def mark_alerted(store: Store, ids: list[Any]) -> None:
    """Those state changes are alert events now."""
    if ids:
        async with translated("mark_service_events_alerted"):
            await store.service_events.update_many(
                {"_id": {"$in": ids}}, {"$set": {"alerted": "queued"}}
            )


async def dead_tasks(store: Store, ids: list[int], at: int) -> list[Doc]:
    """Periodic tasks among ``ids`` that died at ``at`` (read back after a bury or a settle)."""
    query = {"_id": {"$in": ids}, "state": eq("dead"), "updated_at": eq(at)}
    projection = {"task_data": 0}
    async with translated("dead_periodic_tasks"):
        return [doc async for doc in store["periodic_tasks"].find(query, projection)]


#: the fields of a delivery the API and the service page show
PUBLIC = ("webhook", "kind", "title", "state", "attempts", "last_code", "last_error")


async def recent(store: Store, subject: str, limit: int) -> list[dict[str, Any]]:
    """A subject's latest deliveries, newest event first, each with its attempts."""
    async with translated("recent_alerts"):
        cursor = store[DELIVERIES].find({"subject": eq(subject)})
        docs = [d async for d in cursor.sort("at", DESCENDING).limit(limit)]
        attempts: dict[str, list[Doc]] = {}
        if docs:
            found = store[ATTEMPTS].find({"delivery": {"$in": [d["_id"] for d in docs]}})
            async for a in found:
                attempts.setdefault(a["delivery"], []).append(a)
    return [_public(d, attempts.get(d["_id"], [])) for d in docs]


def _public(doc: Doc, attempts: list[Doc]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": doc["_id"], "event": doc["event"], "subject": doc["subject"]}
    out |= {key: doc.get(key) for key in PUBLIC}
    out["at"] = iso(doc["at"])
    out["updated_at"] = iso(doc.get("updated_at"))
    out["next_attempt_at"] = iso(doc["due"]) if doc.get("due") is not None else None
    out["attempt_log"] = [
        {
            "attempt": a["attempt"],
            "outcome": a["outcome"],
            "code": a.get("code"),
            "error": a.get("error", ""),
            "at": iso(a["at"]),
            "node": a.get("node", ""),
        }
        for a in sorted(attempts, key=lambda a: a["attempt"])
    ]
    return out
