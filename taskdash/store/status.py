"""Heartbeat states in MongoDB: conditional transitions that several daemons can run at once.

A transition is claimed with one ``update_many`` that matches only documents still in the old
state and stamps them with a fresh token; the daemon then reads back what carries its token.
MongoDB updates each document atomically, so each state change is won by exactly one daemon
and recorded exactly once, however many checkers run against the same database.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from taskdash.store.mongo import Doc, Store, eq, translated
from taskdash.store.times import to_ms

ONLINE, STALE, OFFLINE, UNKNOWN = "online", "stale", "offline", "unknown"


async def candidates(store: Store, stale_cut: int, offline_cut: int) -> list[Doc]:
    """The only services a checker pass may change; in a steady state, none.

    Six narrow queries, each one index seek (``status_alive_at`` or ``status_beats``):
    online and unknown services that went quiet, stale ones silent long enough to go offline,
    and the services not online that have counted beats since their last change (to bring
    online, or to reset after a gap). Neither ``$or`` nor ``$in`` over statuses: nx-27017
    answers both with a scan, which at 100,000 services costs a second per pass; see
    :func:`~taskdash.store.mongo.eq`.
    """
    queries: list[Doc] = [
        {"status": eq(ONLINE), "alive_at": {"$lt": stale_cut}},
        {"status": eq(UNKNOWN), "alive_at": {"$lt": stale_cut}},
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


async def count(store: Store, status: str) -> int:
    """How many services are in ``status``.

    The server's ``count`` command, not ``count_documents`` (an aggregation, which nx-27017
    answers by reading every document: 2.4 s at 90,000 services, against 15 ms).
    """
    async with translated("count_services"):
        reply = await store.db.command("count", store.services.name, query={"status": eq(status)})
    return int(reply["n"])


async def transition(
    store: Store, query: Doc, *, to: str, now: datetime, node: str, reason: str
) -> list[dict[str, Any]]:
    """Move every service matching ``query`` (which must pin the old ``status``) to ``to``.

    Returns the events this call won, already recorded in ``service_events``.
    """
    from_status = query["status"]
    token = uuid.uuid4().hex
    changes: Doc = {"status": to, "status_changed_at": to_ms(now), "transition": token}
    if to != ONLINE:
        changes["beats"] = 0  # flap damping counts consecutive beats from here
    async with translated("transition"):
        result = await store.services.update_many(
            query, {"$set": changes, "$inc": {"status_version": 1}}
        )
        if not result.modified_count:
            return []
        won = [doc async for doc in store.services.find({"transition": token}, {"_id": 1})]
        expires = now + timedelta(seconds=store.history_ttl_seconds)
        events = [
            {
                "service_id": doc["_id"],
                "from": from_status,
                "to": to,
                "at": now,
                "node": node,
                "reason": reason,
                "published": False,
                "claim_until": 0,
                "expires_at": expires,
            }
            for doc in won
        ]
        if events:
            await store.service_events.insert_many(events)
    return events


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
