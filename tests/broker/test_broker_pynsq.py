"""The real pynsq Reader and Writer against the broker, as the daemon will use them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import nsq
import pytest
from broker_helpers import (
    channel_stats,
    eventually,
    http,
    stats,
    stop_reader,
    stop_writer,
    writer_pub,
)

from taskdash.nsq.broker import Broker

ReaderFactory = Callable[..., nsq.Reader]


def collector(
    into: list[Any], pick: Callable[[nsq.Message], Any] = lambda m: m.body
) -> Callable[[nsq.Message], bool]:
    """A handler that records each message (its body by default) and FINs it."""

    def handle(message: nsq.Message) -> bool:
        into.append(pick(message))
        return True

    return handle


@pytest.fixture
async def writer(broker: Broker) -> AsyncIterator[nsq.Writer]:
    """A connected pynsq Writer."""
    instance = nsq.Writer([f"127.0.0.1:{broker.tcp_port}"])
    await eventually(lambda: instance.conns)
    yield instance
    stop_writer(instance)


@pytest.fixture
async def make_reader(broker: Broker) -> AsyncIterator[ReaderFactory]:
    """Readers on ``broker``; requeue delay and backoff made small (defaults: 90 s, 128 s)."""
    readers: list[nsq.Reader] = []

    def build(
        topic: str, channel: str, handler: Callable[[nsq.Message], Any], **kw: Any
    ) -> nsq.Reader:
        kw.setdefault("nsqd_tcp_addresses", [f"127.0.0.1:{broker.tcp_port}"])
        kw.setdefault("requeue_delay", 0)
        kw.setdefault("max_in_flight", 10)
        kw.setdefault("max_backoff_duration", 1)  # backoff after a False stays ~30 ms
        reader = nsq.Reader(topic=topic, channel=channel, message_handler=handler, **kw)
        readers.append(reader)
        return reader

    yield build
    for reader in readers:
        stop_reader(reader)
    await asyncio.sleep(0)


async def test_pub_sub_round_trip(writer: nsq.Writer, make_reader: ReaderFactory) -> None:
    got: list[nsq.Message] = []
    make_reader("roundtrip", "ch", collector(got, lambda m: m))
    assert await writer_pub(writer, "pub", "roundtrip", b"hello") == b"OK"
    await eventually(lambda: got)
    assert (got[0].body, got[0].attempts) == (b"hello", 1)
    assert len(got[0].id) == 16


async def test_writer_mpub_and_dpub(writer: nsq.Writer, make_reader: ReaderFactory) -> None:
    got: list[bytes] = []
    make_reader("batches", "ch", collector(got))
    assert await writer_pub(writer, "mpub", "batches", [b"a", b"b", b"c"]) == b"OK"
    assert await writer_pub(writer, "dpub", "batches", 200, b"later") == b"OK"
    await eventually(lambda: len(got) == 4)
    assert got[:3] == [b"a", b"b", b"c"] and got[3] == b"later"


async def test_writer_sees_error_for_bad_topic(writer: nsq.Writer) -> None:
    result = await writer_pub(writer, "pub", "bad/topic", b"x")
    assert isinstance(result, nsq.Error)
    assert "E_BAD_TOPIC" in str(result)


def subscribers(broker: Broker, topic: str) -> dict[str, int]:
    """Consumers per channel of ``topic`` as the broker sees them."""
    found = broker.registry.topics.get(topic)
    return {name: len(ch.clients) for name, ch in found.channels.items()} if found else {}


async def test_two_channels_each_get_every_message(
    broker: Broker, writer: nsq.Writer, make_reader: ReaderFactory
) -> None:
    first: list[bytes] = []
    second: list[bytes] = []
    make_reader("fanout", "one", collector(first))
    make_reader("fanout", "two", collector(second))
    await eventually(lambda: subscribers(broker, "fanout") == {"one": 1, "two": 1})
    for i in range(5):
        await writer_pub(writer, "pub", "fanout", b"%d" % i)
    await eventually(lambda: len(first) == 5 and len(second) == 5)
    assert sorted(first) == sorted(second) == [b"%d" % i for i in range(5)]


async def test_two_readers_share_one_channel(
    broker: Broker, writer: nsq.Writer, make_reader: ReaderFactory
) -> None:
    seen: dict[str, list[bytes]] = {"a": [], "b": []}
    make_reader("shared", "workers", collector(seen["a"]), max_in_flight=1)
    make_reader("shared", "workers", collector(seen["b"]), max_in_flight=1)
    await eventually(lambda: subscribers(broker, "shared") == {"workers": 2})
    for i in range(30):
        await writer_pub(writer, "pub", "shared", b"%d" % i)
    await eventually(lambda: len(seen["a"]) + len(seen["b"]) == 30)
    assert sorted(seen["a"] + seen["b"]) == sorted(b"%d" % i for i in range(30))
    assert seen["a"] and seen["b"]


async def test_handler_false_requeues_with_more_attempts(
    writer: nsq.Writer, make_reader: ReaderFactory, broker: Broker
) -> None:
    attempts: list[int] = []

    def handler(message: nsq.Message) -> bool:
        attempts.append(message.attempts)
        return message.attempts >= 3

    make_reader("retry", "ch", handler, max_tries=0)
    await writer_pub(writer, "pub", "retry", b"flaky")
    await eventually(lambda: attempts == [1, 2, 3])
    ch = await eventually_channel(broker, "retry", "ch", lambda c: c["requeue_count"] == 2)
    assert ch["in_flight_count"] == 0 and ch["depth"] == 0


async def test_unanswered_message_times_out_and_returns(
    writer: nsq.Writer, make_reader: ReaderFactory, broker: Broker
) -> None:
    deliveries: list[int] = []

    def handler(message: nsq.Message) -> bool | None:
        deliveries.append(message.attempts)
        if message.attempts == 1:
            message.enable_async()  # hold it and never answer: the broker must time it out
            return None
        return True

    make_reader("slowpoke", "ch", handler, msg_timeout=1)  # pynsq takes seconds here
    await writer_pub(writer, "pub", "slowpoke", b"x")
    await eventually(lambda: deliveries == [1, 2])
    ch = await eventually_channel(broker, "slowpoke", "ch", lambda c: c["in_flight_count"] == 0)
    assert ch["timeout_count"] == 1


async def test_touch_from_pynsq_keeps_message(
    writer: nsq.Writer, make_reader: ReaderFactory, broker: Broker
) -> None:
    held: list[nsq.Message] = []

    def handler(message: nsq.Message) -> None:
        message.enable_async()
        held.append(message)

    make_reader("touchy", "ch", handler, msg_timeout=1)  # pynsq takes seconds here
    await writer_pub(writer, "pub", "touchy", b"x")
    await eventually(lambda: held)
    for _ in range(6):  # 1.5 s in all, touched every 0.25 s
        await asyncio.sleep(0.25)
        held[0].touch()
    held[0].finish()
    ch = await eventually_channel(broker, "touchy", "ch", lambda c: c["in_flight_count"] == 0)
    assert ch["timeout_count"] == 0 and len(held) == 1


async def test_reader_finds_broker_through_lookupd(
    broker: Broker, make_reader: ReaderFactory
) -> None:
    reply = await http(broker.http_port, "/pub?topic=discovered", "POST", b"found me")
    assert reply.status == 200
    got: list[bytes] = []
    make_reader(
        "discovered",
        "ch",
        collector(got),
        nsqd_tcp_addresses=None,
        lookupd_http_addresses=[f"http://127.0.0.1:{broker.lookupd_http_port}"],
        lookupd_poll_interval=1,
    )
    await eventually(lambda: got)
    assert got == [b"found me"]


async def eventually_channel(
    broker: Broker, topic: str, channel: str, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll /stats until the channel entry satisfies ``predicate``; return it."""
    found: dict[str, Any] = {}

    async def check() -> bool:
        found.update(channel_stats(await stats(broker.http_port), topic, channel))
        return predicate(found)

    deadline = asyncio.get_running_loop().time() + 10
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, found
        await asyncio.sleep(0.05)
    return found
