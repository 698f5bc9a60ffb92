"""``taskdash nsqlookupd``: nsqlookupd's TCP protocol for nsqd registrations, plus its HTTP API.

TCP, as nsqlookupd 1.3 speaks it: the client sends ``"  V1"``, then text command lines; every
answer is ``[int32 size][data]`` (no frame type). ``IDENTIFY`` + int32 length + JSON PeerInfo
(``broadcast_address``, ``tcp_port``, ``http_port``, ``version`` required) is answered with this
lookupd's own JSON; ``REGISTER topic [channel]``, ``UNREGISTER topic [channel]`` and ``PING``
with ``OK``. Every error (``E_INVALID``, ``E_BAD_BODY``, ``E_BAD_TOPIC``, ``E_BAD_CHANNEL``) is
sent as ``CODE description`` and closes the connection; a closed connection unregisters
everything its peer registered. A producer that has not pinged for
``inactive_producer_timeout`` is left out of every answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
from typing import Any

import structlog
import tornado.httpserver
import tornado.netutil

from taskdash.nsq.broker.http import HttpContext
from taskdash.nsq.broker.lookupd import Peer, RegistrationDB, hostname, lookupd_app
from taskdash.nsq.broker.options import VERSION, Options
from taskdash.nsq.broker.protocol import is_valid_name
from taskdash.nsq.broker.registry import Registry

log = structlog.get_logger("taskdash.nsq.lookupd")

MAGIC_V1 = b"  V1"
#: largest IDENTIFY body accepted (nsqlookupd has no bound; a PeerInfo is a few hundred bytes)
MAX_IDENTIFY_BODY = 1024 * 1024
_INT32 = struct.Struct(">i")
_LINE_LIMIT = 16384


class LookupError_(Exception):
    """A fatal client error: sent as ``CODE description``, then the connection closes."""

    def __init__(self, code: str, desc: str) -> None:
        super().__init__(f"{code} {desc}")
        self.data = f"{code} {desc}".encode()


def response(data: bytes) -> bytes:
    """nsqlookupd's SendResponse: size, then data."""
    return _INT32.pack(len(data)) + data


class LookupdServer:
    """The TCP side: one connection per nsqd, registrations into ``db``."""

    def __init__(self, db: RegistrationDB, broadcast_address: str) -> None:
        self.db = db
        self.broadcast_address = broadcast_address
        self.tcp_port = 0
        self.http_port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=_LINE_LIMIT, reuse_address=True
        )
        self.tcp_port = int(self._server.sockets[0].getsockname()[1])
        return self.tcp_port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._connections):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = _address(writer)
        self._connections.add(writer)
        peer: Peer | None = None
        try:
            magic = await reader.readexactly(4)
            if magic != MAGIC_V1:
                log.error("lookupd_bad_magic", client=address, magic=magic.decode("latin-1"))
                writer.write(response(b"E_BAD_PROTOCOL"))
                return
            while True:
                line = await reader.readline()
                if not line:
                    return
                params = line.strip().decode("utf-8", "replace").split(" ")
                try:
                    answer, peer = await self._execute(params, reader, peer, address)
                except LookupError_ as err:
                    log.error("lookupd_client_error", client=address, error=str(err))
                    writer.write(response(err.data))
                    return
                writer.write(response(answer))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        except ValueError:  # a line past the limit
            return
        finally:
            self._connections.discard(writer)
            if peer is not None:
                self._forget(peer, address)
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()

    async def _execute(
        self, params: list[str], reader: asyncio.StreamReader, peer: Peer | None, address: str
    ) -> tuple[bytes, Peer | None]:
        command = params[0]
        if command == "PING":
            if peer is not None:
                peer.last_update = time.monotonic()
            return b"OK", peer
        if command == "IDENTIFY":
            return await self._identify(reader, peer, address)
        if command in ("REGISTER", "UNREGISTER"):
            if peer is None:
                raise LookupError_("E_INVALID", "client must IDENTIFY")
            topic, channel = _topic_channel(command, params[1:])
            if command == "REGISTER":
                self._register(peer, topic, channel)
            else:
                self._unregister(peer, topic, channel)
            return b"OK", peer
        raise LookupError_("E_INVALID", f"invalid command {command}")

    async def _identify(
        self, reader: asyncio.StreamReader, peer: Peer | None, address: str
    ) -> tuple[bytes, Peer]:
        if peer is not None:
            raise LookupError_("E_INVALID", "cannot IDENTIFY again")
        try:
            (size,) = _INT32.unpack(await reader.readexactly(4))
        except asyncio.IncompleteReadError:
            raise LookupError_("E_BAD_BODY", "IDENTIFY failed to read body size") from None
        if not 0 < size <= MAX_IDENTIFY_BODY:
            raise LookupError_("E_BAD_BODY", f"IDENTIFY invalid body size {size}")
        try:
            body = await reader.readexactly(size)
        except asyncio.IncompleteReadError:
            raise LookupError_("E_BAD_BODY", "IDENTIFY failed to read body") from None
        info = _peer_info(body)
        if not (
            info["broadcast_address"] and info["tcp_port"] and info["http_port"] and info["version"]
        ):
            raise LookupError_("E_BAD_BODY", "IDENTIFY missing fields")
        new = Peer(id=address, remote_address=address, **info)
        log.info(
            "lookupd_producer_identified",
            client=address,
            broadcast_address=new.broadcast_address,
            tcp_port=new.tcp_port,
            http_port=new.http_port,
            version=new.version,
        )
        self.db.add_producer(("client", "", ""), new)
        reply = {
            "broadcast_address": self.broadcast_address,
            "hostname": hostname(),
            "http_port": self.http_port,
            "tcp_port": self.tcp_port,
            "version": VERSION,
        }
        return json.dumps(reply, separators=(",", ":")).encode(), new

    def _register(self, peer: Peer, topic: str, channel: str) -> None:
        if channel and self.db.add_producer(("channel", topic, channel), peer):
            log.info("lookupd_registered", client=peer.id, topic=topic, channel=channel)
        if self.db.add_producer(("topic", topic, ""), peer):
            log.info("lookupd_registered", client=peer.id, topic=topic)

    def _unregister(self, peer: Peer, topic: str, channel: str) -> None:
        if channel:
            key = ("channel", topic, channel)
            removed, left = self.db.remove_producer(key, peer.id)
            if removed:
                log.info("lookupd_unregistered", client=peer.id, topic=topic, channel=channel)
            if left == 0 and channel.endswith("#ephemeral"):
                self.db.remove_registration(key)
            return
        # a topic unregistration drops the peer's channels of it too
        for key in [k for k in self.db.registrations_of(peer.id) if k[:2] == ("channel", topic)]:
            self.db.remove_producer(key, peer.id)
        key = ("topic", topic, "")
        removed, left = self.db.remove_producer(key, peer.id)
        if removed:
            log.info("lookupd_unregistered", client=peer.id, topic=topic)
        if left == 0 and topic.endswith("#ephemeral"):
            self.db.remove_registration(key)

    def _forget(self, peer: Peer, address: str) -> None:
        """The connection ended: the producer is gone from every registration."""
        for key in self.db.registrations_of(peer.id):
            self.db.remove_producer(key, peer.id)
        log.info("lookupd_producer_gone", client=address)


def _address(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "unknown"


def _topic_channel(command: str, params: list[str]) -> tuple[str, str]:
    """nsqlookupd's getTopicChan."""
    if not params or params == [""]:
        raise LookupError_("E_INVALID", f"{command} insufficient number of params")
    topic = params[0]
    channel = params[1] if len(params) >= 2 else ""
    if not is_valid_name(topic):
        raise LookupError_("E_BAD_TOPIC", f"{command} topic name '{topic}' is not valid")
    if channel and not is_valid_name(channel):
        raise LookupError_("E_BAD_CHANNEL", f"{command} channel name '{channel}' is not valid")
    return topic, channel


def _peer_info(body: bytes) -> dict[str, Any]:
    """The PeerInfo fields of an IDENTIFY body, typed as Go would decode them."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise LookupError_("E_BAD_BODY", "IDENTIFY failed to decode JSON body") from None
    if not isinstance(doc, dict):
        raise LookupError_("E_BAD_BODY", "IDENTIFY failed to decode JSON body")
    info: dict[str, Any] = {}
    for name, kind in (
        ("hostname", str),
        ("broadcast_address", str),
        ("tcp_port", int),
        ("http_port", int),
        ("version", str),
    ):
        value = doc.get(name)
        if value is None:
            value = kind()
        if not isinstance(value, kind) or isinstance(value, bool):
            raise LookupError_("E_BAD_BODY", "IDENTIFY failed to decode JSON body")
        info[name] = value
    return info


class Lookupd:
    """``taskdash nsqlookupd``: the TCP registration protocol and the HTTP API."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        tcp_port: int = 4160,
        http_port: int = 4161,
        broadcast_address: str | None = None,
        inactive_producer_timeout: float = 300.0,
        tombstone_lifetime: float = 45.0,
        http_host: str | None = None,
    ) -> None:
        self.host = host
        self.http_host = http_host or host
        self.tcp_port = tcp_port
        self.http_port = http_port
        self.db = RegistrationDB(inactive_producer_timeout, tombstone_lifetime)
        self._tcp = LookupdServer(self.db, broadcast_address or hostname())
        self._http: tornado.httpserver.HTTPServer | None = None

    async def start(self) -> None:
        """Listen on both ports (0 picks a free one; the real ports are set afterwards)."""
        self.tcp_port = await self._tcp.start(self.host, self.tcp_port)
        ctx = HttpContext(
            registry=Registry(Options()),
            start_time=time.time(),
            broadcast_address=self._tcp.broadcast_address,
            host=self.http_host,
        )
        self._http = tornado.httpserver.HTTPServer(lookupd_app(ctx, self.db))
        try:
            sockets = tornado.netutil.bind_sockets(self.http_port, address=self.http_host)
        except OSError:
            await self._tcp.stop()
            raise
        self._http.add_sockets(sockets)
        self.http_port = int(sockets[0].getsockname()[1])
        self._tcp.http_port = self.http_port
        log.info(
            "lookupd_started", host=self.host, tcp_port=self.tcp_port, http_port=self.http_port
        )

    async def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
            with contextlib.suppress(Exception):
                await self._http.close_all_connections()
        await self._tcp.stop()
        log.info("lookupd_stopped", tcp_port=self.tcp_port)
