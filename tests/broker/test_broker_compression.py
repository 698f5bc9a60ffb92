"""deflate and snappy as nsqd negotiates them, with pynsq's own compressed sockets on the other end.

Also over TLS (compression inside the encrypted stream, as nsqd stacks them), with bodies
larger than a read, and with a corrupt stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import nsq
import pytest
import snappy
from broker_helpers import RawClient, error_code, eventually, stats, stop_reader, stop_writer
from nsq_tls import Pki

from taskdash.nsq.broker import Broker
from taskdash.nsq.broker.options import SecurityOptions
from taskdash.nsq.broker.protocol import FRAME_RESPONSE, decode_frame
from taskdash.nsq.broker.wire import _INFLATE_STEP, Deflate, WireReader
from taskdash.nsq.reader import ClosableReader
from taskdash.nsq.tls import client_context

BrokerFactory = Callable[..., Any]


@pytest.fixture
async def clients() -> AsyncIterator[list[Any]]:
    """pynsq readers and writers to stop at the end."""
    made: list[Any] = []
    yield made
    for client in made:
        if isinstance(client, nsq.Reader):
            stop_reader(client)
        else:
            stop_writer(client)


async def round_trip(
    broker: Broker,
    made: list[Any],
    topic: str,
    bodies: list[bytes],
    writer_tls: dict[str, Any] | None = None,
    **conn: Any,
) -> ClosableReader:
    """A compressed pynsq Writer publishes ``bodies``; a compressed reader gets them all."""
    got: list[bytes] = []

    def handle(message: nsq.Message) -> bool:
        got.append(message.body)
        return True

    address = [f"127.0.0.1:{broker.tcp_port}"]
    reader = ClosableReader(
        topic=topic, channel="ch", message_handler=handle, nsqd_tcp_addresses=address,
        max_in_flight=50, **conn,
    )  # fmt: skip
    made.append(reader)
    writer_conn = {k: v for k, v in conn.items() if k != "tls_context"}
    if writer_tls is not None:
        writer_conn["tls_options"] = writer_tls
    writer = nsq.Writer(address, **writer_conn)
    made.append(writer)
    await eventually(lambda: writer.conns and reader.conns)
    answers: list[Any] = []
    for body in bodies[:-2]:
        writer.pub(topic, body, callback=lambda conn, data: answers.append(data))
    writer.mpub(topic, bodies[-2:], callback=lambda conn, data: answers.append(data))
    await eventually(lambda: len(got) == len(bodies))
    assert sorted(got) == sorted(bodies)
    await eventually(lambda: len(answers) == len(bodies) - 1)
    assert set(answers) == {b"OK"}
    return reader


def bodies(count: int = 20, big: int = 0) -> list[bytes]:
    """JSON-like bodies (compressible), and optionally a few large random ones."""
    out = [json.dumps({"id": f"svc-{i}", "reserved": "x" * i}).encode() for i in range(count)]
    out += [os.urandom(big) for _ in range(3)] if big else []
    return out


@pytest.mark.parametrize("level", [1, 6])
async def test_pynsq_deflate_round_trip(
    make_broker: BrokerFactory, clients: list[Any], level: int
) -> None:
    broker = await make_broker()
    reader = await round_trip(
        broker, clients, "deflated", bodies(), deflate=True, deflate_level=level
    )
    report = reader.negotiation.report()[f"127.0.0.1:{broker.tcp_port}"]
    assert report["compression"] == f"deflate (level {level})"
    producers = (await stats(broker.http_port))["producers"]
    assert producers[0]["deflate"] is True and producers[0]["snappy"] is False


async def test_pynsq_snappy_round_trip(make_broker: BrokerFactory, clients: list[Any]) -> None:
    broker = await make_broker()
    reader = await round_trip(broker, clients, "snapped", bodies(), snappy=True)
    report = reader.negotiation.report()[f"127.0.0.1:{broker.tcp_port}"]
    assert report["compression"] == "snappy"
    assert (await stats(broker.http_port))["producers"][0]["snappy"] is True


@pytest.mark.parametrize("feature", ["deflate", "snappy"])
async def test_large_bodies_cross_compressed_streams(
    make_broker: BrokerFactory, clients: list[Any], feature: str
) -> None:
    """Bodies of 200 KiB (random, so incompressible): many reads and chunks each."""
    broker = await make_broker()
    await round_trip(broker, clients, f"big_{feature}", bodies(5, big=200_000), **{feature: True})


@pytest.mark.parametrize("feature", ["deflate", "snappy"])
async def test_compression_inside_tls(
    make_broker: BrokerFactory, clients: list[Any], pki: Pki, feature: str
) -> None:
    broker = await make_broker(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    reader = await round_trip(
        broker,
        clients,
        f"tls_{feature}",
        bodies(),
        writer_tls={"ssl_version": ssl.PROTOCOL_TLS_CLIENT, "ca_certs": str(pki.ca)},
        tls_v1=True,
        tls_context=client_context(ca_file=str(pki.ca)),
        **{feature: True},
    )
    report = reader.negotiation.report()[f"127.0.0.1:{broker.tcp_port}"]
    assert report["tls"] is True and report["compression"].startswith(feature)


# --- negotiation, as nsqd answers it -----------------------------------------------------------


async def test_both_compressions_at_once_is_refused(make_broker: BrokerFactory) -> None:
    broker = await make_broker()
    client = await RawClient.connect(broker.tcp_port)
    try:
        await client.command("IDENTIFY", json.dumps(
            {"feature_negotiation": True, "deflate": True, "snappy": True}).encode())  # fmt: skip
        error = await client.error()
        assert error == b"E_IDENTIFY_FAILED cannot enable both deflate and snappy compression"
        assert await client.closed()
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("asked", "max_level", "granted"),
    [(0, 6, 6), (-3, 6, 6), (1, 6, 1), (9, 6, 6), (9, 9, 9), (3, 2, 2)],
)
async def test_deflate_level_bounds(
    make_broker: BrokerFactory, asked: int, max_level: int, granted: int
) -> None:
    broker = await make_broker(max_deflate_level=max_level)
    client = await RawClient.connect(broker.tcp_port)
    try:
        doc = await client.identify(deflate=True, deflate_level=asked)
        assert (doc["deflate"], doc["deflate_level"], doc["max_deflate_level"]) == (
            True,
            granted,
            max_level,
        )
    finally:
        await client.close()


async def test_compression_switched_off_is_not_granted(make_broker: BrokerFactory) -> None:
    broker = await make_broker(deflate=False, snappy=False)
    client = await RawClient.connect(broker.tcp_port)
    try:
        doc = await client.identify(deflate=True, deflate_level=3)
        assert (doc["deflate"], doc["deflate_level"], doc["snappy"]) == (False, 6, False)
        assert await client.alive()  # still plain
    finally:
        await client.close()


def test_max_deflate_level_outside_1_9_is_refused() -> None:
    for level in (0, 10):
        with pytest.raises(ValueError, match=r"--max-deflate-level must be \[1,9\]"):
            SecurityOptions(max_deflate_level=level)


class DeflateRaw:
    """A raw client's side of a deflate stream."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.out = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        self.inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await self.client.send(self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH))

    async def frame(self) -> tuple[int, bytes]:
        while True:
            frame = decode_frame(self.buffer)
            if frame is not None:
                size = struct.unpack(">i", self.buffer[:4])[0]
                self.buffer = self.buffer[4 + size :]
                return frame
            chunk = await asyncio.wait_for(self.client.reader.read(65536), 10)
            assert chunk, "closed"
            self.buffer += self.inflate.decompress(chunk)


async def test_deflate_bytes_on_the_wire(make_broker: BrokerFactory) -> None:
    """After the JSON answer, nsqd's OK is already compressed, and so is every later frame."""
    broker = await make_broker()
    client = await RawClient.connect(broker.tcp_port)
    try:
        doc = await client.identify(deflate=True, deflate_level=1)
        assert doc["deflate"] is True
        raw = await asyncio.wait_for(client.reader.read(65536), 10)
        assert raw != b"\x00\x00\x00\x06\x00\x00\x00\x00OK"  # not in clear
        side = DeflateRaw(client)
        side.buffer = side.inflate.decompress(raw)
        assert await side.frame() == (FRAME_RESPONSE, b"OK")
        await side.send(b"PUB deflated_raw\n" + struct.pack(">i", 5) + b"hello")
        assert await side.frame() == (FRAME_RESPONSE, b"OK")
    finally:
        await client.close()


async def test_a_corrupt_compressed_stream_drops_the_client(make_broker: BrokerFactory) -> None:
    broker = await make_broker()
    client = await RawClient.connect(broker.tcp_port)
    try:
        await client.identify(snappy=True)
        await client.send(b"\xff\x06\x00\x00sNaPpY" + b"\x00\x10\x00\x00" + b"garbage!" * 2)
        assert await client.closed()
    finally:
        await client.close()
    other = await RawClient.connect(broker.tcp_port)  # the broker is fine
    try:
        assert await other.alive()
    finally:
        await other.close()


async def test_a_deflate_bomb_is_inflated_step_by_step(make_broker: BrokerFactory) -> None:
    """A PUB claiming 64 MiB of zeros, sent deflated as ~64 KiB: refused by its size, the
    connection dropped, the broker unharmed (the memory bound: the test below)."""
    broker = await make_broker()
    client = await RawClient.connect(broker.tcp_port)
    try:
        await client.identify(deflate=True)
        side = DeflateRaw(client)
        await client.reader.read(65536)  # the compressed OK
        header = b"PUB bomb\n" + struct.pack(">i", 64 << 20)
        zeros = side.out.compress(header + bytes(64 << 20)) + side.out.flush(zlib.Z_SYNC_FLUSH)
        assert len(zeros) < 200_000
        await client.send(zeros)
        assert await client.closed()
    finally:
        await client.close()
    assert snappy  # the extra is installed for the tests
    assert error_code(b"E_BAD_MESSAGE x") == "E_BAD_MESSAGE"


async def test_wire_reader_inflates_only_what_is_read() -> None:
    """The reader of a deflate connection, fed 64 MiB of zeros in 64 KiB: at no point holds
    more than what was asked for plus one step."""
    reader = WireReader(16384, asyncio.get_running_loop())
    reader.decompress_with(Deflate(6))
    sender = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = sender.compress(bytes(64 << 20)) + sender.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 100_000
    reader.feed_data(bomb)
    held = len(reader._buffer)
    assert 0 < held <= _INFLATE_STEP
    assert await reader.readexactly(1 << 20) == bytes(1 << 20)
    assert len(reader._buffer) <= _INFLATE_STEP
    total = 1 << 20
    while total < 64 << 20:
        total += len(await reader.read(1 << 20))
        assert len(reader._buffer) <= _INFLATE_STEP
    assert total == 64 << 20
    reader.feed_eof()
    assert await reader.read(10) == b""
