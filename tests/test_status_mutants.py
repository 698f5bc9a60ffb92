"""store/status.py beyond the transition: what mutation testing found unheld.

The event records (their expiry, the outbox they leave empty), the history the API serves,
the order events are published in, and the operation each failure names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from test_checker import T0, Clock, beat, setup

from taskdash.errors import StoreUnavailable
from taskdash.store import Store
from taskdash.store import status as st


async def moved(store: Store, clock: Clock, sid: str, old: str, new: str, after: float) -> None:
    """``sid`` goes from ``old`` to ``new`` ``after`` seconds from the clock's time."""
    at = clock.advance(after)
    query = {"_id": sid, "status": old}
    assert await st.transition(store, query, to=new, now=at, node="n1", reason=f"to {new}") == 1


async def test_recorded_events_expire_after_the_history_ttl_and_leave_the_outbox_empty(
    store: Store,
) -> None:
    """Each event carries its expiry (a TTL index removes it); each outbox is emptied, or
    every later change would carry all the earlier ones again and the document would grow."""
    clock = Clock()
    (sid,) = await setup(store, clock, 1)
    await beat(store, clock, sid)
    await moved(store, clock, sid, "unknown", "online", 1)
    assert len(await st.record_events(store)) == 1
    doc = await store.services.find_one({"_id": sid})
    assert (doc["outbox"], doc["outbox_pending"]) == ([], 0)
    await moved(store, clock, sid, "online", "stale", 20)
    (second,) = await st.record_events(store)
    assert (second["from"], second["to"]) == ("online", "stale")
    doc = await store.services.find_one({"_id": sid})
    assert doc["outbox"] == []
    events = [e async for e in store.service_events.find({"service_id": sid})]
    assert len(events) == 2
    for event in events:
        assert event["expires_at"] - event["at"] == timedelta(seconds=store.history_ttl_seconds)
    indexes = (await store.service_events.index_information()).values()
    assert [i["expireAfterSeconds"] for i in indexes if i["key"] == [("expires_at", 1)]] == [0]


async def test_history_gives_each_change_with_its_time_newest_first(store: Store) -> None:
    clock = Clock()
    (sid,) = await setup(store, clock, 1)
    await beat(store, clock, sid)
    await moved(store, clock, sid, "unknown", "online", 1)
    await moved(store, clock, sid, "online", "stale", 20)
    await st.record_events(store)
    assert await st.history(store, sid) == [
        {"from": "online", "to": "stale", "at": (T0 + timedelta(seconds=21)).isoformat(),
         "reason": "to stale"},
        {"from": "unknown", "to": "online", "at": (T0 + timedelta(seconds=1)).isoformat(),
         "reason": "to online"},
    ]  # fmt: skip


async def test_events_are_claimed_for_publishing_in_the_order_they_happened(
    store: Store,
) -> None:
    """Recorded out of order (the later change's outbox moved first: two daemons, or one pass
    after another), they are still published oldest first."""
    clock = Clock()
    early, late = await setup(store, clock, 2)
    await beat(store, clock, early, late)
    await moved(store, clock, early, "unknown", "online", 1)
    await moved(store, clock, late, "unknown", "online", 5)
    # the later change's outbox is moved first (the earlier one hidden from that call)
    await store.services.update_one({"_id": early}, {"$set": {"outbox_pending": 0}})
    assert [e["service_id"] for e in await st.record_events(store)] == [late]
    await store.services.update_one({"_id": early}, {"$set": {"outbox_pending": 1}})
    assert [e["service_id"] for e in await st.record_events(store)] == [early]
    claimed = await st.claim_unpublished(store, clock.advance(1), lease=10, limit=10)
    assert [e["service_id"] for e in claimed] == [early, late]


async def test_a_claim_takes_only_free_events_oldest_first_and_holds_for_its_lease(
    store: Store,
) -> None:
    """Published events are never claimed (not even crowding out free ones at the limit), a
    claim returns only what it won, and it holds for exactly its lease."""
    clock = Clock()
    ids = await setup(store, clock, 4)
    await beat(store, clock, *ids)
    for sid in ids:
        await moved(store, clock, sid, "unknown", "online", 1)
    events = await st.record_events(store)
    await st.mark_published(store, [e["_id"] for e in events[:2]])
    at = clock.advance(1)
    claimed = await st.claim_unpublished(store, at, lease=10, limit=2)
    assert [e["service_id"] for e in claimed] == ids[2:]
    for later in (0, 5, 10):  # within the lease, to its last millisecond: nobody else
        assert await st.claim_unpublished(store, at + timedelta(seconds=later), 10, 10) == []
    again = await st.claim_unpublished(store, at + timedelta(seconds=10.002), lease=10, limit=10)
    assert [e["service_id"] for e in again] == ids[2:]
    assert {e["claim"] for e in again}.isdisjoint({e["claim"] for e in claimed})


async def test_an_event_recorded_already_does_not_stop_the_rest_of_its_batch(
    store: Store,
) -> None:
    """Another daemon recorded the first of an outbox's two events: the second is still
    recorded (an ordered insert would stop at the duplicate, then the outbox is cleared)."""
    clock = Clock()
    (sid,) = await setup(store, clock, 1)
    await beat(store, clock, sid)
    await moved(store, clock, sid, "unknown", "online", 1)
    await moved(store, clock, sid, "online", "stale", 20)
    first, _ = (await store.services.find_one({"_id": sid}))["outbox"]
    await store.service_events.insert_one(st._event(store, sid, first))
    (recorded,) = await st.record_events(store)
    assert (recorded["from"], recorded["to"]) == ("online", "stale")
    stored = [e async for e in store.service_events.find({"service_id": sid}).sort("at", 1)]
    assert [(e["from"], e["to"]) for e in stored] == [("unknown", "online"), ("online", "stale")]


OPERATIONS: dict[str, Callable[[Store], Awaitable[Any]]] = {
    "candidates": lambda s: st.candidates(s, 0, 0),
    "count_services": lambda s: st.count(s, "online", alive_from=0, alive_before=1),
    "record_events": lambda s: st.record_events(s),
    "reset_damping": lambda s: st.reset_damping(s, {"status": "stale"}),
    "history": lambda s: st.history(s, "svc-1", 10),
    "claim_unpublished": lambda s: st.claim_unpublished(s, T0, lease=1, limit=10),
    "mark_published": lambda s: st.mark_published(s, ["svc-1:t"]),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
async def test_an_operation_against_a_dead_store_names_itself(dead: Store, operation: str) -> None:
    """What the checker's and the publisher's logs say when MongoDB is away."""
    with pytest.raises(StoreUnavailable) as caught:
        await OPERATIONS[operation](dead)
    assert str(caught.value).startswith(f"{operation}: MongoDB ")
