"""One TCP client as the broker sees it: state, counters, RDY accounting, frame output."""

from __future__ import annotations

import asyncio
import enum
import ssl
import time
from typing import TYPE_CHECKING, Any

from taskdash.nsq.broker.channel import Channel
from taskdash.nsq.broker.message import Message
from taskdash.nsq.broker.options import Options
from taskdash.nsq.broker.protocol import (
    FRAME_MESSAGE,
    ClientSettings,
    encode_frame,
    encode_message,
)

if TYPE_CHECKING:
    from taskdash.nsq.broker.authz import AuthState
    from taskdash.nsq.broker.wire import Codec

#: Python's TLS version names -> nsqd's (/stats tls_version)
_TLS_VERSIONS = {"TLSv1": "TLS1.0", "TLSv1.1": "TLS1.1", "TLSv1.2": "TLS1.2", "TLSv1.3": "TLS1.3"}


class State(enum.IntEnum):
    """nsqd's client states (values as /stats reports them)."""

    INIT = 0
    DISCONNECTED = 1
    CONNECTED = 2
    SUBSCRIBED = 3
    CLOSING = 4


class Client:
    """Implements the channel's Consumer: RDY is a cap on messages in flight to this client."""

    def __init__(self, client_id: int, writer: asyncio.StreamWriter, options: Options) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        host, port = str(peer[0]), int(peer[1])
        self.id = client_id
        self.remote_address = f"{host}:{port}"
        self.settings = ClientSettings.defaults(options, host)
        self.state = State.INIT
        self.channel: Channel | None = None
        self.ready_count = 0
        self.in_flight_count = 0
        self.message_count = 0
        self.finish_count = 0
        self.requeue_count = 0
        self.pub_counts: dict[str, int] = {}
        self.connect_ts = int(time.time())
        self.disconnected = False
        self._writer = writer
        # TLS, compression and AUTH, as negotiated (nothing until IDENTIFY / AUTH)
        self.tls: ssl.SSLObject | None = None
        self.codec: Codec | None = None
        self.auth: AuthState | None = None
        self.auth_secret = ""  # kept to refresh ``auth`` after its ttl; never logged or shown
        self._held: list[bytes] | None = None  # frames kept back during the TLS handshake

    # --- Consumer ---------------------------------------------------------------------------

    @property
    def msg_timeout(self) -> float:
        """Seconds before an unanswered message goes back to the queue."""
        return self.settings.msg_timeout_ms / 1000

    @property
    def sample_rate(self) -> int:
        """IDENTIFY sample_rate (0 = all)."""
        return self.settings.sample_rate

    def ready_for_message(self) -> bool:
        """nsqd's IsReadyForMessages: in flight below RDY (and RDY above 0)."""
        if self.disconnected or self.ready_count <= 0:
            return False
        return self.in_flight_count < self.ready_count

    def send_message(self, msg: Message) -> None:
        """Count the message in flight and write its frame."""
        self.in_flight_count += 1
        self.message_count += 1
        self.write(FRAME_MESSAGE, encode_message(msg.timestamp, msg.attempts, msg.id, msg.body))

    def timed_out(self) -> None:
        """A message of ours expired and went back to the queue."""
        self.in_flight_count -= 1

    def close(self) -> None:
        """Drop the connection; the read loop sees EOF and cleans up."""
        self.disconnected = True
        self._writer.close()

    # --- bookkeeping used by the commands ---------------------------------------------------

    def finished(self) -> None:
        """FIN accepted."""
        self.finish_count += 1
        self.in_flight_count -= 1

    def requeued(self) -> None:
        """REQ accepted."""
        self.requeue_count += 1
        self.in_flight_count -= 1

    def published(self, topic: str, count: int) -> None:
        """PUB/MPUB/DPUB accepted: this client now counts as a producer."""
        self.pub_counts[topic] = self.pub_counts.get(topic, 0) + count

    @property
    def is_producer(self) -> bool:
        """nsqd lists clients that published under ``producers`` in /stats."""
        return bool(self.pub_counts)

    def write(self, frame_type: int, data: bytes) -> None:
        """Queue one frame on the socket (dropped once the client is detached or closing)."""
        if self.disconnected or self._writer.is_closing():
            return
        frame = encode_frame(frame_type, data)
        if self._held is not None:
            self._held.append(frame)
        elif self.codec is not None:
            self._writer.write(self.codec.encode(frame))
        else:
            self._writer.write(frame)

    # --- TLS, compression, AUTH -------------------------------------------------------------

    def hold(self) -> None:
        """Keep frames (a heartbeat) back while the socket is being upgraded to TLS."""
        self._held = []

    def release(self) -> None:
        """Send what was held, through the upgraded socket."""
        held, self._held = self._held or [], None
        for frame in held:
            self._writer.write(frame)

    @property
    def has_authorizations(self) -> bool:
        """nsqd's HasAuthorizations: an AUTH succeeded with at least one grant."""
        return self.auth is not None and bool(self.auth.authorizations)

    def _compression_and_auth_stats(self) -> dict[str, Any]:
        """ClientV2Stats' deflate, snappy, user_agent and (when authed) auth fields."""
        name = self.codec.name if self.codec is not None else ""
        doc: dict[str, Any] = {
            "deflate": name == "deflate",
            "snappy": name == "snappy",
            "user_agent": self.settings.user_agent,
        }
        if self.has_authorizations:
            assert self.auth is not None
            doc["authed"] = True
            if self.auth.identity:
                doc["auth_identity"] = self.auth.identity
            if self.auth.identity_url:
                doc["auth_identity_url"] = self.auth.identity_url
        return doc

    def _tls_stats(self) -> dict[str, Any]:
        """ClientV2Stats' TLS fields (Python's cipher names: OpenSSL's, not Go's)."""
        doc: dict[str, Any] = {
            "tls": self.tls is not None,
            "tls_cipher_suite": "",
            "tls_version": "",
            "tls_negotiated_protocol": "",
            "tls_negotiated_protocol_is_mutual": False,
        }
        if self.tls is not None:
            cipher = self.tls.cipher()
            version = self.tls.version() or ""
            doc["tls_cipher_suite"] = cipher[0] if cipher else ""
            doc["tls_version"] = _TLS_VERSIONS.get(version, version)
            doc["tls_negotiated_protocol"] = self.tls.selected_alpn_protocol() or ""
        return doc

    def stats(self, topic: str = "") -> dict[str, Any]:
        """nsqd's ClientV2Stats."""
        doc: dict[str, Any] = {
            "client_id": self.settings.client_id,
            "hostname": self.settings.hostname,
            "version": "V2",
            "remote_address": self.remote_address,
            "state": int(self.state),
            "ready_count": self.ready_count,
            "in_flight_count": self.in_flight_count,
            "message_count": self.message_count,
            "finish_count": self.finish_count,
            "requeue_count": self.requeue_count,
            "connect_ts": self.connect_ts,
            "sample_rate": self.settings.sample_rate,
            **self._compression_and_auth_stats(),
            **self._tls_stats(),
        }
        counts = [
            {"topic": name, "count": count}
            for name, count in sorted(self.pub_counts.items())
            if not topic or name == topic
        ]
        if counts:
            doc["pub_counts"] = counts
        return doc
