"""The pure wire layer: tables of inputs and the values or errors they must give."""

from __future__ import annotations

import json
import struct

import pytest

from taskdash.nsq.broker.message import IdFactory
from taskdash.nsq.broker.options import Options
from taskdash.nsq.broker.protocol import (
    ClientSettings,
    ProtocolError,
    apply_identify,
    decode_frame,
    encode_frame,
    encode_message,
    encode_mpub,
    identify_response,
    is_valid_name,
    message_id,
    parse_base10,
    parse_mpub,
    split_command,
)

OPTIONS = Options()


def test_frame_layout() -> None:
    frame = encode_frame(1, b"E_INVALID x")
    assert frame[:8] == struct.pack(">ii", 4 + 11, 1)
    assert decode_frame(frame) == (1, b"E_INVALID x")
    assert decode_frame(frame[:-1]) is None


def test_message_layout() -> None:
    data = encode_message(123456789, 3, b"0123456789abcdef", b"body")
    assert data == struct.pack(">qH", 123456789, 3) + b"0123456789abcdef" + b"body"


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("a", True),
        ("topic.name_with-dashes", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("x" * 54 + "#ephemeral", True),
        ("x" * 55 + "#ephemeral", False),
        ("chan#ephemeral", True),
        ("#ephemeral", False),
        ("chan#other", False),
        ("", False),
        ("has space", False),
        ("slash/no", False),
        ("newline\n", False),
        ("ümlaut", False),
    ],
)
def test_names(name: str, valid: bool) -> None:
    assert is_valid_name(name) is valid


@pytest.mark.parametrize(
    ("line", "params"),
    [
        (b"NOP\n", [b"NOP"]),
        (b"SUB t c\r\n", [b"SUB", b"t", b"c"]),
        (b"SUB  t c\n", [b"SUB", b"", b"t", b"c"]),
        (b"\n", [b""]),
    ],
)
def test_split_command(line: bytes, params: list[bytes]) -> None:
    assert split_command(line) == params


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"0", 0),
        (b"", 0),
        (b"2500", 2500),
        (b"007", 7),
        (b"-1", None),
        (b"+1", None),
        (b"1.5", None),
        (b"1e3", None),
        (b" 1", None),
    ],
)
def test_base10(raw: bytes, value: int | None) -> None:
    if value is None:
        with pytest.raises(ValueError):
            parse_base10(raw)
    else:
        assert parse_base10(raw) == value


def test_message_id_checks_length_only() -> None:
    assert message_id(b"zzzzzzzzzzzzzzzz") == b"zzzzzzzzzzzzzzzz"
    with pytest.raises(ProtocolError) as err:
        message_id(b"abc")
    assert (err.value.code, err.value.fatal) == ("E_INVALID", True)


def test_only_three_codes_are_non_fatal() -> None:
    for code in ("E_FIN_FAILED", "E_REQ_FAILED", "E_TOUCH_FAILED"):
        assert ProtocolError(code, "x").fatal is False
    for code in ("E_INVALID", "E_BAD_BODY", "E_BAD_TOPIC", "E_BAD_MESSAGE", "E_PUB_FAILED"):
        assert ProtocolError(code, "x").fatal is True


MPUB_CASES = [
    (encode_mpub([b"a", b"bc"]), [b"a", b"bc"], None),
    (b"\x00\x00", None, "E_BAD_BODY"),
    (struct.pack(">i", 0), None, "E_BAD_BODY"),
    (struct.pack(">i", -1), None, "E_BAD_BODY"),
    (struct.pack(">i", 2) + struct.pack(">i", 1) + b"a", None, "E_BAD_MESSAGE"),
    (struct.pack(">ii", 1, 0), None, "E_BAD_MESSAGE"),
    (struct.pack(">ii", 1, -5), None, "E_BAD_MESSAGE"),
    (struct.pack(">ii", 1, 10) + b"short", None, "E_BAD_MESSAGE"),
    (encode_mpub([b"x" * 11]), None, "E_BAD_MESSAGE"),  # above max_msg_size=10 below
    (encode_mpub([b"a"]) + b"trailing", None, "E_BAD_BODY"),
]


@pytest.mark.parametrize(("body", "expected", "code"), MPUB_CASES)
def test_parse_mpub(body: bytes, expected: list[bytes] | None, code: str | None) -> None:
    if code is None:
        assert parse_mpub(body, 10, 1000, exact=True) == expected
    else:
        with pytest.raises(ProtocolError) as err:
            parse_mpub(body, 10, 1000, exact=True)
        assert err.value.code == code


def test_parse_mpub_count_limit_follows_body_size() -> None:
    with pytest.raises(ProtocolError, match="invalid message count 3"):
        parse_mpub(encode_mpub([b"a", b"b", b"c"]), 10, 14, exact=True)  # (14-4)//5 = 2


def _identify(**fields: object) -> ClientSettings:
    start = ClientSettings.defaults(OPTIONS, "10.0.0.1")
    return apply_identify(json.dumps(fields).encode(), start, OPTIONS)


def test_identify_defaults_and_values() -> None:
    settings = _identify(
        client_id="c",
        hostname="h",
        user_agent="ua/1",
        feature_negotiation=True,
        heartbeat_interval=1000,
        msg_timeout=1000,
        sample_rate=5,
        output_buffer_size=64,
        output_buffer_timeout=25,
        unknown_key=[1],
    )
    assert settings.client_id == "c"
    assert settings.heartbeat_interval_ms == 1000
    assert settings.msg_timeout_ms == 1000
    assert settings.sample_rate == 5
    assert (settings.output_buffer_size, settings.output_buffer_timeout_ms) == (64, 25)
    assert _identify().heartbeat_interval_ms == OPTIONS.heartbeat_interval_ms
    assert _identify(heartbeat_interval=-1).heartbeat_interval_ms == 0
    assert _identify(output_buffer_size=-1).output_buffer_timeout_ms == 0
    assert _identify(Heartbeat_Interval=2000).heartbeat_interval_ms == 2000  # Go: keys fold case


@pytest.mark.parametrize(
    "fields",
    [
        {"heartbeat_interval": 999},
        {"heartbeat_interval": 60001},
        {"heartbeat_interval": -2},
        {"heartbeat_interval": "1000"},
        {"heartbeat_interval": 1000.5},
        {"output_buffer_size": 63},
        {"output_buffer_size": 65537},
        {"output_buffer_timeout": 24},
        {"output_buffer_timeout": 30001},
        {"sample_rate": 100},
        {"sample_rate": -1},
        {"msg_timeout": 999},
        {"msg_timeout": 900001},
        {"client_id": 5},
        {"feature_negotiation": 1},
    ],
)
def test_identify_rejects(fields: dict[str, object]) -> None:
    with pytest.raises(ProtocolError) as err:
        _identify(**fields)
    assert (err.value.code, err.value.fatal) == ("E_BAD_BODY", True)


@pytest.mark.parametrize("body", [b"{", b"[]", b"42", b'{"a": NaN}', b"{} x"])
def test_identify_rejects_bad_json(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="E_BAD_BODY IDENTIFY failed to decode JSON body"):
        apply_identify(body, ClientSettings.defaults(OPTIONS, "h"), OPTIONS)


def test_identify_response_is_complete_and_refuses_compression() -> None:
    settings = _identify(
        feature_negotiation=True, msg_timeout=2000, tls_v1=True, snappy=True, deflate=True
    )
    doc = json.loads(identify_response(settings, OPTIONS))
    assert doc == {
        "max_rdy_count": 2500,
        "version": "1.3.0",
        "max_msg_timeout": 900000,
        "msg_timeout": 2000,
        "tls_v1": False,
        "deflate": False,
        "deflate_level": 6,
        "max_deflate_level": 6,
        "snappy": False,
        "sample_rate": 0,
        "auth_required": False,
        "output_buffer_size": 16384,
        "output_buffer_timeout": 250,
    }


def test_ids_are_16_hex_ascii_and_increasing() -> None:
    factory = IdFactory()
    ids = [factory.next() for _ in range(1000)]
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    factory.observe(b"7fffffffffffff00")
    assert factory.next() == b"7fffffffffffff01"
