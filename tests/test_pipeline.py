"""The Pipeline page's figures, from the real embedded broker and the real readers."""

from __future__ import annotations

import asyncio
import json

import pytest
from ingest_helpers import broker_fixture, http, ingestion_fixture, mpub_binary
from support import async_wait_for, free_port

from taskdash.nsq.announce import publish
from taskdash.nsq.broker import Broker
from taskdash.nsq.readers import Ingestion
from taskdash.settings import NsqSettings
from taskdash.store import Store, nodes
from taskdash.testing import Subscriber
from taskdash.web.pipeline import Pipeline, RateRing, node_rows, producer_addresses, topic_rows

pytestmark = pytest.mark.timeout(90)

# a second beat within a minute of a stored one is absorbed: no timing in the test
NSQ = NsqSettings(
    heartbeat_flush_interval=0.05,
    requeue_delay=0.1,
    requeue_delay_max=0.5,
    heartbeat_resolution=60.0,
)
broker = broker_fixture()
ingestion = ingestion_fixture(NSQ)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def service(i: int) -> bytes:
    return json.dumps(
        {"id": f"svc-{i}", "name": f"n{i}", "url": f"http://127.0.0.1:1/{i}"}
    ).encode()


async def pub(broker: Broker, topic: str, body: bytes) -> None:
    await asyncio.to_thread(publish, http(broker), topic, body)


def details(ingestion: Ingestion, topic: str) -> dict[str, int]:
    (consumer,) = [c for c in ingestion.consumers if c.topic == topic]
    return consumer.check()[1]


async def test_reader_counts_and_rates_over_the_windows(
    store: Store, broker: Broker, ingestion: Ingestion
) -> None:
    clock = Clock(1000.0)
    pipeline = Pipeline(readers=list(ingestion.consumers), clock=clock)
    pipeline.sample()
    await mpub_binary(broker, "taskdash.service", [service(1), service(2), service(3), b"{nope"])
    await async_wait_for(lambda: details(ingestion, "taskdash.service")["stored"] == 3)
    await async_wait_for(lambda: details(ingestion, "taskdash.service")["dead_lettered"] == 1)
    await pub(broker, "taskdash.heartbeat", b'{"id": "svc-1"}')
    await async_wait_for(lambda: details(ingestion, "taskdash.heartbeat")["stored"] == 1)
    await pub(broker, "taskdash.heartbeat", b'{"id": "svc-1"}')
    await async_wait_for(lambda: details(ingestion, "taskdash.heartbeat")["stored"] == 2)

    clock.now = 1030.0
    rows = {row["topic"]: row for row in pipeline.reader_rows()}
    services, beats = rows["taskdash.service"], rows["taskdash.heartbeat"]
    assert services["channel"] == "taskdash" and services["ready"] is True
    assert services["connections"] == 1 and services["in_flight"] == 0
    assert services["counts"] == {
        "received": 4, "stored": 3, "absorbed": 0, "requeued": 0, "dead_lettered": 1,
    }  # fmt: skip
    assert beats["counts"] == {
        "received": 2, "stored": 2, "absorbed": 1, "requeued": 0, "dead_lettered": 0,
    }  # fmt: skip
    # both windows reach back to the one sample, 30 s ago
    for window in (60, 300):
        rates = services["rates"][window]
        assert rates["span"] == 30.0
        assert rates["per_s"]["received"] == pytest.approx(4 / 30)
        assert rates["per_s"]["dead_lettered"] == pytest.approx(1 / 30)
    assert beats["rates"][60]["per_s"]["absorbed"] == pytest.approx(1 / 30)

    # 90 s later the sample is outside the minute, still inside five minutes
    clock.now = 1090.0
    services = pipeline.reader_rows()[0]
    assert services["rates"][60] is None
    assert services["rates"][300]["span"] == 90.0
    # a new sample: rates count from it (nothing happened since)
    pipeline.sample()
    clock.now = 1100.0
    services = pipeline.reader_rows()[0]
    assert services["rates"][60] == {"span": 10.0, "per_s": dict.fromkeys(services["counts"], 0)}


def test_rate_ring_edges() -> None:
    ring = RateRing(size=2)
    assert ring.rates("t", 10.0, {"received": 5}, 60) is None  # no sample at all
    ring.add(9.5, {"t": {"received": 0}})
    assert ring.rates("t", 10.0, {"received": 5}, 60) is None  # half a second: no rate
    assert ring.rates("other", 20.0, {"received": 5}, 60) is None  # topic not sampled
    assert ring.rates("t", 19.5, {"received": 5}, 60) == (10.0, {"received": 0.5})
    # a counter that went down (cannot happen in one process) never gives a negative rate
    ring.add(12.0, {"t": {"received": 9}})
    ring.add(14.0, {"t": {"received": 9}})  # the ring keeps two: 9.5 dropped out
    assert ring.rates("t", 22.0, {"received": 1}, 60) == (10.0, {"received": 0.0})


async def test_nsqd_stats_from_configured_and_lookupd_found_producers(
    store: Store, broker: Broker, ingestion: Ingestion
) -> None:
    await mpub_binary(broker, "taskdash.service", [service(1)])
    await async_wait_for(lambda: details(ingestion, "taskdash.service")["stored"] == 1)
    await mpub_binary(broker, "other", [b"a", b"b", b"c"])
    peek = await Subscriber.open(broker.tcp_port, "other", "peek", ready=1)
    try:
        await peek.take(1)  # one in flight to the subscriber, two queued
        lookupd = f"http://127.0.0.1:{broker.lookupd_http_port}"
        closed = f"http://127.0.0.1:{free_port()}"

        # found through the lookupd only
        pipeline = Pipeline(lookupd_http=[lookupd])
        (row,) = await pipeline.nsqd_rows()
        assert row["address"] == http(broker)
        topics = {t["name"]: t for t in row["topics"]}
        (channel,) = topics["other"]["channels"]
        assert channel["name"] == "peek"
        assert (channel["depth"], channel["in_flight_count"], channel["client_count"]) == (2, 1, 1)
        assert topics["other"]["message_count"] == 3
        (reader,) = topics["taskdash.service"]["channels"]
        assert (reader["name"], reader["depth"], reader["message_count"]) == ("taskdash", 0, 1)

        # configured and found: asked once; what cannot answer says why
        text = f"{lookupd}/ping?"  # answers 200 "OK": not a stats document
        pipeline = Pipeline(
            nsqd_http=[http(broker), closed, lookupd, text], lookupd_http=[lookupd, closed]
        )
        rows = await pipeline.nsqd_rows()
        assert [r["address"] for r in rows] == [closed, http(broker), closed, lookupd, text]
        assert rows[0]["error"].startswith("unreachable")  # the lookupd that is down
        assert "topics" in rows[1]
        assert rows[2]["error"].startswith("unreachable")
        assert rows[3]["error"] == "HTTP 404"  # a lookupd has no /stats
        assert rows[4]["error"] == "not JSON"
        await pipeline.stop()
        await pipeline.stop()
    finally:
        await peek.close()


def test_stats_documents_are_read_defensively() -> None:
    assert topic_rows(None) == [] and topic_rows({"topics": None}) == []
    assert topic_rows({"topics": [{"topic_name": "t", "channels": None}]}) == [
        {"name": "t", "depth": 0, "message_count": 0, "channels": []}
    ]
    assert producer_addresses({"producers": None}) == []
    found = producer_addresses(
        {
            "producers": [
                {"broadcast_address": "10.0.0.5", "http_port": 4151},
                {"broadcast_address": "fd00::1", "http_port": 4151},
                {"broadcast_address": "", "http_port": 4151},
                {"broadcast_address": "x", "http_port": "4151"},
                {"broadcast_address": "x", "http_port": 70000},
            ]
        }
    )
    assert found == ["http://10.0.0.5:4151", "http://[fd00::1]:4151"]


async def test_nodes_sharing_the_store(store: Store) -> None:
    await nodes.heartbeat(store, "me", 100_000)
    await nodes.heartbeat(store, "gone", 10_000)
    rows = await node_rows(store, node_id="me", now_ms=105_000, live_within_ms=30_000)
    assert rows == [
        {"id": "gone", "this": False, "live": False, "seen_at": 10_000, "started_at": 10_000},
        {"id": "me", "this": True, "live": True, "seen_at": 100_000, "started_at": 100_000},
    ]


async def test_the_sampler_runs_until_stopped(ingestion: Ingestion) -> None:
    pipeline = Pipeline(readers=list(ingestion.consumers), sample_every=0.01)
    await pipeline.start()
    await async_wait_for(lambda: len(pipeline.ring.samples) >= 2)
    await pipeline.stop()
    taken = len(pipeline.ring.samples)
    await asyncio.sleep(0.05)
    assert len(pipeline.ring.samples) == taken
    await pipeline.stop()
    assert pipeline.checker_view() is None and pipeline.fetcher_view() is None
