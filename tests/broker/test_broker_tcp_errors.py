"""Exact error frames over a real socket, and whether the broker then closes the connection."""

from __future__ import annotations

import json
import struct
from collections.abc import Awaitable, Callable

import pytest
from broker_helpers import RawClient, error_code

from taskdash.nsq.broker import Broker
from taskdash.nsq.broker.protocol import FRAME_ERROR, FRAME_RESPONSE, HEARTBEAT

Connect = Callable[..., Awaitable[RawClient]]


def _len(n: int) -> bytes:
    return struct.pack(">i", n)


def _mpub(topic: str, body: bytes) -> bytes:
    return f"MPUB {topic}\n".encode() + _len(len(body)) + body


MAX_MSG = 1048576
MAX_BODY = 5242880
ID = b"0123456789abcdef"

# (case, needs SUB first, bytes sent, expected code)
FATAL_CASES = [
    ("unknown command", False, b"FOO\n", "E_INVALID"),
    ("lower-case command", False, b"nop\n", "E_INVALID"),
    ("empty line", False, b"\n", "E_INVALID"),
    ("identify zero length", False, b"IDENTIFY\n" + _len(0), "E_BAD_BODY"),
    ("identify negative length", False, b"IDENTIFY\n" + _len(-1), "E_BAD_BODY"),
    ("identify too big", False, b"IDENTIFY\n" + _len(MAX_BODY + 1), "E_BAD_BODY"),
    ("identify bad json", False, b"IDENTIFY\n" + _len(5) + b"{nope", "E_BAD_BODY"),
    (
        "identify bad heartbeat",
        False,
        b"IDENTIFY\n" + _len(27) + b'{"heartbeat_interval": 500}',
        "E_BAD_BODY",
    ),
    ("identify after sub", True, b"IDENTIFY\n" + _len(2) + b"{}", "E_INVALID"),
    ("sub missing channel", False, b"SUB topic\n", "E_INVALID"),
    ("sub bad topic", False, b"SUB bad/topic ch\n", "E_BAD_TOPIC"),
    ("sub long topic", False, b"SUB " + b"t" * 65 + b" ch\n", "E_BAD_TOPIC"),
    ("sub bad channel", False, b"SUB topic bad*ch\n", "E_BAD_CHANNEL"),
    ("sub twice", True, b"SUB topic other\n", "E_INVALID"),
    ("pub no topic", False, b"PUB\n", "E_INVALID"),
    ("pub bad topic", False, b"PUB no:pe\n" + _len(1) + b"x", "E_BAD_TOPIC"),
    ("pub empty body", False, b"PUB topic\n" + _len(0), "E_BAD_MESSAGE"),
    ("pub negative length", False, b"PUB topic\n" + _len(-7), "E_BAD_MESSAGE"),
    ("pub oversized", False, b"PUB topic\n" + _len(MAX_MSG + 1), "E_BAD_MESSAGE"),
    ("mpub no topic", False, b"MPUB\n", "E_INVALID"),
    ("mpub bad topic", False, b"MPUB #x\n", "E_BAD_TOPIC"),
    ("mpub zero length", False, b"MPUB topic\n" + _len(0), "E_BAD_BODY"),
    ("mpub too big", False, b"MPUB topic\n" + _len(MAX_BODY + 1), "E_BAD_BODY"),
    ("mpub zero count", False, _mpub("topic", _len(0)), "E_BAD_BODY"),
    ("mpub empty message", False, _mpub("topic", _len(1) + _len(0)), "E_BAD_MESSAGE"),
    (
        "mpub oversized message",
        False,
        _mpub("topic", _len(1) + _len(MAX_MSG + 1) + b"x" * (MAX_MSG + 1)),
        "E_BAD_MESSAGE",
    ),
    ("mpub truncated message", False, _mpub("topic", _len(1) + _len(10) + b"abc"), "E_BAD_MESSAGE"),
    ("dpub missing delay", False, b"DPUB topic\n", "E_INVALID"),
    ("dpub bad topic", False, b"DPUB b@d 10\n", "E_BAD_TOPIC"),
    ("dpub delay not a number", False, b"DPUB topic soon\n", "E_INVALID"),
    ("dpub negative delay", False, b"DPUB topic -1\n", "E_INVALID"),
    ("dpub delay above max", False, b"DPUB topic 3600001\n", "E_INVALID"),
    ("dpub empty body", False, b"DPUB topic 10\n" + _len(0), "E_BAD_MESSAGE"),
    ("rdy before sub", False, b"RDY 1\n", "E_INVALID"),
    ("rdy above max", True, b"RDY 2501\n", "E_INVALID"),
    ("rdy negative", True, b"RDY -1\n", "E_INVALID"),
    ("rdy not a number", True, b"RDY many\n", "E_INVALID"),
    ("fin before sub", False, b"FIN " + ID + b"\n", "E_INVALID"),
    ("fin without id", True, b"FIN\n", "E_INVALID"),
    ("fin short id", True, b"FIN abc\n", "E_INVALID"),
    ("fin long id", True, b"FIN " + ID + b"0\n", "E_INVALID"),
    ("req without delay", True, b"REQ " + ID + b"\n", "E_INVALID"),
    ("req short id", True, b"REQ abc 0\n", "E_INVALID"),
    ("req bad delay", True, b"REQ " + ID + b" later\n", "E_INVALID"),
    ("req negative delay", True, b"REQ " + ID + b" -5\n", "E_INVALID"),
    ("touch before sub", False, b"TOUCH " + ID + b"\n", "E_INVALID"),
    ("touch short id", True, b"TOUCH abc\n", "E_INVALID"),
    ("cls before sub", False, b"CLS\n", "E_INVALID"),
    ("auth disabled", False, b"AUTH\n" + _len(6) + b"secret", "E_AUTH_DISABLED"),
    ("auth with params", False, b"AUTH x\n", "E_INVALID"),
    ("auth after sub", True, b"AUTH\n" + _len(6) + b"secret", "E_INVALID"),
]


@pytest.mark.parametrize(
    ("setup_sub", "payload", "code"),
    [case[1:] for case in FATAL_CASES],
    ids=[case[0] for case in FATAL_CASES],
)
async def test_fatal_errors_send_frame_then_close(
    raw: Connect, setup_sub: bool, payload: bytes, code: str
) -> None:
    client = await raw()
    if setup_sub:
        await client.subscribe("errors", "ch")
    await client.send(payload)
    assert error_code(await client.error()) == code
    assert await client.closed()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (b"FIN 0000000000000000", b"E_FIN_FAILED FIN 0000000000000000 failed ID not in flight"),
        (b"REQ 0000000000000000 0", b"E_REQ_FAILED REQ 0000000000000000 failed ID not in flight"),
        (
            b"TOUCH 0000000000000000",
            b"E_TOUCH_FAILED TOUCH 0000000000000000 failed ID not in flight",
        ),
    ],
)
async def test_non_fatal_errors_keep_connection(
    raw: Connect, command: bytes, expected: bytes
) -> None:
    client = await raw()
    await client.subscribe("nonfatal", "ch")
    await client.command(command)
    assert await client.error() == expected
    assert await client.alive()


async def test_fin_of_another_clients_message_fails_non_fatally(raw: Connect) -> None:
    owner, other = await raw(), await raw()
    await owner.subscribe("owned", "ch", rdy=1)
    await other.subscribe("owned", "ch")
    await owner.pub("owned", b"mine")
    msg = await owner.message()
    await other.command(b"FIN " + msg.id)
    assert (
        await other.error()
        == b"E_FIN_FAILED FIN " + msg.id + b" failed client does not own message"
    )
    assert await other.alive()
    await owner.command(b"FIN " + msg.id)
    assert await owner.alive()


async def test_bad_magic_gets_bare_error_and_close(raw: Connect) -> None:
    client = await raw(magic=b"  V1")
    assert await client.read_frame() == (FRAME_ERROR, b"E_BAD_PROTOCOL")
    assert await client.closed()


async def test_unknown_command_text(raw: Connect) -> None:
    client = await raw()
    await client.command("FOO bar")
    assert await client.error() == b"E_INVALID invalid command FOO"


async def test_overlong_line_closes_without_frame(raw: Connect) -> None:
    client = await raw()
    await client.send(b"PUB " + b"x" * 20000)
    assert await client.reader.read() == b""


async def test_identify_without_negotiation_says_ok(raw: Connect) -> None:
    client = await raw()
    await client.command("IDENTIFY", json.dumps({"client_id": "x"}).encode())
    assert await client.response() == b"OK"


async def test_identify_negotiation_reports_client_msg_timeout(raw: Connect) -> None:
    client = await raw()
    doc = await client.identify(msg_timeout=1234, tls_v1=True)
    assert doc["msg_timeout"] == 1234
    # no certificate: TLS is not offered, as by an nsqd without --tls-cert
    assert (doc["tls_v1"], doc["snappy"], doc["deflate"]) == (False, False, False)
    assert doc["max_rdy_count"] == 2500 and doc["version"] == "1.3.0"


async def test_largest_message_is_accepted(raw: Connect) -> None:
    client = await raw()
    await client.pub("big", b"m" * MAX_MSG)


async def test_nop_has_no_reply(raw: Connect) -> None:
    client = await raw()
    await client.command("NOP")
    assert await client.alive()


async def test_cls_says_close_wait_then_rdy_is_ignored(raw: Connect) -> None:
    client = await raw()
    await client.subscribe("closing", "ch")
    await client.command("CLS")
    assert await client.response() == b"CLOSE_WAIT"
    await client.command("RDY 5")
    await client.pub("closing", b"not for a closing client")
    await client.no_frame()


async def test_heartbeats_keep_an_answering_client(raw: Connect) -> None:
    client = await raw()
    await client.identify(heartbeat_interval=1000)
    for _ in range(3):  # three intervals > the 2-interval read deadline
        assert await client.read_frame() == (FRAME_RESPONSE, HEARTBEAT)
        await client.command("NOP")
    assert await client.alive()


async def test_silent_client_is_closed_after_two_intervals(raw: Connect, broker: Broker) -> None:
    client = await raw()
    await client.identify(heartbeat_interval=1000)
    assert await client.read_frame() == (FRAME_RESPONSE, HEARTBEAT)
    assert await client.closed()
    assert not broker.registry.connections


async def test_sub_needs_heartbeats(raw: Connect) -> None:
    client = await raw()
    await client.identify(heartbeat_interval=-1)
    await client.command("SUB topic ch")
    assert await client.error() == b"E_INVALID cannot SUB with heartbeats disabled"
    assert await client.closed()


async def test_a_consumer_that_failed_fatally_gets_no_more_messages(raw: Connect) -> None:
    """nsqd drops a client the moment it fails: its share goes to the healthy consumers at once.

    (While the broker lingers to let the error frame reach the client, that client must not
    be handed messages it will never see, nor break delivery to the others.)
    """
    healthy, failing, producer = await raw(), await raw(), await raw()
    await healthy.subscribe("linger", "ch", rdy=5)
    await failing.subscribe("linger", "ch", rdy=5)
    await failing.command("FIN short")  # fatal E_INVALID
    assert error_code(await failing.error()) == "E_INVALID"
    for i in range(4):
        await producer.pub("linger", f"m{i}".encode())
    received = [await healthy.message(timeout=2) for _ in range(4)]
    assert sorted(m.body for m in received) == [b"m0", b"m1", b"m2", b"m3"]
    for msg in received:
        await healthy.command(b"FIN " + msg.id)
    assert await healthy.alive()
    assert await failing.closed()
