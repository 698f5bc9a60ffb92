"""What one task page costs the store, per kind of listing scripts/bench_web.py requests: the
commands pinned here are the store work per request the benchmark reports (docs/web-performance.md).
A credential is read once per ``[web] credential_cache_ttl``, a filter's size once per
``tasklist.SIZES_TTL`` (with the ``count`` command, never an aggregation), and a page is one
query, two for the page after a cursor (its ties, the rest) or a search (the id, the name),
asked at once where that costs nothing."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from pymongo import monitoring
from test_web_round_trips import Commands
from web_client import Served, make_token, make_user, serve

from taskdash.errors import ConfigError, StoreUnavailable
from taskdash.models import TaskMetaData, TaskService
from taskdash.settings import load
from taskdash.store import Store
from taskdash.store.services import register_services
from taskdash.store.tasklist import Cursor, TaskQuery, find_tasks
from taskdash.store.tasks import ServiceListing, apply_listings
from taskdash.store.times import to_ms

STATUSES = ("running", "finish", "new")


@pytest.fixture
async def watched(store: Store, mongo_uri: str) -> AsyncIterator[tuple[Served, Commands, str]]:
    """The application on a store whose client reports every command: 3 services of 20 tasks,
    and a token that has been used once (so its first-use note is behind us)."""
    listener = Commands()
    monitoring.register(listener)
    own = Store(mongo_uri, store.db.name)
    try:
        now = datetime.now(UTC)
        services = [TaskService(id=f"svc-{i}", name=f"s{i}") for i in range(3)]
        await register_services(own, services, now)
        listings = [
            ServiceListing(
                s.id,
                [
                    TaskMetaData(id=f"{s.id}-{j:02d}", name=f"job {j % 7}", status=STATUSES[j % 3])
                    for j in range(20)
                ],
                {},
            )
            for s in services
        ]
        await apply_listings(own, listings, to_ms(now))
        await make_user(own, "alice")
        token = await make_token(own, "alice")
        async with serve(own) as served:
            assert (await served.client(token=token).call("/api/v1/tasks"))[0] == 200
            yield served, listener, token
    finally:
        listener.counting = False
        await own.close()


ONE = ["find tasks"]
#: (requests made in turn, the commands each costs); "{next}": the last page's next cursor
COSTS = [
    (["/api/v1/tasks?sort=last_seen&order=desc"], [ONE]),
    (["/api/v1/tasks?unassigned=true&sort=id"], [ONE]),
    (["/api/v1/tasks?status=running"], [ONE]),  # its index gives the order: no count
    (  # a filter's size: counted once, then remembered
        ["/api/v1/tasks?service_id=svc-1&sort=last_seen&order=desc"] * 2,
        [["count tasks", *ONE], ONE],
    ),
    (  # the page after a cursor: the ties of the last name, then the rest
        [
            "/api/v1/tasks?sort=name&order=desc&limit=5",
            "/api/v1/tasks?sort=name&order=desc&limit=5&after={next}",
        ],
        [ONE, ONE * 2],
    ),
    (  # a search: the id prefix (its size counted once), the name prefix
        ["/api/v1/tasks?q=job&sort=name"] * 2,
        [["count tasks", *ONE * 2], ONE * 2],
    ),
]


@pytest.mark.parametrize(("paths", "costs"), COSTS)
async def test_what_each_kind_of_page_costs_the_store(
    watched: tuple[Served, Commands, str], paths: list[str], costs: list[list[str]]
) -> None:
    served, commands, token = watched
    client = served.client(token=token)
    cursor = ""
    for path, cost in zip(paths, costs, strict=True):
        with commands.count() as sent:
            status, page = await client.call(path.replace("{next}", cursor))
            assert status == 200, page
        assert sorted(sent) == sorted(cost), path  # a search's two branches go at once
        cursor = page["next"] or ""


async def test_with_a_zero_ttl_nothing_is_remembered(store: Store) -> None:
    await make_user(store, "alice")
    token = await make_token(store, "alice")
    settings = load(env={"TASKDASH_WEB__CREDENTIAL_CACHE_TTL": "0"})
    async with serve(store, settings) as served:
        client = served.client(token=token)
        for _ in range(2):
            assert (await client.call("/api/v1/tasks"))[0] == 200
    assert len(store.credentials) == 0


async def test_the_remembered_token_is_used_with_the_default_ttl(store: Store) -> None:
    await make_user(store, "alice")
    token = await make_token(store, "alice")
    async with serve(store) as served:
        assert (await served.client(token=token).call("/api/v1/tasks"))[0] == 200
    assert len(store.credentials) == 1


@pytest.mark.parametrize("value", ["-1", "61", "soon"])
def test_a_bad_credential_cache_ttl_is_refused_naming_it(value: str) -> None:
    with pytest.raises(ConfigError, match="credential_cache_ttl"):
        load(env={"TASKDASH_WEB__CREDENTIAL_CACHE_TTL": value})


async def test_a_search_with_the_store_gone_is_unavailable_not_an_error_group() -> None:
    """The search's branches go at once (tasklist._at_once): a failure comes out as the
    store's, which the API answers 503, not wrapped in a group nobody translates."""
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gone = Store(
        f"mongodb://127.0.0.1:{port}/?directConnection=true", "x", server_selection_timeout=0.2
    )
    try:
        with pytest.raises(StoreUnavailable):
            await find_tasks(gone, TaskQuery(q="job", sort="name"))
    finally:
        await gone.close()


async def test_the_ties_hint_steers_the_queries_never_the_answer(store: Store) -> None:
    """A page whose last sort value few of its tasks share says so in its cursor (the next
    page then asks for the ties and the rest at once); a wrong hint changes nothing shown."""
    tasks = [TaskMetaData(id=f"t{i}", name="ab"[i // 3]) for i in range(6)]
    await apply_listings(store, [ServiceListing("svc", tasks, {})], to_ms(datetime.now(UTC)))
    first = await find_tasks(store, TaskQuery(sort="name", limit=3))
    assert first.next is not None and not Cursor.decode(first.next, "after").ties
    inside = await find_tasks(store, TaskQuery(sort="name", limit=2))
    assert inside.next is not None
    hinted = Cursor.decode(inside.next, "after")
    assert hinted.ties, "the page and the task after it: all 'a'"
    pages = [
        await find_tasks(store, TaskQuery(sort="name", limit=2, after=replace(hinted, ties=t)))
        for t in (True, False)
    ]
    assert [t["id"] for t in pages[0].tasks] == [t["id"] for t in pages[1].tasks] == ["t2", "t3"]
    assert Cursor.decode(Cursor("name", False, "a", "t1").encode(), "after").ties, "old cursors"
