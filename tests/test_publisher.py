"""The status publisher against a real broker that goes away and comes back on the same port.

Events are produced as the daemon produces them (registrations, heartbeats, the real
:class:`~taskdash.checker.Checker` writing outboxes and ``service_events``); they are read back
from the broker with the V2 protocol, as any consumer of ``taskdash.service_status`` reads them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
import tornado.httpclient
from support import async_wait_for, free_port

from taskdash.checker import Checker
from taskdash.models import TaskService
from taskdash.nsq.broker import Broker
from taskdash.nsq.publisher import StatusPublisher, status_message
from taskdash.settings import CheckerSettings
from taskdash.store import Store
from taskdash.store.services import record_heartbeats, register_services
from taskdash.testing import Subscriber

TOPIC = "taskdash.service_status"
T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


class Nsqd:
    """An embedded broker that can be stopped and started again on the same ports and data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.broker: Broker | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def start(self) -> None:
        self.broker = Broker(
            tcp_port=self.tcp_port,
            http_port=self.http_port,
            lookupd_http_port=None,
            data_dir=self.data_dir,
        )
        await self.broker.start()

    async def stop(self) -> None:
        if self.broker is not None:
            await self.broker.stop()
            self.broker = None


@pytest.fixture
async def nsqd(tmp_path: Path) -> AsyncIterator[Nsqd]:
    server = Nsqd(tmp_path / "nsq")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def channel_counts(nsqd: Nsqd, channel: str) -> dict[str, int]:
    """The channel's queued and in-flight counts from the broker's own /stats."""
    client = tornado.httpclient.AsyncHTTPClient()
    reply = await client.fetch(f"{nsqd.http}/stats?format=json&topic={TOPIC}")
    for topic in json.loads(reply.body)["topics"] or []:
        for entry in topic["channels"]:
            if entry["channel_name"] == channel:
                return {"depth": entry["depth"], "in_flight": entry["in_flight_count"]}
    return {"depth": 0, "in_flight": 0}


async def read_all(nsqd: Nsqd, expected: int, channel: str = "check") -> list[dict[str, Any]]:
    """Subscribe, take ``expected`` messages (not FINished), and prove there is no other one."""
    subscriber = await Subscriber.open(nsqd.tcp_port, TOPIC, channel)
    try:
        bodies = await subscriber.take_json(expected)
        # every message of the topic is now in flight to us, none is left queued or elsewhere
        assert await channel_counts(nsqd, channel) == {"depth": 0, "in_flight": expected}
        return bodies
    finally:
        await subscriber.close()


class Clock:
    """The checker's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def go_online(store: Store, checker: Checker, clock: Clock, ids: list[str]) -> list[Any]:
    """Register ``ids`` and beat once: the checker records unknown -> online for each."""
    clock.now += timedelta(seconds=1)
    await register_services(store, [TaskService(id=i, url=f"http://h/{i}") for i in ids], clock.now)
    await record_heartbeats(store, {sid: (1, clock.now) for sid in ids})
    result = await checker.check_once()
    assert sorted(c["service_id"] for c in result.changes) == sorted(ids)
    return result.changes


async def expected_bodies(store: Store) -> list[dict[str, Any]]:
    """What consumers must receive: every recorded event, as :func:`status_message` renders it."""
    events = [e async for e in store.service_events.find({}).sort("at", 1)]
    return [json.loads(status_message(e)) for e in events]


def key(body: dict[str, Any]) -> tuple[str, str, str, str]:
    return (body["id"], body["from"], body["to"], body["at"])


async def test_events_wait_out_a_broker_outage_and_go_out_once_when_it_is_back(
    store: Store, nsqd: Nsqd
) -> None:
    clock = Clock()
    checker = Checker(store, CheckerSettings(), node_id="n1", clock=clock)
    publisher = StatusPublisher(store, nsqd_http=nsqd.http, topic=TOPIC)

    await go_online(store, checker, clock, ["a1", "a2", "a3"])
    assert await publisher.publish_pending() == 3

    await nsqd.stop()
    await go_online(store, checker, clock, ["b1", "b2"])
    with pytest.raises(OSError):  # connection refused: nothing listens on the port
        await publisher.publish_pending()
    assert await store.service_events.count_documents({"published": False}) == 2

    await nsqd.start()  # same ports, same data directory
    # the batch that failed goes out as soon as the broker answers, not after its claim expires
    assert await publisher.publish_pending() == 2
    assert await store.service_events.count_documents({"published": False}) == 0
    assert await publisher.publish_pending() == 0

    received = await read_all(nsqd, 5)
    assert sorted(map(key, received)) == sorted(map(key, await expected_bodies(store)))
    assert sorted(received, key=key) == sorted(await expected_bodies(store), key=key)
    assert {b["node"] for b in received} == {"n1"}
    assert {b["reason"] for b in received} == {"first heartbeat"}


async def test_the_running_publisher_reports_the_outage_and_resumes(
    store: Store, nsqd: Nsqd
) -> None:
    clock = Clock()
    publisher = StatusPublisher(store, nsqd_http=nsqd.http, topic=TOPIC, interval=0.05)
    checker = Checker(store, CheckerSettings(), node_id="n1", clock=clock, on_change=publisher.kick)
    await publisher.start()
    try:
        await go_online(store, checker, clock, ["a1"])
        await async_wait_for(lambda: publisher.published == 1)

        await nsqd.stop()
        await go_online(store, checker, clock, ["b1", "b2"])
        await async_wait_for(lambda: "error" in publisher.check()[1])
        ready, details = publisher.check()
        assert ready  # a broker outage delays events; it does not make the daemon unready
        assert details["published"] == 1

        await nsqd.start()
        await async_wait_for(lambda: publisher.published == 3)
        await async_wait_for(lambda: "error" not in publisher.check()[1])
    finally:
        await publisher.stop()
    received = await read_all(nsqd, 3)
    assert sorted(received, key=key) == sorted(await expected_bodies(store), key=key)


async def test_two_publishers_on_one_store_send_each_event_once(store: Store, nsqd: Nsqd) -> None:
    clock = Clock()
    checker = Checker(store, CheckerSettings(), node_id="n1", clock=clock)
    first = StatusPublisher(store, nsqd_http=nsqd.http, topic=TOPIC, batch=7)
    second = StatusPublisher(store, nsqd_http=nsqd.http, topic=TOPIC, batch=7)
    await go_online(store, checker, clock, [f"s{i:02}" for i in range(40)])

    sent = await asyncio.gather(first.publish_pending(), second.publish_pending())
    assert sum(sent) == 40
    received = await read_all(nsqd, 40)
    assert sorted(received, key=key) == sorted(await expected_bodies(store), key=key)


@pytest.mark.parametrize(
    ("event", "body"),
    [
        (
            {"service_id": "s1", "from": "online", "to": "stale", "reason": "no heartbeat"}
            | {"at": T0, "node": "n1"},
            b'{"id": "s1", "from": "online", "to": "stale", "at": "2026-11-26T09:00:00+00:00", '
            b'"reason": "no heartbeat", "node": "n1"}',
        ),
        (  # UTF-8 as is, not \u escapes: the same text in fewer bytes, as a Go publisher sends
            {"service_id": "sé", "from": "unknown", "to": "online", "reason": "first heartbeat"}
            | {"at": T0 + timedelta(milliseconds=5), "node": "nœud-1"},
            '{"id": "sé", "from": "unknown", "to": "online", "at": '
            '"2026-11-26T09:00:00.005000+00:00", "reason": "first heartbeat", "node": "nœud-1"}'
            "".encode(),
        ),
    ],
)
def test_status_message_is_the_documented_json(event: dict[str, Any], body: bytes) -> None:
    assert status_message(event) == body


async def test_an_nsqd_address_with_a_trailing_slash_works(store: Store, nsqd: Nsqd) -> None:
    clock = Clock()
    checker = Checker(store, CheckerSettings(), node_id="n1", clock=clock)
    publisher = StatusPublisher(store, nsqd_http=nsqd.http + "/", topic=TOPIC)
    assert publisher.check() == (True, {"published": 0})  # no error before the first attempt
    await go_online(store, checker, clock, ["a1"])
    assert await publisher.publish_pending() == 1
    assert [b["id"] for b in await read_all(nsqd, 1)] == ["a1"]


async def test_a_failed_batch_is_resent_only_while_its_claim_covers_a_request(
    store: Store, nsqd: Nsqd
) -> None:
    """Past that point another daemon may claim it: it waits for the claim to end instead."""
    clock = Clock()
    checker = Checker(store, CheckerSettings(), node_id="n1", clock=clock)
    publisher = StatusPublisher(store, nsqd_http=nsqd.http, topic=TOPIC, lease=30, clock=clock)
    await go_online(store, checker, clock, ["a1", "a2"])
    await nsqd.stop()
    with pytest.raises(OSError):
        await publisher.publish_pending()  # claimed until clock + 30 s, then the send failed
    await nsqd.start()

    clock.now += timedelta(seconds=30 - publisher.request_timeout)  # 10 s of claim left: too few
    assert await publisher.publish_pending() == 0  # not resent, and still claimed: nothing to do
    clock.now += timedelta(seconds=publisher.request_timeout + 1)  # the claim has ended
    assert await publisher.publish_pending() == 2
    assert await publisher.publish_pending() == 0
    received = await read_all(nsqd, 2)
    assert sorted(received, key=key) == sorted(await expected_bodies(store), key=key)


async def test_an_outage_is_logged_once_with_its_error_and_its_end_once(
    store: Store, nsqd: Nsqd
) -> None:
    clock = Clock()
    publisher = StatusPublisher(store, nsqd_http=nsqd.http, topic=TOPIC, interval=0.05)
    checker = Checker(store, CheckerSettings(), node_id="n1", clock=clock, on_change=publisher.kick)
    await nsqd.stop()
    with structlog.testing.capture_logs() as logs:
        await publisher.start()
        try:
            await go_online(store, checker, clock, ["a1"])
            await async_wait_for(lambda: "error" in publisher.check()[1])
            assert "refused" in publisher.check()[1]["error"].lower()
            for _ in range(3):  # more failed attempts: still one line
                await publisher.kick()
                await asyncio.sleep(0.1)
            await nsqd.start()
            await async_wait_for(lambda: publisher.published == 1)
        finally:
            await publisher.stop()
    mine = [e for e in logs if e["event"].startswith("status_publish")]
    assert [e["event"] for e in mine] == ["status_publish_failed", "status_publishing_resumed"]
    assert "refused" in mine[0]["error"].lower()
    assert mine[0]["url"] == f"{nsqd.http}/mpub?topic={TOPIC}"
    assert publisher.check() == (True, {"published": 1})
