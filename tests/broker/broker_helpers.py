"""Real clients for the broker tests: a raw V2 socket client, pynsq wrappers, HTTP, polling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nsq
import tornado.httpclient
from support import async_wait_for

from taskdash.nsq.broker import Broker
from taskdash.nsq.broker.protocol import (
    FRAME_ERROR,
    FRAME_MESSAGE,
    FRAME_RESPONSE,
    HEARTBEAT,
    MAGIC_V2,
)

WAIT = 10.0  # upper bound for anything the tests wait for; never asserted as a duration


async def eventually(predicate: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll until ``predicate()`` is truthy; fail the test if it never is."""
    return await async_wait_for(predicate, timeout=timeout, every=0.02)


@dataclass
class Msg:
    """A decoded message frame."""

    timestamp: int
    attempts: int
    id: bytes
    body: bytes


class RawClient:
    """Speaks the V2 wire protocol byte by byte, to check exact frames and closes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, magic: bytes | None = MAGIC_V2) -> RawClient:
        """Open a socket and (by default) send the V2 magic."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        if magic is not None:
            await client.send(magic)
        return client

    async def send(self, data: bytes) -> None:
        """Raw bytes."""
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: str | bytes, body: bytes | None = None) -> None:
        """A command line plus, optionally, a length-prefixed body."""
        raw = line.encode() if isinstance(line, str) else line
        data = raw + b"\n"
        if body is not None:
            data += struct.pack(">i", len(body)) + body
        await self.send(data)

    async def read_frame(self, timeout: float = WAIT) -> tuple[int, bytes]:
        """Next frame, heartbeats included."""
        async with asyncio.timeout(timeout):
            size, frame_type = struct.unpack(">ii", await self.reader.readexactly(8))
            return frame_type, await self.reader.readexactly(size - 4)

    async def frame(self, timeout: float = WAIT) -> tuple[int, bytes]:
        """Next frame that is not a heartbeat."""
        while True:
            frame = await self.read_frame(timeout)
            if frame != (FRAME_RESPONSE, HEARTBEAT):
                return frame

    async def response(self) -> bytes:
        """Next response frame (fails on an error or message frame)."""
        frame_type, data = await self.frame()
        assert frame_type == FRAME_RESPONSE, (frame_type, data)
        return data

    async def error(self) -> bytes:
        """Next error frame's data."""
        frame_type, data = await self.frame()
        assert frame_type == FRAME_ERROR, (frame_type, data)
        return data

    async def message(self, timeout: float = WAIT) -> Msg:
        """Next message frame, decoded."""
        frame_type, data = await self.frame(timeout)
        assert frame_type == FRAME_MESSAGE, (frame_type, data)
        timestamp, attempts = struct.unpack(">qH", data[:10])
        return Msg(timestamp, attempts, data[10:26], data[26:])

    async def no_frame(self, wait: float = 0.3) -> None:
        """Nothing but heartbeats arrives for ``wait`` seconds (a behaviour check, not timing)."""
        try:
            frame = await self.frame(timeout=wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame}")

    async def closed(self, timeout: float = WAIT) -> bool:
        """True once the broker closed the connection (remaining frames are skipped)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    async def identify(self, **fields: Any) -> dict[str, Any]:
        """IDENTIFY with feature negotiation; returns the broker's JSON."""
        body = {"feature_negotiation": True, **fields}
        await self.command("IDENTIFY", json.dumps(body).encode())
        return json.loads(await self.response())

    async def subscribe(
        self, topic: str, channel: str, rdy: int | None = None, **ident: Any
    ) -> None:
        """IDENTIFY (if asked), SUB, then optionally RDY."""
        if ident:
            await self.identify(**ident)
        await self.command(f"SUB {topic} {channel}")
        assert await self.response() == b"OK"
        if rdy is not None:
            await self.command(f"RDY {rdy}")

    async def pub(self, topic: str, body: bytes) -> None:
        """PUB and expect OK."""
        await self.command(f"PUB {topic}", body)
        assert await self.response() == b"OK"

    async def alive(self) -> bool:
        """The connection still works: a PUB is answered with OK."""
        await self.command("PUB alive_check", b"x")
        return await self.response() == b"OK"

    async def close(self) -> None:
        """Close our side."""
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def error_code(data: bytes) -> str:
    """``E_CODE description`` → ``E_CODE``."""
    return data.split(b" ", 1)[0].decode()


# --- pynsq --------------------------------------------------------------------------------------


def stop_reader(reader: nsq.Reader) -> None:
    """Close a started Reader for good (pynsq 0.9.1 reconnects after close(): #196, #261)."""
    reader.connect_to_nsqd = lambda *args, **kwargs: None
    if reader.query_periodic is not None:
        reader.query_periodic.start = lambda: None
    reader.query_lookupd = lambda *args, **kwargs: None
    if reader.redist_periodic is not None:  # close() before _run() raises AttributeError
        reader.close()


def stop_writer(writer: nsq.Writer) -> None:
    """Writers have no close(): drop connections and disable reconnects."""
    writer.connect_to_nsqd = lambda *args, **kwargs: None
    for conn in list(writer.conns.values()):
        conn.close()


async def writer_pub(writer: nsq.Writer, method: str, *args: Any) -> Any:
    """Publish and wait for the broker's answer (b'OK' or an nsq.Error)."""
    await eventually(lambda: writer.conns)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def callback(conn: Any, data: Any) -> None:
        if not done.done():
            done.set_result(data)

    getattr(writer, method)(*args, callback=callback)
    return await asyncio.wait_for(done, WAIT)


# --- HTTP ---------------------------------------------------------------------------------------


@dataclass
class HttpReply:
    """Status, headers and body of a real HTTP exchange."""

    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        """Body as JSON."""
        return json.loads(self.body)


async def http(
    port: int, path: str, method: str = "GET", body: bytes | None = None, **headers: str
) -> HttpReply:
    """One request with tornado's client; error statuses are returned, not raised."""
    client = tornado.httpclient.AsyncHTTPClient()
    request = tornado.httpclient.HTTPRequest(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        body=body,
        headers=headers or None,
        allow_nonstandard_methods=True,
        request_timeout=WAIT,
    )
    response = await client.fetch(request, raise_error=False)
    if response.code == 599:
        raise AssertionError(f"HTTP request failed: {response.error}")
    return HttpReply(response.code, response.body or b"", dict(response.headers))


async def stats(port: int, **params: str) -> dict[str, Any]:
    """``/stats?format=json`` as a dict."""
    query = "&".join(f"{k}={v}" for k, v in {"format": "json", **params}.items())
    reply = await http(port, f"/stats?{query}")
    assert reply.status == 200
    return reply.json()


def channel_stats(doc: dict[str, Any], topic: str, channel: str) -> dict[str, Any]:
    """One channel's entry from a stats document."""
    for entry in doc["topics"] or []:
        if entry["topic_name"] == topic:
            for ch in entry["channels"]:
                if ch["channel_name"] == channel:
                    return ch
    raise AssertionError(f"no channel {topic}/{channel} in stats")


# --- brokers in process -------------------------------------------------------------------------


@asynccontextmanager
async def running(data_dir: Path, **options: Any) -> AsyncIterator[tuple[Broker, list[RawClient]]]:
    """A broker on ``data_dir`` (``options`` as Broker takes them) plus a list whose clients
    are closed before it stops."""
    broker = Broker(tcp_port=0, http_port=0, lookupd_http_port=None, data_dir=data_dir, **options)
    await broker.start()
    clients: list[RawClient] = []
    try:
        yield broker, clients
    finally:
        for client in clients:
            await client.close()
        await broker.stop()


async def connect(broker: Broker, clients: list[RawClient]) -> RawClient:
    """A raw client to ``broker``, closed with the others at the end of :func:`running`."""
    client = await RawClient.connect(broker.tcp_port)
    clients.append(client)
    return client


def file_names(directory: Path) -> list[str]:
    """Sorted names in a directory (sync: tiny local reads)."""
    return sorted(p.name for p in directory.iterdir())
