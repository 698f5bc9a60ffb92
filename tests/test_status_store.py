"""store/status.py's transition, field by field (what mutation testing found unheld)."""

from __future__ import annotations

import json

import pytest
from support import free_port
from test_checker import Clock, beat, setup

from taskdash.errors import StoreUnavailable
from taskdash.store import Store
from taskdash.store.status import transition
from taskdash.store.times import to_ms


async def raw(store: Store, sid: str) -> dict[str, object]:
    doc = await store.services.find_one({"_id": sid})
    assert doc is not None
    return doc


async def test_a_transition_writes_exactly_its_fields(store: Store) -> None:
    clock = Clock()
    (sid,) = await setup(store, clock, 1)
    await beat(store, clock, sid)
    await beat(store, clock, sid)
    before = await raw(store, sid)
    at = clock.advance(5)
    query = {"_id": sid, "status": "unknown"}
    assert await transition(store, query, to="online", now=at, node="n1", reason="r1") == 1
    online = await raw(store, sid)
    assert (online["status"], online["status_changed_at"]) == ("online", to_ms(at))
    assert online["outbox_pending"] == 1
    assert online["beats"] == before["beats"] == 2, "going online keeps the beats counted"
    assert online["status_version"] == before.get("status_version", 0) + 1
    (entry,) = [json.loads(e) for e in online["outbox"]]
    assert entry["from"] == "unknown" and entry["to"] == "online" and entry["at"] == to_ms(at)
    assert (entry["node"], entry["reason"]) == ("n1", "r1")
    later = clock.advance(20)
    query = {"_id": sid, "status": "online"}
    assert await transition(store, query, to="stale", now=later, node="n2", reason="r2") == 1
    stale = await raw(store, sid)
    assert (stale["status"], stale["status_changed_at"], stale["beats"]) == (
        "stale",
        to_ms(later),
        0,
    )
    assert stale["status_version"] == online["status_version"] + 1
    assert stale["outbox_pending"] == 1 and len(stale["outbox"]) == 2
    assert await transition(store, query, to="offline", now=later, node="n2", reason="r") == 0


async def test_a_transition_against_a_dead_store_names_itself() -> None:
    dead = Store(
        f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
        "t",
        server_selection_timeout=0.3,
    )
    try:
        with pytest.raises(StoreUnavailable) as caught:
            query = {"_id": "s", "status": "online"}
            await transition(dead, query, to="stale", now=Clock().now, node="n", reason="r")
        assert str(caught.value).startswith("transition: ")
    finally:
        await dead.close()
