"""store/tasks.py behaviour that mutation testing (``make mutation``) showed no test held.

What ``GET /api/services/<id>/fetch`` shows after a first fetch that failed, a changed or
returning task as the dashboard finds it, the adoption of tasks registered over TCP (and its
log line), the conflict records an admin reads, the claim that keeps a service from being
fetched twice, and the operation each failure names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import structlog.testing
from fetcher_site import Clock, register, settings
from support import free_port, harvest

from taskdash.errors import StoreUnavailable
from taskdash.fetcher import Fetcher
from taskdash.models import TaskMetaData
from taskdash.store import Store
from taskdash.store import tasks as ts
from taskdash.store.tasklist import TaskQuery, find_tasks
from taskdash.store.tasks import (
    Conflict,
    ServiceListing,
    claim_due,
    content_hash,
    get_fetch_result,
    list_conflicts,
    load_known,
    record_conflicts,
    release,
    write_registered,
)
from taskdash.store.times import iso


async def test_a_first_fetch_that_failed_reads_with_empty_counts_and_no_validators(
    store: Store,
) -> None:
    """Only the failure is written; what the API shows for the rest is its empty defaults."""
    url = f"http://127.0.0.1:{free_port()}/tasks"  # nothing listens there
    await register(store, {"svc": url})
    clock = Clock()
    fetcher = Fetcher(store, settings(), node_id="n1", clock=clock)
    try:
        result = await fetcher.sweep()
    finally:
        await fetcher.stop()
    assert result.failed == 1
    fetched = await get_fetch_result(store, "svc")
    assert fetched is not None and fetched["error"]
    assert (fetched["service_id"], fetched["url"], fetched["node"]) == ("svc", url, "n1")
    assert fetched["at"] == clock.now.isoformat() and fetched["http_status"] is None
    counts = ("task_count", "bad_count", "bad_errors", "conflict_count", "failures")
    assert [fetched[k] for k in counts] == [0, 0, [], 0, 1]
    assert (fetched["etag"], fetched["last_modified"], fetched["listed_at"]) == ("", "", None)
    assert fetched["retry_at"] is not None and fetched["not_modified"] is False


async def test_a_changed_task_is_found_by_its_new_name_and_a_returning_one_is_not_gone(
    store: Store,
) -> None:
    await harvest(store, "s", TaskMetaData(id="t1", name="Alpha"), now_ms=1000)
    await harvest(store, "s", now_ms=2000)  # no longer listed: gone
    (gone,) = (await find_tasks(store, TaskQuery(gone="only"))).tasks
    assert gone["gone_at"] is not None
    back = TaskMetaData(id="t1", name="Beta")
    await harvest(store, "s", back, now_ms=3000)
    (found,) = (await find_tasks(store, TaskQuery(q="beta"))).tasks
    assert (found["id"], found["gone"], found["gone_at"]) == ("t1", False, None)
    assert (await find_tasks(store, TaskQuery(q="alpha"))).tasks == []
    # what is stored is what a cold cache reads back: the next fetch of it writes nothing
    assert (await load_known(store, ["s"]))["s"] == {"t1": content_hash(back)}
    assert (await harvest(store, "s", back, now_ms=4000)).unchanged == 1


async def test_a_service_adopts_the_unowned_tasks_it_lists_and_says_so(store: Store) -> None:
    """Registered over TCP (no owner), then listed by a service: now the service's, seen now,
    with their first sighting, window and binding kept."""
    ids = [f"tcp-{i}" for i in range(6)]
    for task_id in ids:
        fields, window = {"name": f"tcp-name-{task_id}"}, {"start_time": "12:00"}
        await write_registered(store, task_id, fields, window, create=True, now_ms=1000)
    listed = [TaskMetaData(id=task_id, name=f"svc-name-{task_id}") for task_id in ids]
    with structlog.testing.capture_logs() as logs:
        result = await harvest(store, "svc", *listed, now_ms=5000)
    assert (result.conflicts, result.stale, result.inserted) == ([], {"svc"}, 0)
    (line,) = [e for e in logs if e["event"] == "tasks_adopted"]
    assert (line["count"], line["task_ids"], line["log_level"]) == (6, ids[:5], "info")
    doc = await store.tasks.find_one({"_id": ids[0]})
    assert (doc["service_id"], doc["name"]) == ("svc", "svc-name-tcp-0")
    assert (doc["first_seen_at"], doc["last_seen_at"], doc["start_time"]) == (1000, 5000, "12:00")
    assert set((await load_known(store, ["svc"]))["svc"]) == set(ids)


async def test_a_conflict_record_keeps_when_it_was_first_and_last_seen(store: Store) -> None:
    """What an admin reads in ``task_conflicts`` (docs/operations.md)."""
    conflict = Conflict("shared", "second", "first")
    assert await record_conflicts(store, [conflict], ["second"], 1000, "sweep-1") == [conflict]
    assert await record_conflicts(store, [conflict], ["second"], 2000, "sweep-2") == []
    (doc,) = [d async for d in store["task_conflicts"].find({})]
    assert (doc["task_id"], doc["service_id"], doc["owner_service_id"]) == (
        "shared",
        "second",
        "first",
    )
    assert (doc["first_at"], doc["last_at"], doc["count"]) == (1000, 2000, 2)
    await record_conflicts(store, [], ["second"], 3000, "sweep-3")  # no longer listed
    assert await store["task_conflicts"].count_documents({}) == 0


async def test_conflicts_are_listed_by_task_id_per_service_with_their_times(store: Store) -> None:
    """``list_conflicts``, as the API and the service page show it."""
    await record_conflicts(store, [Conflict("t-c", "third", "first")], ["third"], 2_000, "s-0")
    first = [Conflict("t-b", "second", "first"), Conflict("t-a", "second", "first")]
    await record_conflicts(store, first, ["second"], 1_000, "sweep-1")  # stored after t-c
    await record_conflicts(store, first[:1], ["second"], 3_000, "sweep-3")  # t-a: gone
    await record_conflicts(store, first[:1], ["second"], 4_000, "sweep-4")
    listed = await list_conflicts(store)
    assert [(c["task_id"], c["service_id"], c["count"]) for c in listed] == [
        ("t-b", "second", 3),
        ("t-c", "third", 1),
    ]
    (b, c) = listed
    assert (b["owner_service_id"], b["first_at"], b["last_at"]) == (
        "first",
        iso(1_000),
        iso(4_000),
    )
    assert (c["first_at"], c["last_at"]) == (iso(2_000), iso(2_000))
    assert [c["task_id"] for c in await list_conflicts(store, service_id="third")] == ["t-c"]
    assert [c["task_id"] for c in await list_conflicts(store, limit=1)] == ["t-b"], "sorted"
    many = [Conflict(f"t-{i:03d}", "fourth", "first") for i in range(101)]
    await record_conflicts(store, many, ["fourth"], 5_000, "sweep-5")
    assert len(await list_conflicts(store, service_id="fourth")) == 100, "100 by default"


async def test_list_tasks_keeps_to_the_service_asked_and_to_100_by_default(store: Store) -> None:
    await harvest(store, "a", *[TaskMetaData(id=f"a-{i:03d}") for i in range(101)], now_ms=1)
    await harvest(store, "b", TaskMetaData(id="b-1"), now_ms=1)
    assert [t["id"] for t in await ts.list_tasks(store, service_id="b")] == ["b-1"]
    listed = await ts.list_tasks(store, service_id="a")
    assert len(listed) == 100 and {t["service_id"] for t in listed} == {"a"}


async def test_the_fetch_results_of_a_page_of_services_are_those_asked(store: Store) -> None:
    await ts.write_fetch_results(
        store, {sid: {"at": 1, "url": f"http://{sid}.example/"} for sid in ("a", "b", "c")}
    )
    found = await ts.get_fetch_results(store, ["a", "c", "never-fetched"])
    assert sorted(found) == ["a", "c"]
    assert found["c"]["url"] == "http://c.example/"


async def test_an_update_of_a_services_task_names_only_the_fields_it_could_not_change(
    store: Store,
) -> None:
    """A TCP Update of a task a service owns: what it sent like the stored values is not
    "ignored", only what differs (the service's listing wins)."""
    await harvest(store, "svc", TaskMetaData(id="t1", name="Alpha", status="running"), now_ms=1)
    fields = {"name": "Alpha", "status": "failed"}
    written = await write_registered(store, "t1", fields, {}, create=False, now_ms=2)
    assert (written.outcome, written.owner, written.ignored) == ("owned", "svc", ("status",))


async def test_get_tasks_reads_the_ids_asked_with_the_fields_asked(store: Store) -> None:
    """What a batch of TCP Finds reads: the ids asked, only the fields asked."""
    tasks = [TaskMetaData(id="t1", name="a", status="running"), TaskMetaData(id="t2", name="b")]
    await harvest(store, "s", *tasks, now_ms=1)
    found = await ts.get_tasks(store, ["t1", "missing"], ["name"])
    assert found == {"t1": {"_id": "t1", "name": "a"}}
    whole = (await ts.get_tasks(store, ["t2"]))["t2"]
    assert (whole["name"], whole["service_id"]) == ("b", "s")


async def again(
    store: Store, before: ts.ApplyResult, *tasks: TaskMetaData, now_ms: int
) -> ts.ApplyResult:
    """The service's next fetch, with what the last one left in the fetcher's cache."""
    listing = ServiceListing("s", list(tasks), before.known["s"])
    return await ts.apply_listings(store, [listing], now_ms)


async def test_each_changed_task_is_counted_and_a_new_one_is_seen_when_first_seen(
    store: Store,
) -> None:
    first = await harvest(store, "s", TaskMetaData(id="t1"), TaskMetaData(id="t2"), now_ms=1000)
    doc = await store.tasks.find_one({"_id": "t1"})
    assert (doc["first_seen_at"], doc["last_seen_at"], doc["gone_at"]) == (1000, 1000, None)
    changed = [TaskMetaData(id="t1", name="x"), TaskMetaData(id="t2", name="y")]
    second = await again(store, first, *changed, now_ms=2000)
    assert (second.inserted, second.changed, second.unchanged, second.stale) == (0, 2, 0, set())


async def test_a_vanished_task_keeps_the_moment_it_vanished_over_later_fetches(
    store: Store,
) -> None:
    t1, t2 = TaskMetaData(id="t1"), TaskMetaData(id="t2")
    first = await harvest(store, "s", t1, t2, now_ms=1000)
    second = await again(store, first, t1, now_ms=2000)
    third = await again(store, second, t1, now_ms=3000)
    assert (second.gone, third.gone) == (1, 0), "marked gone once"
    assert (third.unchanged, third.stale) == (1, set()), "t1 stamped seen: nothing to reload"
    doc = await store.tasks.find_one({"_id": "t2"})
    assert (doc["gone"], doc["gone_at"]) == (True, 2000)


async def test_a_task_deleted_behind_the_fetchers_back_makes_its_service_reloaded(
    store: Store,
) -> None:
    first = await harvest(store, "s", TaskMetaData(id="t1"), now_ms=1000)
    await store.tasks.delete_one({"_id": "t1"})  # by someone else: the cache is wrong now
    assert (await again(store, first, TaskMetaData(id="t1"), now_ms=2000)).stale == {"s"}
    changed = TaskMetaData(id="t1", name="changed")  # an update that finds nothing either
    assert (await again(store, first, changed, now_ms=3000)).stale == {"s"}


async def test_an_update_beside_a_conflict_in_one_bulk_write_is_counted_as_done(
    store: Store,
) -> None:
    """The bulk write fails for the id another service owns; the update beside it landed,
    so nothing is reloaded and the conflict is reported."""
    await harvest(store, "other", TaskMetaData(id="theirs"), now_ms=500)
    first = await harvest(store, "s", TaskMetaData(id="t1"), now_ms=1000)
    tasks = [TaskMetaData(id="t1", name="changed"), TaskMetaData(id="theirs")]
    second = await again(store, first, *tasks, now_ms=2000)
    assert second.conflicts == [Conflict("theirs", "s", "other")]
    assert (second.changed, second.stale) == (1, set())


async def test_a_claim_holds_a_service_until_its_end_and_a_release_gives_it_back(
    store: Store,
) -> None:
    assert list(await claim_due(store, ["s"], now_ms=0, until_ms=100, token="a")) == ["s"]
    assert await claim_due(store, ["s"], now_ms=99, until_ms=200, token="b") == {}
    assert list(await claim_due(store, ["s"], now_ms=100, until_ms=200, token="b")) == ["s"]
    assert await claim_due(store, ["s"], now_ms=150, until_ms=300, token="c") == {}
    doc = await store["fetch_results"].find_one({"_id": "s"})
    assert (doc["due_at"], doc["claim"]) == (200, "b")
    await release(store, ["s"], "c")  # not c's to give back
    assert await claim_due(store, ["s"], now_ms=150, until_ms=300, token="d") == {}
    await release(store, ["s"], "b")  # b stops before fetching it: due at once
    assert list(await claim_due(store, ["s"], now_ms=150, until_ms=300, token="e")) == ["s"]


NEW = TaskMetaData(id="t1", name="n")
OPERATIONS: dict[str, Callable[[Store], Awaitable[Any]]] = {
    "load_known": lambda s: ts.load_known(s, ["s"]),
    "apply_listings": lambda s: ts.apply_listings(s, [ServiceListing("s", [NEW], {})], 1),
    "record_conflicts": lambda s: ts.record_conflicts(s, [], ["s"], 1, "tok"),
    "write_registered": lambda s: ts.write_registered(s, "t1", {}, {}, create=True, now_ms=1),
    "get_tasks": lambda s: ts.get_tasks(s, ["t1"]),
    "fetchable_services": lambda s: ts.fetchable_services(s),
    "claim_due": lambda s: ts.claim_due(s, ["s"], now_ms=1, until_ms=2, token="tok"),
    "release_claims": lambda s: ts.release(s, ["s"], "tok"),
    "write_fetch_results": lambda s: ts.write_fetch_results(s, {"s": {"at": 1}}),
    "get_fetch_result": lambda s: ts.get_fetch_result(s, "s"),
    "get_fetch_results": lambda s: ts.get_fetch_results(s, ["s"]),
    "list_conflicts": lambda s: ts.list_conflicts(s),
    "changed_since": lambda s: ts.changed_since(s, 0, ["status"], 10),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
async def test_an_operation_against_a_dead_store_names_itself(dead: Store, operation: str) -> None:
    """What the fetcher's and the API's logs say when MongoDB is away."""
    with pytest.raises(StoreUnavailable) as caught:
        await OPERATIONS[operation](dead)
    assert str(caught.value).startswith(f"{operation}: MongoDB ")
