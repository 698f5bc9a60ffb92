"""The fetcher's schedule on a real clock: a slow service never holds the others back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fetcher_site import Site, register, settings, task
from support import async_wait_for

from taskdash.fetcher import Fetcher
from taskdash.fetcher.schedule import fetch_budget_ms, hold_until, next_boundary, next_due
from taskdash.store import Store
from taskdash.store.tasks import get_fetch_result

FAST = [f"fast-{i}" for i in range(5)]


@pytest.mark.parametrize(
    ("now_ms", "expected"), [(0, 10_000), (9_999, 10_000), (10_000, 20_000), (10_001, 20_000)]
)
def test_next_boundary_is_strictly_later(now_ms: int, expected: int) -> None:
    assert next_boundary(now_ms, 10_000) == expected


@pytest.mark.parametrize(
    ("base_ms", "expected"),
    [
        (10_000, 20_000),  # a sweep on its boundary: the next boundary
        (14_800, 30_000),  # a wake-up sweep between two: the one after the next
        (19_999, 30_000),
        (20_001, 40_000),
    ],
)
def test_a_fetch_is_due_again_a_full_interval_later(base_ms: int, expected: int) -> None:
    assert next_due(base_ms, 10_000) == expected
    assert expected - base_ms >= 10_000


def test_a_claim_holds_at_least_as_long_as_the_longest_fetch() -> None:
    quick = settings(request_timeout=2.0, max_redirects=3)
    assert fetch_budget_ms(quick) == 9_000  # 4 hops of 2 s, and a second of margin
    assert hold_until(quick, 0, 10_000) == 10_000
    slow = settings(request_timeout=60.0, max_redirects=0)
    assert hold_until(slow, 5_000, 10_000) == 66_000


@pytest.fixture
async def site(store: Store) -> AsyncIterator[Site]:
    """Five services that answer at once and one that stalls until released (30 s at most)."""
    server = await Site().start()
    for sid in [*FAST, "stalled"]:
        server.listings[sid] = [task(f"task-of-{sid}")]
    server.slow.add("stalled")
    await register(store, {sid: server.url(sid) for sid in [*FAST, "stalled"]})
    try:
        yield server
    finally:
        await server.stop()


async def test_a_stalled_service_does_not_delay_the_others(store: Store, site: Site) -> None:
    """The others are fetched every interval while one request hangs; it is never doubled."""
    fetcher = Fetcher(
        store, settings(fetch_interval=0.3, request_timeout=60.0), node_id="n1"
    )  # a request may take far longer than an interval
    try:
        await fetcher.start()
        await async_wait_for(lambda: min(site.hits[sid] for sid in FAST) >= 4)
        assert site.hits["stalled"] == 1  # in flight all along: not requested again
        # skipped as in flight (a fast service of a sweep still running may be in flight too)
        assert fetcher.last_sweep is not None and fetcher.last_sweep.in_flight >= 1
        assert fetcher.check()[1]["in_flight"] >= 1
        assert all([await get_fetch_result(store, sid) for sid in FAST])
        assert await get_fetch_result(store, "stalled") is None
        site.release.set()  # it answers at last: stored, and fetched again later
        await async_wait_for(lambda: get_fetch_result(store, "stalled"))
        await async_wait_for(lambda: site.hits["stalled"] >= 2)
    finally:
        site.release.set()
        await fetcher.stop()
