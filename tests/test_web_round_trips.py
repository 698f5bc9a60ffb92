"""How many MongoDB commands one request costs: each is a round trip that every request of a
busy dashboard pays (scripts/bench_web.py), so the count is pinned here, per kind of request,
whatever the number of rows shown."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest
from pymongo import monitoring
from web_client import Served, make_token, make_user, password_for, serve

from taskdash.models import TaskMetaData, TaskService
from taskdash.store import Store
from taskdash.store.services import register_services
from taskdash.store.tasks import ServiceListing, apply_listings, write_fetch_results
from taskdash.store.times import to_ms


class Commands(monitoring.CommandListener):
    """The commands sent while ``counting``, by name (pymongo's monitoring: one per round trip)."""

    def __init__(self) -> None:
        self.counting = False
        self.sent: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.counting and event.command_name not in ("ping", "hello", "isMaster"):
            collection = event.command.get(event.command_name)
            self.sent.append(f"{event.command_name} {collection}")

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    @contextlib.contextmanager
    def count(self) -> Iterator[list[str]]:
        self.sent, self.counting = [], True
        try:
            yield self.sent
        finally:
            self.counting = False


@pytest.fixture
async def counted(store: Store, mongo_uri: str) -> AsyncIterator[tuple[Served, Commands]]:
    """The application on a store of its own whose client reports every command."""
    listener = Commands()
    monitoring.register(listener)  # for clients made from now on: the one below
    watched = Store(mongo_uri, store.db.name)
    try:
        now = datetime.now(UTC)
        services = [TaskService(id=f"svc-{i:02d}", name=f"s{i}") for i in range(60)]
        await register_services(watched, services, now)
        listings = [ServiceListing(s.id, [TaskMetaData(id=f"{s.id}-t")], {}) for s in services]
        await apply_listings(watched, listings, to_ms(now))
        await write_fetch_results(watched, {s.id: {"at": to_ms(now)} for s in services})
        await make_user(watched, "alice")
        async with serve(watched) as served:
            yield served, listener
    finally:
        listener.counting = False
        await watched.close()


async def test_round_trips_per_request(counted: tuple[Served, Commands]) -> None:
    served, commands = counted
    alice = served.client()
    await alice.login("alice", password_for("alice"))
    script = served.client(token=await make_token(served.store, "alice"))
    await script.call("/api/v1/tasks")  # the first use of a token notes it (once a minute)
    await alice.fetch("/services")  # the counts of a filter are remembered a while

    with commands.count() as sent:
        assert (await alice.fetch("/services")).status == 200
    # the session is remembered ([web] credential_cache_ttl); a page of 50 services, their
    # last fetches in one query, the 4 counts by state
    assert sent[0] == "find services" and len(sent) == 6, sent
    assert sum("fetch_results" in c for c in sent) == 1, sent

    with commands.count() as sent:
        assert (await script.call("/api/v1/tasks?sort=name"))[0] == 200
    assert sent == ["find tasks"]  # the token is remembered too: the page alone

    served.clock.advance(served.ctx.settings.web.credential_cache_ttl)
    with commands.count() as sent:
        assert (await script.call("/api/v1/tasks?sort=name"))[0] == 200
        assert (await alice.fetch("/services")).status == 200
    # once that is over, read again (and nothing else: no account read)
    assert sent[:2] == ["find api_tokens", "find tasks"], sent
    assert sent[2] == "find sessions" and len(sent) == 9, sent
