"""The seed's requests inside well-formed frames, and the replies: pure, no I/O.

A frame that is well formed but carries a bad request (header or body not JSON, wrong types,
no ``id``, an unknown RequestID) becomes :class:`BadRequest`, answered with errid 1000 on a
connection that stays open. The errid/errmsg table is the seed's, byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Any

import msgspec

from taskdash.models import Id, Name, Short, Text, Url
from taskdash.tcp.protocol import Frame, pack

REQUESTS = ("Register", "Update", "Find")
UNKNOWN = "Unknown"  # the reply name when the request's RequestID cannot be read

#: The seed's daily window, e.g. "12:00" ("" = not set). ``\Z``, not ``$``: msgspec searches
#: with Python's ``re``, where ``$`` also matches before a final newline ("12:00\n").
Clock = Annotated[str, msgspec.Meta(pattern=r"^(?:(?:[01]?[0-9]|2[0-3]):[0-5][0-9])?\Z")]
User = Annotated[str, msgspec.Meta(max_length=128)]


class ErrId(IntEnum):
    """The seed's error codes (section 三)."""

    OK = 0
    BAD_REQUEST = 1000
    STORE_FAILED = 1001
    NO_SUCH_TASK = 1002


ERRMSG: dict[ErrId, str] = {
    ErrId.OK: "正确",
    ErrId.BAD_REQUEST: "请求格式不正确",
    ErrId.STORE_FAILED: "数据库存储失败",
    ErrId.NO_SUCH_TASK: "不存在该任务id",
}


class TaskRecord(msgspec.Struct, kw_only=True):
    """The body of Register and Update; a key left out is UNSET (kept as stored on Update)."""

    id: Id
    name: Name | msgspec.UnsetType = msgspec.UNSET
    url: Url | msgspec.UnsetType = msgspec.UNSET
    user: User | msgspec.UnsetType = msgspec.UNSET
    group_id: Name | msgspec.UnsetType = msgspec.UNSET
    description: Text | msgspec.UnsetType = msgspec.UNSET
    status: Short | msgspec.UnsetType = msgspec.UNSET
    start_time: Clock | msgspec.UnsetType = msgspec.UNSET
    stop_time: Clock | msgspec.UnsetType = msgspec.UNSET

    def given(self, names: tuple[str, ...]) -> dict[str, str]:
        """The values of ``names`` that the client sent."""
        return {n: v for n in names if (v := getattr(self, n)) is not msgspec.UNSET}


class FindBody(msgspec.Struct):
    """The body of Find."""

    id: Id


class Header(msgspec.Struct):
    """A request header; other keys a client adds are ignored."""

    RequestID: str


@dataclass(frozen=True, slots=True)
class Request:
    """A request that decoded: its name, the frame's messageID, and the decoded body."""

    name: str
    message_id: int
    body: TaskRecord | FindBody

    @property
    def id(self) -> str:
        """The task id the request is about."""
        return self.body.id


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A well-framed request that cannot be served (errid 1000); ``reason`` is for the log."""

    name: str
    message_id: int
    task_id: str
    reason: str


_header_decoder = msgspec.json.Decoder(Header)
_body_decoders: dict[str, msgspec.json.Decoder[Any]] = {
    "Register": msgspec.json.Decoder(TaskRecord),
    "Update": msgspec.json.Decoder(TaskRecord),
    "Find": msgspec.json.Decoder(FindBody),
}
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)


class _Unreadable:
    """Bytes that did not decode, and why (for the 1000 reply's log line)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _decoded(decoder: msgspec.json.Decoder[Any], data: bytes) -> Any:
    """``data`` decoded, or :class:`_Unreadable`; never raises.

    The bytes are the client's, so whatever decoding them raises means "this request cannot
    be read": errid 1000, and the connection stays open. Besides msgspec's own errors that
    includes RecursionError, which valid JSON nested ~1,000 levels deep (4 KB) raises, and
    anything else a future msgspec may raise on hostile input: such an exception escaping
    would drop the connection with no reply.
    """
    try:
        if not data.isascii():  # JSON is UTF-8 (RFC 8259); msgspec skips ignored keys unchecked
            data.decode("utf-8")
        return decoder.decode(data)
    except _DECODE_ERRORS as exc:
        return _Unreadable(str(exc))
    except RecursionError:
        return _Unreadable("JSON nested too deep")
    except Exception as exc:  # see the docstring: anything else is unreadable too
        return _Unreadable(f"{type(exc).__name__}: {exc}")


_any_decoder = msgspec.json.Decoder()


def _name_of(header: bytes) -> str:
    decoded = _decoded(_header_decoder, header)
    if isinstance(decoded, _Unreadable):
        return UNKNOWN
    name = decoded.RequestID
    return name if _SAFE_NAME.fullmatch(name) else UNKNOWN


def _id_hint(body: bytes) -> str:
    """The body's ``id`` if it is a usable one, to echo in a 1000 reply; else ""."""
    value = _decoded(_any_decoder, body)
    hint = value.get("id") if isinstance(value, dict) else None
    return hint if isinstance(hint, str) and 0 < len(hint) <= 128 else ""


def parse_request(frame: Frame) -> Request | BadRequest:
    """Decode a messageID-2 frame (or any non-heartbeat id, which is refused here).

    Never raises: whatever the frame holds, the answer is a :class:`Request` or a
    :class:`BadRequest` (errid 1000), so a client's bytes cannot cost it its connection.
    """
    try:
        return _parse(frame)
    except Exception as exc:  # a bug here must not cost the client its reply
        return BadRequest(UNKNOWN, frame.message_id, "", f"unparsable: {type(exc).__name__}")


def _parse(frame: Frame) -> Request | BadRequest:
    name = _name_of(frame.header)
    decoder = _body_decoders.get(name)
    if frame.message_id != 2:
        return BadRequest(name, frame.message_id, "", f"unknown messageID {frame.message_id}")
    if decoder is None:
        return BadRequest(name, frame.message_id, _id_hint(frame.body), "unknown RequestID")
    body = _decoded(decoder, frame.body)
    if isinstance(body, _Unreadable):
        return BadRequest(name, frame.message_id, _id_hint(frame.body), body.reason)
    return Request(name, frame.message_id, body)


def reply(
    name: str, message_id: int, task_id: str, errid: ErrId, fields: Mapping[str, str] | None = None
) -> bytes:
    """The answer frame: same messageID, header ``{"RequestID": "Resp<name>"}``.

    The body is ``{"id", <fields>..., "errid", "errmsg"}``; Find puts the task's fields in
    ``fields`` (flattened: the seed's nested form is not JSON).
    """
    body: dict[str, Any] = {"id": task_id, **(fields or {})}
    body.update(errid=int(errid), errmsg=ERRMSG[errid])
    return pack(message_id, {"RequestID": f"Resp{name}"}, body)
