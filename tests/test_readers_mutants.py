"""Ingestion behaviour that mutation testing (``make mutation``) showed no test held.

The heartbeat reader's absorption rule at its bounds (a beat within ``heartbeat_resolution`` of
the last stored one rides on it; one exactly that far is written), the counts it keeps
(``heartbeats_total``, ``absorbed_heartbeats``, ``unknown_heartbeats``), the log lines an admin
reads, and what a dead letter records. The bounds are checked by handing the reader's batch
function batches with chosen receipt times, as its consumer does (receipt times through a real
broker cannot be chosen); the rest goes through the real broker and pynsq.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import nsq
import pytest
import structlog.testing
from ingest_helpers import (
    broker_fixture,
    fast_nsq,
    ingestion_fixture,
    mpub_binary,
    running_ingestion,
)
from pymongo import monitoring
from support import async_wait_for
from test_web_round_trips import Commands

from taskdash.models import HeartBeat, TaskService
from taskdash.nsq.broker import Broker
from taskdash.nsq.consumer import Received
from taskdash.nsq.readers import Ingestion
from taskdash.settings import NsqSettings
from taskdash.store import Store
from taskdash.store.services import register_services
from taskdash.store.times import from_ms

pytestmark = pytest.mark.timeout(90)

NSQ = fast_nsq()
T = 1_800_000_000_000  # ms: receipt time of the first stored beat in the bound tests

broker = broker_fixture()
ingestion = ingestion_fixture(NSQ)


def events(logs: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [e for e in logs if e["event"] == name]


# -- the absorption rule, batch by batch --------------------------------------------------------


def beats(*received: tuple[str, int]) -> list[Received[HeartBeat]]:
    """A batch as the consumer hands it over: (service id, receipt time in ms) per message."""
    return [
        Received(nsq.Message(b"%016d" % i, b"", 0, 1), HeartBeat(id=sid), from_ms(at))
        for i, (sid, at) in enumerate(received)
    ]


async def reader(store: Store, *ids: str) -> Ingestion:
    """The ingestion with a resolution of 1 s (never started: its batches are handed over)."""
    await register_services(store, [TaskService(id=i) for i in ids], from_ms(T - 60_000))
    return Ingestion(
        store,
        NsqSettings(heartbeat_resolution=1.0),
        node_id="n1",
        nsqd_tcp_addresses=[],
        lookupd_http_addresses=[],
    )


async def stored(store: Store, sid: str = "s") -> tuple[int, int, int]:
    """(heartbeats_total, beats, last_heartbeat_at) as stored."""
    doc = await store.services.find_one({"_id": sid})
    assert doc is not None
    return doc.get("heartbeats_total", 0), doc["beats"], doc.get("last_heartbeat_at", 0)


async def test_a_beat_within_the_resolution_rides_on_the_stored_one_up_to_its_bound(
    store: Store,
) -> None:
    ingest = await reader(store, "s")
    await ingest._beat(beats(("s", T)))
    assert await stored(store) == (1, 1, T)
    await ingest._beat(beats(("s", T)))  # the same millisecond: within the resolution
    await ingest._beat(beats(("s", T + 999)))
    assert await stored(store) == (1, 1, T), "no write for either"
    assert ingest.absorbed_heartbeats == 2
    assert ingest.heartbeats.check()[1]["absorbed_heartbeats"] == 2
    await ingest._beat(beats(("s", T + 1000)))  # exactly the resolution later: written
    assert await stored(store) == (4, 4, T + 1000), "with the two it absorbed just before"
    assert ingest.absorbed_heartbeats == 2, "absorbed ever, not absorbed now"


async def test_an_absorbed_beat_counts_as_consecutive_up_to_a_resolution_before_the_write(
    store: Store,
) -> None:
    ingest = await reader(store, "s", "t")
    await ingest._beat(beats(("s", T), ("t", T)))
    await ingest._beat(beats(("s", T + 500), ("t", T + 500)))
    # s: its absorbed beat exactly a resolution before the write; t: one millisecond more
    await ingest._beat(beats(("s", T + 1500), ("t", T + 1501)))
    assert await stored(store, "s") == (3, 3, T + 1500)
    assert await stored(store, "t") == (3, 2, T + 1501), "counted, but not as consecutive"


async def test_beats_absorbed_in_a_batch_join_the_write_later_in_that_batch(store: Store) -> None:
    ingest = await reader(store, "s")
    await ingest._beat(beats(("s", T)))
    await ingest._beat(beats(("s", T + 100), ("s", T + 1200)))
    assert await stored(store) == (3, 3, T + 1200)
    assert ingest.absorbed_heartbeats == 0, "nothing left waiting for a later write"
    await ingest._write_absorbed()
    assert await stored(store) == (3, 3, T + 1200)


async def test_a_service_whose_beat_was_stored_is_not_looked_up_again(
    store: Store, mongo_uri: str
) -> None:
    """A heartbeat is not a registration, so a batch's services are looked up before the
    write, but only once: those already written to are known (one write per batch, no read)."""
    listener = Commands()
    monitoring.register(listener)  # for the client made next
    own = Store(mongo_uri, store.db.name)
    try:
        ingest = await reader(own, "s")
        with listener.count() as first:
            await ingest._beat(beats(("s", T)))
        assert first == ["find services", "update services"]
        with listener.count() as second:
            await ingest._beat(beats(("s", T + 2000)))
        assert second == ["update services"]
        assert await stored(own) == (2, 2, T + 2000)
    finally:
        await own.close()


async def test_unknown_heartbeats_are_counted_across_batches_and_logged_with_a_few_ids(
    store: Store,
) -> None:
    ingest = await reader(store, "s")
    ghosts = [f"ghost-{i:02d}" for i in range(12)]
    with structlog.testing.capture_logs() as logs:
        await ingest._beat(beats(*[(g, T) for g in reversed(ghosts)], ("s", T)))
        await ingest._beat(beats((ghosts[0], T + 5000), (ghosts[0], T + 5001)))
    assert ingest.unknown_heartbeats == 14
    assert ingest.heartbeats.check()[1]["unknown_heartbeats"] == 14
    (line,) = events(logs, "heartbeat_from_unknown_service")  # the second one held back
    assert line["service_ids"] == ghosts[:10] and line["count"] == 12
    assert await store.services.count_documents({}) == 1


# -- through the broker -------------------------------------------------------------------------


async def test_each_registration_is_logged_with_its_url(
    broker: Broker, ingestion: Ingestion
) -> None:
    body = json.dumps({"id": "svc-1", "url": "http://127.0.0.1:9000/tasks"}).encode()
    with structlog.testing.capture_logs() as logs:
        await mpub_binary(broker, NSQ.service_topic, [body])
        await async_wait_for(lambda: ingestion.services.counters.stored == 1)
    (line,) = events(logs, "service_registered")
    assert (line["service_id"], line["url"]) == ("svc-1", "http://127.0.0.1:9000/tasks")


@contextlib.contextmanager
def time_zone(name: str) -> Iterator[None]:
    """The process's local time zone, for the block."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


async def test_a_dead_letter_records_the_node_and_the_right_time_in_any_time_zone(
    store: Store, broker: Broker
) -> None:
    """A daemon on a machine set to local time still records absolute times."""
    settings = NsqSettings(heartbeat_flush_interval=0.02, dead_letter_ttl_days=2)
    with time_zone("Asia/Tokyo"):
        async with running_ingestion(store, broker, settings, node="node-7"):
            before = datetime.now(UTC)
            await mpub_binary(broker, NSQ.service_topic, [b"not json"])
            letter = await async_wait_for(lambda: store.dead_letters.find_one({}))
            after = datetime.now(UTC)
    assert letter["node"] == "node-7"
    assert before - timedelta(seconds=1) <= letter["received_at"] <= after + timedelta(seconds=1)
    assert letter["expires_at"] - letter["received_at"] == timedelta(days=2)


@pytest.mark.parametrize(
    ("compression", "negotiated"),
    [("snappy", "snappy"), ("deflate", "deflate (level 6)"), ("none", "none")],
)
async def test_the_readers_ask_for_the_configured_compression(
    store: Store, broker: Broker, compression: str, negotiated: str
) -> None:
    """``[nsq] compression`` reaches pynsq (through the real broker, which grants each): the
    connection is compressed as configured and messages still arrive."""
    settings = NsqSettings(compression=compression, heartbeat_flush_interval=0.02)  # type: ignore[arg-type]
    body = json.dumps({"id": "svc-z", "url": "http://127.0.0.1:9000/tasks"}).encode()
    async with running_ingestion(store, broker, settings) as ingest:
        await mpub_binary(broker, NSQ.service_topic, [body])
        await async_wait_for(lambda: ingest.services.counters.stored == 1)
        connections = ingest.services.check()[1]["negotiated"]
    assert [c["compression"] for c in connections.values()] == [negotiated]
