"""The dashboard's task listing (store/tasklist.py) against a real server, checked by an oracle.

Every sort, both directions, walked page by page forwards and backwards with small pages,
must give exactly the order the oracle computes from the public fields; every filter must
give exactly the tasks the oracle selects. Both ways of writing a filter (index seek, or
walk of the sort index) are run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from taskdash.models import TaskMetaData
from taskdash.store import Store, tasklist
from taskdash.store.assignments import claim, set_assignment
from taskdash.store.tasklist import BadQuery, Cursor, TaskQuery, find_tasks
from taskdash.store.tasks import ServiceListing, apply_listings, load_known, write_registered

STATUSES = ("running", "finish", "new")
NAMES = ("Backup", "backup daily", "Straße", "zeta", "Alpha", "alpha", "Mail <b>", "mail")
USERS = ("", "ann", "bob")
EPOCH = 1_795_000_000_000  # times as stored: epoch ms, beyond 32 bits (BSON int64)


async def harvest(store: Store, service_id: str, tasks: list[TaskMetaData], now_ms: int) -> None:
    known = (await load_known(store, [service_id]))[service_id]
    await apply_listings(store, [ServiceListing(service_id, tasks, known)], now_ms)


@pytest.fixture
async def world(store: Store) -> list[dict[str, Any]]:
    """34 tasks: 3 services listed at 2 moments (ties on last seen), 4 TCP tasks (no service),
    ties on name and status, 3 holders, 3 gone; returns every task as the API shows it."""
    for s in range(3):
        tasks = [
            TaskMetaData(
                id=f"{'T' if i % 5 == 0 else 't'}{s}-{i:02d}",
                name=NAMES[(i + s) % len(NAMES)],
                description=f"does {'a.b' if i % 4 == 0 else 'axb'} for svc {s}",
                status=STATUSES[(i * 7 + s) % 3],
            )
            for i in range(10)
        ]
        await harvest(store, f"svc-{s}", tasks, now_ms=EPOCH + s % 2)
        if s == 2:  # the first three stop being listed: gone
            await harvest(store, "svc-2", tasks[3:], now_ms=EPOCH + 1000)
    for i in range(4):
        fields = {"name": NAMES[i], "status": STATUSES[i % 3], "description": "over tcp"}
        await write_registered(store, f"tcp-{i}", fields, {}, create=True, now_ms=EPOCH + 500)
    every = await everything(store)
    for n, task in enumerate(every):
        user = USERS[n % 3]
        if user and n % 2:
            await claim(store, task["id"], user, now_ms=3000)
        elif user:
            await set_assignment(store, task["id"], user=user, source="tcp", now_ms=3000)
    return await everything(store)


async def everything(store: Store) -> list[dict[str, Any]]:
    page = await find_tasks(store, TaskQuery(gone="show", limit=200))
    assert page.next is None
    return page.tasks


def oracle_key(sort: str) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """The order the API promises, computed from the public fields alone."""
    value: Callable[[dict[str, Any]], Any] = {
        "id": lambda t: t["id"],
        "name": lambda t: t["name"].casefold(),
        "status": lambda t: t["status"],
        "service": lambda t: t["service_id"],
        "assignee": lambda t: t["assignee"],
        "last_seen": lambda t: t["last_seen_at"],
    }[sort]

    def key(task: dict[str, Any]) -> tuple[Any, ...]:
        v = value(task)
        return ((0, "") if v is None else (1, v)), task["id"]

    return key


async def walk(store: Store, query: TaskQuery) -> tuple[list[str], list[str]]:
    """Every id, following ``next`` from the first page, then ``prev`` back from the last."""
    forward: list[list[str]] = []
    page = await find_tasks(store, query)
    forward.append([t["id"] for t in page.tasks])
    while page.next:
        page = await find_tasks(store, replace(query, after=Cursor.decode(page.next, "after")))
        forward.append([t["id"] for t in page.tasks])
    backward: list[list[str]] = [forward[-1]]
    while page.prev:
        page = await find_tasks(store, replace(query, before=Cursor.decode(page.prev, "before")))
        backward.insert(0, [t["id"] for t in page.tasks])
    assert all(len(chunk) == query.limit for chunk in forward[:-1]), "only the last page is short"
    return list(itertools.chain(*forward)), list(itertools.chain(*backward))


@pytest.fixture(params=["seek", "walk"])
def both_plans(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every filter served from its own index (seek), or by walking the sort index (walk)."""
    monkeypatch.setattr(tasklist, "SMALL", 10_000 if request.param == "seek" else 0)


@pytest.mark.parametrize("sort", list(tasklist.SORTS))
@pytest.mark.parametrize("descending", [False, True])
async def test_every_sort_pages_in_the_oracles_order_both_ways(
    store: Store, world: list[dict[str, Any]], sort: str, descending: bool
) -> None:
    expected = [t["id"] for t in sorted(world, key=oracle_key(sort), reverse=descending)]
    query = TaskQuery(gone="show", sort=sort, descending=descending, limit=4)
    forward, backward = await walk(store, query)
    assert forward == expected
    assert backward == expected


FILTERS: list[tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
    ({}, lambda t: not t["gone"]),
    ({"gone": "only"}, lambda t: t["gone"]),
    ({"status": "new"}, lambda t: t["status"] == "new" and not t["gone"]),
    ({"service_id": "svc-1"}, lambda t: t["service_id"] == "svc-1" and not t["gone"]),
    ({"assignee": "ann"}, lambda t: t["assignee"] == "ann" and not t["gone"]),
    ({"assignee": ""}, lambda t: t["assignee"] == "" and not t["gone"]),
    (
        {"status": "running", "assignee": "", "gone": "show"},
        lambda t: t["status"] == "running" and t["assignee"] == "",
    ),
    ({"q": "BACKUP"}, lambda t: t["name"].casefold().startswith("backup") and not t["gone"]),
    ({"q": "strasse", "gone": "show"}, lambda t: t["name"] == "Straße"),
    (
        {"q": "t1-0"},
        lambda t: (
            (t["id"].casefold().startswith("t1-0") or t["name"].casefold().startswith("t1-0"))
            and not t["gone"]
        ),
    ),
    (
        {"q": "a", "status": "finish"},
        lambda t: t["name"][0] in "aA" and t["status"] == "finish" and not t["gone"],
    ),
    ({"q": "mail <"}, lambda t: t["name"] == "Mail <b>" and not t["gone"]),
    ({"q": "nothing"}, lambda t: False),
    ({"description": "A.B"}, lambda t: "a.b" in t["description"] and not t["gone"]),
    ({"description": "TCP", "q": "ZET"}, lambda t: t["id"] == "tcp-3"),
]


@pytest.mark.usefixtures("both_plans")
@pytest.mark.parametrize(("asked", "wanted"), FILTERS, ids=[str(f[0]) for f in FILTERS])
@pytest.mark.parametrize("sort", ["id", "name", "last_seen"])
async def test_filters_select_what_the_oracle_selects(
    store: Store,
    world: list[dict[str, Any]],
    asked: dict[str, Any],
    wanted: Callable[[dict[str, Any]], bool],
    sort: str,
) -> None:
    selected = [t for t in world if wanted(t)]
    for descending in (False, True):
        expected = [t["id"] for t in sorted(selected, key=oracle_key(sort), reverse=descending)]
        query = TaskQuery(**asked, sort=sort, descending=descending, limit=3)
        forward, backward = await walk(store, query)
        assert forward == expected, (asked, sort, descending)
        assert backward == expected


async def test_a_page_shows_each_task_with_its_binding(
    store: Store, world: list[dict[str, Any]]
) -> None:
    page = await find_tasks(store, TaskQuery(q="tcp-0"))
    (task,) = page.tasks
    assert task["service_id"] is None and task["description"] == "over tcp"
    assert page.next is None and page.prev is None
    gone = (await find_tasks(store, TaskQuery(gone="only", limit=1))).tasks[0]
    assert gone["gone"] is True and gone["gone_at"] is not None
    held = [t for t in world if t["assignee"]]
    assert {t["assignment"]["source"] for t in held} == {"tcp", "web"}
    assert all(t["assignment"] is None for t in world if not t["assignee"])


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (TaskQuery(limit=0), "limit"),
        (TaskQuery(limit=201), "limit"),
        (TaskQuery(q="x" * 65), "q"),
        (TaskQuery(description="x" * 65), "description"),
        (TaskQuery(sort="url"), "sort"),
        (TaskQuery(gone="maybe"), "gone"),  # type: ignore[arg-type]
        (TaskQuery(after=Cursor("name", False, "a", "k")), "after"),
        (TaskQuery(before=Cursor("id", True, "a", "k")), "before"),
        (
            TaskQuery(after=Cursor("id", False, "a", "k"), before=Cursor("id", False, "a", "k")),
            "before",
        ),
    ],
)
async def test_bad_queries_name_the_parameter(store: Store, query: TaskQuery, field: str) -> None:
    with pytest.raises(BadQuery) as bad:
        await find_tasks(store, query)
    assert bad.value.field == field


@pytest.mark.parametrize(
    "text", ["", "!!", "x" * 1025, "WyJpZCIsZmFsc2Vd", "WyJ1cmwiLGZhbHNlLCJhIiwiYiJd", "e30"]
)
def test_only_cursors_this_api_gave_decode(text: str) -> None:
    with pytest.raises(BadQuery) as bad:
        Cursor.decode(text, "after")
    assert bad.value.field == "after"


def test_a_cursor_round_trips() -> None:
    for value in ("naïve <x>", 1700000000000, None):
        cursor = Cursor("service", True, value, "k/1")
        assert Cursor.decode(cursor.encode(), "after") == cursor


async def test_a_cursor_used_with_another_filter_gives_what_that_filter_holds_after_it(
    store: Store, world: list[dict[str, Any]]
) -> None:
    """A cursor of the status order taken on status=running, used with status=new: the ties
    part (status == running) contradicts the filter and is skipped, nothing is invented."""
    page = await find_tasks(store, TaskQuery(status="running", sort="status", limit=2))
    assert page.next is not None
    after = Cursor.decode(page.next, "after")
    again = await find_tasks(store, TaskQuery(status="new", sort="status", after=after))
    assert again.tasks == [], "every 'new' sorts before 'running'"
    finish = await find_tasks(store, TaskQuery(status="running", sort="status", after=after))
    expected = sorted(t["id"] for t in world if t["status"] == "running" and not t["gone"])
    assert [t["id"] for t in finish.tasks] == expected[2:]


async def test_remembered_filter_counts_stay_bounded(
    store: Store, world: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasklist, "_SIZES_MAX", 2)
    for status in STATUSES:
        await find_tasks(store, TaskQuery(status=status, sort="name"))
    assert len(tasklist._sizes) <= 2


def test_a_tasks_times_are_shown_alike_whatever_type_the_driver_gave() -> None:
    """Epoch ms as int or BSON Int64 (remembered per value), a datetime, or nothing."""
    from datetime import UTC, datetime

    from bson.int64 import Int64

    from taskdash.store.times import iso, to_ms

    at = datetime(2026, 11, 26, 12, 0, 0, 123000, tzinfo=UTC)
    ms = to_ms(at)
    for value in (ms, Int64(ms), at):
        shown = tasklist.public_task({"_id": "t", "first_seen_at": value, "last_seen_at": value})
        assert shown["first_seen_at"] == shown["last_seen_at"] == iso(at) == iso(ms)
    assert tasklist.public_task({"_id": "t"})["gone_at"] is None
