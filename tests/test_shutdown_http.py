"""DrainingHTTPServer: a stop answers the requests already read, then closes (real sockets)."""

from __future__ import annotations

import asyncio

import tornado.web

from taskdash.draining import DrainingHTTPServer
from taskdash.lifecycle import bind_setting


class Slow(tornado.web.RequestHandler):
    """Answers when the test releases it: a request still being handled at the stop."""

    async def get(self) -> None:
        self.application.settings["entered"].set()
        await self.application.settings["release"].wait()
        self.write("answered")


async def serve() -> tuple[DrainingHTTPServer, int, asyncio.Event, asyncio.Event]:
    entered, release = asyncio.Event(), asyncio.Event()
    app = tornado.web.Application([("/slow", Slow)], entered=entered, release=release)
    server = DrainingHTTPServer(app)
    sockets = bind_setting("test.port", "127.0.0.1", 0)
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1], entered, release


async def send_get(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    await writer.drain()
    return reader, writer


async def test_a_request_being_handled_at_the_stop_is_answered() -> None:
    server, port, entered, release = await serve()
    reader, writer = await send_get(port)
    await entered.wait()
    assert server.in_flight == 1
    draining = asyncio.create_task(server.drain(timeout=60))
    await asyncio.sleep(0.05)
    assert not draining.done(), "waits for the request in hand"
    try:
        await asyncio.open_connection("127.0.0.1", port)
        raise AssertionError("still listening while draining")
    except ConnectionRefusedError:
        pass
    release.set()
    answer = await asyncio.wait_for(reader.read(), 10)  # to EOF: answered, then closed
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"answered")
    await asyncio.wait_for(draining, 10)
    assert server.in_flight == 0
    writer.close()


async def test_idle_keep_alive_connections_are_closed_at_once() -> None:
    server, port, _entered, release = await serve()
    release.set()
    reader, writer = await send_get(port)
    head = await reader.readuntil(b"answered")
    assert head.startswith(b"HTTP/1.1 200")
    assert server.in_flight == 0, "answered: the kept-alive connection is idle"
    await asyncio.wait_for(server.drain(timeout=3600), 10)
    assert await asyncio.wait_for(reader.read(), 10) == b"", "closed by the drain"
    writer.close()


async def test_a_request_that_never_ends_is_cut_at_the_deadline() -> None:
    server, port, entered, _release = await serve()
    reader, writer = await send_get(port)
    await entered.wait()
    await asyncio.wait_for(server.drain(timeout=0.01), 10)
    assert await asyncio.wait_for(reader.read(), 10) == b"", "given up: closed unanswered"
    writer.close()
