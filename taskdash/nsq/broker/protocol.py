"""NSQ TCP protocol V2 wire format as pure functions: no I/O, one typed error."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, replace
from typing import Any

from taskdash.nsq.broker.options import VERSION, Options

MAGIC_V2 = b"  V2"
FRAME_RESPONSE = 0
FRAME_ERROR = 1
FRAME_MESSAGE = 2
OK = b"OK"
HEARTBEAT = b"_heartbeat_"
CLOSE_WAIT = b"CLOSE_WAIT"
MSG_ID_LENGTH = 16
EPHEMERAL_SUFFIX = "#ephemeral"

_FRAME_HEAD = struct.Struct(">ii")
_MSG_HEAD = struct.Struct(">qH")
_INT32 = struct.Struct(">i")
_NAME = re.compile(rb"[.a-zA-Z0-9_-]+(#ephemeral)?")
_INT64_MAX = 2**63 - 1
_INT32_MAX = 2**31 - 1

#: Error codes after which nsqd keeps the connection open; every other error closes it.
NON_FATAL_CODES = frozenset({"E_FIN_FAILED", "E_REQ_FAILED", "E_TOUCH_FAILED"})


class ProtocolError(Exception):
    """An error frame to send: ``code`` is machine readable, ``fatal`` closes the connection."""

    def __init__(self, code: str, desc: str, *, fatal: bool | None = None) -> None:
        super().__init__(f"{code} {desc}")
        self.code = code
        self.desc = desc
        self.fatal = code not in NON_FATAL_CODES if fatal is None else fatal

    @property
    def data(self) -> bytes:
        """The error frame's payload, ``CODE description``."""
        return f"{self.code} {self.desc}".encode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """What a client negotiated with IDENTIFY (or the defaults before it)."""

    client_id: str
    hostname: str
    user_agent: str = ""
    heartbeat_interval_ms: int = 30000  # 0 = heartbeats disabled
    output_buffer_size: int = 16384
    output_buffer_timeout_ms: int = 250
    sample_rate: int = 0
    msg_timeout_ms: int = 60000
    feature_negotiation: bool = False
    # asked for in IDENTIFY; what is granted is decided by the broker's options (negotiate)
    tls_v1: bool = False
    snappy: bool = False
    deflate: bool = False
    deflate_level: int = 0

    @classmethod
    def defaults(cls, options: Options, identifier: str) -> ClientSettings:
        """Settings of a fresh connection: nsqd names an unidentified client by its address."""
        return cls(
            client_id=identifier,
            hostname=identifier,
            heartbeat_interval_ms=options.heartbeat_interval_ms,
            output_buffer_size=options.output_buffer_size,
            output_buffer_timeout_ms=options.output_buffer_timeout_ms,
            msg_timeout_ms=options.msg_timeout_ms,
        )


def encode_frame(frame_type: int, data: bytes) -> bytes:
    """``[int32 size][int32 type][data]`` with size = 4 + len(data)."""
    return _FRAME_HEAD.pack(len(data) + 4, frame_type) + data


def encode_message(timestamp_ns: int, attempts: int, msg_id: bytes, body: bytes) -> bytes:
    """Message frame data: int64 timestamp, uint16 attempts, 16-byte id, body."""
    return _MSG_HEAD.pack(timestamp_ns, attempts & 0xFFFF) + msg_id + body


def decode_frame(buf: bytes) -> tuple[int, bytes] | None:
    """Split one frame off the front of ``buf`` (for clients and tests); None if incomplete."""
    if len(buf) < 8:
        return None
    size, frame_type = _FRAME_HEAD.unpack_from(buf)
    if len(buf) < 4 + size:
        return None
    return frame_type, bytes(buf[8 : 4 + size])


def is_valid_name(name: str | bytes) -> bool:
    """Topic/channel rule: ``^[.a-zA-Z0-9_-]+(#ephemeral)?$``, 1..64 bytes including suffix."""
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    return 1 <= len(raw) <= 64 and _NAME.fullmatch(raw) is not None


def is_ephemeral(name: str) -> bool:
    """Ephemeral topics/channels vanish with their last consumer."""
    return name.endswith(EPHEMERAL_SUFFIX)


def go_quote(raw: bytes) -> str:
    """Approximate Go's ``%q`` so error descriptions read like nsqd's."""
    out = []
    for byte in raw:
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{byte:02x}"))
    return '"' + "".join(out) + '"'


def split_command(line: bytes) -> list[bytes]:
    """Trim ``\\n`` and an optional ``\\r``; split on single spaces (empty fields kept, as nsqd)."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line.split(b" ")


def parse_base10(raw: bytes) -> int:
    """nsqd's ByteToBase10: ASCII digits only (empty gives 0), so no sign is accepted."""
    if raw and not raw.isdigit():  # bytes.isdigit() accepts ASCII digits only
        raise ValueError("failed to convert to Base10")
    return int(raw) if raw else 0


def message_id(raw: bytes) -> bytes:
    """Validate a FIN/REQ/TOUCH id: only its length is checked, as nsqd does."""
    if len(raw) != MSG_ID_LENGTH:
        raise ProtocolError("E_INVALID", "invalid message ID")
    return raw


def read_length(raw: bytes) -> int:
    """A body length: 4 bytes big-endian *signed* (negative lengths are rejected by callers)."""
    return int(_INT32.unpack(raw)[0])


def validate_topic(command: str, raw: bytes) -> str:
    """Topic argument of SUB/PUB/MPUB/DPUB, else E_BAD_TOPIC."""
    if not is_valid_name(raw):
        prefix = "E_BAD_TOPIC " if command == "MPUB" else ""  # nsqd repeats the code for MPUB
        raise ProtocolError(
            "E_BAD_TOPIC", f"{prefix}{command} topic name {go_quote(raw)} is not valid"
        )
    return raw.decode("ascii")


def validate_channel(raw: bytes) -> str:
    """Channel argument of SUB, else E_BAD_CHANNEL."""
    if not is_valid_name(raw):
        raise ProtocolError("E_BAD_CHANNEL", f"SUB channel name {go_quote(raw)} is not valid")
    return raw.decode("ascii")


def check_body_length(command: str, length: int, limit: int, code: str, what: str) -> None:
    """Length prefix checks done before reading a body, so memory stays bounded."""
    if length <= 0:
        raise ProtocolError(code, f"{command} invalid {what} size {length}")
    if length > limit:
        too_big = "body" if what == "body" else "message"
        raise ProtocolError(code, f"{command} {too_big} too big {length} > {limit}")


def parse_mpub(body: bytes, max_msg_size: int, max_body_size: int, *, exact: bool) -> list[bytes]:
    """``[int32 count]([int32 size][bytes])*``; all or nothing; ``exact`` refuses trailing bytes."""
    if len(body) < 4:
        raise ProtocolError("E_BAD_BODY", "MPUB failed to read message count")
    count = read_length(body[:4])
    max_messages = (max_body_size - 4) // 5  # 4 = count, 5 = length + at least one byte
    if count <= 0 or count > max_messages:
        raise ProtocolError("E_BAD_BODY", f"MPUB invalid message count {count}")
    messages: list[bytes] = []
    pos = 4
    for index in range(count):
        if pos + 4 > len(body):
            raise ProtocolError("E_BAD_MESSAGE", f"MPUB failed to read message({index}) body size")
        size = read_length(body[pos : pos + 4])
        pos += 4
        if size <= 0:
            raise ProtocolError("E_BAD_MESSAGE", f"MPUB invalid message({index}) body size {size}")
        if size > max_msg_size:
            raise ProtocolError("E_BAD_MESSAGE", f"MPUB message too big {size} > {max_msg_size}")
        if pos + size > len(body):
            raise ProtocolError("E_BAD_MESSAGE", "MPUB failed to read message body")
        messages.append(body[pos : pos + size])
        pos += size
    if exact and pos != len(body):
        raise ProtocolError("E_BAD_BODY", f"MPUB body size {len(body)} != {pos} bytes used")
    return messages


def encode_mpub(bodies: list[bytes]) -> bytes:
    """The MPUB/binary /mpub body for ``bodies`` (used by tests and publishers)."""
    parts = [_INT32.pack(len(bodies))]
    for body in bodies:
        parts.append(_INT32.pack(len(body)))
        parts.append(body)
    return b"".join(parts)


# --- IDENTIFY -------------------------------------------------------------------------------

_IDENTIFY_FIELDS: dict[str, type] = {
    "client_id": str,
    "hostname": str,
    "user_agent": str,
    "heartbeat_interval": int,
    "output_buffer_size": int,
    "output_buffer_timeout": int,
    "feature_negotiation": bool,
    "tls_v1": bool,
    "snappy": bool,
    "deflate": bool,
    "deflate_level": int,
    "sample_rate": int,
    "msg_timeout": int,
}


def _reject_constant(name: str) -> Any:
    """Go's JSON has no NaN/Infinity."""
    raise ValueError(f"invalid JSON constant {name}")


def _decode_identify_json(body: bytes) -> dict[str, Any]:
    """Decode like Go's json.Unmarshal into nsqd's struct: typed fields, case-insensitive keys."""
    bad = ProtocolError("E_BAD_BODY", "IDENTIFY failed to decode JSON body")
    try:
        data = json.loads(body.decode("utf-8", "replace"), parse_constant=_reject_constant)
    except ValueError:
        raise bad from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise bad
    fields: dict[str, Any] = {}
    for key, value in data.items():
        name = key.lower()
        kind = _IDENTIFY_FIELDS.get(name)
        if kind is None or value is None:
            continue
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
            limit = _INT32_MAX if name == "sample_rate" else _INT64_MAX
            if not -limit - 1 <= value <= limit:
                raise bad
        elif not isinstance(value, kind):
            raise bad
        fields[name] = value
    return fields


def _resolve_output_buffer(
    settings: ClientSettings, size: int, timeout: int, options: Options
) -> ClientSettings:
    """nsqd's SetOutputBuffer: -1 disables, 0 keeps the default, else a bounded value."""
    if timeout == -1:
        settings = replace(settings, output_buffer_timeout_ms=0)
    elif timeout != 0:
        if not (
            options.min_output_buffer_timeout_ms <= timeout <= options.max_output_buffer_timeout_ms
        ):
            raise ProtocolError(
                "E_BAD_BODY", f"IDENTIFY output buffer timeout ({timeout}) is invalid"
            )
        settings = replace(settings, output_buffer_timeout_ms=timeout)
    if size == -1:
        settings = replace(settings, output_buffer_size=1, output_buffer_timeout_ms=0)
    elif size != 0:
        if not 64 <= size <= options.max_output_buffer_size:
            raise ProtocolError("E_BAD_BODY", f"IDENTIFY output buffer size ({size}) is invalid")
        settings = replace(settings, output_buffer_size=size)
    return settings


def apply_identify(body: bytes, settings: ClientSettings, options: Options) -> ClientSettings:
    """Validate an IDENTIFY body and return the negotiated settings; E_BAD_BODY if refused."""
    fields = _decode_identify_json(body)
    settings = replace(
        settings,
        client_id=fields.get("client_id", ""),
        hostname=fields.get("hostname", ""),
        user_agent=fields.get("user_agent", ""),
        feature_negotiation=fields.get("feature_negotiation", False),
        tls_v1=fields.get("tls_v1", False),
        snappy=fields.get("snappy", False),
        deflate=fields.get("deflate", False),
        deflate_level=fields.get("deflate_level", 0),
    )
    heartbeat = fields.get("heartbeat_interval", 0)
    if heartbeat == -1:
        settings = replace(settings, heartbeat_interval_ms=0)
    elif heartbeat != 0:
        if not 1000 <= heartbeat <= options.max_heartbeat_interval_ms:
            raise ProtocolError(
                "E_BAD_BODY", f"IDENTIFY heartbeat interval ({heartbeat}) is invalid"
            )
        settings = replace(settings, heartbeat_interval_ms=heartbeat)
    settings = _resolve_output_buffer(
        settings,
        fields.get("output_buffer_size", 0),
        fields.get("output_buffer_timeout", 0),
        options,
    )
    sample_rate = fields.get("sample_rate", 0)
    if not 0 <= sample_rate <= 99:
        raise ProtocolError("E_BAD_BODY", f"IDENTIFY sample rate ({sample_rate}) is invalid")
    settings = replace(settings, sample_rate=sample_rate)
    msg_timeout = fields.get("msg_timeout", 0)
    if msg_timeout != 0:
        if not 1000 <= msg_timeout <= options.max_msg_timeout_ms:
            raise ProtocolError("E_BAD_BODY", f"IDENTIFY msg timeout ({msg_timeout}) is invalid")
        settings = replace(settings, msg_timeout_ms=msg_timeout)
    return settings


@dataclass(frozen=True, slots=True)
class Features:
    """What IDENTIFY granted: nsqd upgrades the connection in this order (TLS, snappy, deflate)."""

    tls_v1: bool = False
    snappy: bool = False
    deflate: bool = False
    deflate_level: int = 6
    auth_required: bool = False


def negotiate(
    settings: ClientSettings,
    options: Options,
    *,
    tls: bool = False,
    snappy: bool = False,
    deflate: bool = False,
    auth: bool = False,
) -> Features:
    """nsqd's answer to the features asked for, given what this broker offers.

    ``deflate_level`` is 6 unless deflate is granted with a positive level asked for; either
    way at most ``max_deflate_level``. Both compressions at once is a fatal E_IDENTIFY_FAILED.
    """
    granted_deflate = deflate and settings.deflate
    level = 6
    if granted_deflate and settings.deflate_level > 0:
        level = settings.deflate_level
    level = min(level, options.max_deflate_level)
    granted_snappy = snappy and settings.snappy
    if granted_deflate and granted_snappy:
        raise ProtocolError(
            "E_IDENTIFY_FAILED", "cannot enable both deflate and snappy compression"
        )
    return Features(
        tls_v1=tls and settings.tls_v1,
        snappy=granted_snappy,
        deflate=granted_deflate,
        deflate_level=level,
        auth_required=auth,
    )


def identify_response(
    settings: ClientSettings, options: Options, features: Features | None = None
) -> bytes:
    """The feature-negotiation JSON (nothing granted when ``features`` is None)."""
    features = features or Features(deflate_level=min(6, options.max_deflate_level))
    return json.dumps(
        {
            "max_rdy_count": options.max_rdy_count,
            "version": VERSION,
            "max_msg_timeout": options.max_msg_timeout_ms,
            "msg_timeout": settings.msg_timeout_ms,
            "tls_v1": features.tls_v1,
            "deflate": features.deflate,
            "deflate_level": features.deflate_level,
            "max_deflate_level": options.max_deflate_level,
            "snappy": features.snappy,
            "sample_rate": settings.sample_rate,
            "auth_required": features.auth_required,
            "output_buffer_size": settings.output_buffer_size,
            "output_buffer_timeout": settings.output_buffer_timeout_ms,
        },
        separators=(",", ":"),
    ).encode()
