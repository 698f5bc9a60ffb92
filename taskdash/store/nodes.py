"""Daemon node documents (collection ``nodes``): one heartbeat per running fetcher.

``seen_at`` is epoch milliseconds (it is rewritten by updates; see :mod:`.times`). A node is
live while its ``seen_at`` is younger than the node timeout, judged by the reader's clock.
"""

from __future__ import annotations

from taskdash.store.mongo import Doc, Store, translated


async def heartbeat(store: Store, node_id: str, now_ms: int) -> None:
    """Say this node is alive now (creates its document the first time)."""
    async with translated("node_heartbeat"):
        await store.nodes.update_one(
            {"_id": node_id},
            {
                "$set": {"seen_at": now_ms, "fetcher": True},
                "$setOnInsert": {"started_at": now_ms},
            },
            upsert=True,
        )


async def live_nodes(store: Store, now_ms: int, timeout_ms: int) -> list[str]:
    """Ids of the fetcher nodes seen within ``timeout_ms``, sorted."""
    query = {"fetcher": True, "seen_at": {"$gte": now_ms - timeout_ms}}
    async with translated("live_nodes"):
        return sorted([doc["_id"] async for doc in store.nodes.find(query, {"_id": 1})])


async def remove(store: Store, node_id: str) -> None:
    """Forget a node that stops: the others take its share at their next sweep."""
    async with translated("remove_node"):
        await store.nodes.delete_one({"_id": node_id})


async def prune(store: Store, before_ms: int) -> int:
    """Delete documents of nodes silent since ``before_ms`` (crashed daemons)."""
    async with translated("prune_nodes"):
        result = await store.nodes.delete_many({"seen_at": {"$lt": before_ms}})
    return result.deleted_count


async def all_nodes(store: Store, limit: int = 1000) -> list[Doc]:
    """Every node document (live or not), by id: the daemons sharing this store."""
    async with translated("all_nodes"):
        cursor = store.nodes.find({}).sort("_id", 1).limit(limit)
        return [doc async for doc in cursor]
