"""Dead periodic tasks raise alerts, from either way a task dies, once per death."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_alerts import Clock, alerts, dispatcher, hook, started_receivers

from taskdash.alerts.periodic import AlertingPeriodicStore
from taskdash.periodic.leasing import Caller, Leasing
from taskdash.settings import PeriodicSettings
from taskdash.store import Store


@pytest.fixture
async def receivers() -> AsyncIterator[Any]:
    async with started_receivers() as start:
        yield start


class MsClock:
    """The periodic service's clock (epoch ms), moved by the test."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


async def node(store: Store, clock: MsClock, max_attempts: int) -> tuple[Leasing, Caller]:
    settings = PeriodicSettings(max_attempts=max_attempts, visibility_timeout=10)
    leasing = Leasing(
        AlertingPeriodicStore(store, keep_days=30), settings, node_id="p1", clock=clock
    )
    who = Caller("billing", await leasing.register("billing"))
    await leasing.create_queue(who, "nightly")
    await leasing.start_queue(who, "nightly")
    return leasing, who


async def test_a_task_failed_at_its_last_attempt_is_alerted(store: Store, receivers: Any) -> None:
    clock = Clock()
    receiver = await receivers()
    ms = MsClock(int(clock.now.timestamp() * 1000))
    leasing, who = await node(store, ms, max_attempts=2)
    task_id = await leasing.create_task(who, "nightly", "report", '{"day": 1}')
    for outcome in ("failed", "dead"):
        (leased,) = await leasing.lease(who, "nightly", 1)
        assert await leasing.complete(who, "nightly", leased["task_id"], False) == outcome
    sender = dispatcher(store, alerts(hook(receiver)), clock, node_id="d1")
    await sender.once()
    (body,) = receiver.bodies()
    assert body["kind"] == "periodic.task_dead"
    assert body["subject"] == "billing/nightly"
    assert body["details"] == {
        "task_id": task_id,
        "task_type": "report",
        "service": "billing",
        "queue": "nightly",
        "attempts": 2,
    }
    assert body["title"] == (
        f"Periodic task {task_id} (report) of billing/nightly is dead after 2 attempts"
    )


async def test_a_task_whose_leases_ran_out_is_buried_and_alerted_once(
    store: Store, receivers: Any
) -> None:
    clock = Clock()
    receiver = await receivers()
    ms = MsClock(int(clock.now.timestamp() * 1000))
    leasing, who = await node(store, ms, max_attempts=1)
    other, _ = await node_again(store, ms, who)
    await leasing.create_task(who, "nightly", "report", "{}")
    assert len(await leasing.lease(who, "nightly", 1)) == 1
    ms.now += 11_000  # the lease ran out with its only attempt spent
    clock.advance(11)
    assert await leasing.lease(who, "nightly", 1) == []  # buried here
    assert await other.lease(who, "nightly", 1) == []  # nothing left to bury there
    sender = dispatcher(store, alerts(hook(receiver)), clock, node_id="d1")
    await sender.once()
    await sender.once()
    assert [b["kind"] for b in receiver.bodies()] == ["periodic.task_dead"]


async def node_again(store: Store, clock: MsClock, who: Caller) -> tuple[Leasing, Caller]:
    """A second periodic node on the same store, serving the same queue."""
    settings = PeriodicSettings(max_attempts=1, visibility_timeout=10)
    leasing = Leasing(
        AlertingPeriodicStore(store, keep_days=30), settings, node_id="p2", clock=clock
    )
    await leasing.start_queue(who, "nightly")
    return leasing, who
