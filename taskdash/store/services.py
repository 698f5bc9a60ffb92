"""Service registrations and their heartbeat state (collection ``services``)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from pymongo import UpdateOne

from taskdash.models import TaskService
from taskdash.store.mongo import Doc, Store, eq, translated
from taskdash.store.times import iso, to_ms

#: Fields the API shows for a service, in order.
PUBLIC_FIELDS = (
    "id", "name", "type", "url", "description", "reserved", "status",
    "registered_at", "updated_at", "last_heartbeat_at", "status_changed_at",
)  # fmt: skip


def public(doc: Doc) -> dict[str, Any]:
    """A stored service as the API shows it: ``id`` instead of ``_id``, ISO-8601 times."""
    out: dict[str, Any] = {"id": doc["_id"]}
    for key in PUBLIC_FIELDS[1:]:
        value = doc.get(key)
        out[key] = iso(value) if key.endswith("_at") else value
    return out


async def list_services(
    store: Store, *, status: str | None = None, limit: int = 100, skip: int = 0
) -> list[dict[str, Any]]:
    """Services ordered by id, optionally only those in one state."""
    query: Doc = {"status": eq(status)} if status else {}
    async with translated("list_services"):
        cursor = store.services.find(query).sort("_id", 1).skip(skip).limit(limit)
        return [public(doc) async for doc in cursor]


async def get_service(store: Store, service_id: str) -> dict[str, Any] | None:
    """One service, or None."""
    async with translated("get_service"):
        doc = await store.services.find_one({"_id": service_id})
    return public(doc) if doc else None


async def register_services(store: Store, services: list[TaskService], now: datetime) -> int:
    """Upsert registrations in one bulk write; the first ``registered_at`` is kept.

    A later registration of the same id in the batch wins (NSQ order within one reader).
    A registration is a sign of life, so ``alive_at`` moves too, but the status does not:
    only heartbeats bring a service online.
    """
    latest = {svc.id: svc for svc in services}
    at = to_ms(now)
    ops = [
        UpdateOne(
            {"_id": svc.id},
            {
                "$set": {**_fields(svc), "updated_at": at},
                "$setOnInsert": {"registered_at": at, "status": "unknown", "beats": 0},
                "$max": {"alive_at": at},
            },
            upsert=True,
        )
        for svc in latest.values()
    ]
    async with translated("register_services"):
        await store.services.bulk_write(ops, ordered=False)
    return len(ops)


def _fields(svc: TaskService) -> Doc:
    fields = svc.to_dict()
    del fields["id"]
    return fields


async def record_heartbeats(
    store: Store,
    beats: dict[str, tuple[int, datetime]],
    known: Collection[str] = (),
    absorbed: Mapping[str, int] | None = None,
) -> list[str]:
    """Apply coalesced heartbeats ``{service_id: (count, last receipt time)}``.

    Services with the same counts in the batch share one ``update_many`` (usually one or two
    writes per batch, however many services), stamped with that group's latest receipt time:
    at most one flush interval later than a service's own beat, which the checker's thresholds
    (seconds) do not notice. Only registered services are touched (a heartbeat is not a
    registration); the ids that are not registered are returned. ``known`` names ids the
    caller already saw registered, which are not looked up again. ``absorbed`` adds, per
    service, earlier beats that were not written then (see the heartbeat reader) to
    ``heartbeats_total`` only: they are history, not consecutive beats. ``$max`` keeps a
    redelivered, older beat from moving a service's time backwards.
    """
    if not beats:
        return []
    extra = absorbed or {}
    groups: dict[tuple[int, int], tuple[list[str], int]] = {}
    for sid, (count, at) in beats.items():
        key = (count, extra.get(sid, 0))
        ids, latest = groups.get(key, ([], 0))
        ids.append(sid)
        groups[key] = (ids, max(latest, to_ms(at)))
    async with translated("record_heartbeats"):
        ask = [sid for sid in beats if sid not in known]
        found: set[str] = set()
        if ask:
            cursor = store.services.find({"_id": {"$in": ask}}, {"_id": 1})
            found = {doc["_id"] async for doc in cursor}
        registered = set(beats) - set(ask) | found
        for (count, more), (ids, latest) in groups.items():
            mine = [sid for sid in ids if sid in registered]
            if not mine:
                continue
            await store.services.update_many(
                {"_id": {"$in": mine}},
                {
                    "$max": {"last_heartbeat_at": latest, "alive_at": latest},
                    "$inc": {"beats": count, "heartbeats_total": count + more},
                },
            )
    return [sid for sid in beats if sid not in registered]


async def add_heartbeat_counts(store: Store, counts: Mapping[str, int]) -> None:
    """Add beats to ``heartbeats_total`` alone (no time, no consecutive beats), grouped by count.

    For beats a reader finished without a write of their own and could not carry into a later
    one (at its stop): the statistic stays exact without touching the service's state.
    """
    groups: dict[int, list[str]] = {}
    for sid, count in counts.items():
        if count > 0:
            groups.setdefault(count, []).append(sid)
    async with translated("add_heartbeat_counts"):
        for count, ids in groups.items():
            await store.services.update_many(
                {"_id": {"$in": ids}}, {"$inc": {"heartbeats_total": count}}
            )
