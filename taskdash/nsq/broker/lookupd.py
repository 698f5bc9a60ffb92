"""nsqlookupd's HTTP API (v1.3.0 shapes): for the embedded broker alone, or a real registry.

Two sources answer the same handlers: :class:`SingleBroker` (the embedded broker is the one
producer of every topic it has) and :class:`RegistrationDB` (``taskdash nsqlookupd``: what
nsqd nodes registered over the TCP protocol, see ``lookupd_tcp.py``).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import tornado.web

from taskdash.nsq.broker.http import ApiError, BaseHandler, HttpContext, PingHandler, make_app
from taskdash.nsq.broker.options import VERSION


class LookupSource(Protocol):
    """What the lookupd HTTP handlers read."""

    def lookup(self, topic: str) -> dict[str, Any] | None:
        """``{"channels", "producers"}`` for a registered topic, else None."""
        ...

    def topic_names(self) -> list[str]:
        """Every registered topic."""
        ...

    def channel_names(self, topic: str) -> list[str]:
        """Channels registered for ``topic`` (empty when unknown)."""
        ...

    def nodes(self) -> list[dict[str, Any]]:
        """Every active producer with its topics and tombstones."""
        ...


class SingleBroker:
    """The embedded broker answering as its own nsqlookupd."""

    def __init__(self, ctx: HttpContext) -> None:
        self.ctx = ctx

    def lookup(self, topic: str) -> dict[str, Any] | None:
        found = self.ctx.registry.topics.get(topic)
        if found is None:
            return None
        return {"channels": sorted(found.channels), "producers": [self.ctx.peer_info()]}

    def topic_names(self) -> list[str]:
        return sorted(self.ctx.registry.topics)

    def channel_names(self, topic: str) -> list[str]:
        found = self.ctx.registry.topics.get(topic)
        return sorted(found.channels) if found else []

    def nodes(self) -> list[dict[str, Any]]:
        topics = self.topic_names()
        return [self.ctx.peer_info() | {"tombstones": [False] * len(topics), "topics": topics}]


# --- the registry of taskdash nsqlookupd --------------------------------------------------------


@dataclass(slots=True, eq=False)
class Peer:
    """An nsqd that sent IDENTIFY: nsqlookupd's PeerInfo (``id`` is its remote address)."""

    id: str
    remote_address: str
    hostname: str
    broadcast_address: str
    tcp_port: int
    http_port: int
    version: str
    last_update: float = field(default_factory=time.monotonic)

    def info(self) -> dict[str, Any]:
        """The JSON shape of nsqlookupd's PeerInfo (v1.3.0 field order)."""
        return {
            "remote_address": self.remote_address,
            "hostname": self.hostname,
            "broadcast_address": self.broadcast_address,
            "tcp_port": self.tcp_port,
            "http_port": self.http_port,
            "version": self.version,
        }


@dataclass(slots=True, eq=False)
class Producer:
    """A peer under one registration, possibly tombstoned (POST /topic/tombstone)."""

    peer: Peer
    tombstoned_at: float | None = None

    def tombstoned(self, lifetime: float, now: float) -> bool:
        return self.tombstoned_at is not None and now - self.tombstoned_at < lifetime


Key = tuple[str, str, str]  # category ("client", "topic", "channel"), topic, channel


class RegistrationDB:
    """nsqlookupd's registration map; inactive producers are left out of answers."""

    def __init__(self, inactive_producer_timeout: float, tombstone_lifetime: float) -> None:
        self.inactive_producer_timeout = inactive_producer_timeout
        self.tombstone_lifetime = tombstone_lifetime
        self.map: dict[Key, dict[str, Producer]] = {}

    # --- changes (TCP protocol) ---------------------------------------------------------------

    def add_producer(self, key: Key, peer: Peer) -> bool:
        """Register ``peer`` under ``key``; False if it already was."""
        producers = self.map.setdefault(key, {})
        if peer.id in producers:
            return False
        producers[peer.id] = Producer(peer)
        return True

    def remove_producer(self, key: Key, peer_id: str) -> tuple[bool, int]:
        """Unregister; (whether it was there, how many producers are left)."""
        producers = self.map.get(key)
        if producers is None:
            return False, 0
        removed = producers.pop(peer_id, None) is not None
        return removed, len(producers)

    def remove_registration(self, key: Key) -> None:
        self.map.pop(key, None)

    def registrations_of(self, peer_id: str) -> list[Key]:
        """Every key ``peer_id`` is registered under."""
        return [key for key, producers in self.map.items() if peer_id in producers]

    def tombstone(self, topic: str, node: str) -> None:
        """``node`` (broadcast_address:http_port) is leaving ``topic``: hidden from lookups."""
        for producer in self.map.get(("topic", topic, ""), {}).values():
            peer = producer.peer
            if f"{peer.broadcast_address}:{peer.http_port}" == node:
                producer.tombstoned_at = time.monotonic()

    # --- answers (HTTP) -----------------------------------------------------------------------

    def _active(self, producers: list[Producer], tombstones: bool) -> list[Producer]:
        """FilterByActive: pinged within the timeout, and (for lookups) not tombstoned."""
        now = time.monotonic()
        return [
            p
            for p in producers
            if now - p.peer.last_update <= self.inactive_producer_timeout
            and not (tombstones and p.tombstoned(self.tombstone_lifetime, now))
        ]

    def lookup(self, topic: str) -> dict[str, Any] | None:
        producers = self.map.get(("topic", topic, ""))
        if producers is None:
            return None
        active = self._active(list(producers.values()), tombstones=True)
        return {"channels": self.channel_names(topic), "producers": [p.peer.info() for p in active]}

    def topic_names(self) -> list[str]:
        return sorted(key for category, key, _ in self.map if category == "topic")

    def channel_names(self, topic: str) -> list[str]:
        return sorted(
            sub for category, key, sub in self.map if category == "channel" and key == topic
        )

    def nodes(self) -> list[dict[str, Any]]:
        clients = self._active(
            list(self.map.get(("client", "", ""), {}).values()), tombstones=False
        )
        now = time.monotonic()
        out = []
        for client in clients:
            topics = sorted(k[1] for k in self.registrations_of(client.peer.id) if k[0] == "topic")
            marks = []
            for topic in topics:
                producer = self.map[("topic", topic, "")][client.peer.id]
                marks.append(producer.tombstoned(self.tombstone_lifetime, now))
            out.append(client.peer.info() | {"tombstones": marks, "topics": topics})
        return out


# --- HTTP ---------------------------------------------------------------------------------------


class _LookupHandler(BaseHandler):
    """A lookupd handler: reads its answers from a :class:`LookupSource` (bound per app)."""

    source: LookupSource


class LookupHandler(_LookupHandler):
    """``GET /lookup?topic=T``."""

    def get(self) -> None:
        """Flat v1 shape: ``{"channels": [...], "producers": [...]}``; 404 when unknown."""
        found = self.source.lookup(self.required("topic", "MISSING_ARG_TOPIC"))
        if found is None:
            raise ApiError(404, "TOPIC_NOT_FOUND")
        self.reply_json(found)


class LookupTopicsHandler(_LookupHandler):
    """``GET /topics``."""

    def get(self) -> None:
        self.reply_json({"topics": self.source.topic_names()})


class LookupChannelsHandler(_LookupHandler):
    """``GET /channels?topic=T`` (empty when unknown, as nsqlookupd answers)."""

    def get(self) -> None:
        topic = self.required("topic", "MISSING_ARG_TOPIC")
        self.reply_json({"channels": self.source.channel_names(topic)})


class LookupNodesHandler(_LookupHandler):
    """``GET /nodes``: active producers, each with its topics and tombstones."""

    def get(self) -> None:
        self.reply_json({"producers": self.source.nodes()})


class LookupInfoHandler(_LookupHandler):
    """``GET /info``."""

    def get(self) -> None:
        self.reply_json({"version": VERSION})


class TombstoneHandler(_LookupHandler):
    """``POST /topic/tombstone?topic=T&node=host:http_port`` (standalone lookupd only)."""

    def post(self) -> None:
        topic = self.required("topic", "MISSING_ARG_TOPIC")
        node = self.required("node", "MISSING_ARG_NODE")
        if isinstance(self.source, RegistrationDB):
            self.source.tombstone(topic, node)
        self.finish(b"")


def lookupd_app(ctx: HttpContext, source: LookupSource | None = None) -> tornado.web.Application:
    """nsqlookupd's read API over ``source`` (default: this single broker)."""
    routes: list[tuple[str, type[BaseHandler]]] = [
        (r"/ping", PingHandler),
        (r"/lookup", LookupHandler),
        (r"/topics", LookupTopicsHandler),
        (r"/channels", LookupChannelsHandler),
        (r"/nodes", LookupNodesHandler),
        (r"/info", LookupInfoHandler),
    ]
    if isinstance(source, RegistrationDB):
        routes.append((r"/topic/tombstone", TombstoneHandler))
    chosen = source if source is not None else SingleBroker(ctx)
    bound = [
        (path, _bind(handler, chosen) if issubclass(handler, _LookupHandler) else handler)
        for path, handler in routes
    ]
    return make_app(bound, ctx)


def _bind(handler: type[_LookupHandler], source: LookupSource) -> type[BaseHandler]:
    """The handler class answering from ``source``."""
    return type(handler.__name__, (handler,), {"source": source})


def hostname() -> str:
    """The OS host name, as nsqlookupd reports it."""
    return socket.gethostname()
