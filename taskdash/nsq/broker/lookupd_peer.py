"""The broker registering with nsqlookupd (``--lookupd-tcp-address``), as nsqd's lookup loop does.

Per lookupd address: connect, ``"  V1"``, IDENTIFY with this node's PeerInfo, then REGISTER each
topic (a topic with channels: each ``topic channel``); afterwards REGISTER/UNREGISTER as topics
and channels come and go, and PING every 15 s. A lost connection is made again (1 s, doubling
up to the ping interval) and everything is registered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from typing import Any

import structlog

from taskdash.nsq.broker.options import VERSION
from taskdash.nsq.broker.registry import Registry

log = structlog.get_logger("taskdash.nsq.broker")

MAGIC_V1 = b"  V1"
PING_INTERVAL = 15.0  # nsqd's lookup loop ticker
RECONNECT_FIRST = 1.0
_INT32 = struct.Struct(">i")
_MAX_RESPONSE = 5 * 1024 * 1024  # nsqd bounds lookupd answers by --max-body-size
_TIMEOUT = 5.0


class LookupdPeer:
    """One lookupd this broker registers with; commands go out one at a time, in order."""

    def __init__(self, address: str, registry: Registry, identity: dict[str, Any]) -> None:
        self.address = address
        self.registry = registry
        self.identity = identity
        self.connected = False
        self.info: dict[str, Any] = {}
        self._events: asyncio.Queue[bytes] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._close()

    def notify(self, line: bytes) -> None:
        """A REGISTER/UNREGISTER to send (dropped while disconnected: the next connection
        registers the whole state)."""
        if self.connected:
            self._events.put_nowait(line)

    async def _run(self) -> None:
        delay = RECONNECT_FIRST
        while True:
            try:
                await self._session()
            except (OSError, asyncio.IncompleteReadError, TimeoutError, LookupdRefused) as exc:
                event = "lookupd_connection_lost" if self.connected else "lookupd_unreachable"
                log.warning(event, lookupd=self.address, error=str(exc), retry_in=delay)
            if self.connected:
                delay = RECONNECT_FIRST  # it worked until now: try again soon
            self.connected = False
            self._close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, PING_INTERVAL)

    async def _session(self) -> None:
        host, _, port = self.address.rpartition(":")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host or "127.0.0.1", int(port)), _TIMEOUT
        )
        self._writer = writer
        writer.write(MAGIC_V1)
        body = json.dumps(self.identity, separators=(",", ":")).encode()
        answer = await self._command(reader, b"IDENTIFY\n" + _INT32.pack(len(body)) + body)
        try:
            self.info = json.loads(answer)
        except ValueError:
            raise LookupdRefused(f"IDENTIFY answered {answer[:80]!r}") from None
        self._events = asyncio.Queue()
        self.connected = True
        log.info("lookupd_connected", lookupd=self.address, info=self.info)
        for line in registrations(self.registry):
            await self._command(reader, line)
        while True:
            try:
                line = await asyncio.wait_for(self._events.get(), PING_INTERVAL)
            except TimeoutError:
                line = b"PING\n"
            await self._command(reader, line)

    async def _command(self, reader: asyncio.StreamReader, data: bytes) -> bytes:
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()
        (size,) = _INT32.unpack(await asyncio.wait_for(reader.readexactly(4), _TIMEOUT))
        if not 0 <= size <= _MAX_RESPONSE:
            raise LookupdRefused(f"answer size {size}")
        answer = await asyncio.wait_for(reader.readexactly(size), _TIMEOUT)
        if answer.startswith(b"E_"):
            raise LookupdRefused(answer.decode("utf-8", "replace"))
        return answer

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class LookupdRefused(Exception):
    """lookupd answered with an error (it closes the connection after one)."""


def registrations(registry: Registry) -> list[bytes]:
    """What nsqd registers on connect: each topic, or each of its channels."""
    lines = []
    for topic in list(registry.topics.values()):
        if topic.channels:
            lines += [
                b"REGISTER %s %s\n" % (topic.name.encode(), c.encode()) for c in topic.channels
            ]
        else:
            lines.append(b"REGISTER %s\n" % topic.name.encode())
    return lines


class LookupdPeers:
    """Every lookupd of a broker, fed by the registry's topic/channel events."""

    def __init__(
        self,
        addresses: list[str],
        registry: Registry,
        *,
        broadcast_address: str,
        tcp_port: int,
        http_port: int,
    ) -> None:
        identity = {
            "version": VERSION,
            "tcp_port": tcp_port,
            "http_port": http_port,
            "hostname": socket.gethostname(),
            "broadcast_address": broadcast_address,
        }
        self.peers = [LookupdPeer(address, registry, identity) for address in addresses]
        registry.listeners.append(self._changed)

    def start(self) -> None:
        for peer in self.peers:
            peer.start()

    async def stop(self) -> None:
        for peer in self.peers:
            await peer.stop()

    def _changed(self, registered: bool, topic: str, channel: str) -> None:
        verb = b"REGISTER" if registered else b"UNREGISTER"
        line = b"%s %s" % (verb, topic.encode())
        if channel:
            line += b" " + channel.encode()
        for peer in self.peers:
            peer.notify(line + b"\n")
