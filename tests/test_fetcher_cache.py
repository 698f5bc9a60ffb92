"""The fetcher's cache of what is stored, while sweeps overlap (a takeover, a slow service)."""

from __future__ import annotations

import json

from fetcher_site import Clock, Site, register, settings, task
from pymongo import AsyncMongoClient, monitoring

from taskdash.fetcher import Fetcher
from taskdash.fetcher.outcome import Outcome
from taskdash.fetcher.parse import parse_listing
from taskdash.store import Store
from taskdash.store.tasks import list_tasks
from taskdash.store.times import to_ms


class ShareShrinksDuringLoad(monitoring.CommandListener):
    """Another sweep's plan, landing while this one loads what is stored for a cold service.

    A wake-up sweep (a node joined, this node's share shrank) replaces the fetcher's cache with
    only its new share. The listener does exactly that as the load's ``find`` is sent, so the
    interleaving is certain rather than a matter of timing.
    """

    def __init__(self) -> None:
        self.fetcher: Fetcher | None = None
        self.fired = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        loading = event.command_name == "find" and event.command["find"] == "tasks"
        if loading and self.fetcher is not None and not self.fired:
            self.fired += 1
            self.fetcher._known = {}  # what _plan does when the share no longer holds them

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_a_plan_pruning_the_cache_mid_write_loses_no_result(
    store: Store, mongo_uri: str
) -> None:
    site = await Site().start()
    race = ShareShrinksDuringLoad()
    listened = Store(mongo_uri, store.db.name)
    await listened.client.close()
    listened.client = AsyncMongoClient(mongo_uri, event_listeners=[race], tz_aware=True)
    listened.db = listened.client[store.db.name]
    clock = Clock()
    fetcher = Fetcher(listened, settings(), node_id="n1", clock=clock)
    try:
        site.listings["warm"] = [task("w1")]
        await register(store, {"warm": site.url("warm")})
        assert (await fetcher.sweep()).ok == 1  # "warm" is now cached
        token = fetcher._known["warm"][0]
        # one batch: "warm" (cached, listing changed) and "cold" (never stored: loaded)
        warm = Outcome("warm", site.url("warm"), {"listing": token}, to_ms(clock()))
        warm.listing = parse_listing(json.dumps([task("w1"), task("w2")]).encode())
        cold = Outcome("cold", site.url("cold"), {}, to_ms(clock()))
        cold.listing = parse_listing(json.dumps([task("c1")]).encode())
        race.fetcher = fetcher
        await fetcher._apply([warm, cold], "next-token", to_ms(clock()))
        assert race.fired == 1
        stored = {t["id"]: t["service_id"] for t in await list_tasks(store, include_gone=True)}
        assert stored == {"w1": "warm", "w2": "warm", "c1": "cold"}
    finally:
        await fetcher.stop()
        await listened.close()
        await site.stop()
