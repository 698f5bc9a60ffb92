"""Readiness of a reader: a stalled one, and one cut off from its nsqd, are not ready."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from ingest_helpers import broker_fixture, heartbeat_consumer, mpub_binary, new_broker
from support import async_wait_for, free_port

from taskdash.health import Health
from taskdash.models import HeartBeat
from taskdash.nsq.broker import Broker
from taskdash.nsq.consumer import Received

pytestmark = pytest.mark.timeout(60)
TOPIC = "taskdash.heartbeat"


broker = broker_fixture()


async def never_dead_letter(*args: object) -> None:
    raise AssertionError("nothing here is poison")


def not_ready_because(consumer: Any, words: str) -> dict[str, Any] | None:
    """The details once the reader is not ready for a reason containing ``words``."""
    ready, details = consumer.check()
    return details if not ready and words in details.get("reason", "") else None


async def test_a_reader_whose_apply_never_finishes_is_not_ready_then_ready_again(
    broker: Broker,
) -> None:
    release, applied = asyncio.Event(), []

    async def hanging_apply(batch: list[Received[HeartBeat]]) -> None:
        await release.wait()  # a store that hangs
        applied.extend(r.item.id for r in batch)

    consumer = heartbeat_consumer(broker, hanging_apply, never_dead_letter, stall_after=0.3)
    health = Health()
    health.add(f"reader:{TOPIC}", consumer.check)
    await consumer.start()
    try:
        await async_wait_for(lambda: consumer.check()[1]["connections"] == 1)
        ready, details = consumer.check()
        assert ready and details["in_flight"] == 0
        assert details["last_settled_at"] is None and "reason" not in details
        await mpub_binary(broker, TOPIC, [b'{"id":"svc-1"}', b'{"id":"svc-2"}'])
        details = await async_wait_for(lambda: not_ready_because(consumer, "stalled"))
        assert details["in_flight"] == 2 and "2 messages in flight" in details["reason"]
        ready, report = health.report()
        assert not ready and report[f"reader:{TOPIC}"]["reason"].startswith("stalled")
        release.set()
        await async_wait_for(lambda: consumer.check()[0])
        ready, details = consumer.check()
        assert applied == ["svc-1", "svc-2"] and details["in_flight"] == 0
        assert details["last_settled_at"] is not None and details["stored"] == 2
        assert details["requeued"] == 0 and details["dead_lettered"] == 0
    finally:
        release.set()
        await consumer.stop()
    ready, details = consumer.check()
    assert not ready and details["reason"] == "not running"


async def test_a_reader_without_its_nsqd_is_not_ready_naming_it() -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there

    async def apply(batch: list[Received[HeartBeat]]) -> None:
        raise AssertionError("no message can come")

    consumer = heartbeat_consumer(None, apply, never_dead_letter, address=address, stall_after=0.3)
    await consumer.start()
    try:
        details = await async_wait_for(lambda: not_ready_because(consumer, address))
        assert details["connections"] == 0 and "no connection to nsqd" in details["reason"]
    finally:
        await consumer.stop()


async def test_a_lost_nsqd_connection_makes_the_reader_not_ready(tmp_path: Path) -> None:
    """Counted from the moment the connection was lost, not from the start."""
    broker = new_broker(tmp_path)
    await broker.start()

    async def apply(batch: list[Received[HeartBeat]]) -> None:
        pass

    consumer = heartbeat_consumer(broker, apply, never_dead_letter, stall_after=0.3)
    await consumer.start()
    try:
        await async_wait_for(lambda: consumer.check()[1]["connections"] == 1)
        await asyncio.sleep(0.5)  # connected for longer than stall_after: still ready
        assert consumer.check()[0], consumer.check()
        await broker.stop()
        details = await async_wait_for(lambda: not_ready_because(consumer, "no connection"))
        assert details["connections"] == 0
    finally:
        await consumer.stop()
        await broker.stop()
