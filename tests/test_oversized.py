"""A body announced over the HTTP server's limit: a JSON 413 before any handler (real sockets).

The dashboard's server (limit ``MAX_BODY_SIZE``) is served by ``DrainingHTTPServer`` exactly as
the daemon serves it; the periodic service's limit is its setting, tested in
``tests/periodic/test_http.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import requests
import structlog.testing
import tornado.httputil
import tornado.web
from web_client import Served, make_user, password_for, serve

from taskdash import oversized
from taskdash.draining import DrainingHTTPServer
from taskdash.lifecycle import bind_setting
from taskdash.oversized import announced_length
from taskdash.store import Store
from taskdash.store.assignments import get_assignment
from taskdash.web.app import MAX_BODY_SIZE


@pytest.fixture
async def app(store: Store) -> AsyncIterator[Served]:
    await make_user(store, "alice")
    await store.tasks.insert_one({"_id": "t", "key": "t", "assignee": ""})
    async with serve(store) as served:
        yield served


def port_of(app: Served) -> int:
    return int(app.base.rsplit(":", 1)[1])


async def raw(app: Served, head: str, body: bytes = b"") -> tuple[bytes, bytes]:
    """Send ``head`` (and ``body``), read until the server closes: (status line, the rest)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(app))
    try:
        writer.write(head.encode() + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status, _, rest = answer.partition(b"\r\n")
    return status, rest


def request_head(length: int, *extra: str, path: str = "/api/v1/tasks/t/claim") -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: x", "Connection: close"]
    lines.append("Content-Type: application/json")
    return "\r\n".join([*lines, f"Content-Length: {length}", *extra, "", ""])


def json_body(rest: bytes) -> dict[str, str]:
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"application/json" in headers and b"Connection: close" in headers, headers
    return json.loads(body)


async def test_an_announced_body_over_the_limit_is_a_json_413_and_reaches_no_handler(
    app: Served,
) -> None:
    too_big = MAX_BODY_SIZE + 1
    with structlog.testing.capture_logs() as logs:
        status, rest = await raw(app, request_head(too_big), b"x" * too_big)
    assert status == b"HTTP/1.1 413 Payload Too Large", status
    body = json_body(rest)
    assert body["error"] == "payload_too_large"
    assert f"({too_big} bytes)" in body["message"] and str(MAX_BODY_SIZE) in body["message"]
    [line] = [e for e in logs if e["event"] == "http_body_too_large"]
    assert line["path"] == "/api/v1/tasks/t/claim" and line["content_length"] == too_big
    assert line["limit"] == MAX_BODY_SIZE and line["peer"] == "127.0.0.1"
    assert (await get_assignment(app.store, "t")).version == 0


async def test_the_limit_itself_is_read_and_handled(app: Served) -> None:
    # exactly MAX_BODY_SIZE bytes reach the application, which answers for itself (no login)
    status, rest = await raw(app, request_head(MAX_BODY_SIZE), b"x" * MAX_BODY_SIZE)
    assert status == b"HTTP/1.1 401 Unauthorized", status
    assert json_body(rest)["error"] == "unauthorized"
    assert (await get_assignment(app.store, "t")).version == 0


async def test_expect_100_continue_gets_the_413_instead_of_the_go_ahead(app: Served) -> None:
    # the client sends no body at all: the server must answer from the headers alone
    status, rest = await raw(app, request_head(10 * MAX_BODY_SIZE, "Expect: 100-continue"))
    assert status == b"HTTP/1.1 413 Payload Too Large", status
    assert b"100" not in status and json_body(rest)["error"] == "payload_too_large"


async def test_a_client_that_sends_the_whole_body_reads_the_413_not_a_reset(app: Served) -> None:
    # requests sends the body without waiting: the server reads and drops it, then closes
    def post() -> requests.Response:
        with requests.Session() as session:
            return session.post(f"{app.base}/api/v1/tasks/t/claim", data=body, timeout=10)

    body = b"y" * (oversized.DISCARD - 65536)  # more than loopback buffers hold
    reply = await asyncio.to_thread(post)
    assert reply.status_code == 413 and reply.json()["error"] == "payload_too_large"
    assert f"{len(body)} bytes" in reply.json()["message"]
    alice = app.client()
    await alice.login("alice", password_for("alice"))
    assert (await alice.call("/api/v1/me"))[0] == 200, "the server is fine"


@pytest.mark.parametrize("length", ["abc", "-1", "²", f"{MAX_BODY_SIZE + 1}, {MAX_BODY_SIZE + 1}"])
async def test_a_malformed_length_is_left_to_tornado(app: Served, length: str) -> None:
    head = request_head(0).replace("Content-Length: 0", f"Content-Length: {length}")
    with structlog.testing.capture_logs() as logs:
        status, _ = await raw(app, head)
    assert status == b"HTTP/1.1 400 Bad Request", status
    assert not [e for e in logs if e["event"] == "http_body_too_large"]


async def test_a_chunked_body_over_the_limit_is_still_cut_off_by_tornado(app: Served) -> None:
    head = request_head(0).replace("Content-Length: 0", "Transfer-Encoding: chunked")
    chunk = b"x" * 32768
    body = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 3 + b"0\r\n\r\n"
    status, _ = await raw(app, head, body)
    assert status == b"HTTP/1.1 400 Bad Request", status
    assert (await get_assignment(app.store, "t")).version == 0


async def test_a_drain_ends_the_answer_to_a_refused_client_that_keeps_its_connection() -> None:
    server = DrainingHTTPServer(tornado.web.Application([]), max_body_size=100)
    sockets = bind_setting("test.port", "127.0.0.1", 0)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_head(101, path="/").encode() + b"x" * 10)  # then nothing more
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 413")
    assert server.refusals.answering == 1  # lingering: the client may still send its body
    await asyncio.wait_for(server.drain(timeout=30), 5)
    assert server.refusals.answering == 0, "the drain ended the lingering answer"
    await asyncio.wait_for(reader.read(), 5)  # to EOF: the server closed it
    writer.close()


async def test_a_client_that_keeps_sending_is_cut_off_after_the_discard_budget(
    app: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oversized, "DISCARD", 4096)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(app))
    writer.write(request_head(10 * MAX_BODY_SIZE).encode())
    assert (await reader.readline()).startswith(b"HTTP/1.1 413")
    try:
        for _ in range(200):  # 6.4 MB: far past the 4 KiB the server reads before closing
            writer.write(b"z" * 32768)
            await writer.drain()
    except ConnectionError:
        pass  # closed under our feet: that is the point
    else:
        pytest.fail("the server read everything sent after its answer")
    finally:
        writer.close()


def test_announced_length_reads_only_one_plain_decimal() -> None:
    def of(**headers: str) -> int | None:
        return announced_length(tornado.httputil.HTTPHeaders(headers))

    assert of() is None and of(**{"Content-Length": ""}) is None
    assert of(**{"Content-Length": "12"}) == 12 and of(**{"Content-Length": "0"}) == 0
    for bad in ("1.5", "+3", " 3", "\uff13", "1e3"):  # the last but one: a full-width 3
        assert of(**{"Content-Length": bad}) is None, bad
