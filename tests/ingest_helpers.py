"""Helpers for the reader tests: the real broker, the real readers, and a MongoDB to take away.

A module gets the fixtures by assignment (``broker = broker_fixture()``,
``ingestion = ingestion_fixture(NSQ)``): each module runs the readers with settings of its
own, and an imported fixture would be shadowed by the test arguments that use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nsq
import pytest
import requests
from support import NxServer, async_wait_for

from taskdash.models import HeartBeat, Model
from taskdash.nsq.broker import Broker
from taskdash.nsq.consumer import Apply, Consumer
from taskdash.nsq.readers import Ingestion
from taskdash.settings import NsqSettings
from taskdash.store import Store
from taskdash.store.deadletters import add_dead_letter

CHANNEL = "taskdash"


def fast_nsq(**overrides: Any) -> NsqSettings:
    """Reader settings for tests: quick flushes and requeues, every beat stored, 4 KiB bodies."""
    fast: dict[str, Any] = {
        "heartbeat_flush_interval": 0.02,
        "requeue_delay": 0.05,
        "requeue_delay_max": 0.2,
        "max_message_size": 4096,
        "heartbeat_resolution": 0.0,
    }
    return NsqSettings(**(fast | overrides))


def new_broker(tmp_path: Path) -> Broker:
    """An embedded broker on free loopback ports (started by the caller)."""
    return Broker(
        host="127.0.0.1", tcp_port=0, http_port=0, lookupd_http_port=0, data_dir=tmp_path / "nsq"
    )


@contextlib.asynccontextmanager
async def running_broker(tmp_path: Path) -> AsyncIterator[Broker]:
    """A started :func:`new_broker`, stopped (its queues saved) at the end of the block."""
    broker = new_broker(tmp_path)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def start_ingestion(
    store: Store, broker: Broker, settings: NsqSettings, *, node: str = "n1"
) -> Ingestion:
    """Both real readers (what the daemon runs) on ``broker``, writing to ``store``."""
    ingestion = Ingestion(
        store,
        settings,
        node_id=node,
        nsqd_tcp_addresses=[f"127.0.0.1:{broker.tcp_port}"],
        lookupd_http_addresses=[],
    )
    for consumer in ingestion.consumers:
        await consumer.start()
    return ingestion


async def stop_ingestion(ingestion: Ingestion) -> None:
    """Stop both readers, in the daemon's order; safe to call again."""
    for consumer in reversed(ingestion.consumers):
        await consumer.stop()


@contextlib.asynccontextmanager
async def running_ingestion(
    store: Store, broker: Broker, settings: NsqSettings, *, node: str = "n1"
) -> AsyncIterator[Ingestion]:
    """:func:`start_ingestion` for the block, then :func:`stop_ingestion`."""
    ingestion = await start_ingestion(store, broker, settings, node=node)
    try:
        yield ingestion
    finally:
        await stop_ingestion(ingestion)


def broker_fixture() -> Any:
    """A ``broker`` fixture: a :func:`running_broker` of the test's own."""

    @pytest.fixture
    async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
        async with running_broker(tmp_path) as started:
            yield started

    return broker


def ingestion_fixture(settings: NsqSettings) -> Any:
    """An ``ingestion`` fixture: both readers, with ``settings``, on the test's broker and store."""

    @pytest.fixture
    async def ingestion(store: Store, broker: Broker) -> AsyncIterator[Ingestion]:
        async with running_ingestion(store, broker, settings) as running:
            yield running

    return ingestion


@dataclass
class OwnMongo:
    """The readers on a MongoDB of their own, which the test may stop (an outage) and restart."""

    server: NxServer
    store: Store
    ingestion: Ingestion


@contextlib.asynccontextmanager
async def own_mongodb(
    tmp_path: Path, broker: Broker, settings: NsqSettings
) -> AsyncIterator[OwnMongo]:
    """Readers connected to ``broker``, writing to an nx-27017 the session's tests do not share.

    The store gives up on an unreachable server after 0.3 s, so an outage (``server.stop()``)
    shows as requeues at once; ``server.start()`` brings the same data back on the same port.
    """
    server = NxServer(tmp_path / "mongo")
    server.start()
    store = Store(server.uri, "taskdash", server_selection_timeout=0.3)
    try:
        await store.ensure_indexes()
        async with running_ingestion(store, broker, settings) as ingestion:
            for consumer in ingestion.consumers:
                await async_wait_for(lambda c=consumer: c.check()[1]["connections"] == 1)
            yield OwnMongo(server, store, ingestion)
    finally:
        await store.close()
        server.stop()


def http(broker: Broker) -> str:
    """The broker's nsqd HTTP address."""
    return f"http://127.0.0.1:{broker.http_port}"


def mpub_binary_now(broker: Broker, topic: str, bodies: list[bytes]) -> None:
    """Publish any bytes (newlines included) with nsqd's binary ``/mpub`` format; blocking."""
    payload = struct.pack(">I", len(bodies)) + b"".join(
        struct.pack(">I", len(b)) + b for b in bodies
    )
    resp = requests.post(
        f"{http(broker)}/mpub", params={"topic": topic, "binary": "true"}, data=payload, timeout=10
    )
    assert resp.status_code == 200, resp.text


async def mpub_binary(broker: Broker, topic: str, bodies: list[bytes]) -> None:
    """:func:`mpub_binary_now` from a coroutine."""
    await asyncio.to_thread(mpub_binary_now, broker, topic, bodies)


def channel_stats_now(broker: Broker, topic: str) -> dict[str, Any]:
    """The ``taskdash`` channel's stats as nsqd's ``/stats`` reports them; blocking."""
    stats = requests.get(f"{http(broker)}/stats?format=json", timeout=5).json()
    (t,) = [t for t in stats["topics"] if t["topic_name"] == topic]
    (c,) = [c for c in t["channels"] if c["channel_name"] == CHANNEL]
    return c


async def channel_stats(broker: Broker, topic: str) -> dict[str, Any]:
    """:func:`channel_stats_now` from a coroutine."""
    return await asyncio.to_thread(channel_stats_now, broker, topic)


async def answered(broker: Broker, topic: str) -> dict[str, Any] | None:
    """The channel's stats once nothing is queued or in flight (deferred ones may remain)."""
    stats = await channel_stats(broker, topic)
    return stats if stats["depth"] == 0 and stats["in_flight_count"] == 0 else None


async def drained(broker: Broker, topic: str) -> dict[str, Any] | None:
    """The channel's stats once nothing is queued, in flight or deferred."""
    stats = await answered(broker, topic)
    return stats if stats and stats["deferred_count"] == 0 else None


def nsq_log_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What pynsq's own catch-all logs when a handler lets an exception out."""
    texts = [r.getMessage() for r in caplog.records if r.name.startswith("nsq")]
    return [t for t in texts if "failed to handle_message" in t or "uncaught exception" in t]


def store_dead_letter(store: Store) -> Callable[..., Awaitable[None]]:
    """The real dead-letter write, as a consumer built by hand needs it."""

    async def dead_letter(topic: str, message: nsq.Message, reason: str, field: str | None) -> None:
        await add_dead_letter(
            store,
            topic=topic,
            msg_id=message.id.decode(),
            body=message.body,
            reason=reason,
            field=field,
            attempts=message.attempts,
            node="test",
            now=datetime.now(UTC),
        )

    return dead_letter


def heartbeat_consumer(
    broker: Broker | None,
    apply: Apply[HeartBeat],
    dead_letter: Callable[..., Awaitable[None]],
    *,
    address: str | None = None,
    model: type[Model] = HeartBeat,
    cls: type[Consumer[Any]] = Consumer,
    **options: Any,
) -> Consumer[Any]:
    """A consumer of the heartbeat topic with fast test timings; ``options`` override them."""
    settings: dict[str, Any] = {
        "max_in_flight": 50,
        "batch_size": 50,
        "flush_interval": 0.02,
        "max_message_size": 4096,
        "requeue_delay": 0.05,
        "requeue_delay_max": 0.2,
        **options,
    }
    target = address or f"127.0.0.1:{broker.tcp_port if broker else 0}"
    return cls(
        topic="taskdash.heartbeat",
        channel=CHANNEL,
        model=model,
        apply=apply,
        dead_letter=dead_letter,
        nsqd_tcp_addresses=[target],
        lookupd_http_addresses=[],
        **settings,
    )
