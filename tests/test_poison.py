"""Messages that can never succeed never block a topic: real broker, real pynsq, real MongoDB."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import nsq
import pytest
from ingest_helpers import (
    CHANNEL,
    answered,
    broker_fixture,
    channel_stats,
    drained,
    fast_nsq,
    heartbeat_consumer,
    ingestion_fixture,
    mpub_binary,
    nsq_log_failures,
    own_mongodb,
    store_dead_letter,
)
from support import async_wait_for

from taskdash.errors import StoreError, StoreUnavailable
from taskdash.models import HeartBeat, Model, decode
from taskdash.nsq.broker import Broker
from taskdash.nsq.consumer import Consumer, Received
from taskdash.nsq.reader import ClosableReader
from taskdash.nsq.readers import Ingestion
from taskdash.settings import NsqSettings
from taskdash.store import Store

pytestmark = pytest.mark.timeout(90)

NSQ = fast_nsq(max_attempts=3)
TOPICS = (NSQ.service_topic, NSQ.heartbeat_topic)


broker = broker_fixture()
ingestion = ingestion_fixture(NSQ)


async def assert_finished_without_requeue(broker: Broker, topic: str) -> None:
    """Answered by FIN: requeueing after a dead letter would show as a requeue or deferral."""
    stats = await async_wait_for(lambda: answered(broker, topic))
    assert stats["requeue_count"] == 0 and stats["deferred_count"] == 0, stats


async def test_invalid_utf8_is_dead_lettered_and_good_beats_behind_it_stored(
    store: Store, broker: Broker, ingestion: Ingestion, caplog: pytest.LogCaptureFixture
) -> None:
    await mpub_binary(broker, NSQ.service_topic, [b'{"id":"svc-1"}', b'{"id":"a\xffb"}'])
    await async_wait_for(lambda: ingestion.services.counters.stored == 1)
    await mpub_binary(broker, NSQ.heartbeat_topic, [b'{"id":"a\xffb"}'] * 20 + [b'{"id":"svc-1"}'])

    async def beat_stored() -> bool:
        doc = await store.services.find_one({"_id": "svc-1"})
        return doc.get("heartbeats_total") == 1

    await async_wait_for(beat_stored)
    await async_wait_for(lambda: ingestion.heartbeats.counters.dead_lettered == 20)
    await async_wait_for(lambda: ingestion.services.counters.dead_lettered == 1)
    letters = [d async for d in store.dead_letters.find({})]
    assert len(letters) == 21
    assert all("not valid UTF-8" in d["reason"] for d in letters), letters[0]["reason"]
    for topic in TOPICS:
        await assert_finished_without_requeue(broker, topic)
    assert nsq_log_failures(caplog) == []


async def test_whatever_decoding_raises_is_dead_lettered(store: Store, broker: Broker) -> None:
    """Never only the exceptions foreseen: here a RecursionError, as deep nesting can raise."""

    def deep_decode(model: type[Model], body: bytes) -> Model:
        if body.startswith(b"["):
            raise RecursionError("maximum recursion depth exceeded")
        return decode(model, body)

    applied: list[str] = []

    async def apply(batch: list[Received[HeartBeat]]) -> None:
        applied.extend(r.item.id for r in batch)

    consumer = heartbeat_consumer(broker, apply, store_dead_letter(store), decode=deep_decode)
    await consumer.start()
    try:
        await mpub_binary(broker, NSQ.heartbeat_topic, [b"[" * 1000, b'{"id":"good"}'])
        await async_wait_for(lambda: applied == ["good"])
        letter = await async_wait_for(lambda: store.dead_letters.find_one({}))
        assert "RecursionError" in letter["reason"] and letter["attempts"] == 1
        await assert_finished_without_requeue(broker, NSQ.heartbeat_topic)
    finally:
        await consumer.stop()


async def test_an_apply_that_keeps_failing_on_one_message_dead_letters_only_that_one(
    store: Store, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """Retried ``max_attempts`` times, then dead-lettered; its batch's good ones are stored once."""
    applied: list[str] = []

    async def apply(batch: list[Received[HeartBeat]]) -> None:
        if any(r.item.id == "bad" for r in batch):
            raise RuntimeError("cannot apply bad")
        applied.extend(r.item.id for r in batch)

    consumer = heartbeat_consumer(broker, apply, store_dead_letter(store), max_attempts=3)
    await consumer.start()
    try:
        bodies = [json.dumps({"id": f"g{i}"}).encode() for i in range(10)]
        bodies.insert(5, b'{"id":"bad"}')
        await mpub_binary(broker, NSQ.heartbeat_topic, bodies)
        letter = await async_wait_for(lambda: store.dead_letters.find_one({}))
        assert "RuntimeError: cannot apply bad" in letter["reason"]
        assert letter["attempts"] == 3
        stats = await async_wait_for(lambda: drained(broker, NSQ.heartbeat_topic))
        assert stats["requeue_count"] == 2, "retried twice, then dead-lettered on the third"
        assert sorted(applied) == sorted(f"g{i}" for i in range(10)), "each good one once"
        assert consumer.counters.dead_lettered == 1 and consumer.counters.stored == 10
    finally:
        await consumer.stop()
    assert nsq_log_failures(caplog) == []


async def test_store_unavailability_is_retried_without_limit(store: Store, broker: Broker) -> None:
    """An outage is not poison: retried past ``max_attempts``, never dead-lettered."""
    failures: list[int] = []

    async def apply(batch: list[Received[HeartBeat]]) -> None:
        if len(failures) < 3:
            failures.append(batch[0].message.attempts)
            raise StoreUnavailable("record_heartbeats: MongoDB unreachable")

    consumer = heartbeat_consumer(broker, apply, store_dead_letter(store), max_attempts=1)
    await consumer.start()
    try:
        await mpub_binary(broker, NSQ.heartbeat_topic, [b'{"id":"svc-1"}'])
        await async_wait_for(lambda: consumer.counters.stored == 1)
        assert failures == [1, 2, 3]
        stats = await async_wait_for(lambda: drained(broker, NSQ.heartbeat_topic))
        assert stats["requeue_count"] == 3 and consumer.counters.dead_lettered == 0
        assert await store.dead_letters.count_documents({}) == 0
    finally:
        await consumer.stop()


async def test_a_write_the_store_always_refuses_is_bounded_like_a_bug(
    store: Store, broker: Broker
) -> None:
    """Only unavailability is retried without limit: a refused write (a StoreError that is not
    an outage) is isolated from its batch and dead-lettered after ``max_attempts``."""
    applied: list[str] = []

    async def apply(batch: list[Received[HeartBeat]]) -> None:
        if any(r.item.id == "refused" for r in batch):
            raise StoreError("record_heartbeats: document failed validation")
        applied.extend(r.item.id for r in batch)

    consumer = heartbeat_consumer(broker, apply, store_dead_letter(store), max_attempts=2)
    await consumer.start()
    try:
        bodies = [json.dumps({"id": f"g{i}"}).encode() for i in range(4)]
        bodies.insert(2, b'{"id":"refused"}')
        await mpub_binary(broker, NSQ.heartbeat_topic, bodies)
        letter = await async_wait_for(lambda: store.dead_letters.find_one({}))
        assert "document failed validation" in letter["reason"] and letter["attempts"] == 2
        await async_wait_for(lambda: drained(broker, NSQ.heartbeat_topic))
        assert sorted(applied) == ["g0", "g1", "g2", "g3"], "the good ones, each once"
    finally:
        await consumer.stop()


class BuggyConsumer(Consumer[HeartBeat]):
    """A bug of ours inside the message handler itself, after decoding."""

    def _queue(self, message: Any, item: HeartBeat, at: datetime) -> None:
        if item.id == "bad":
            raise KeyError("a bug in the handler")
        super()._queue(message, item, at)


async def test_a_bug_in_the_handler_never_reaches_pynsq(
    store: Store, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    applied: list[str] = []

    async def apply(batch: list[Received[HeartBeat]]) -> None:
        applied.extend(r.item.id for r in batch)

    consumer = heartbeat_consumer(
        broker, apply, store_dead_letter(store), cls=BuggyConsumer, max_attempts=2
    )
    await consumer.start()
    try:
        await mpub_binary(broker, NSQ.heartbeat_topic, [b'{"id":"bad"}', b'{"id":"good"}'])
        letter = await async_wait_for(lambda: store.dead_letters.find_one({}))
        assert "KeyError" in letter["reason"] and letter["attempts"] == 2
        stats = await async_wait_for(lambda: drained(broker, NSQ.heartbeat_topic))
        assert stats["requeue_count"] == 1
        assert applied == ["good"]
    finally:
        await consumer.stop()
    assert nsq_log_failures(caplog) == []


async def test_a_dead_letter_that_cannot_be_written_is_requeued_then_kept(
    tmp_path: Path, broker: Broker
) -> None:
    """Store down while poison arrives: requeued (not lost, not finished), kept once it is back."""
    async with own_mongodb(tmp_path, broker, NSQ) as own:
        services = own.ingestion.services
        own.server.stop()
        await mpub_binary(broker, NSQ.service_topic, [b"not json"])
        # a dead letter that cannot be written is retried like any store write: past max_attempts
        await async_wait_for(lambda: services.counters.requeued > NSQ.max_attempts, timeout=30)
        stats = await channel_stats(broker, NSQ.service_topic)
        assert stats["requeue_count"] > NSQ.max_attempts
        assert services.counters.dead_lettered == 0
        own.server.start()
        await async_wait_for(lambda: services.counters.dead_lettered == 1, timeout=30)
        stats = await async_wait_for(lambda: drained(broker, NSQ.service_topic), timeout=30)
        (letter,) = [d async for d in own.store.dead_letters.find({})]
        assert "not valid JSON" in letter["reason"] and letter["attempts"] > NSQ.max_attempts


async def test_a_store_outage_is_retried_beyond_max_attempts(
    tmp_path: Path, broker: Broker
) -> None:
    """Only store unavailability is retried without limit: good messages are never dead-lettered."""
    settings = NsqSettings(
        heartbeat_flush_interval=0.02, requeue_delay=0.05, requeue_delay_max=0.1, max_attempts=1
    )
    async with own_mongodb(tmp_path, broker, settings) as own:
        services = own.ingestion.services
        own.server.stop()
        await mpub_binary(broker, NSQ.service_topic, [b'{"id":"svc-1"}'])
        await async_wait_for(lambda: services.counters.requeued >= 3, timeout=30)
        own.server.start()
        await async_wait_for(lambda: services.counters.stored == 1, timeout=30)
        await async_wait_for(lambda: drained(broker, NSQ.service_topic), timeout=30)
        assert await own.store.dead_letters.count_documents({}) == 0
        assert services.counters.dead_lettered == 0


async def test_nsq_log_failures_sees_pynsq_catching_a_handler_error(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """The helper the tests above expect empty does see pynsq's real catch-all.

    A bare reader whose handler lets an exception out (what ours must never do): pynsq logs
    it with a traceback and requeues the message.
    """
    failed: list[nsq.Message] = []

    def leaky_handler(message: nsq.Message) -> None:
        failed.append(message)
        raise RuntimeError("a handler that lets an exception out")

    reader = ClosableReader(
        topic=NSQ.heartbeat_topic,
        channel=CHANNEL,
        message_handler=leaky_handler,
        nsqd_tcp_addresses=[f"127.0.0.1:{broker.tcp_port}"],
        max_in_flight=1,
        max_tries=0,
    )
    try:
        await mpub_binary(broker, NSQ.heartbeat_topic, [b'{"id":"svc-1"}'])
        failures = await async_wait_for(lambda: nsq_log_failures(caplog))
        assert failed and "uncaught exception while handling message" in failures[0], failures
        caught = [r.exc_info[1] for r in caplog.records if r.name.startswith("nsq") and r.exc_info]
        assert any("lets an exception out" in str(exc) for exc in caught), caught
    finally:
        reader.shut()
