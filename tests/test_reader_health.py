"""Readiness of a reader: a stalled one, and one cut off from its nsqd, are not ready."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from ingest_helpers import (
    broker_fixture,
    heartbeat_consumer,
    mpub_binary,
    new_broker,
    nsq_log_failures,
)
from support import async_wait_for, free_port

from taskdash.health import Health
from taskdash.models import HeartBeat, Model, decode
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


async def test_a_reader_under_steady_load_that_settles_stays_ready(broker: Broker) -> None:
    """Every settle restarts the stall clock: a reader never idle, but settling, is not stalled.

    Messages stay in flight all along (a backlog larger than ``max_in_flight``, one applied
    at a time) for about ten times ``stall_after``; each apply samples readiness while its
    message and the others delivered behind it are in flight.
    """
    stall_after, count = 0.3, 30
    samples: list[tuple[bool, dict[str, Any]]] = []

    async def slow_apply(batch: list[Received[HeartBeat]]) -> None:
        samples.append(consumer.check())
        await asyncio.sleep(stall_after / 3)  # slow, yet a settle every third of stall_after

    consumer = heartbeat_consumer(
        broker, slow_apply, never_dead_letter, stall_after=stall_after, max_in_flight=5,
        batch_size=1,
    )  # fmt: skip
    await consumer.start()
    try:
        await async_wait_for(lambda: consumer.check()[1]["connections"] == 1)
        bodies = [json.dumps({"id": f"svc-{i}"}).encode() for i in range(count)]
        await mpub_binary(broker, TOPIC, bodies)
        await async_wait_for(lambda: consumer.counters.stored == count, timeout=60)
    finally:
        await consumer.stop()
    assert len(samples) == count and all(d["in_flight"] >= 1 for _, d in samples)
    assert [d for ready, d in samples if not ready] == [], "ready throughout"
    assert consumer.counters.requeued == 0 and consumer.counters.dead_lettered == 0


async def test_a_lost_nsqd_connection_makes_the_reader_not_ready_after_stall_after(
    tmp_path: Path,
) -> None:
    """Counted from the moment the connection was lost, not from the reader's start."""
    stall_after = 2.0
    broker = new_broker(tmp_path)
    await broker.start()
    address = f"127.0.0.1:{broker.tcp_port}"

    async def apply(batch: list[Received[HeartBeat]]) -> None:
        pass

    consumer = heartbeat_consumer(broker, apply, never_dead_letter, stall_after=stall_after)
    stopping: asyncio.Future[None] | None = None
    await consumer.start()
    try:
        await async_wait_for(lambda: consumer.check()[1]["connections"] == 1)
        # connected for longer than stall_after: counted from the start, a loss would be late
        await asyncio.sleep(stall_after * 1.5)
        assert consumer.check()[0], consumer.check()
        lost_from = time.monotonic()
        stopping = asyncio.ensure_future(broker.stop())
        await async_wait_for(lambda: consumer.check()[1]["connections"] == 0, every=0.01)
        ready, details = consumer.check()
        assert ready and "reason" not in details, "lost a moment ago, not stall_after ago"
        reader, now = consumer._reader, time.monotonic()
        assert reader is not None
        assert reader.missing_for([address], now)[address] <= now - lost_from, "since the loss"
        details = await async_wait_for(lambda: not_ready_because(consumer, "no connection"))
        assert details["connections"] == 0 and address in details["reason"]
    finally:
        await consumer.stop()
        await (stopping or broker.stop())


class Undescribable(Exception):
    """A failure that cannot even be described: its text raises another one of its kind."""

    def __str__(self) -> str:
        raise Undescribable


def decode_or_fail(model: type[Model], body: bytes) -> Model:
    """The real decoder, except for one body, on which it fails undescribably."""
    if body == b"undescribable":
        raise Undescribable
    return decode(model, body)


async def test_a_message_left_to_the_broker_timeout_is_not_held_in_flight(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """Our handler's last resort: its failure path failed too (describing the error raised).

    The message is left unanswered for nsqd to redeliver after its own timeout: it is no
    longer in flight here, so once the topic goes idle the reader is idle, not stalled.
    """
    applied: list[str] = []

    async def apply(batch: list[Received[HeartBeat]]) -> None:
        applied.extend(r.item.id for r in batch)

    consumer = heartbeat_consumer(
        broker, apply, never_dead_letter, stall_after=0.3, decode=decode_or_fail
    )
    with structlog.testing.capture_logs() as logs:
        await consumer.start()
        try:
            await async_wait_for(lambda: consumer.check()[1]["connections"] == 1)
            await mpub_binary(broker, TOPIC, [b"undescribable", b'{"id":"svc-1"}'])
            await async_wait_for(lambda: applied == ["svc-1"] and consumer.counters.received == 2)
            events = [e["event"] for e in logs]
            assert events.count("message_left_to_broker_timeout") == 1, events
            ready, details = consumer.check()
            assert (details["received"], details["stored"], details["in_flight"]) == (2, 1, 0)
            assert ready and "reason" not in details, details
            # an hour on, still nothing in flight: idle, never stalled
            assert consumer.progress.stalled_for(time.monotonic() + 3600) == 0
            await asyncio.sleep(0.6)  # twice stall_after, idle
            assert consumer.check()[0], consumer.check()
        finally:
            await consumer.stop()
    assert nsq_log_failures(caplog) == []
