"""Heartbeat states in MongoDB: conditional transitions that several daemons can run at once.

A transition is one ``update_many`` that matches only documents still in the old state. The
same update pushes the event into the document's ``outbox``: MongoDB updates each document
atomically, so a state change and its event are written together or not at all, and each
change is won by exactly one daemon. :func:`record_events` then moves outboxes into
``service_events`` under ids derived from the event, so an event moved twice (two daemons, or a
retry after a crash between the two steps) is still recorded once.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from taskdash.store.mongo import Doc, Store, count_matching, duplicates_only, eq, translated
from taskdash.store.times import from_ms, to_ms

ONLINE, STALE, OFFLINE, UNKNOWN = "online", "stale", "offline", "unknown"


async def candidates(store: Store, stale_cut: int, offline_cut: int) -> list[Doc]:
    """The only services a checker pass may change; in a steady state, none.

    Six narrow queries, each one index seek (``status_alive_at`` or ``status_beats``):
    online services that went quiet, stale ones and never-heard-from (unknown) ones silent
    long enough to go offline,
    and the services not online that have counted beats since their last change (to bring
    online, or to reset after a gap). Neither ``$or`` nor ``$in`` over statuses: nx-27017
    answers both with a scan, which at 100,000 services costs a second per pass; see
    :func:`~taskdash.store.mongo.eq`.
    """
    queries: list[Doc] = [
        {"status": eq(ONLINE), "alive_at": {"$lt": stale_cut}},
        {"status": eq(UNKNOWN), "alive_at": {"$lt": offline_cut}},
        {"status": eq(STALE), "alive_at": {"$lt": offline_cut}},
        *({"status": eq(status), "beats": {"$gte": 1}} for status in (STALE, OFFLINE, UNKNOWN)),
    ]
    projection = {"status": 1, "alive_at": 1, "beats": 1}
    found: dict[str, Doc] = {}
    async with translated("candidates"):
        for query in queries:
            async for doc in store.services.find(query, projection):
                found[doc["_id"]] = doc
    return list(found.values())


async def count(
    store: Store, status: str, *, alive_from: int | None = None, alive_before: int | None = None
) -> int:
    """How many services are in ``status``, optionally with ``alive_at`` in a range (part of
    the ``status_alive_at`` index; :func:`~taskdash.store.mongo.count_matching`)."""
    query: Doc = {"status": eq(status)}
    alive: Doc = {}
    if alive_from is not None:
        alive["$gte"] = alive_from
    if alive_before is not None:
        alive["$lt"] = alive_before
    if alive:
        query["alive_at"] = alive
    async with translated("count_services"):
        return await count_matching(store.services, query)


async def transition(
    store: Store, query: Doc, *, to: str, now: datetime, node: str, reason: str
) -> int:
    """Move every service matching ``query`` (which must pin the old ``status``) to ``to``.

    Returns how many this call moved; their events wait in the documents' outboxes for
    :func:`record_events`. (An outbox entry is JSON text: nx-27017 would store a pushed
    sub-document as text anyway, so both servers hold the same thing.)
    """
    entry = {"token": uuid.uuid4().hex, "from": query["status"], "to": to}
    entry |= {"at": to_ms(now), "node": node, "reason": reason}
    changes: Doc = {"status": to, "status_changed_at": to_ms(now), "outbox_pending": 1}
    if to != ONLINE:
        changes["beats"] = 0  # flap damping counts consecutive beats from here
    async with translated("transition"):
        result = await store.services.update_many(
            query,
            {
                "$set": changes,
                "$inc": {"status_version": 1},
                "$push": {"outbox": json.dumps(entry, separators=(",", ":"))},
            },
        )
    return result.modified_count


async def record_events(store: Store, limit: int = 10_000) -> list[dict[str, Any]]:
    """Move waiting events from service outboxes into ``service_events``.

    Returns the events this call recorded first (an event another daemon recorded already is
    not returned again). An outbox is emptied only if no transition came after it was read
    (``status_version`` unchanged); otherwise the next call moves the rest.
    """
    async with translated("record_events"):
        cursor = store.services.find(
            {"outbox_pending": {"$gt": 0}}, {"outbox": 1, "status_version": 1}
        ).limit(limit)
        docs = [doc async for doc in cursor]
        events = [_event(store, doc["_id"], raw) for doc in docs for raw in doc.get("outbox", [])]
        recorded = events
        if events:
            try:
                await store.service_events.insert_many(events, ordered=False)
            except BulkWriteError as exc:
                already = {e["index"] for e in duplicates_only(exc)}
                recorded = [e for i, e in enumerate(events) if i not in already]
        if docs:
            clear = {"$set": {"outbox": [], "outbox_pending": 0}}
            await store.services.bulk_write(
                [UpdateOne({"_id": d["_id"], "status_version": d["status_version"]}, clear)
                 for d in docs],
                ordered=False,
            )  # fmt: skip
    return recorded


def _event(store: Store, service_id: str, raw: str) -> dict[str, Any]:
    entry = json.loads(raw)
    at = from_ms(entry["at"])
    return {
        "_id": f"{service_id}:{entry['token']}",
        "service_id": service_id,
        "from": entry["from"],
        "to": entry["to"],
        "at": at,
        "node": entry["node"],
        "reason": entry["reason"],
        "published": False,
        "claim_until": 0,
        "expires_at": at + timedelta(seconds=store.history_ttl_seconds),
    }


async def reset_damping(store: Store, query: Doc) -> int:
    """Forget beats that were not consecutive (a gap longer than ``stale_after``)."""
    async with translated("reset_damping"):
        result = await store.services.update_many(query, {"$set": {"beats": 0}})
    return result.modified_count


async def history(store: Store, service_id: str, limit: int = 100) -> list[dict[str, Any]]:
    """A service's state changes, newest first."""
    async with translated("history"):
        cursor = store.service_events.find({"service_id": service_id}).sort("at", -1).limit(limit)
        return [
            {"from": e["from"], "to": e["to"], "at": e["at"].isoformat(), "reason": e["reason"]}
            async for e in cursor
        ]


async def claim_unpublished(store: Store, now: datetime, lease: float, limit: int) -> list[Doc]:
    """Claim up to ``limit`` events not yet published (or whose claim expired)."""
    token = uuid.uuid4().hex
    free: Doc = {"published": eq(False), "claim_until": {"$lt": to_ms(now)}}
    async with translated("claim_unpublished"):
        ids = [doc["_id"] async for doc in store.service_events.find(free, {"_id": 1}).limit(limit)]
        if not ids:
            return []
        await store.service_events.update_many(
            {"_id": {"$in": ids}, **free},
            {"$set": {"claim": token, "claim_until": to_ms(now) + int(lease * 1000)}},
        )
        return [doc async for doc in store.service_events.find({"claim": token}).sort("at", 1)]


async def mark_published(store: Store, ids: list[Any]) -> None:
    """The events reached NSQ."""
    async with translated("mark_published"):
        await store.service_events.update_many({"_id": {"$in": ids}}, {"$set": {"published": True}})
