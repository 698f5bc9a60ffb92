"""The MongoDB counts behind ``/metrics``: services by state on a real store, reused for the
ttl, left out (never shown stale) while the store does not answer; the checker's passes
and mode."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from support import free_port

from taskdash.checker import Checker
from taskdash.errors import StoreUnavailable
from taskdash.metrics import Metrics
from taskdash.metrics.cached import StoreValue
from taskdash.metrics.reading import Scrape
from taskdash.models import TaskService
from taskdash.settings import CheckerSettings, MetricsSettings
from taskdash.store import Store
from taskdash.store.services import register_services
from taskdash.store.tasklist import TaskQuery, find_tasks


async def page(metrics: Metrics) -> Scrape:
    await metrics.refresh()
    body, _ = metrics.expose("")
    return Scrape(body.decode())


async def test_services_by_state_come_from_the_store(store: Store) -> None:
    metrics = Metrics(MetricsSettings(store_counts_ttl=0))
    metrics.watch_services(store)
    assert (await page(metrics)).value("taskdash_services", state="unknown") == 0
    now = datetime.now(UTC)
    await register_services(store, [TaskService(id=f"s-{i}") for i in range(3)], now)
    found = await page(metrics)
    assert found.value("taskdash_services", state="unknown") == 3
    assert found.sum("taskdash_services") == 3
    assert {labels["state"] for labels in found.labelled("taskdash_services")} == {
        "online", "stale", "offline", "unknown",
    }  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_count_is_reused_for_the_ttl_and_dropped_when_the_store_fails() -> None:
    reads: list[int] = []
    failing = False

    async def read() -> int:
        if failing:
            raise StoreUnavailable("MongoDB is unreachable")
        reads.append(len(reads))
        return len(reads)

    clock = Clock()
    value = StoreValue("count", read, ttl=5.0, clock=clock)
    await value.refresh()
    await value.refresh()
    assert (value.value, reads) == (1, [0])
    clock.now = 5.0
    await value.refresh()
    assert value.value == 2
    failing = True
    clock.now = 10.0
    await value.refresh()
    assert value.value is None
    clock.now = 15.0
    failing = False
    await value.refresh()
    assert value.value == 3


async def test_services_are_left_out_while_the_store_fails(store: Store) -> None:
    metrics = Metrics(MetricsSettings(store_counts_ttl=0))
    metrics.watch_services(store)
    assert "taskdash_services" in (await page(metrics)).families
    nobody = Store(f"mongodb://127.0.0.1:{free_port()}/?directConnection=true", "t",
                   server_selection_timeout=0.5)  # fmt: skip
    try:
        down = Metrics(MetricsSettings(store_counts_ttl=0))
        down.watch_services(nobody)
        found = await page(down)
    finally:
        await nobody.close()
    assert "taskdash_services" not in found.families
    assert "taskdash_build_info" in found.families  # the rest of the page is there


async def test_the_checker_passes_and_mode(store: Store) -> None:
    metrics = Metrics(MetricsSettings())
    checker = Checker(store, CheckerSettings(), node_id="n")
    metrics.watch_checker(checker)
    await checker.check_once()
    found = await page(metrics)
    assert found.value("taskdash_checker_pass_duration_seconds_count") == 1
    assert found.value("taskdash_checker_mode", mode="normal") == 1
    assert found.value("taskdash_checker_mode", mode="self_preservation") == 0
    checker._set_mode("most services went quiet at once", datetime.now(UTC))
    found = await page(metrics)
    assert found.value("taskdash_checker_mode", mode="normal") == 0
    assert found.value("taskdash_checker_mode", mode="self_preservation") == 1


async def test_task_page_reads_sent_and_joined_are_counted(store: Store) -> None:
    metrics = Metrics(MetricsSettings(store_counts_ttl=0))
    metrics.watch_reads(store)
    query = TaskQuery(sort="id")
    await asyncio.gather(find_tasks(store, query), find_tasks(store, query))
    found = await page(metrics)
    assert found.value("taskdash_task_reads_total", how="sent") == 1
    assert found.value("taskdash_task_reads_total", how="joined") == 1
