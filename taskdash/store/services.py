"""Service registrations and their heartbeat state (collection ``services``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from taskdash.store.mongo import Doc, Store, translated

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
        out[key] = value.isoformat() if isinstance(value, datetime) else value
    return out


async def list_services(
    store: Store, *, status: str | None = None, limit: int = 100, skip: int = 0
) -> list[dict[str, Any]]:
    """Services ordered by id, optionally only those in one state."""
    query: Doc = {"status": status} if status else {}
    async with translated("list_services"):
        cursor = store.services.find(query).sort("_id", 1).skip(skip).limit(limit)
        return [public(doc) async for doc in cursor]


async def get_service(store: Store, service_id: str) -> dict[str, Any] | None:
    """One service, or None."""
    async with translated("get_service"):
        doc = await store.services.find_one({"_id": service_id})
    return public(doc) if doc else None
