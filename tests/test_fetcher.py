"""The fetcher against real loopback HTTP services and a real MongoDB (one daemon)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import pytest
import structlog
from fetcher_site import LAST_MODIFIED, Clock, Site, register, settings, task
from support import async_wait_for, free_port

from taskdash.errors import StoreUnavailable
from taskdash.fetcher import Fetcher
from taskdash.store import Store
from taskdash.store.assignments import claim
from taskdash.store.tasks import get_fetch_result, list_conflicts, list_tasks

MakeFetcher = Callable[..., Fetcher]


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    server = await Site().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def make(store: Store) -> AsyncIterator[MakeFetcher]:
    """Fetchers on a shared test clock; every one is stopped afterwards."""
    made: list[Fetcher] = []
    clock = Clock()

    def factory(node_id: str = "n1", **overrides: Any) -> Fetcher:
        fetcher = Fetcher(store, settings(**overrides), node_id=node_id, clock=clock)
        made.append(fetcher)
        return fetcher

    factory.clock = clock  # type: ignore[attr-defined]
    try:
        yield factory
    finally:
        for fetcher in made:
            await fetcher.stop()


def clock_of(make: MakeFetcher) -> Clock:
    return make.clock  # type: ignore[attr-defined,no-any-return]


async def ids(store: Store, **query: Any) -> list[str]:
    return [t["id"] for t in await list_tasks(store, include_gone=True, **query)]


async def by_id(store: Store, task_id: str) -> dict[str, Any]:
    (found,) = [t for t in await list_tasks(store, include_gone=True) if t["id"] == task_id]
    return found


# -- services that answer well ---------------------------------------------------------------


async def test_listings_in_every_accepted_shape_are_stored(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    site.listings["array"] = [task("a1"), task("a2", status="finish")]
    site.listings["tasks"] = {"tasks": [task("b1")], "total": 1}
    site.listings["data"] = {"data": [task("c1")]}
    await register(store, {name: site.url(name) for name in site.listings})
    fetcher = make()
    result = await fetcher.sweep()
    assert (result.claimed, result.ok, result.failed, result.tasks) == (3, 3, 0, 4)
    assert await ids(store) == ["a1", "a2", "b1", "c1"]
    a2 = await by_id(store, "a2")
    assert a2 == {
        **task("a2", status="finish"),
        "service_id": "array",
        "first_seen_at": clock_of(make).now.isoformat(),
        "last_seen_at": clock_of(make).now.isoformat(),
        "gone": False,
        "gone_at": None,
        "start_time": "",  # the daily window, set over TCP only (docs/tcp.md)
        "stop_time": "",
        "window": None,  # no daily window (docs/windows.md)
        "assignee": "",  # nobody holds it (docs/api.md)
        "assignment": None,
    }
    fetched = await get_fetch_result(store, "array")
    assert fetched is not None
    assert fetched["http_status"] == 200 and fetched["error"] == ""
    assert fetched["task_count"] == 2 and fetched["bad_count"] == 0
    assert fetched["node"] == "n1" and fetched["url"] == site.url("array")
    assert fetched["at"] == clock_of(make).now.isoformat() and fetched["duration_ms"] >= 0
    assert site.headers[0][1]["Accept"] == "application/json"


async def test_offline_and_url_less_services_are_not_fetched(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    site.listings["on"] = [task("t-on")]
    site.listings["off"] = [task("t-off")]
    await register(store, {"on": site.url("on"), "off": site.url("off"), "nourl": ""})
    await store.services.update_one({"_id": "off"}, {"$set": {"status": "offline"}})
    result = await make().sweep()
    assert (result.share, result.no_url, result.claimed) == (2, 1, 1)
    assert site.hits == {"on": 1}
    assert await ids(store) == ["t-on"]
    assert await get_fetch_result(store, "off") is None


async def test_post_mode_sends_the_service_id_as_json(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    site.listings["svc-1"] = [task("p1")]
    await register(store, {"svc-1": site.url("svc-1")})
    result = await make(method="POST").sweep()
    assert result.ok == 1
    assert site.posts == [("svc-1", b'{"service_id":"svc-1"}', "application/json")]
    assert json.loads(site.posts[0][1]) == {"service_id": "svc-1"}
    assert await ids(store) == ["p1"]


async def test_a_changing_task_list_updates_marks_gone_and_brings_back(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    site.listings["s"] = [task("t1"), task("t2"), task("t3")]
    await register(store, {"s": site.url("s")})
    fetcher, clock = make(), clock_of(make)
    await fetcher.sweep()
    first = clock.now.isoformat()
    await claim(store, "t1", "alice", now_ms=1)  # a claim on t1

    site.listings["s"] = [task("t2"), task("t3", status="finish"), task("t4")]
    second = clock.advance(10).isoformat()
    result = await fetcher.sweep()
    assert (result.inserted, result.changed, result.gone) == (1, 1, 1)
    t1, t2, t3, t4 = [await by_id(store, i) for i in ("t1", "t2", "t3", "t4")]
    assert t1["gone"] is True and t1["last_seen_at"] == first  # kept, never deleted
    assert (t1["assignee"], t1["assignment"]["version"]) == ("alice", 1), "a fetch keeps it"
    assert (t2["first_seen_at"], t2["last_seen_at"], t2["gone"]) == (first, second, False)
    assert t3["status"] == "finish" and t3["first_seen_at"] == first
    assert (t4["first_seen_at"], t4["gone"]) == (second, False)
    assert await ids(store, service_id="s") == ["t1", "t2", "t3", "t4"]
    assert [t["id"] for t in await list_tasks(store, service_id="s")] == ["t2", "t3", "t4"]
    assert [t["id"] for t in await list_tasks(store, status="finish")] == ["t3"]

    site.listings["s"] = [task("t1"), task("t2"), task("t3", status="finish"), task("t4")]
    third = clock.advance(10).isoformat()
    await fetcher.sweep()
    t1 = await by_id(store, "t1")
    assert (t1["gone"], t1["first_seen_at"], t1["last_seen_at"]) == (False, first, third)
    assert (await get_fetch_result(store, "s") or {})["task_count"] == 4


async def test_an_empty_listing_marks_every_task_gone(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    site.listings["s"] = [task("t1"), task("t2")]
    await register(store, {"s": site.url("s")})
    fetcher = make()
    await fetcher.sweep()
    site.listings["s"] = []
    clock_of(make).advance(10)
    assert (await fetcher.sweep()).gone == 2
    assert [t["gone"] for t in await list_tasks(store, include_gone=True)] == [True, True]


# -- bad answers: a clear error, nothing stored lost or corrupted ------------------------------


async def stored_then_broken(
    store: Store, site: Site, make: MakeFetcher, breaking: Callable[[], None], **overrides: Any
) -> tuple[Fetcher, dict[str, Any], list[dict[str, Any]]]:
    """Store a good listing, break the service, sweep again; (fetcher, fetch result, tasks)."""
    site.listings["s"] = [task("t1"), task("t2")]
    await register(store, {"s": site.url("s")})
    fetcher = make(**overrides)
    assert (await fetcher.sweep()).ok == 1
    before = await list_tasks(store, include_gone=True)
    breaking()
    clock_of(make).advance(10)
    result = await fetcher.sweep()
    assert (result.ok, result.failed) == (0, 1)
    assert await list_tasks(store, include_gone=True) == before  # nothing lost or changed
    fetched = await get_fetch_result(store, "s")
    assert fetched is not None and fetched["failures"] == 1 and fetched["task_count"] == 2
    assert fetched["at"] == clock_of(make).now.isoformat()
    return fetcher, fetched, before


async def test_a_slow_service_times_out(store: Store, site: Site, make: MakeFetcher) -> None:
    _, fetched, _ = await stored_then_broken(
        store, site, make, lambda: site.slow.add("s"), request_timeout=0.3
    )
    assert "timed out" in fetched["error"] and fetched["http_status"] is None


async def test_a_500_is_an_error_with_its_status(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    _, fetched, _ = await stored_then_broken(
        store, site, make, lambda: site.status.__setitem__("s", 500)
    )
    assert fetched["error"] == "HTTP 500 Internal Server Error"
    assert fetched["http_status"] == 500


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[{", "not valid JSON"),
        (b"<html>oops</html>", "not valid JSON"),
        (b"", "response body is empty"),
        (b'"a string"', "not a JSON array of tasks"),
        (b'{"items": []}', "no 'tasks' or 'data' array (keys: items)"),
        (b'{"tasks": {"id": "t1"}}', "'tasks' is not an array"),
    ],
)
async def test_a_body_that_is_not_a_listing_is_an_error(
    store: Store, site: Site, make: MakeFetcher, body: bytes, message: str
) -> None:
    _, fetched, _ = await stored_then_broken(
        store, site, make, lambda: site.raw.__setitem__("s", body)
    )
    assert message in fetched["error"] and fetched["http_status"] == 200


@pytest.mark.parametrize("mode", ["length", "chunked", "gzip"])
async def test_a_too_large_body_is_cut_off(
    store: Store, site: Site, make: MakeFetcher, mode: str
) -> None:
    cap = 64 * 1024
    site.huge_size = cap * 16

    def breaking() -> None:
        site.huge["s"] = mode

    _, fetched, _ = await stored_then_broken(store, site, make, breaking, max_body_size=cap)
    assert fetched["error"] == f"response body larger than {cap} bytes"


async def test_bad_records_are_skipped_and_counted_without_losing_their_task(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    site.listings["s"] = [task("t1"), task("t2")]
    await register(store, {"s": site.url("s")})
    fetcher = make()
    await fetcher.sweep()
    site.listings["s"] = [
        task("t1", status="finish"),
        {**task("t2"), "status": 7},  # t2 still listed, but malformed: not gone, not changed
        {"name": "no id"},
        "not an object",
        task("t1"),  # duplicate id
        task("t3"),
    ]
    clock_of(make).advance(10)
    result = await fetcher.sweep()
    assert (result.ok, result.bad, result.tasks, result.gone) == (1, 4, 2, 0)
    fetched = await get_fetch_result(store, "s")
    assert fetched is not None
    assert (fetched["task_count"], fetched["bad_count"], fetched["error"]) == (2, 4, "")
    assert fetched["bad_errors"][0] == (
        "record 1: TaskMetaData: Expected `str`, got `int` - at `$.status`"
    )
    assert len(fetched["bad_errors"]) == 3
    t2 = await by_id(store, "t2")
    assert (t2["gone"], t2["status"]) == (False, "running")
    assert (await by_id(store, "t1"))["status"] == "finish"
    assert await ids(store) == ["t1", "t2", "t3"]


# -- redirects and allow-rules ---------------------------------------------------------------


async def test_redirects_are_followed_and_every_hop_is_checked(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    site.listings["target"] = [task("r1")]
    site.redirects["hop"] = "/t/target"
    site.redirects["evil"] = "http://169.254.169.254/latest/meta-data/"
    site.redirects["loop"] = "/t/loop"
    site.redirects["ftp"] = "ftp://127.0.0.1/x"
    await register(store, {name: site.url(name) for name in ("hop", "evil", "loop", "ftp")})
    result = await make(max_redirects=2).sweep()
    assert result.ok == 1 and await ids(store) == ["r1"]
    assert (await by_id(store, "r1"))["service_id"] == "hop"
    errors = {sid: (await get_fetch_result(store, sid) or {})["error"] for sid in result.errors}
    assert errors == {
        "evil": "host '169.254.169.254': address 169.254.169.254 "
        "is in refused network 169.254.0.0/16",
        "loop": "more than 2 redirects",
        "ftp": "URL scheme 'ftp' is not allowed (allowed: http, https)",
    }
    assert site.hits["loop"] == 3


async def test_urls_refused_by_the_rules_are_never_requested(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    site.listings["ok"] = [task("k1")]
    await register(
        store,
        {
            "ok": site.url("ok"),
            "metadata": "http://169.254.169.254/computeMetadata/v1/",
            "file": "file:///etc/passwd",
        },
    )
    result = await make().sweep()
    assert result.ok == 1 and result.failed == 2
    assert "refused network 169.254.0.0/16" in result.errors["metadata"]
    assert "scheme 'file' is not allowed" in result.errors["file"]
    assert site.hits == {"ok": 1}


async def test_a_host_resolving_to_a_refused_address_is_refused(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    site.listings["s"] = [task("x")]
    await register(store, {"s": site.url("s").replace("127.0.0.1", "localhost")})
    result = await make(refused_cidrs=["127.0.0.0/8", "::1/128"]).sweep()
    assert result.failed == 1 and site.hits == {}
    assert result.errors["s"].startswith("host 'localhost': address ")
    assert "is in refused network" in result.errors["s"]


# -- conditional requests ----------------------------------------------------------------------


@pytest.mark.parametrize("validator", ["etag", "last_modified"])
async def test_a_304_writes_nothing_but_the_fetch_time(
    store: Store, site: Site, make: MakeFetcher, validator: str
) -> None:
    site.listings["s"] = [task("t1")]
    getattr(site, validator).add("s")
    await register(store, {"s": site.url("s")})
    fetcher, clock = make(), clock_of(make)
    await fetcher.sweep()
    tasks_before = await list_tasks(store)
    first = await get_fetch_result(store, "s")
    assert first is not None and first["listed_at"] == clock.now.isoformat()
    if validator == "last_modified":
        assert first["last_modified"] == LAST_MODIFIED and first["etag"] == ""
    else:
        assert first["etag"].startswith('"')

    clock.advance(10)
    result = await fetcher.sweep()
    assert (result.ok, result.not_modified) == (0, 1)
    sent = site.headers[-1][1]
    if validator == "etag":
        assert sent["If-None-Match"] == first["etag"]
    else:
        assert sent["If-Modified-Since"] == LAST_MODIFIED
    assert await list_tasks(store) == tasks_before
    second = await get_fetch_result(store, "s")
    assert second is not None
    assert second["at"] == clock.now.isoformat() and second["http_status"] == 304
    assert second["not_modified"] is True and second["listed_at"] == first["listed_at"]
    assert second["task_count"] == 1

    site.listings["s"] = [task("t1"), task("t2")]  # a new body: new ETag (or ignored date)
    clock.advance(10)
    result = await fetcher.sweep()
    expected = (1, 0) if validator == "etag" else (0, 1)
    assert (result.ok, result.not_modified) == expected


async def test_validators_are_not_sent_to_a_new_url(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    site.listings["a"] = site.listings["b"] = [task("t1")]
    site.etag.update({"a", "b"})
    await register(store, {"s": site.url("a")})
    fetcher = make()
    await fetcher.sweep()
    await store.services.update_one({"_id": "s"}, {"$set": {"url": site.url("b")}})
    clock_of(make).advance(10)
    assert (await fetcher.sweep()).ok == 1
    assert "If-None-Match" not in site.headers[-1][1]


# -- conflicts and backoff -------------------------------------------------------------------


async def test_a_task_id_owned_by_another_service_is_not_overwritten(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    site.listings["first"] = [task("shared", name="from first"), task("f1")]
    site.listings["second"] = [task("shared", name="from second"), task("s1")]
    await register(store, {"first": site.url("first")})
    fetcher, clock = make(), clock_of(make)
    await fetcher.sweep()
    await register(store, {"second": site.url("second")}, clock.advance(10))
    with structlog.testing.capture_logs() as logs:
        result = await fetcher.sweep()
    assert result.conflicts == 1 and result.ok == 2
    shared = await by_id(store, "shared")
    assert (shared["service_id"], shared["name"]) == ("first", "from first")
    assert (await by_id(store, "s1"))["service_id"] == "second"
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [(e["event"], e["task_id"], e["service_id"], e["owner_service_id"]) for e in errors] == [
        ("task_id_conflict", "shared", "second", "first")
    ]
    assert [(c["task_id"], c["service_id"], c["owner_service_id"], c["count"]) for c in
            await list_conflicts(store)] == [("shared", "second", "first", 1)]  # fmt: skip
    assert (await get_fetch_result(store, "second") or {})["conflict_count"] == 1

    clock.advance(10)
    with structlog.testing.capture_logs() as logs:
        await fetcher.sweep()
    assert not [e for e in logs if e["event"] == "task_id_conflict"]  # logged once
    assert [c["count"] for c in await list_conflicts(store)] == [2]

    site.listings["first"] = [task("f1")]  # gone from its owner: still the owner's
    site.listings["second"] = [task("s1")]
    clock.advance(10)
    await fetcher.sweep()
    assert await list_conflicts(store) == []
    shared = await by_id(store, "shared")
    assert (shared["service_id"], shared["gone"]) == ("first", True)


async def test_failures_back_off_exponentially_with_jitter(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    site.status["s"] = 503
    await register(store, {"s": site.url("s")})
    fetcher = make(fetch_interval=10.0, backoff_initial=60.0, backoff_max=200.0)
    clock = clock_of(make)

    def seconds(text: str | None) -> float:
        assert text is not None
        return (datetime.fromisoformat(text) - clock.now).total_seconds()

    await fetcher.sweep()
    fetched = await get_fetch_result(store, "s")
    assert fetched is not None and fetched["failures"] == 1
    assert 30 <= seconds(fetched["retry_at"]) <= 60
    waits = seconds(fetched["retry_at"])
    clock.advance(10)
    assert (await fetcher.sweep()).claimed == 0 and site.hits["s"] == 1  # backing off
    clock.advance(waits)
    await fetcher.sweep()
    fetched = await get_fetch_result(store, "s")
    assert fetched is not None and fetched["failures"] == 2 and site.hits["s"] == 2
    assert 60 <= seconds(fetched["retry_at"]) <= 120
    for _ in range(3):
        clock.advance(200)
        await fetcher.sweep()
    fetched = await get_fetch_result(store, "s")
    assert fetched is not None and fetched["failures"] == 5
    assert 100 <= seconds(fetched["retry_at"]) <= 200  # capped at backoff_max

    del site.status["s"]
    clock.advance(200)
    with structlog.testing.capture_logs() as logs:
        assert (await fetcher.sweep()).ok == 1
    assert [e["event"] for e in logs if e["event"] == "fetch_recovered"] == ["fetch_recovered"]
    fetched = await get_fetch_result(store, "s")
    assert fetched is not None and (fetched["failures"], fetched["retry_at"]) == (0, None)


async def test_failures_are_logged_with_context(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    site.status["s"] = 500
    await register(store, {"s": site.url("s")})
    with structlog.testing.capture_logs() as logs:
        await make().sweep()
    (failed,) = [e for e in logs if e["event"] == "fetch_failed"]
    assert failed["log_level"] == "warning"
    assert (failed["service_id"], failed["url"], failed["http_status"]) == ("s", site.url("s"), 500)


async def test_many_failures_are_logged_as_one_summary_per_sweep(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    """Above [log] summary_threshold (20) failures in a sweep: one line, counts by reason."""
    dead = f"http://127.0.0.1:{free_port()}/t/x"  # nothing listens there
    failing = {f"e{i:02d}": site.url(f"e{i:02d}") for i in range(18)}
    failing |= {f"d{i}": dead for i in range(3)}
    for sid in failing:
        site.status[sid] = 500
    await register(store, failing)
    with structlog.testing.capture_logs() as logs:
        result = await make().sweep()
    assert result.failed == 21
    assert not [e for e in logs if e["event"] == "fetch_failed"]
    (summary,) = [e for e in logs if e["event"] == "fetch_failed_summary"]
    assert summary["log_level"] == "warning" and summary["count"] == 21
    assert summary["by_reason"] == {"http_500": 18, "connection": 3}
    assert len(summary["examples"]) == 5 and set(summary["examples"]) <= set(failing)
    for sid in failing:  # every failure is still recorded in full
        fetched = await get_fetch_result(store, sid)
        assert fetched is not None and fetched["failures"] == 1 and fetched["error"]


async def test_failures_up_to_the_threshold_are_logged_one_by_one(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    names = ["a", "b", "c"]
    for sid in names:
        site.status[sid] = 503
    await register(store, {sid: site.url(sid) for sid in names})
    fetcher = Fetcher(store, settings(), node_id="n1", clock=Clock(), summary_threshold=3)
    try:
        with structlog.testing.capture_logs() as logs:
            await fetcher.sweep()
    finally:
        await fetcher.stop()
    failed = [e for e in logs if e["event"] == "fetch_failed"]
    assert sorted(e["service_id"] for e in failed) == names
    assert {e["reason"] for e in failed} == {"http_503"}
    assert not [e for e in logs if e["event"] == "fetch_failed_summary"]


# -- the cache of what is stored ------------------------------------------------------------


async def test_a_listing_stored_by_another_daemon_is_not_hidden_by_the_cache(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    site.listings["s"] = [task("t1"), task("t2")]
    await register(store, {"s": site.url("s")})
    a, b, clock = make("a", node_timeout=5.0), make("b", node_timeout=5.0), clock_of(make)
    await a.sweep()  # a alone: a fetches s and caches what it stored
    site.listings["s"] = [task("t1")]
    clock.advance(10)
    assert (await b.sweep()).gone == 1  # a is silent (dead): b fetches s, t2 gone
    site.listings["s"] = [task("t1"), task("t2")]
    clock.advance(10)
    assert (await a.sweep()).claimed == 1  # b is silent now: a again
    assert (await by_id(store, "t2"))["gone"] is False


async def test_a_task_deleted_behind_our_back_comes_back(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    site.listings["s"] = [task("t1"), task("t2")]
    await register(store, {"s": site.url("s")})
    fetcher, clock = make(), clock_of(make)
    await fetcher.sweep()
    await store.tasks.delete_one({"_id": "t2"})
    for _ in range(2):  # the first sweep notices, the next one rewrites
        clock.advance(10)
        await fetcher.sweep()
    assert await ids(store) == ["t1", "t2"]


async def test_check_reports_share_and_last_sweep(
    store: Store, site: Site, make: MakeFetcher
) -> None:
    site.status["bad"] = 500
    site.listings["good"] = [task("g")]
    await register(store, {"good": site.url("good"), "bad": site.url("bad")})
    fetcher = make()
    ready, details = fetcher.check()
    assert ready and details["sweeps"] == 0 and "last_sweep" not in details
    await fetcher.sweep()
    ready, details = fetcher.check()
    assert ready and (details["live_nodes"], details["my_share"], details["sweeps"]) == (1, 2, 1)
    last = details["last_sweep"]
    assert (last["ok"], last["failed"], last["tasks"]) == (1, 1, 1)
    assert last["errors"] == {"bad": "HTTP 500 Internal Server Error"}
    json.dumps(details)


async def test_an_unreachable_mongodb_is_reported_not_fatal() -> None:
    dead = Store(f"mongodb://127.0.0.1:{free_port()}/?directConnection=true", "x",
                 server_selection_timeout=0.2)  # fmt: skip
    fetcher = Fetcher(dead, settings(fetch_interval=0.2), node_id="n1")
    try:
        with pytest.raises(StoreUnavailable, match="MongoDB unreachable"):
            await fetcher.sweep()
        with structlog.testing.capture_logs() as logs:
            await fetcher.start()
            await async_wait_for(lambda: fetcher.check()[1].get("error"))
            await fetcher.stop()
        ready, details = fetcher.check()
        assert ready and "MongoDB unreachable" in details["error"]
        assert [e["event"] for e in logs if e["event"] == "fetch_sweep_failed"] == [
            "fetch_sweep_failed"
        ]
    finally:
        await fetcher.stop()
        await dead.close()
