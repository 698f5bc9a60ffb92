"""What one task page costs the store, per kind of listing scripts/bench_web.py requests: the
commands pinned here are the store work per request the benchmark reports (docs/web-performance.md).
A credential is read once per ``[web] credential_cache_ttl``, a filter's size once per
``tasklist.SIZES_TTL`` (with the ``count`` command, never an aggregation), and a page is one
query, two for the page after a cursor (its ties, the rest) or a search (the id, the name),
asked at once where that costs nothing."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import structlog.testing
from pymongo import monitoring
from test_web_round_trips import Commands
from web_client import Served, make_token, make_user, serve

from taskdash.errors import ConfigError, StoreUnavailable
from taskdash.models import TaskMetaData, TaskService
from taskdash.settings import load
from taskdash.store import Store, assignments, tasklist
from taskdash.store.services import register_services
from taskdash.store.tasklist import Cursor, TaskPage, TaskQuery, find_tasks
from taskdash.store.tasks import ServiceListing, apply_listings, load_known, write_registered
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


# -- shared reads (store/flights.py) ----------------------------------------------------------


async def test_the_same_pages_asked_at_once_share_one_read_and_one_count(
    watched: tuple[Served, Commands, str],
) -> None:
    served, commands, _ = watched
    own = served.store
    tasklist._sizes.clear()  # the service's size is not known yet: it is counted
    same = TaskQuery(sort="last_seen", descending=True)
    by_name = TaskQuery(service_id="svc-1", sort="name")
    by_id = TaskQuery(service_id="svc-1", sort="last_seen")
    with commands.count() as sent:
        pages = await asyncio.gather(
            *(find_tasks(own, q) for q in (same, same, same, by_name, by_id))
        )
    assert pages[0] is pages[1] is pages[2], "one read's page, shown three times"
    assert len(pages[0].tasks) == 50
    assert sorted(sent) == sorted(["find tasks", "count tasks", "find tasks", "find tasks"])
    assert own.flights.joined >= 2


async def test_a_page_asked_while_its_read_is_held_is_that_reads_page(store: Store) -> None:
    """The other side of the next test: with no write between, a request joins the read on
    its way, whatever that read finds (so the next test's fresh page is not a coincidence)."""
    await _two_tasks(store)
    query = TaskQuery(sort="id").checked()
    held = asyncio.Event()

    async def old_page() -> str:
        await held.wait()
        return "the held read's page"

    holding = asyncio.ensure_future(store.flights.share(("find_tasks", query), old_page))
    await asyncio.sleep(0)
    joining = asyncio.ensure_future(find_tasks(store, query))
    await asyncio.sleep(0.05)
    held.set()
    assert await joining == await holding == "the held read's page"


async def _two_tasks(store: Store) -> None:
    now_ms = to_ms(datetime.now(UTC))
    tasks = [TaskMetaData(id=f"t{i}", name=f"job {i}") for i in range(2)]
    await apply_listings(store, [ServiceListing("svc", tasks, {})], now_ms)


WRITES = {
    "claim": lambda s, now: assignments.claim(s, "t0", "alice", now_ms=now),
    "release": lambda s, now: assignments.release(s, "t1", "bob", now_ms=now),
    "assign": lambda s, now: assignments.set_assignment(
        s, "t0", user="carol", source="web", by="admin", now_ms=now
    ),
    "tcp register": lambda s, now: write_registered(
        s, "t2", {"name": "job 2"}, {}, create=True, now_ms=now
    ),
}


@pytest.mark.parametrize("write", list(WRITES))
async def test_a_page_asked_after_a_clients_write_shows_it(store: Store, write: str) -> None:
    """A read on its way when a claim (release, assignment, TCP Register) is answered is not
    joined by a request made after that answer: the page shows the write."""
    await _two_tasks(store)
    now_ms = to_ms(datetime.now(UTC))
    await assignments.claim(store, "t1", "bob", now_ms=now_ms)
    query = TaskQuery(sort="id").checked()
    before = await find_tasks(store, query)
    held = asyncio.Event()

    async def old_page() -> TaskPage:
        await held.wait()
        return before

    holding = asyncio.ensure_future(store.flights.share(("find_tasks", query), old_page))
    await asyncio.sleep(0)
    await WRITES[write](store, now_ms + 1)
    asyncio.get_running_loop().call_later(0.5, held.set)  # a joined request would get `before`
    after = await find_tasks(store, query)
    await holding
    shown = {t["id"]: t["assignee"] for t in after.tasks}
    assert shown != {t["id"]: t["assignee"] for t in before.tasks}
    expected = {
        "claim": {"t0": "alice", "t1": "bob"},
        "release": {"t0": "", "t1": ""},
        "assign": {"t0": "carol", "t1": "bob"},
        "tcp register": {"t0": "", "t1": "bob", "t2": ""},
    }
    assert shown == expected[write]


async def test_a_fetch_storing_listings_does_not_end_the_sharing(store: Store) -> None:
    """Nobody waits on a fetch's write (it was never ordered before a request): the fetcher
    storing a listing every few seconds must not stop identical requests sharing a read."""
    await _two_tasks(store)
    generation = store.flights.generation
    tasks = [TaskMetaData(id="t0", name="renamed"), TaskMetaData(id="t9", name="new")]
    known = await load_known(store, ["svc"])
    await apply_listings(
        store, [ServiceListing("svc", tasks, known["svc"])], to_ms(datetime.now(UTC))
    )
    page = await find_tasks(store, TaskQuery(sort="id"))
    assert [t["name"] for t in page.tasks] == ["renamed", "new"]  # t1 left the listing
    assert store.flights.generation == generation


# -- a filter's size, counted again in the background -----------------------------------------


async def landed(store: Store) -> None:
    """Until every read launched on ``store`` (a background recount) has landed."""
    for _ in range(500):
        if not len(store.flights):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a background recount never landed")


def remember(store: Store, service_id: str, expires: float, n: int) -> tuple[str, str, int]:
    key = (store.db.name, repr({"service_id": {"$eq": service_id}}), tasklist.SMALL)
    tasklist._sizes[key] = (expires, n)
    return key


SERVICE = tasklist._equal("service_id", "svc")


async def test_an_old_size_is_used_at_once_and_counted_again_behind(store: Store) -> None:
    await _two_tasks(store)
    key = remember(store, "svc", 0.0, 10**6)  # long expired, and wrong
    assert await tasklist._small(store, SERVICE) is None, "the old size, as it was"
    await landed(store)
    expires, n = tasklist._sizes[key]
    assert n == 2 and expires > time.monotonic(), "counted again, remembered afresh"
    assert await tasklist._small(store, SERVICE) == 2


async def test_a_recount_that_fails_keeps_the_old_size_and_the_request_never_waits(
    dead: Store,
) -> None:
    """The store is gone: the request still gets the remembered size at once (it would wait
    for the count and fail otherwise), the failed recount is logged, the size stays."""
    key = remember(dead, "svc", 0.0, 7)
    with structlog.testing.capture_logs() as logs:
        assert await tasklist._small(dead, SERVICE) == 7
        await landed(dead)
    assert tasklist._sizes[key] == (0.0, 7)
    failed = [e for e in logs if e["event"] == "task_filter_recount_failed"]
    assert failed and failed[0]["error_type"] == "StoreUnavailable"
    tasklist._sizes.pop(key)
    with pytest.raises(StoreUnavailable):  # never counted: the request waits for its count
        await find_tasks(dead, TaskQuery(service_id="svc", sort="name"))


async def test_a_recount_failing_any_other_way_is_logged_and_changes_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(_collection: object, _condition: dict[str, object]) -> int:
        raise KeyError("n")  # e.g. a server answering a count without its figure

    monkeypatch.setattr(tasklist, "count_matching", broken)
    key = remember(store, "svc", 0.0, 3)
    with structlog.testing.capture_logs() as logs:
        assert await tasklist._small(store, SERVICE) == 3
        await landed(store)
    assert tasklist._sizes[key] == (0.0, 3)
    assert [e["error_type"] for e in logs if e["event"] == "task_filter_recount_failed"] == [
        "KeyError"
    ]
