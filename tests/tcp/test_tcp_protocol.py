"""tcpx frames and the seed's requests as tables: pure functions, no sockets."""

from __future__ import annotations

import struct

import pytest

from taskdash.tcp.protocol import Frame, FrameDecoder, FrameError, decode, encode, heartbeat, pack
from taskdash.tcp.requests import BadRequest, ErrId, Request, parse_request, reply

LIMIT = 1024 * 1024


def raw(length: int, message_id: int, header_len: int, body_len: int, rest: bytes = b"") -> bytes:
    return struct.pack(">IIII", length, message_id, header_len, body_len) + rest


def test_pack_matches_tcpx_pack_with_marshaller() -> None:
    """The bytes Go's tcpx.PackWithMarshaller(JSON) writes for the seed's Find request."""
    frame = pack(2, {"RequestID": "Find"}, {"id": "1234567"})
    header, body = b'{"RequestID":"Find"}', b'{"id":"1234567"}'
    assert frame == struct.pack(">IIII", 12 + 20 + 16, 2, 20, 16) + header + body


def test_heartbeat_is_1392_with_null_header_and_body() -> None:
    assert heartbeat() == struct.pack(">IIII", 20, 1392, 4, 4) + b"nullnull"


def test_reply_keeps_the_seed_errmsg_bytes() -> None:
    frame, _ = decode(reply("Register", 2, "1234567", ErrId.OK), LIMIT)
    assert frame is not None
    assert frame.header == b'{"RequestID":"RespRegister"}'
    assert frame.body == '{"id":"1234567","errid":0,"errmsg":"正确"}'.encode()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", (None, 0)),
        (b"\x00\x00", (None, 0)),
        (raw(20, 2, 4, 4)[:10], (None, 0)),
        (raw(20, 2, 4, 4, b"nul"), (None, 0)),
        (raw(20, 1392, 4, 4, b"nullnull"), (Frame(1392, b"null", b"null"), 20 + 4)),
        (raw(12, 7, 0, 0), (Frame(7, b"", b""), 16)),
        (raw(14, 2, 1, 1, b"{}extra"), (Frame(2, b"{", b"}"), 18)),
    ],
)
def test_decode_table(data: bytes, expected: tuple[Frame | None, int]) -> None:
    assert decode(data, LIMIT) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (raw(11, 2, 0, 0), "below the minimum"),
        (struct.pack(">I", 0), "below the minimum"),
        (raw(20, 2, 4, 5), "!= 12 \\+ headerLength 4 \\+ bodyLength 5"),
        (raw(20, 2, 0xFFFFFFFF, 9), "headerLength"),
        (struct.pack(">I", LIMIT - 3), "exceeds the limit"),  # 4 + length > limit
        (struct.pack(">I", 2 * LIMIT), "exceeds the limit"),
    ],
)
def test_decode_refuses_broken_frames(data: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        decode(data, LIMIT)


def test_limit_counts_the_whole_frame() -> None:
    body = b"x" * (LIMIT - 16)
    frame = encode(2, b"", body)
    assert len(frame) == LIMIT
    assert decode(frame, LIMIT)[0] == Frame(2, b"", body)
    with pytest.raises(FrameError):
        decode(encode(2, b"", body + b"x"), LIMIT)


def test_decoder_reassembles_byte_by_byte_and_splits_batches() -> None:
    frames = [pack(2, {"RequestID": "Find"}, {"id": str(i)}) for i in range(3)] + [heartbeat()]
    stream = b"".join(frames)
    one_by_one = FrameDecoder(LIMIT)
    got: list[Frame] = []
    for i in range(len(stream)):
        done, error = one_by_one.feed(stream[i : i + 1])
        assert error is None
        got += done
    assert [f.message_id for f in got] == [2, 2, 2, 1392]
    assert one_by_one.buffered == 0
    at_once, error = FrameDecoder(LIMIT).feed(stream)
    assert at_once == got and error is None


def test_decoder_returns_good_frames_before_a_broken_one() -> None:
    good = pack(2, {"RequestID": "Find"}, {"id": "a"})
    frames, error = FrameDecoder(LIMIT).feed(good + raw(20, 2, 4, 5))
    assert len(frames) == 1 and isinstance(error, FrameError)


def request(header: bytes, body: bytes, message_id: int = 2) -> Request | BadRequest:
    return parse_request(Frame(message_id, header, body))


REGISTER = b'{"RequestID":"Register"}'


@pytest.mark.parametrize(
    ("header", "body", "name", "task_id"),
    [
        (b"not json", b'{"id":"a"}', "Unknown", "a"),
        (b"null", b'{"id":"a"}', "Unknown", "a"),
        (b'{"RequestID":5}', b'{"id":"a"}', "Unknown", "a"),
        (b'{"RequestID":"Delete"}', b'{"id":"a"}', "Delete", "a"),
        (b'{"RequestID":"../\\n"}', b"{}", "Unknown", ""),
        (REGISTER, b"{not json", "Register", ""),
        (REGISTER, b"null", "Register", ""),
        (REGISTER, b"[]", "Register", ""),
        (REGISTER, b'{"name":"no id"}', "Register", ""),
        (REGISTER, b'{"id":""}', "Register", ""),
        (REGISTER, b'{"id":" padded "}', "Register", " padded "),
        (REGISTER, b'{"id":7}', "Register", ""),
        (REGISTER, b'{"id":"a","name":7}', "Register", "a"),
        (REGISTER, b'{"id":"a","start_time":"25:00"}', "Register", "a"),
        (REGISTER, b'{"id":"a","status":"' + b"x" * 65 + b'"}', "Register", "a"),
        (REGISTER, b'{"id":"a","user":"\xff"}', "Register", ""),
        # JSON is UTF-8 (RFC 8259), in a key that is ignored too
        (REGISTER, b'{"id":"a","extra":"\xff"}', "Register", ""),
        (REGISTER, b'{"id":"a","\xff":1}', "Register", ""),
        (b'{"RequestID":"Find","x":"\xfe"}', b'{"id":"a"}', "Unknown", "a"),
        # the window is exactly "H:MM" / "HH:MM": a trailing newline is not
        (REGISTER, b'{"id":"a","start_time":"12:00\\n"}', "Register", "a"),
        (REGISTER, b'{"id":"a","stop_time":"9:30\\n"}', "Register", "a"),
        (b'{"RequestID":"Find"}', b'{"id":["a"]}', "Find", ""),
    ],
)
def test_bad_requests_table(header: bytes, body: bytes, name: str, task_id: str) -> None:
    parsed = request(header, body)
    assert isinstance(parsed, BadRequest)
    assert (parsed.name, parsed.task_id) == (name, task_id)


def test_unknown_message_id_is_a_bad_request() -> None:
    parsed = request(REGISTER, b'{"id":"a"}', message_id=3)
    assert isinstance(parsed, BadRequest) and parsed.message_id == 3


def test_register_keeps_what_was_sent_and_marks_the_rest_unset() -> None:
    parsed = request(REGISTER, b'{"id":"a","name":"n","start_time":"9:30","extra":1}')
    assert isinstance(parsed, Request)
    assert parsed.body.given(("name", "url", "start_time", "stop_time")) == {  # type: ignore[union-attr]
        "name": "n",
        "start_time": "9:30",
    }
