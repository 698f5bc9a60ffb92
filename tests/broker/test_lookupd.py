"""taskdash nsqlookupd in process: the V1 TCP protocol, the HTTP shapes, brokers registering."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from broker_helpers import RawClient, eventually, http

from taskdash.nsq.broker import Broker
from taskdash.nsq.broker.lookupd_tcp import Lookupd

PEER = {
    "broadcast_address": "node-1.internal",
    "hostname": "node-1",
    "tcp_port": 4150,
    "http_port": 4151,
    "version": "1.3.0",
}


@pytest.fixture
async def lookupd() -> AsyncIterator[Lookupd]:
    server = Lookupd(tcp_port=0, http_port=0, broadcast_address="lookupd.internal")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class V1Client:
    """nsqlookupd's TCP protocol byte by byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, magic: bytes = b"  V1") -> V1Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(magic)
        return cls(reader, writer)

    @property
    def address(self) -> str:
        host, port = self.writer.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    async def send(self, line: str, body: bytes | None = None) -> bytes:
        data = line.encode() + b"\n"
        if body is not None:
            data += struct.pack(">i", len(body)) + body
        self.writer.write(data)
        await self.writer.drain()
        return await self.answer()

    async def answer(self) -> bytes:
        async with asyncio.timeout(10):
            (size,) = struct.unpack(">i", await self.reader.readexactly(4))
            return await self.reader.readexactly(size)

    async def identify(self, **fields: Any) -> dict[str, Any]:
        return json.loads(await self.send("IDENTIFY", json.dumps(PEER | fields).encode()))

    async def closed(self) -> bool:
        async with asyncio.timeout(10):
            return await self.reader.read(1) == b""

    async def close(self) -> None:
        self.writer.close()


async def get(port: int, path: str) -> tuple[int, Any]:
    reply = await http(port, path)
    return reply.status, reply.json() if reply.body else None


async def test_identify_register_and_every_http_shape(lookupd: Lookupd) -> None:
    client = await V1Client.connect(lookupd.tcp_port)
    answer = await client.identify()
    assert answer == {
        "broadcast_address": "lookupd.internal",
        "hostname": socket.gethostname(),
        "http_port": lookupd.http_port,
        "tcp_port": lookupd.tcp_port,
        "version": "1.3.0",
    }
    assert list(answer) == sorted(answer)  # Go marshals a map with sorted keys
    assert await client.send("REGISTER orders billing") == b"OK"
    assert await client.send("REGISTER audit") == b"OK"
    assert await client.send("PING") == b"OK"
    peer = PEER | {"remote_address": client.address}
    port = lookupd.http_port
    assert await get(port, "/lookup?topic=orders") == (
        200,
        {"channels": ["billing"], "producers": [peer]},
    )
    assert list((await get(port, "/lookup?topic=orders"))[1]["producers"][0]) == [
        "remote_address",
        "hostname",
        "broadcast_address",
        "tcp_port",
        "http_port",
        "version",
    ]
    assert await get(port, "/topics") == (200, {"topics": ["audit", "orders"]})
    assert await get(port, "/channels?topic=orders") == (200, {"channels": ["billing"]})
    assert await get(port, "/channels?topic=none") == (200, {"channels": []})
    assert await get(port, "/nodes") == (
        200,
        {"producers": [peer | {"tombstones": [False, False], "topics": ["audit", "orders"]}]},
    )
    assert await get(port, "/info") == (200, {"version": "1.3.0"})
    assert (await http(port, "/ping")).body == b"OK"
    assert await get(port, "/lookup?topic=none") == (404, {"message": "TOPIC_NOT_FOUND"})
    assert await get(port, "/lookup") == (400, {"message": "MISSING_ARG_TOPIC"})
    assert await get(port, "/channels") == (400, {"message": "MISSING_ARG_TOPIC"})

    # a non-ephemeral channel stays registered without producers; an ephemeral one goes
    assert await client.send("REGISTER orders tmp#ephemeral") == b"OK"
    assert await client.send("UNREGISTER orders billing") == b"OK"
    assert await client.send("UNREGISTER orders tmp#ephemeral") == b"OK"
    assert await get(port, "/channels?topic=orders") == (200, {"channels": ["billing"]})

    # tombstoned: hidden from /lookup, flagged in /nodes
    node = "node-1.internal:4151"
    reply = await http(port, f"/topic/tombstone?topic=orders&node={node}", "POST", body=b"")
    assert reply.status == 200
    assert (await get(port, "/lookup?topic=orders"))[1]["producers"] == []
    [entry] = (await get(port, "/nodes"))[1]["producers"]
    assert entry["tombstones"] == [False, True]

    # the connection ends: the producer is gone everywhere, the topics stay known
    await client.close()
    await eventually(lambda: not lookupd.db.registrations_of(peer["remote_address"]))
    assert await get(port, "/lookup?topic=audit") == (200, {"channels": [], "producers": []})
    assert await get(port, "/nodes") == (200, {"producers": []})


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ([("FOO", None)], b"E_INVALID invalid command FOO"),
        ([("REGISTER t", None)], b"E_INVALID client must IDENTIFY"),
        ([("IDENTIFY", b"{not json")], b"E_BAD_BODY IDENTIFY failed to decode JSON body"),
        (
            [("IDENTIFY", b'{"tcp_port": "4150"}')],
            b"E_BAD_BODY IDENTIFY failed to decode JSON body",
        ),
        ([("IDENTIFY", b'{"broadcast_address": "h"}')], b"E_BAD_BODY IDENTIFY missing fields"),
        ([("IDENTIFY", b"")], b"E_BAD_BODY IDENTIFY invalid body size 0"),
        (
            [("IDENTIFY", json.dumps(PEER).encode()), ("IDENTIFY", json.dumps(PEER).encode())],
            b"E_INVALID cannot IDENTIFY again",
        ),
        (
            [("IDENTIFY", json.dumps(PEER).encode()), ("REGISTER", None)],
            b"E_INVALID REGISTER insufficient number of params",
        ),
        (
            [("IDENTIFY", json.dumps(PEER).encode()), ("REGISTER bad!topic", None)],
            b"E_BAD_TOPIC REGISTER topic name 'bad!topic' is not valid",
        ),
        (
            [("IDENTIFY", json.dumps(PEER).encode()), ("UNREGISTER t bad!ch", None)],
            b"E_BAD_CHANNEL UNREGISTER channel name 'bad!ch' is not valid",
        ),
    ],
)
async def test_errors_are_answered_then_the_connection_closes(
    lookupd: Lookupd, lines: list[tuple[str, bytes | None]], error: bytes
) -> None:
    client = await V1Client.connect(lookupd.tcp_port)
    *before, (line, body) = lines
    for first, first_body in before:
        assert not (await client.send(first, first_body)).startswith(b"E_")
    assert await client.send(line, body) == error
    assert await client.closed()


async def test_a_bad_magic_is_refused(lookupd: Lookupd) -> None:
    client = await V1Client.connect(lookupd.tcp_port, magic=b"  V2")
    assert await client.answer() == b"E_BAD_PROTOCOL"
    assert await client.closed()


async def test_a_producer_silent_past_the_timeout_is_left_out_until_it_pings() -> None:
    server = Lookupd(tcp_port=0, http_port=0, inactive_producer_timeout=0.3)
    await server.start()
    try:
        client = await V1Client.connect(server.tcp_port)
        await client.identify()
        await client.send("REGISTER quiet")

        async def producers() -> list[Any]:
            return (await get(server.http_port, "/lookup?topic=quiet"))[1]["producers"]

        assert len(await producers()) == 1
        await eventually(lambda: _empty(producers()))  # no PING for longer than 0.3 s
        assert (await get(server.http_port, "/nodes"))[1]["producers"] == []
        assert await client.send("PING") == b"OK"
        assert len(await producers()) == 1
        await client.close()
    finally:
        await server.stop()


async def _empty(result: Any) -> bool:
    return not await result


async def test_a_broker_registers_its_topics_and_channels_as_nsqd_does(lookupd: Lookupd) -> None:
    broker = Broker(
        tcp_port=0,
        http_port=0,
        lookupd_http_port=None,
        broadcast_address="broker-1.internal",
        lookupd_tcp_addresses=[f"127.0.0.1:{lookupd.tcp_port}"],
    )
    await broker.start()
    port = lookupd.http_port
    try:
        await eventually(lambda: _nodes(port))
        producer = await RawClient.connect(broker.tcp_port)
        await producer.pub("events", b"x")
        consumer = await RawClient.connect(broker.tcp_port)
        await consumer.subscribe("events", "readers", rdy=0)

        async def registered() -> bool:
            status, doc = await get(port, "/lookup?topic=events")
            return status == 200 and doc["channels"] == ["readers"] and len(doc["producers"]) == 1

        await eventually(registered)
        [peer] = (await get(port, "/lookup?topic=events"))[1]["producers"]
        assert (peer["broadcast_address"], peer["tcp_port"], peer["http_port"]) == (
            "broker-1.internal",
            broker.tcp_port,
            broker.http_port,
        )
        reply = await http(broker.http_port, "/topic/delete?topic=events", "POST")
        assert reply.status == 200

        async def unregistered() -> bool:
            doc = (await get(port, "/lookup?topic=events"))[1]
            return doc["producers"] == []

        await eventually(unregistered)
        await producer.close()
        await consumer.close()
    finally:
        await broker.stop()
    assert (await get(port, "/nodes"))[1]["producers"] == []  # the stop closed the connection


async def _nodes(port: int) -> bool:
    return bool((await get(port, "/nodes"))[1]["producers"])


async def test_a_broker_started_before_its_lookupd_registers_once_it_is_up() -> None:
    # the lookupd's port is held (bound, not listening: connections to it are refused) until
    # the lookupd starts, so nothing else takes it meanwhile, nor does the broker's own
    # outgoing connection pick it as its source port (a TCP self-connect)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    tcp_port = int(holder.getsockname()[1])
    broker = Broker(
        tcp_port=0,
        http_port=0,
        lookupd_http_port=None,
        lookupd_tcp_addresses=[f"127.0.0.1:{tcp_port}"],
    )
    await broker.start()
    broker.registry.get_topic("early").get_channel("ch")
    server = Lookupd(tcp_port=tcp_port, http_port=0)
    try:
        await asyncio.sleep(0.1)  # the first attempt has failed by now
        holder.close()
        await server.start()

        async def found() -> bool:
            status, doc = await get(server.http_port, "/lookup?topic=early")
            return status == 200 and doc["channels"] == ["ch"] and len(doc["producers"]) == 1

        await eventually(found)
    finally:
        holder.close()  # if the test failed before the lookupd started
        await broker.stop()
        await server.stop()
