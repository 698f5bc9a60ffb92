"""Valid JSON nested deeper than the decoder recurses: a bad request (1000), not a dropped link.

msgspec raises RecursionError (not a DecodeError) for JSON nested about 1,000 levels deep, which
a client can send in ~4 KB. Such a frame is well framed, so it must get errid 1000 like any other
unreadable request, and the connection must keep serving the requests after it.
"""

from __future__ import annotations

import msgspec
import pytest
import structlog.testing
from tcp_helpers import BAD, OK, RECORD, client, serving

from taskdash.store import Store
from taskdash.tcp.protocol import Frame, encode, pack
from taskdash.tcp.requests import BadRequest, parse_request

DEPTH = 2000  # ~4 KB of valid JSON; msgspec gives up near 1,000 levels
ARRAYS = b"[" * DEPTH + b"]" * DEPTH
OBJECTS = b'{"a":' * DEPTH + b"1" + b"}" * DEPTH
FIND = b'{"RequestID":"Find"}'
REGISTER = b'{"RequestID":"Register"}'

#: (header, body, reply header's name, echoed id): each frame is valid JSON, nested too deep.
CASES = [
    pytest.param(b'{"RequestID":"Find","x":' + ARRAYS + b"}", b'{"id":"a"}', "Unknown", "a",
                 id="header-extra-key-arrays"),
    pytest.param(b'{"RequestID":"Find","x":' + OBJECTS + b"}", b'{"id":"a"}', "Unknown", "a",
                 id="header-extra-key-objects"),
    pytest.param(REGISTER, ARRAYS, "Register", "", id="body-arrays"),
    pytest.param(REGISTER, OBJECTS, "Register", "", id="body-objects"),
    pytest.param(REGISTER, b'{"id":"a","x":' + ARRAYS + b"}", "Register", "", id="body-extra-key"),
    pytest.param(FIND, b'{"id":"a","x":' + OBJECTS + b"}", "Find", "", id="find-extra-key"),
    pytest.param(b'{"RequestID":"Nope"}', ARRAYS, "Nope", "", id="unknown-request-deep-body"),
]  # fmt: skip


def test_json_nesting_is_valid_and_too_deep_for_the_decoder() -> None:
    """The premise: these are JSON documents the decoder refuses with RecursionError."""
    for data in (ARRAYS, OBJECTS):
        assert len(data) < 16 * 1024
        with pytest.raises(RecursionError):
            msgspec.json.decode(data)


@pytest.mark.parametrize(("header", "body", "name", "task_id"), CASES)
def test_deep_json_is_a_bad_request(header: bytes, body: bytes, name: str, task_id: str) -> None:
    parsed = parse_request(Frame(2, header, body))
    assert isinstance(parsed, BadRequest)
    assert (parsed.name, parsed.task_id) == (name, task_id)


async def test_deep_json_gets_1000_and_the_connection_keeps_serving(store: Store) -> None:
    async with serving(store) as server:
        c = await client(server)
        for param in CASES:
            header, body, name, task_id = param.values
            await c.send_raw(encode(2, header, body))
            frame = await c.read_frame()  # raises ClientError if the server dropped us
            assert frame.header == msgspec.json.encode({"RequestID": f"Resp{name}"})
            assert msgspec.json.decode(frame.body) == {"id": task_id, **BAD}, param.id
        # the same connection, after every deep frame: still served, in order
        await c.send_raw(pack(2, {"RequestID": "Register"}, RECORD))
        assert msgspec.json.decode((await c.read_frame()).body) == {"id": "1234567", **OK}
        assert (await c.find("1234567"))["name"] == RECORD["name"]
        details = server.check()[1]
        assert details["internal_errors"] == 0 and details["connections"] == 1
        await c.close()
    assert await store.tasks.count_documents({}) == 1


async def test_internal_errors_are_counted_and_their_log_is_rate_limited(store: Store) -> None:
    """A bug some input reaches must not turn repeated input into a flood of tracebacks."""
    async with serving(store) as server:
        c = await client(server)
        assert (await c.find("nope"))["errid"] == 1002  # the connection is open and known
        (conn,) = server.connections
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                try:
                    raise RuntimeError("a bug")
                except RuntimeError:
                    server.internal_error(conn)
        await c.close()
    assert server.counts["internal_errors"] == 3
    (logged,) = [e for e in logs if e["event"] == "tcp_internal_error"]
    assert logged["exc_info"] is True and logged["peer"] == conn.peer
