"""nsqd's HTTP API: /ping /pub /mpub /stats /info and topic/channel admin; shared helpers."""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from typing import Any

import structlog
import tornado.web

from taskdash.nsq.broker.options import VERSION
from taskdash.nsq.broker.protocol import ProtocolError, is_valid_name, parse_mpub
from taskdash.nsq.broker.registry import Registry
from taskdash.nsq.broker.stats import build_stats, render_text

log = structlog.get_logger("taskdash.nsq.broker")

_BOOL = {"true": True, "1": True, "false": False, "0": False}
_STATUS_MESSAGES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
_DEFER = re.compile(r"[+-]?[0-9]+")


@dataclass(slots=True)
class HttpContext:
    """What the handlers share: the registry and how this node advertises itself."""

    registry: Registry
    start_time: float
    broadcast_address: str
    host: str
    tcp_port: int = 0
    http_port: int = 0
    # --tls-required=true: plain HTTP answers 403 TLS_REQUIRED, HTTPS (https_port) serves
    http_tls_required: bool = False
    https_port: int = 0

    def peer_info(self) -> dict[str, Any]:
        """nsqlookupd's PeerInfo for this broker: where readers should connect."""
        return {
            "remote_address": f"{self.host}:{self.tcp_port}",
            "hostname": socket.gethostname(),
            "broadcast_address": self.broadcast_address,
            "tcp_port": self.tcp_port,
            "http_port": self.http_port,
            "version": VERSION,
        }


class ApiError(tornado.web.HTTPError):
    """An nsqd error reply: the status plus ``{"message": CODE}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status)
        self.message = message


class BaseHandler(tornado.web.RequestHandler):
    """Shared helpers: nsq's v1 headers, JSON errors, query arguments."""

    ctx: HttpContext

    def initialize(self, ctx: HttpContext) -> None:
        """Routes hand every handler the same context."""
        self.ctx = ctx

    def prepare(self) -> None:
        """nsqd refuses every plain HTTP request when TLS is required (tcp-https spares it)."""
        if self.ctx.http_tls_required and self.request.protocol != "https":
            self.set_status(403)
            self.reply_json({"message": "TLS_REQUIRED", "https_port": self.ctx.https_port})

    def set_default_headers(self) -> None:
        """nsqd marks every reply as the v1 format."""
        self.set_header("X-NSQ-Content-Type", "nsq; version=1.0")
        self.set_header("Content-Type", "text/plain; charset=utf-8")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Every error is JSON ``{"message": CODE}`` with the real status."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            message = exc.message
        else:
            message = _STATUS_MESSAGES.get(status_code, "INTERNAL_ERROR")
        self.reply_json({"message": message})

    def reply_json(self, doc: Any) -> None:
        """Bare JSON (v1 has no status_code/data envelope)."""
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(doc, separators=(",", ":")))

    def query(self, name: str) -> str | None:
        """First value of a query argument; None when absent (empty when given empty)."""
        values = self.request.query_arguments.get(name)
        return values[0].decode("utf-8", "replace") if values else None

    def required(self, name: str, missing: str) -> str:
        """A query argument that must be present."""
        value = self.query(name)
        if value is None:
            raise ApiError(400, missing)
        return value

    def topic_and_channel(self) -> tuple[str, str]:
        """nsqd's GetTopicChannelArgs for the channel admin endpoints."""
        topic = self.required("topic", "MISSING_ARG_TOPIC")
        if not is_valid_name(topic):
            raise ApiError(400, "INVALID_ARG_TOPIC")
        channel = self.required("channel", "MISSING_ARG_CHANNEL")
        if not is_valid_name(channel):
            raise ApiError(400, "INVALID_ARG_CHANNEL")
        if topic not in self.ctx.registry.topics:
            raise ApiError(404, "TOPIC_NOT_FOUND")
        return topic, channel

    def publish_topic(self) -> str:
        """The ``topic`` of /pub, /mpub, /topic/create; created here, as nsqd does."""
        topic = self.required("topic", "MISSING_ARG_TOPIC")
        if not is_valid_name(topic):
            raise ApiError(400, "INVALID_TOPIC")
        if self.ctx.registry.closing:
            raise ApiError(503, "EXITING")
        self.ctx.registry.get_topic(topic)
        return topic

    # --- disk-backed queues ---
    def publish(self, topic: str, bodies: list[bytes], defer_ms: int = 0) -> None:
        """Hand messages to the registry; a refused disk write is nsqd's 503 EXITING."""
        try:
            self.ctx.registry.publish(topic, bodies, defer_ms)
        except OSError as exc:
            log.error("publish_failed", topic=topic, error=str(exc))
            raise ApiError(503, "EXITING") from None


class NotFoundHandler(BaseHandler):
    """Unknown paths: 404 NOT_FOUND."""

    def prepare(self) -> None:
        """Answer before any method handler runs."""
        super().prepare()
        if not self._finished:
            raise ApiError(404, "NOT_FOUND")


class PingHandler(BaseHandler):
    """Liveness: plain ``OK``."""

    def get(self) -> None:
        """Always healthy while listening."""
        self.finish("OK")


@tornado.web.stream_request_body
class BodyHandler(BaseHandler):
    """Reads the request body in chunks, keeping at most the limit in memory."""

    def body_limit(self) -> int:
        """Largest acceptable body."""
        raise NotImplementedError

    def prepare(self) -> None:
        """A declared Content-Length above the limit is refused without buffering."""
        self._chunks: list[bytes] = []
        self._size = 0
        declared = self.request.headers.get("Content-Length", "")
        self._declared_too_big = declared.isdigit() and int(declared) > self.body_limit()
        super().prepare()

    def data_received(self, chunk: bytes) -> None:
        """Buffer while under the limit; past it, only count."""
        self._size += len(chunk)
        if self._size <= self.body_limit() and not self._declared_too_big:
            self._chunks.append(chunk)
        else:
            self._chunks.clear()

    @property
    def too_big(self) -> bool:
        """Declared or actually larger than the limit."""
        return self._declared_too_big or self._size > self.body_limit()

    def body(self) -> bytes:
        """The whole (within-limit) body."""
        return b"".join(self._chunks)


class PubHandler(BodyHandler):
    """``POST /pub?topic=T[&defer=ms]``: the raw body is one message."""

    def body_limit(self) -> int:
        """One message."""
        return self.ctx.registry.options.max_msg_size

    def post(self) -> None:
        """Checks in nsqd's order: size, emptiness, topic, defer."""
        if self.too_big:
            raise ApiError(413, "MSG_TOO_BIG")
        body = self.body()
        if not body:
            raise ApiError(400, "MSG_EMPTY")
        topic = self.publish_topic()
        defer_ms = 0
        raw = self.query("defer")
        if raw is not None:
            if not _DEFER.fullmatch(raw):
                raise ApiError(400, "INVALID_DEFER")
            defer_ms = int(raw)
            if not 0 <= defer_ms <= self.ctx.registry.options.max_req_timeout_ms:
                raise ApiError(400, "INVALID_DEFER")
        self.publish(topic, [body], defer_ms)
        self.finish("OK")


class MpubHandler(BodyHandler):
    """``POST /mpub?topic=T[&binary=true]``: one message per line, or the MPUB binary body."""

    def body_limit(self) -> int:
        """All messages together."""
        return self.ctx.registry.options.max_body_size

    def post(self) -> None:
        """All or nothing: every message is validated before any is published."""
        if self._declared_too_big:
            raise ApiError(413, "BODY_TOO_BIG")
        topic = self.publish_topic()
        if self.too_big:
            raise ApiError(413, "BODY_TOO_BIG")
        options = self.ctx.registry.options
        raw = self.query("binary")
        binary = False if raw is None else _BOOL.get(raw, True)  # unknown values mean true
        if binary:
            try:
                bodies = parse_mpub(
                    self.body(), options.max_msg_size, options.max_body_size, exact=False
                )
            except ProtocolError as exc:
                raise ApiError(413, exc.code[2:]) from None
        else:
            bodies = [line for line in self.body().split(b"\n") if line]
            if any(len(line) > options.max_msg_size for line in bodies):
                raise ApiError(413, "MSG_TOO_BIG")
        self.publish(topic, bodies)
        self.finish("OK")


class StatsHandler(BaseHandler):
    """``GET /stats[?format=json&topic=&channel=&include_clients=&include_mem=]``."""

    def get(self) -> None:
        """JSON with format=json, else nsqd-like text."""
        doc = build_stats(
            self.ctx.registry,
            self.ctx.start_time,
            topic=self.query("topic") or "",
            channel=self.query("channel") or "",
            include_clients=_BOOL.get(self.query("include_clients") or "", True),
            include_mem=_BOOL.get(self.query("include_mem") or "", True),
        )
        if self.query("format") == "json":
            self.reply_json(doc)
        else:
            self.finish(render_text(doc, self.ctx.start_time))


class InfoHandler(BaseHandler):
    """``GET /info``: version, ports, limits (durations in ns, as Go marshals them)."""

    def get(self) -> None:
        """Static facts about this node."""
        options = self.ctx.registry.options
        self.reply_json(
            {
                "version": VERSION,
                "broadcast_address": self.ctx.broadcast_address,
                "hostname": socket.gethostname(),
                "http_port": self.ctx.http_port,
                "tcp_port": self.ctx.tcp_port,
                "start_time": int(self.ctx.start_time),
                "max_heartbeat_interval": options.max_heartbeat_interval_ms * 1_000_000,
                "max_output_buffer_size": options.max_output_buffer_size,
                "max_output_buffer_timeout": options.max_output_buffer_timeout_ms * 1_000_000,
                "max_deflate_level": options.max_deflate_level,
            }
        )


class TopicCreateHandler(BaseHandler):
    """``POST /topic/create?topic=T``."""

    def post(self) -> None:
        """Idempotent create."""
        self.publish_topic()
        self.finish(b"")


class TopicDeleteHandler(BaseHandler):
    """``POST /topic/delete?topic=T``: drops messages and disconnects its consumers."""

    def post(self) -> None:
        """404 when the topic does not exist."""
        topic = self.required("topic", "MISSING_ARG_TOPIC")
        if not self.ctx.registry.delete_topic(topic):
            raise ApiError(404, "TOPIC_NOT_FOUND")
        self.finish(b"")


class ChannelCreateHandler(BaseHandler):
    """``POST /channel/create?topic=T&channel=C`` on an existing topic."""

    def post(self) -> None:
        """Idempotent create."""
        topic, channel = self.topic_and_channel()
        self.ctx.registry.topics[topic].get_channel(channel)
        self.finish(b"")


class ChannelDeleteHandler(BaseHandler):
    """``POST /channel/delete?topic=T&channel=C``."""

    def post(self) -> None:
        """404 when the channel does not exist."""
        topic, channel = self.topic_and_channel()
        if not self.ctx.registry.topics[topic].delete_channel(channel):
            raise ApiError(404, "CHANNEL_NOT_FOUND")
        self.finish(b"")


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Requests go to structlog at debug level instead of tornado.access."""
    log.debug(
        "http_request",
        status=handler.get_status(),
        method=handler.request.method,
        uri=handler.request.uri,
        ms=round(1000 * handler.request.request_time(), 2),
    )


def make_app(
    routes: list[tuple[str, type[BaseHandler]]], ctx: HttpContext
) -> tornado.web.Application:
    """An application whose every route (and the 404 fallback) shares ``ctx``."""
    args = {"ctx": ctx}
    return tornado.web.Application(
        [(path, handler, args) for path, handler in routes],
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
        log_function=_log_request,
    )


def nsqd_app(ctx: HttpContext) -> tornado.web.Application:
    """nsqd's HTTP API."""
    return make_app(
        [
            (r"/ping", PingHandler),
            (r"/pub", PubHandler),
            (r"/mpub", MpubHandler),
            (r"/stats", StatsHandler),
            (r"/info", InfoHandler),
            (r"/topic/create", TopicCreateHandler),
            (r"/topic/delete", TopicDeleteHandler),
            (r"/channel/create", ChannelCreateHandler),
            (r"/channel/delete", ChannelDeleteHandler),
        ],
        ctx,
    )
