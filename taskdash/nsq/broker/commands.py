"""The V2 commands, checked in nsqd's order so every bad input gets nsqd's error code."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import structlog

from taskdash.nsq.broker.authz import AuthError
from taskdash.nsq.broker.channel import Channel, MessageStateError
from taskdash.nsq.broker.client import Client, State
from taskdash.nsq.broker.protocol import (
    CLOSE_WAIT,
    FRAME_RESPONSE,
    OK,
    Features,
    ProtocolError,
    apply_identify,
    check_body_length,
    go_quote,
    identify_response,
    message_id,
    negotiate,
    parse_base10,
    parse_mpub,
    read_length,
    validate_channel,
    validate_topic,
)
from taskdash.nsq.broker.registry import Registry
from taskdash.nsq.broker.security import Security, peer_common_name

log = structlog.get_logger("taskdash.nsq.broker")

Handler = Callable[[list[bytes]], Awaitable[bytes | None]]


def _text(raw: bytes) -> str:
    """Echo client bytes in an error description."""
    return raw.decode("utf-8", "replace")


class Commands:
    """Executes one parsed command line for one client; returns the response or raises."""

    def __init__(
        self,
        client: Client,
        reader: asyncio.StreamReader,
        registry: Registry,
        on_identify: Callable[[], None],
        security: Security | None = None,
        upgrade: Callable[[Features], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.reader = reader
        self.registry = registry
        self.options = registry.options
        self._on_identify = on_identify
        self.security = security or Security()
        self._upgrade = upgrade
        self._handlers: dict[bytes, Handler] = {
            b"IDENTIFY": self.identify,
            b"FIN": self.fin,
            b"RDY": self.rdy,
            b"REQ": self.req,
            b"PUB": self.pub,
            b"MPUB": self.mpub,
            b"DPUB": self.dpub,
            b"NOP": self.nop,
            b"TOUCH": self.touch,
            b"SUB": self.sub,
            b"CLS": self.cls,
            b"AUTH": self.auth,
        }

    async def execute(self, params: list[bytes]) -> bytes | None:
        """Dispatch on the command name; unknown names are fatal."""
        if params[0] != b"IDENTIFY":
            self._enforce_tls_policy(params[0])
        handler = self._handlers.get(params[0])
        if handler is None:
            raise ProtocolError("E_INVALID", f"invalid command {_text(params[0])}")
        return await handler(params)

    # --- body reading -----------------------------------------------------------------------

    async def _length(self, code: str, desc: str) -> int:
        """The 4-byte signed length after a command line."""
        try:
            return read_length(await self.reader.readexactly(4))
        except asyncio.IncompleteReadError:
            raise ProtocolError(code, desc) from None

    async def _body(self, size: int, code: str, desc: str) -> bytes:
        """A body whose length was already checked against the limits."""
        try:
            return await self.reader.readexactly(size)
        except asyncio.IncompleteReadError:
            raise ProtocolError(code, desc) from None

    async def _small_body(self, command: str) -> bytes:
        """IDENTIFY/AUTH bodies: E_BAD_BODY for any bad length."""
        size = await self._length("E_BAD_BODY", f"{command} failed to read body size")
        if size > self.options.max_body_size:
            raise ProtocolError(
                "E_BAD_BODY", f"{command} body too big {size} > {self.options.max_body_size}"
            )
        if size <= 0:
            raise ProtocolError("E_BAD_BODY", f"{command} invalid body size {size}")
        return await self._body(size, "E_BAD_BODY", f"{command} failed to read body")

    async def _message_body(self, command: str) -> bytes:
        """PUB/DPUB bodies: E_BAD_MESSAGE for any bad length."""
        size = await self._length("E_BAD_MESSAGE", f"{command} failed to read message body size")
        check_body_length(command, size, self.options.max_msg_size, "E_BAD_MESSAGE", "message body")
        return await self._body(size, "E_BAD_MESSAGE", f"{command} failed to read message body")

    # --- session ----------------------------------------------------------------------------

    async def identify(self, params: list[bytes]) -> bytes | None:
        """Negotiate settings; with feature_negotiation answer the full JSON, else OK."""
        if self.client.state != State.INIT:
            raise ProtocolError("E_INVALID", "cannot IDENTIFY in current state")
        body = await self._small_body("IDENTIFY")
        self.client.settings = apply_identify(body, self.client.settings, self.options)
        self._on_identify()
        settings = self.client.settings
        log.info(
            "client_identified",
            client=self.client.remote_address,
            client_id=settings.client_id,
            user_agent=settings.user_agent,
            heartbeat_ms=settings.heartbeat_interval_ms,
            msg_timeout_ms=settings.msg_timeout_ms,
        )
        if not settings.feature_negotiation:
            return OK
        security = self.security
        features = negotiate(
            settings,
            self.options,
            tls=security.tls_context is not None,
            snappy=security.snappy,
            deflate=security.options.deflate,
            auth=security.options.auth_enabled,
        )
        # nsqd sends the answer itself, then upgrades (each upgrade confirmed by an OK)
        self.client.write(FRAME_RESPONSE, identify_response(settings, self.options, features))
        if self._upgrade is not None and (features.tls_v1 or features.snappy or features.deflate):
            await self._upgrade(features)
        return None

    # --- TLS policy and AUTH (nsqd's enforceTLSPolicy, AUTH, CheckAuth) ---------------------

    def _enforce_tls_policy(self, command: bytes) -> None:
        """With TLS required, nothing but IDENTIFY before the upgrade (unknown names too)."""
        if self.security.tcp_tls_required and self.client.tls is None:
            raise ProtocolError(
                "E_INVALID", f"cannot {_text(command)} in current state (TLS required)"
            )

    async def auth(self, params: list[bytes]) -> bytes | None:
        """Check the secret with the auth server; answer identity and permission count."""
        client = self.client
        if client.state != State.INIT:
            raise ProtocolError("E_INVALID", "cannot AUTH in current state")
        if len(params) != 1:
            raise ProtocolError("E_INVALID", "AUTH invalid number of parameters")
        secret = await self._small_body("AUTH")
        if client.has_authorizations:
            raise ProtocolError("E_INVALID", "AUTH already set")
        if self.security.auth is None:
            raise ProtocolError("E_AUTH_DISABLED", "AUTH disabled")
        client.auth_secret = secret.decode("utf-8", "surrogateescape")
        await self._query_auth()
        if not client.has_authorizations:
            raise ProtocolError("E_UNAUTHORIZED", "AUTH no authorizations found")
        assert client.auth is not None
        log.info(
            "client_authenticated",
            client=client.remote_address,
            identity=client.auth.identity,
            permissions=len(client.auth.authorizations),
        )
        client.write(
            FRAME_RESPONSE,
            json.dumps(
                {
                    "identity": client.auth.identity,
                    "identity_url": client.auth.identity_url,
                    "permission_count": len(client.auth.authorizations),
                },
                separators=(",", ":"),
            ).encode(),
        )
        return None

    async def _query_auth(self) -> None:
        """Ask the auth server about the client's secret; E_AUTH_FAILED if it cannot answer."""
        client = self.client
        assert self.security.auth is not None
        try:
            client.auth = await self.security.auth.query(
                client.auth_secret,
                remote_ip=client.remote_address.rpartition(":")[0],
                tls=client.tls is not None,
                common_name=peer_common_name(client.tls),
            )
        except AuthError as exc:
            # as nsqd: the reason goes to the log (never the secret), not to the client
            log.warning("client_auth_failed", client=client.remote_address, error=str(exc))
            raise ProtocolError("E_AUTH_FAILED", "AUTH failed") from None

    async def _check_auth(self, command: str, topic: str, channel: str = "") -> None:
        """nsqd's CheckAuth: AUTH first, refreshed after its ttl, then the grants decide."""
        if self.security.auth is None:
            return
        client = self.client
        if not client.has_authorizations:
            raise ProtocolError("E_AUTH_FIRST", f"AUTH required before {command}")
        assert client.auth is not None
        if client.auth.expired:
            await self._query_auth()
        assert client.auth is not None
        if not client.auth.allows(topic, channel):
            raise ProtocolError(
                "E_UNAUTHORIZED",
                f"AUTH failed for {command} on {go_quote(topic.encode())} "
                f"{go_quote(channel.encode())}",
            )

    async def sub(self, params: list[bytes]) -> bytes | None:
        """Join a channel (creating topic and channel); once per connection."""
        client = self.client
        if client.state != State.INIT:
            raise ProtocolError("E_INVALID", "cannot SUB in current state")
        if client.settings.heartbeat_interval_ms <= 0:
            raise ProtocolError("E_INVALID", "cannot SUB with heartbeats disabled")
        if len(params) < 3:
            raise ProtocolError("E_INVALID", "SUB insufficient number of parameters")
        topic_name = validate_topic("SUB", params[1])
        channel_name = validate_channel(params[2])
        await self._check_auth("SUB", topic_name, channel_name)
        if self.registry.closing:
            raise ProtocolError("E_SUB_FAILED", "SUB failed exiting")
        channel = self.registry.get_topic(topic_name).get_channel(channel_name)
        channel.add_client(client)
        client.channel = channel
        client.state = State.SUBSCRIBED
        log.info(
            "client_subscribed",
            client=client.remote_address,
            topic=topic_name,
            channel=channel_name,
        )
        return OK

    async def cls(self, params: list[bytes]) -> bytes | None:
        """Start a clean close: RDY 0, then the client disconnects when it is done."""
        if self.client.state != State.SUBSCRIBED:
            raise ProtocolError("E_INVALID", "cannot CLS in current state")
        self.client.ready_count = 0
        self.client.state = State.CLOSING
        return CLOSE_WAIT

    async def nop(self, params: list[bytes]) -> bytes | None:
        """Heartbeat answer: nothing to do but having read a line."""
        return None

    # --- consuming --------------------------------------------------------------------------

    async def rdy(self, params: list[bytes]) -> bytes | None:
        """Set the in-flight cap; ignored while closing."""
        state = self.client.state
        if state == State.CLOSING:
            return None
        if state != State.SUBSCRIBED:
            raise ProtocolError("E_INVALID", "cannot RDY in current state")
        count = 1
        if len(params) > 1:
            try:
                count = parse_base10(params[1])
            except ValueError:
                raise ProtocolError(
                    "E_INVALID", f"RDY could not parse count {_text(params[1])}"
                ) from None
        if count > self.options.max_rdy_count:
            raise ProtocolError(
                "E_INVALID", f"RDY count {count} out of range 0-{self.options.max_rdy_count}"
            )
        self.client.ready_count = count
        self._channel().pump()
        return None

    async def fin(self, params: list[bytes]) -> bytes | None:
        """Finish a message this client holds."""
        msg_id = self._consumer_id("FIN", params, 2)
        try:
            self._channel().finish(self.client.id, msg_id)
        except MessageStateError as exc:
            raise ProtocolError("E_FIN_FAILED", f"FIN {_text(msg_id)} failed {exc}") from None
        self.client.finished()
        self._channel().pump()
        return None

    async def req(self, params: list[bytes]) -> bytes | None:
        """Requeue now (0) or later; the delay is clamped to 0..max_req_timeout."""
        msg_id = self._consumer_id("REQ", params, 3)
        try:
            delay = parse_base10(params[2])
        except ValueError:
            raise ProtocolError(
                "E_INVALID", f"REQ could not parse timeout {_text(params[2])}"
            ) from None
        delay = min(delay, self.options.max_req_timeout_ms)
        try:
            self._channel().requeue(self.client.id, msg_id, delay)
        except MessageStateError as exc:
            raise ProtocolError("E_REQ_FAILED", f"REQ {_text(msg_id)} failed {exc}") from None
        self.client.requeued()
        self._channel().pump()
        return None

    async def touch(self, params: list[bytes]) -> bytes | None:
        """Give a held message a fresh msg_timeout."""
        msg_id = self._consumer_id("TOUCH", params, 2)
        try:
            self._channel().touch(self.client.id, msg_id, self.client.msg_timeout)
        except MessageStateError as exc:
            raise ProtocolError("E_TOUCH_FAILED", f"TOUCH {_text(msg_id)} failed {exc}") from None
        return None

    def _consumer_id(self, command: str, params: list[bytes], needed: int) -> bytes:
        """State, parameter count and id checks shared by FIN/REQ/TOUCH."""
        if self.client.state not in (State.SUBSCRIBED, State.CLOSING):
            raise ProtocolError("E_INVALID", f"cannot {command} in current state")
        if len(params) < needed:
            raise ProtocolError("E_INVALID", f"{command} insufficient number of params")
        return message_id(params[1])

    def _channel(self) -> Channel:
        """The subscribed channel (the state checks guarantee there is one)."""
        assert self.client.channel is not None
        return self.client.channel

    # --- publishing -------------------------------------------------------------------------

    async def pub(self, params: list[bytes]) -> bytes | None:
        """One message."""
        if len(params) < 2:
            raise ProtocolError("E_INVALID", "PUB insufficient number of parameters")
        topic = validate_topic("PUB", params[1])
        body = await self._message_body("PUB")
        await self._check_auth("PUB", topic)
        self._publish("PUB", topic, [body])
        return OK

    async def dpub(self, params: list[bytes]) -> bytes | None:
        """One message, delivered after 0..max_req_timeout ms."""
        if len(params) < 3:
            raise ProtocolError("E_INVALID", "DPUB insufficient number of parameters")
        topic = validate_topic("DPUB", params[1])
        try:
            delay = parse_base10(params[2])
        except ValueError:
            raise ProtocolError(
                "E_INVALID", f"DPUB could not parse timeout {_text(params[2])}"
            ) from None
        limit = self.options.max_req_timeout_ms
        if delay > limit:
            raise ProtocolError("E_INVALID", f"DPUB timeout {delay} out of range 0-{limit}")
        body = await self._message_body("DPUB")
        await self._check_auth("DPUB", topic)
        self._publish("DPUB", topic, [body], delay)
        return OK

    async def mpub(self, params: list[bytes]) -> bytes | None:
        """Several messages, all or nothing; the topic exists from here on (as in nsqd)."""
        if len(params) < 2:
            raise ProtocolError("E_INVALID", "MPUB insufficient number of parameters")
        topic = validate_topic("MPUB", params[1])
        await self._check_auth("MPUB", topic)
        if not self.registry.closing:
            self.registry.get_topic(topic)
        size = await self._length("E_BAD_BODY", "MPUB failed to read body size")
        check_body_length("MPUB", size, self.options.max_body_size, "E_BAD_BODY", "body")
        body = await self._body(size, "E_BAD_BODY", "MPUB failed to read body")
        # exact: nsqd would parse bytes past a short MPUB body as the next command; we refuse.
        bodies = parse_mpub(body, self.options.max_msg_size, self.options.max_body_size, exact=True)
        self._publish("MPUB", topic, bodies)
        return OK

    def _publish(self, command: str, topic: str, bodies: list[bytes], defer_ms: int = 0) -> None:
        """Hand validated messages to the registry; refused only while the broker stops."""
        if self.registry.closing:
            raise ProtocolError(f"E_{command}_FAILED", f"{command} failed exiting")
        try:
            self.registry.publish(topic, bodies, defer_ms)
        except OSError as exc:  # the disk queue refused them (e.g. disk full): nsqd's answer
            raise ProtocolError(f"E_{command}_FAILED", f"{command} failed {exc}") from None
        self.client.published(topic, len(bodies))
