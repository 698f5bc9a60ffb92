"""The audit log (collection ``audit``): who did what to what, when, from where, and the outcome.

Entries are written once and never changed; ``expires_at`` (a BSON date, ``[web]
audit_ttl_days`` after the entry) lets a TTL index remove them. ``at`` is epoch milliseconds.
Every text is bounded, whatever a caller hands in: an attempted login name or a token name
comes from outside.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from taskdash.store.mongo import Doc, Store, eq, translated
from taskdash.store.times import from_ms

COLLECTION = "audit"
#: the longest text kept in any field of an entry
MAX_TEXT = 256
#: the most entries one listing returns
MAX_LIMIT = 1000
OUTCOMES = ("ok", "failed", "throttled", "refused")


@dataclass(frozen=True)
class Entry:
    """One audited action."""

    id: str
    at: int
    actor: str
    action: str
    target: str
    outcome: str
    address: str
    details: dict[str, Any]


def _clip(value: Any) -> Any:
    """Texts cut to MAX_TEXT; numbers, booleans and None kept; anything else as clipped text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)[:MAX_TEXT]


async def record(
    store: Store,
    *,
    actor: str,
    action: str,
    target: str = "",
    outcome: str = "ok",
    address: str = "",
    details: dict[str, Any] | None = None,
    now_ms: int,
    ttl_days: float = 90.0,
) -> None:
    """Write one entry."""
    doc: Doc = {
        "at": now_ms,
        "actor": _clip(actor),
        "action": _clip(action),
        "target": _clip(target),
        "outcome": _clip(outcome),
        "address": _clip(address),
        "details": {_clip(k): _clip(v) for k, v in list((details or {}).items())[:20]},
        "expires_at": from_ms(now_ms) + timedelta(days=ttl_days),
    }
    async with translated("record_audit"):
        await store[COLLECTION].insert_one(doc)


async def entries(
    store: Store,
    *,
    actor: str | None = None,
    action: str | None = None,
    since_ms: int | None = None,
    limit: int = 100,
) -> list[Entry]:
    """The newest entries first, filtered; at most ``limit`` (bounded by MAX_LIMIT)."""
    query: Doc = {}
    if actor is not None:
        query["actor"] = eq(actor)
    if action is not None:
        query["action"] = eq(action)
    if since_ms is not None:
        query["at"] = {"$gte": since_ms}
    limit = max(1, min(limit, MAX_LIMIT))
    async with translated("list_audit"):
        cursor = store[COLLECTION].find(query).sort("at", -1).limit(limit)
        return [_entry(doc) async for doc in cursor]


def _entry(doc: Doc) -> Entry:
    return Entry(
        id=str(doc["_id"]),
        at=doc["at"],
        actor=doc["actor"],
        action=doc["action"],
        target=doc.get("target", ""),
        outcome=doc.get("outcome", "ok"),
        address=doc.get("address", ""),
        details=doc.get("details") or {},
    )
