"""Several daemons sharing the services: rendezvous split, liveness, exactly-once per interval."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from fetcher_site import T0, Clock, Site, register, settings, task
from support import async_wait_for

from taskdash.fetcher import Fetcher
from taskdash.fetcher.sharding import owner, share
from taskdash.store import Store
from taskdash.store.nodes import live_nodes
from taskdash.store.tasks import claim_due, list_tasks
from taskdash.store.times import to_ms

SERVICES = [f"svc-{i:03d}" for i in range(100)]


@pytest.fixture
async def site(store: Store) -> AsyncIterator[Site]:
    """100 services, one task each, all registered."""
    server = await Site().start()
    for sid in SERVICES:
        server.listings[sid] = [task(f"task-of-{sid}")]
    await register(store, {sid: server.url(sid) for sid in SERVICES})
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def pair(store: Store) -> AsyncIterator[tuple[Fetcher, Fetcher, Clock]]:
    """Two daemons on one test clock (node timeout 5 s, interval 10 s)."""
    clock = Clock()
    a = Fetcher(store, settings(), node_id="node-a", clock=clock)
    b = Fetcher(store, settings(), node_id="node-b", clock=clock)
    try:
        yield a, b, clock
    finally:
        await a.stop()
        await b.stop()


async def warm_pool(store: Store) -> None:
    """Open a few connections first, so that concurrent claims run side by side, not in turn."""
    await asyncio.gather(*(store.nodes.find_one({"_id": f"warm-{n}"}) for n in range(4)))


def delta(site: Site, before: Counter[str]) -> Counter[str]:
    return Counter({k: v - before[k] for k, v in site.hits.items() if v > before[k]})


# -- rendezvous hashing (pure) -----------------------------------------------------------------


def test_rendezvous_is_deterministic_and_covers_every_service() -> None:
    nodes = ["a", "b", "c"]
    shares = {node: share(SERVICES, nodes, node) for node in nodes}
    assert sorted(sid for s in shares.values() for sid in s) == SERVICES
    assert all(len(s) > 15 for s in shares.values())  # a rough balance, deterministic here
    assert shares["a"] == share(SERVICES, ["c", "b", "a"], "a")


def test_a_leaving_node_moves_only_its_own_services() -> None:
    before = {sid: owner(sid, ["a", "b", "c"]) for sid in SERVICES}
    after = {sid: owner(sid, ["a", "b"]) for sid in SERVICES}
    moved = {sid for sid in SERVICES if before[sid] != after[sid]}
    assert moved == {sid for sid in SERVICES if before[sid] == "c"}


def test_owner_needs_a_node() -> None:
    with pytest.raises(ValueError, match="no live nodes"):
        owner("s", [])


# -- two daemons -----------------------------------------------------------------------------


async def test_two_daemons_split_the_services_exactly_once_per_interval(
    store: Store, site: Site, pair: tuple[Fetcher, Fetcher, Clock]
) -> None:
    a, b, clock = pair
    await a.heartbeat()
    await b.heartbeat()
    for _ in range(3):
        before = Counter(site.hits)
        ra, rb = await asyncio.gather(a.sweep(), b.sweep())
        assert delta(site, before) == Counter(dict.fromkeys(SERVICES, 1))
        assert ra.share + rb.share == 100 and ra.share > 0 and rb.share > 0
        assert (ra.claimed, rb.claimed) == (ra.share, rb.share)
        assert ra.live_nodes == rb.live_nodes == 2
        clock.advance(10)
    assert len(await list_tasks(store, limit=1000)) == 100
    assert await live_nodes(store, to_ms(clock.now), 60_000) == ["node-a", "node-b"]


async def test_daemons_that_disagree_about_who_is_live_never_fetch_twice(
    store: Store, site: Site
) -> None:
    """Both create the same new services' claims at once: the duplicate-key path decides."""
    late = Clock(T0 + timedelta(seconds=1))  # one second ahead, same interval
    a = Fetcher(store, settings(node_timeout=0.5, node_heartbeat_interval=0.1), node_id="node-a",
                clock=late)  # fmt: skip
    b = Fetcher(store, settings(), node_id="node-b", clock=Clock())
    await warm_pool(store)
    try:
        # a sees only itself (b's beat is 1 s old to a): it claims every service; b sees both
        # and claims its share; neither service has a claim document yet
        ra, rb = await asyncio.gather(a.sweep(), b.sweep())
        assert (ra.share, rb.share) == (100, len(share(SERVICES, ["node-a", "node-b"], "node-b")))
        assert ra.claimed + rb.claimed == 100
        assert site.hits == Counter(dict.fromkeys(SERVICES, 1))
    finally:
        await a.stop()
        await b.stop()


async def test_concurrent_claims_of_new_services_never_overlap(store: Store) -> None:
    """Two claims of the same never-fetched services at once: each service goes to one."""
    await warm_pool(store)
    now_ms = to_ms(T0)
    for round_ in range(5):
        ids = [f"new-{round_}-{i}" for i in range(50)]
        claims = await asyncio.gather(
            *(claim_due(store, ids, now_ms=now_ms, until_ms=now_ms + 10_000, token=f"{round_}-{n}")
              for n in range(2))
        )  # fmt: skip
        first, second = (set(c) for c in claims)
        assert first | second == set(ids) and not first & second
        query = {"_id": {"$in": ids}}
        holders = {doc["_id"]: doc["claim"] async for doc in store["fetch_results"].find(query)}
        assert holders == {sid: f"{round_}-{0 if sid in first else 1}" for sid in ids}


async def test_a_taken_over_share_is_fetched_once_per_interval(
    site: Site, pair: tuple[Fetcher, Fetcher, Clock]
) -> None:
    """b dies just before its sweep; a's wake-up sweep takes its share, the next one skips it."""
    a, b, clock = pair  # interval 10 s, node timeout 5 s
    await a.heartbeat()
    await b.heartbeat()
    await asyncio.gather(a.sweep(), b.sweep())  # T0: every service once
    b_share = {sid for sid in SERVICES if owner(sid, ["node-a", "node-b"]) == "node-b"}
    clock.advance(9)
    await b.heartbeat()  # b's last sign of life: T0+9 s
    clock.advance(1)
    before = Counter(site.hits)
    assert (await a.sweep()).claimed == 100 - len(b_share)  # T0+10 s: b's share is b's
    assert set(delta(site, before)) == set(SERVICES) - b_share
    clock.advance(4.8)
    before = Counter(site.hits)
    assert await a.heartbeat()  # T0+14.8 s: b is dead; the loop would sweep at once
    assert (await a.sweep()).claimed == len(b_share)
    clock.advance(5.2)
    await a.sweep()  # T0+20 s: a's own share; b's former share was fetched 5.2 s ago
    assert delta(site, before) == Counter(dict.fromkeys(SERVICES, 1))
    clock.advance(10)
    before = Counter(site.hits)
    await a.sweep()  # T0+30 s: everything, once
    assert delta(site, before) == Counter(dict.fromkeys(SERVICES, 1))


async def test_a_dead_daemons_share_moves_within_two_intervals(
    site: Site, pair: tuple[Fetcher, Fetcher, Clock]
) -> None:
    a, b, clock = pair
    await a.heartbeat()
    await b.heartbeat()
    await asyncio.gather(a.sweep(), b.sweep())
    b_share = {sid for sid in SERVICES if owner(sid, ["node-a", "node-b"]) == "node-b"}
    assert b_share
    # b dies silently (no stop, no heartbeat); a carries on alone
    fetched_by_a: Counter[str] = Counter()
    for _ in range(2):
        clock.advance(10)
        before = Counter(site.hits)
        await a.sweep()
        fetched_by_a.update(delta(site, before))
    assert set(fetched_by_a) == set(SERVICES)
    assert a.check()[1]["my_share"] == 100


async def test_a_stopped_daemons_services_are_picked_up(store: Store, site: Site) -> None:
    """Real loops on a real clock: start both, stop one, the other takes everything."""
    fast: dict[str, Any] = {
        "fetch_interval": 1.0,
        "node_heartbeat_interval": 0.2,
        "node_timeout": 0.8,
    }
    a = Fetcher(store, settings(**fast), node_id="node-a")
    b = Fetcher(store, settings(**fast), node_id="node-b")
    try:
        await a.start()
        await b.start()
        await async_wait_for(lambda: a.my_share and b.my_share and a.my_share + b.my_share == 100)
        await async_wait_for(lambda: all(site.hits[sid] for sid in SERVICES))
        await b.stop()
        assert await live_nodes(store, to_ms(a.clock()), 60_000) == ["node-a"]
        await async_wait_for(lambda: a.my_share == 100)
        before = Counter(site.hits)
        await async_wait_for(lambda: set(delta(site, before)) == set(SERVICES))
        ready, details = a.check()
        assert ready and details["live_nodes"] == 1 and "error" not in details
    finally:
        await a.stop()
        await b.stop()


async def test_stopping_finishes_in_flight_fetches_and_gives_back_the_rest(
    store: Store, site: Site
) -> None:
    names = SERVICES[:3]
    site.slow.update(names)
    await store.services.update_many({"_id": {"$nin": names}}, {"$set": {"status": "offline"}})
    clock = Clock()  # frozen: both daemons stay in one interval whatever the wall clock does
    a = Fetcher(store, settings(concurrency=1), node_id="node-a", clock=clock)
    b = Fetcher(store, settings(), node_id="node-b", clock=clock)
    try:
        await a.start()
        await async_wait_for(lambda: sum(site.hits.values()) == 1)
        stopping = asyncio.create_task(a.stop(grace=30))
        await asyncio.sleep(0)  # stop() has begun: no new fetch starts from here
        site.release.set()
        await stopping
        assert sum(site.hits.values()) == 1
        assert len(await list_tasks(store)) == 1  # the in-flight answer was stored
        assert await live_nodes(store, to_ms(b.clock()), 60_000) == []
        result = await b.sweep()  # same interval: the two given back are b's to fetch
        assert (result.claimed, result.ok) == (2, 2)
        assert site.hits == Counter(dict.fromkeys(names, 1))
        await a.stop()  # idempotent
    finally:
        await a.stop()
        await b.stop()
