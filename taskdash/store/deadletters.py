"""Messages that can never succeed: kept with the reason, for an admin to inspect."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from taskdash.store.mongo import Store, translated

#: How much of a body is kept; oversized bodies are the usual reason to be here.
KEEP_BYTES = 16 * 1024


async def add_dead_letter(
    store: Store,
    *,
    topic: str,
    msg_id: str,
    body: bytes,
    reason: str,
    field: str | None,
    attempts: int,
    node: str,
    now: datetime,
    keep_days: float = 30.0,
) -> None:
    """Store one dead letter (raises StoreError, so the caller can requeue instead of lose it).

    It expires ``keep_days`` later (TTL index ``ttl`` on ``expires_at``), so a publisher
    that keeps sending poison cannot fill the database.
    """
    doc: dict[str, Any] = {
        "topic": topic,
        "msg_id": msg_id,
        "reason": reason,
        "field": field,
        "size": len(body),
        "body": body[:KEEP_BYTES],
        "truncated": len(body) > KEEP_BYTES,
        "attempts": attempts,
        "node": node,
        "received_at": now,
        "expires_at": now + timedelta(days=keep_days),
    }
    async with translated("add_dead_letter"):
        await store.dead_letters.update_one(
            {"_id": f"{topic}:{msg_id}"}, {"$setOnInsert": doc}, upsert=True
        )


async def list_dead_letters(store: Store, *, topic: str | None, limit: int) -> list[dict[str, Any]]:
    """Newest first; bodies shown as text where they decode, else as a size."""
    query = {"topic": topic} if topic else {}
    async with translated("list_dead_letters"):
        cursor = store.dead_letters.find(query).sort("received_at", -1).limit(limit)
        docs = [doc async for doc in cursor]
    out = []
    for doc in docs:
        body = bytes(doc.get("body", b""))
        out.append(
            {
                "id": doc["_id"],
                **{k: doc.get(k) for k in ("topic", "msg_id", "reason", "field", "size", "node")},
                "received_at": doc["received_at"].isoformat(),
                "body": body.decode("utf-8", errors="replace"),
                "truncated": doc.get("truncated", False),
            }
        )
    return out
