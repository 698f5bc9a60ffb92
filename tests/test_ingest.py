"""NSQ ingestion end to end: our broker, the real pynsq readers, a real MongoDB."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nsq
import pytest
import structlog
import structlog.testing
from ingest_helpers import (
    answered,
    broker_fixture,
    channel_stats,
    drained,
    http,
    ingestion_fixture,
    mpub_binary,
    own_mongodb,
    start_ingestion,
    stop_ingestion,
)
from pymongo.errors import PyMongoError
from support import async_wait_for

from taskdash.models import HeartBeat, TaskService
from taskdash.nsq.announce import Announcer, publish
from taskdash.nsq.broker import Broker
from taskdash.nsq.consumer import Consumer, Received
from taskdash.nsq.readers import Ingestion
from taskdash.settings import NsqSettings
from taskdash.store import Store
from taskdash.store.services import register_services

pytestmark = pytest.mark.timeout(90)

NSQ = NsqSettings(
    heartbeat_flush_interval=0.05,
    requeue_delay=0.1,
    requeue_delay_max=0.5,
    max_message_size=4096,
    heartbeat_resolution=0.0,
)


broker = broker_fixture()
ingestion = ingestion_fixture(NSQ)


async def pub(broker: Broker, topic: str, body: bytes) -> None:
    await asyncio.to_thread(publish, http(broker), topic, body)


def service(i: int | str, **extra: str) -> bytes:
    return json.dumps(
        {"id": f"svc-{i}", "name": f"n{i}", "type": "t", "url": f"http://127.0.0.1:1/{i}",
         "description": "", "reserved": "", **extra}
    ).encode()  # fmt: skip


def beat(i: int | str) -> bytes:
    return json.dumps({"id": f"svc-{i}", "reserved": ""}).encode()


async def test_registration_is_stored(store: Store, broker: Broker, ingestion: Ingestion) -> None:
    await pub(broker, NSQ.service_topic, service(1, description="爬虫"))
    doc = await async_wait_for(lambda: store.services.find_one({"_id": "svc-1"}))
    assert doc["name"] == "n1" and doc["description"] == "爬虫" and doc["status"] == "unknown"
    assert doc["registered_at"] == doc["updated_at"]
    await async_wait_for(lambda: ingestion.services.counters.stored == 1)
    stats = await channel_stats(broker, NSQ.service_topic)
    assert stats["depth"] == 0 and stats["in_flight_count"] == 0


async def test_heartbeats_are_coalesced(store: Store, broker: Broker, ingestion: Ingestion) -> None:
    await pub(broker, NSQ.service_topic, service(1))
    await async_wait_for(lambda: store.services.find_one({"_id": "svc-1"}))
    await mpub_binary(broker, NSQ.heartbeat_topic, [beat(1)] * 300)

    async def all_counted() -> bool:
        doc = await store.services.find_one({"_id": "svc-1"})
        return doc.get("heartbeats_total") == 300

    await async_wait_for(all_counted)
    await async_wait_for(lambda: drained(broker, NSQ.heartbeat_topic))
    doc = await store.services.find_one({"_id": "svc-1"})
    assert doc["heartbeats_total"] == 300 and doc["beats"] == 300, "each beat counted once"
    counters = ingestion.heartbeats.counters
    assert counters.stored == 300
    assert counters.batches < 300 / 5, "many beats are written together"
    doc = await store.services.find_one({"_id": "svc-1"})
    assert doc["last_heartbeat_at"] >= doc["registered_at"]


async def register_and_beat(store: Store, broker: Broker, ingestion: Ingestion) -> None:
    """Service svc-1 registered, and its first heartbeat stored."""
    await pub(broker, NSQ.service_topic, service(1))
    await async_wait_for(lambda: store.services.find_one({"_id": "svc-1"}))
    await pub(broker, NSQ.heartbeat_topic, beat(1))
    await async_wait_for(lambda: ingestion.heartbeats.counters.stored == 1)


async def test_beats_within_the_resolution_ride_on_a_stored_one(
    store: Store, broker: Broker
) -> None:
    settings = NsqSettings(heartbeat_flush_interval=0.05, heartbeat_resolution=30.0)
    ingestion = await start_ingestion(store, broker, settings)
    try:
        await register_and_beat(store, broker, ingestion)
        first = await store.services.find_one({"_id": "svc-1"})
        await mpub_binary(broker, NSQ.heartbeat_topic, [beat(1)] * 50)
        await async_wait_for(lambda: ingestion.heartbeats.counters.stored == 51)
        assert ingestion.absorbed_heartbeats == 50
        assert await store.services.find_one({"_id": "svc-1"}) == first, "no write for them"
        stats = await channel_stats(broker, NSQ.heartbeat_topic)
        assert stats["depth"] == 0 and stats["in_flight_count"] == 0, "all finished"
    finally:
        await stop_ingestion(ingestion)
    doc = await store.services.find_one({"_id": "svc-1"})
    assert doc["heartbeats_total"] == 51, "the absorbed ones are counted at the stop"
    assert doc["last_heartbeat_at"] == first["last_heartbeat_at"] and doc["beats"] == 1
    # the next daemon has no memory of the stored beat: it writes, carrying nothing lost
    ingestion = await start_ingestion(store, broker, settings)
    try:
        await pub(broker, NSQ.heartbeat_topic, beat(1))
        await async_wait_for(lambda: ingestion.heartbeats.counters.stored == 1)
        doc = await store.services.find_one({"_id": "svc-1"})
        assert doc["last_heartbeat_at"] > first["last_heartbeat_at"]
        assert doc["heartbeats_total"] == 52
    finally:
        await stop_ingestion(ingestion)


async def test_unknown_heartbeats_are_counted_not_registered(
    store: Store, broker: Broker, ingestion: Ingestion
) -> None:
    await mpub_binary(broker, NSQ.heartbeat_topic, [beat("ghost")] * 5)
    await async_wait_for(lambda: ingestion.heartbeats.counters.stored == 5)
    assert ingestion.unknown_heartbeats == 5
    assert await store.services.count_documents({}) == 0
    assert ingestion.heartbeats.check()[1]["unknown_heartbeats"] == 5


@pytest.mark.parametrize(
    ("body", "reason", "field"),
    [
        (b"not json", "not valid JSON", None),
        (b'{"id": 42, "name": "x"}', "Expected `str`, got `int`", "id"),
        (b'{"name": "no id"}', "missing required field `id`", "id"),
        (b'{"id": "a", "url": ["x"]}', "Expected `str`, got `array`", "url"),
        (b'["id"]', "Expected `object`", None),
        (b'{"id": "' + b"x" * 5000 + b'"}', "over the limit of 4096", None),
        (b'{"id": "a", "description": "' + b"d" * 4090 + b'"}', "over the limit", None),
    ],
)
async def test_poison_messages_are_dead_lettered_and_finished(
    store: Store, broker: Broker, ingestion: Ingestion, body: bytes, reason: str, field: str | None
) -> None:
    await pub(broker, NSQ.service_topic, service("kept"))
    await async_wait_for(lambda: store.services.find_one({"_id": "svc-kept"}))
    before = await store.services.find_one({"_id": "svc-kept"})
    await pub(broker, NSQ.service_topic, body)
    letter = await async_wait_for(lambda: store.dead_letters.find_one({}))
    assert reason in letter["reason"] and letter["field"] == field
    assert letter["topic"] == NSQ.service_topic and letter["size"] == len(body)
    assert bytes(letter["body"]) == body[: len(letter["body"])]
    await async_wait_for(lambda: ingestion.services.counters.dead_lettered == 1)
    stats = await async_wait_for(lambda: answered(broker, NSQ.service_topic))
    assert stats["requeue_count"] == 0 and stats["deferred_count"] == 0, "finished, not requeued"
    assert await store.services.find_one({"_id": "svc-kept"}) == before
    assert await store.services.count_documents({}) == 1


async def test_a_beat_absorbed_before_a_silence_does_not_count_after_it(
    store: Store, broker: Broker
) -> None:
    """Absorbed beats join the next write only if they came just before it (damping)."""
    settings = NsqSettings(heartbeat_flush_interval=0.02, heartbeat_resolution=1.0)
    ingestion = await start_ingestion(store, broker, settings)
    try:
        await register_and_beat(store, broker, ingestion)
        await pub(broker, NSQ.heartbeat_topic, beat(1))  # within 1 s: absorbed
        await async_wait_for(lambda: ingestion.heartbeats.counters.stored == 2)
        assert ingestion.absorbed_heartbeats == 1
        await asyncio.sleep(1.5)  # a silence longer than the resolution
        await pub(broker, NSQ.heartbeat_topic, beat(1))
        await async_wait_for(lambda: ingestion.heartbeats.counters.stored == 3)
        doc = await store.services.find_one({"_id": "svc-1"})
        assert doc["beats"] == 2, "the old absorbed beat is not a consecutive one"
        assert doc["heartbeats_total"] == 3, "but it is counted in the total"
    finally:
        await stop_ingestion(ingestion)


async def test_a_flood_of_poison_is_all_kept_but_logged_at_a_bounded_rate(
    store: Store, broker: Broker
) -> None:
    with structlog.testing.capture_logs() as logs:
        ingestion = await start_ingestion(store, broker, NSQ)
        try:
            await mpub_binary(broker, NSQ.service_topic, [b"not json %d" % i for i in range(30)])
            await async_wait_for(lambda: ingestion.services.counters.dead_lettered == 30)
        finally:
            await stop_ingestion(ingestion)
    assert await store.dead_letters.count_documents({}) == 30
    lines = [e for e in logs if e["event"] == "message_dead_lettered"]
    assert 1 <= len(lines) <= 2, lines  # one per 10 s, with the count of those left out


async def test_dead_letters_expire(store: Store, broker: Broker) -> None:
    """Each carries ``expires_at`` under a TTL index: a poison flood cannot fill MongoDB."""
    settings = NsqSettings(dead_letter_ttl_days=2.5)
    ingestion = await start_ingestion(store, broker, settings)
    try:
        await pub(broker, NSQ.service_topic, b"{")
        letter = await async_wait_for(lambda: store.dead_letters.find_one({}))
    finally:
        await stop_ingestion(ingestion)
    assert letter["expires_at"] - letter["received_at"] == timedelta(days=2.5)
    indexes = (await store.dead_letters.index_information()).values()
    ttl = [i for i in indexes if i["key"] == [("expires_at", 1)]]  # (nx-27017 renames indexes)
    assert len(ttl) == 1 and ttl[0]["expireAfterSeconds"] == 0


async def test_mongodb_outage_loses_nothing(tmp_path: Path, broker: Broker) -> None:
    async with own_mongodb(tmp_path, broker, NSQ) as own:
        store, ingestion = own.store, own.ingestion
        await mpub_binary(broker, NSQ.service_topic, [service(i) for i in range(20)])
        await async_wait_for(lambda: ingestion.services.counters.stored == 20)
        own.server.stop()
        await mpub_binary(broker, NSQ.service_topic, [service(i) for i in range(20, 60)])
        await mpub_binary(broker, NSQ.heartbeat_topic, [beat(i) for i in range(20)] * 3)
        await async_wait_for(lambda: ingestion.services.counters.requeued > 0, timeout=30)
        own.server.start()  # same port, same data directory

        async def all_registered() -> bool:
            try:  # the restarted server may still be starting: a loaded machine is slow
                return await store.services.count_documents({}) == 60
            except PyMongoError:
                return False

        await async_wait_for(all_registered, timeout=60, every=0.2)

        async def beats_applied() -> bool:
            docs = [d async for d in store.services.find({"heartbeats_total": {"$gte": 1}})]
            return len(docs) == 20 and all(d["heartbeats_total"] >= 3 for d in docs)

        await async_wait_for(beats_applied, timeout=60, every=0.2)
        for topic in (NSQ.service_topic, NSQ.heartbeat_topic):
            stats = await channel_stats(broker, topic)
            await async_wait_for(lambda t=topic: drained(broker, t), timeout=30)
            assert stats["requeue_count"] > 0 or topic == NSQ.heartbeat_topic
        assert await store.dead_letters.count_documents({}) == 0


async def test_after_an_outage_intake_is_not_throttled(
    tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """Retries are spaced per message; the reader itself is never throttled.

    (pynsq's backoff, which REQ with ``backoff=True`` triggers, would after the outage let one
    message through per pause: new messages would wait behind the retries for minutes.) The
    proof is what pynsq records, not how fast this machine happens to be.
    """
    caplog.set_level(logging.INFO, logger="nsq")
    settings = NsqSettings(requeue_delay=0.5, requeue_delay_max=8.0, max_message_size=4096)
    async with own_mongodb(tmp_path, broker, settings) as own:
        store, ingestion = own.store, own.ingestion
        own.server.stop()
        await mpub_binary(broker, NSQ.service_topic, [service(i) for i in range(300)])
        await async_wait_for(lambda: ingestion.services.counters.requeued >= 300, timeout=30)
        await asyncio.sleep(6)  # an outage long enough for the retries to space out
        own.server.start()
        await mpub_binary(broker, NSQ.service_topic, [service(f"new-{i}") for i in range(50)])

        async def registered(query: dict[str, Any], n: int) -> bool:
            try:  # the test's own client may not have seen the server come back yet
                return await store.services.count_documents(query) == n
            except PyMongoError:
                return False

        new = {"_id": {"$regex": "^svc-new-"}}
        await async_wait_for(lambda: registered(new, 50), timeout=30)
        await async_wait_for(lambda: registered({}, 350), timeout=60, every=0.2)
        # the reader was never put into pynsq's backoff (RDY 0, then RDY 1 per pause) ...
        backoff = [r.getMessage() for r in caplog.records if r.name.startswith("nsq")]
        assert not [m for m in backoff if "backing off" in m or "backoff" in m], backoff
        reader = ingestion.services._reader
        assert reader is not None and reader.backoff_timer.get_interval() == 0


async def test_absorbed_beats_are_counted_once_when_their_batch_is_retried(
    tmp_path: Path, broker: Broker
) -> None:
    """Absorbed beats count only once their batch is durable: a retried batch adds them once."""
    # batches of exactly 11 (a long flush interval): the absorbed beats share a batch that fails
    settings = NsqSettings(
        heartbeat_batch_size=11, heartbeat_flush_interval=10.0, heartbeat_resolution=60.0,
        requeue_delay=0.05, requeue_delay_max=0.2,
    )  # fmt: skip
    async with own_mongodb(tmp_path, broker, settings) as own:
        ingestion = own.ingestion
        await mpub_binary(broker, NSQ.service_topic, [service(i) for i in range(11)])
        await async_wait_for(lambda: ingestion.services.counters.stored == 11)
        await mpub_binary(broker, NSQ.heartbeat_topic, [beat(i) for i in range(10)] + [beat(0)])
        await async_wait_for(lambda: ingestion.heartbeats.counters.stored == 11)
        own.server.stop()
        # svc-0's ten beats are absorbed; svc-10's needs a write, which fails: all 11 retried
        await mpub_binary(broker, NSQ.heartbeat_topic, [beat(0)] * 10 + [beat(10)])
        await async_wait_for(lambda: ingestion.heartbeats.counters.requeued >= 22, timeout=30)
        assert ingestion.absorbed_heartbeats == 0, "not counted while their batch is not durable"
        own.server.start()
        await async_wait_for(lambda: ingestion.heartbeats.counters.stored == 22, timeout=30)
        assert ingestion.absorbed_heartbeats == 10
        await stop_ingestion(ingestion)  # the stop writes what was absorbed
        totals = {d["_id"]: d["heartbeats_total"] async for d in own.store.services.find({})}
        assert totals["svc-0"] == 12 and totals["svc-10"] == 1, totals
        assert sum(totals.values()) == 22, "every beat exactly once"


async def test_absorbed_beats_join_the_next_write_in_total_and_in_beats_only_if_recent(
    store: Store,
) -> None:
    """The heartbeat reader's apply, fed real messages with chosen receipt times."""
    ingestion = Ingestion(
        store, NsqSettings(heartbeat_resolution=1.0), node_id="n1",
        nsqd_tcp_addresses=["127.0.0.1:1"], lookupd_http_addresses=[],
    )  # fmt: skip
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    await register_services(store, [TaskService(id="s")], t0)

    def at(seconds: float) -> list[Received[HeartBeat]]:
        message = nsq.Message(b"0" * 16, b'{"id":"s"}', 0, 1)
        return [Received(message, HeartBeat(id="s"), t0 + timedelta(seconds=seconds))]

    for seconds in (0.0, 0.5, 1.2, 1.5, 5.0):  # written, absorbed, written, absorbed, written
        await ingestion._beat(at(seconds))
    doc = await store.services.find_one({"_id": "s"})
    assert ingestion.absorbed_heartbeats == 2
    # 1.2 carries 0.5 (just before it) in both; 5.0 carries 1.5 (before a silence) in the total
    assert (doc["beats"], doc["heartbeats_total"]) == (1 + 2 + 1, 1 + 2 + 2)


async def test_a_mass_registration_is_logged_as_a_summary(store: Store, broker: Broker) -> None:
    """Above ``[log] summary_threshold`` (20) per batch: one summary line, not one per service."""
    settings = NsqSettings(heartbeat_batch_size=30, heartbeat_flush_interval=10.0)
    with structlog.testing.capture_logs() as logs:
        ingestion = await start_ingestion(store, broker, settings)
        try:
            await mpub_binary(broker, NSQ.service_topic, [service(i) for i in range(30)])
            await async_wait_for(lambda: ingestion.services.counters.stored == 30)
            await mpub_binary(broker, NSQ.service_topic, [service(i) for i in range(30, 33)])
            await async_wait_for(lambda: ingestion.services.counters.received == 33)
        finally:
            await stop_ingestion(ingestion)  # writes the last, short batch
    assert await store.services.count_documents({}) == 33
    (summary,) = [e for e in logs if e["event"] == "service_registered_summary"]
    assert summary["count"] == 30 and len(summary["examples"]) == 5
    each = [e["service_id"] for e in logs if e["event"] == "service_registered"]
    assert each == ["svc-30", "svc-31", "svc-32"]


async def test_two_readers_on_one_channel_apply_each_message_once(
    store: Store, broker: Broker
) -> None:
    first = await start_ingestion(store, broker, NSQ, node="n1")
    second = await start_ingestion(store, broker, NSQ, node="n2")
    try:
        await async_wait_for(lambda: first.services.check()[1]["connections"] == 1)
        await async_wait_for(lambda: second.services.check()[1]["connections"] == 1)
        await mpub_binary(broker, NSQ.service_topic, [service(i) for i in range(400)])
        await async_wait_for(
            lambda: first.services.counters.stored + second.services.counters.stored == 400
        )
        assert await store.services.count_documents({}) == 400
        assert first.services.counters.stored > 0 and second.services.counters.stored > 0
        await asyncio.sleep(0.3)
        assert first.services.counters.stored + second.services.counters.stored == 400
    finally:
        await stop_ingestion(second)
        await stop_ingestion(first)


async def test_unfinished_messages_survive_a_broker_restart(store: Store, tmp_path: Path) -> None:
    data = tmp_path / "nsq-restart"
    broker = Broker(
        host="127.0.0.1", tcp_port=0, http_port=0, lookupd_http_port=None, data_dir=data
    )
    await broker.start()
    await mpub_binary(broker, NSQ.service_topic, [service(i) for i in range(10)])
    await broker.stop()
    broker = Broker(
        host="127.0.0.1", tcp_port=0, http_port=0, lookupd_http_port=None, data_dir=data
    )
    await broker.start()
    ingestion = await start_ingestion(store, broker, NSQ)
    try:
        await async_wait_for(lambda: ingestion.services.counters.stored == 10)
        assert await store.services.count_documents({}) == 10
    finally:
        await stop_ingestion(ingestion)
        await broker.stop()


async def test_pynsq_writer_messages_are_ingested(
    store: Store, broker: Broker, ingestion: Ingestion
) -> None:
    writer = nsq.Writer([f"127.0.0.1:{broker.tcp_port}"])
    results: list[Any] = []
    await async_wait_for(lambda: writer.conns)
    writer.pub(NSQ.service_topic, service("w"), callback=lambda conn, data: results.append(data))
    await async_wait_for(lambda: results)
    assert results == [b"OK"]
    await async_wait_for(lambda: store.services.find_one({"_id": "svc-w"}))
    for conn in list(writer.conns.values()):
        conn.close()


async def test_stop_lets_a_batch_being_written_finish(broker: Broker) -> None:
    """A batch mid-write at stop is answered (FIN), not left to the broker's 60 s timeout."""
    started, applied = asyncio.Event(), []

    async def slow_apply(batch: list[Received[HeartBeat]]) -> None:
        started.set()
        await asyncio.sleep(0.5)
        applied.extend(r.item.id for r in batch)

    async def no_dead_letters(*args: object) -> None:
        raise AssertionError("nothing here is poison")

    consumer: Consumer[HeartBeat] = Consumer(
        topic=NSQ.heartbeat_topic, channel="taskdash", model=HeartBeat, apply=slow_apply,
        dead_letter=no_dead_letters, nsqd_tcp_addresses=[f"127.0.0.1:{broker.tcp_port}"],
        lookupd_http_addresses=[], max_in_flight=10, batch_size=10, flush_interval=0.01,
        max_message_size=4096, requeue_delay=0.1, requeue_delay_max=0.5,
    )  # fmt: skip
    await consumer.start()
    await pub(broker, NSQ.heartbeat_topic, beat(1))
    await asyncio.wait_for(started.wait(), 10)
    await consumer.stop()
    assert applied == ["svc-1"] and consumer.counters.stored == 1
    stats = await channel_stats(broker, NSQ.heartbeat_topic)
    assert stats["in_flight_count"] == 0 and stats["depth"] == 0, "answered before the close"


async def test_the_announcer_registers_beats_and_registers_again(
    store: Store, broker: Broker, ingestion: Ingestion
) -> None:
    announcer = Announcer(
        http(broker),
        TaskService(id="svc-announced", name="crawler", url="http://127.0.0.1:1/tasks"),
        every=0.05,
        reregister_every=0.3,
    )
    announcer.start()
    announcer.start()  # a second start does not start a second thread
    try:
        assert sum(t.name == "taskdash-announcer" for t in threading.enumerate()) == 1

        async def beating() -> bool:
            doc = await store.services.find_one({"_id": "svc-announced"})
            return bool(doc) and doc.get("heartbeats_total", 0) >= 3

        await async_wait_for(beating)
        await async_wait_for(lambda: ingestion.services.counters.stored >= 2)  # registered again
    finally:
        announcer.stop()
    doc = await store.services.find_one({"_id": "svc-announced"})
    assert doc["name"] == "crawler" and doc["url"] == "http://127.0.0.1:1/tasks"
    assert announcer.sent >= 3
