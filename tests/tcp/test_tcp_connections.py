"""Framing over real sockets, limits, idle timeout, concurrency and a clean stop."""

from __future__ import annotations

import asyncio
import socket
import struct

import msgspec
from support import async_wait_for
from tcp_helpers import OK, RECORD, client, read_to_eof, serving

from taskdash.settings import TcpSettings
from taskdash.store import Store
from taskdash.tcp.client import ClientError, TcpClient
from taskdash.tcp.protocol import heartbeat, pack
from taskdash.tcp.server import TcpServer


def find(task_id: str) -> bytes:
    return pack(2, {"RequestID": "Find"}, {"id": task_id})


def register(task_id: str, **fields: str) -> bytes:
    return pack(2, {"RequestID": "Register"}, {**RECORD, "id": task_id, **fields})


async def open_raw(server: TcpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed (EOF or reset), reading whatever came before."""
    try:
        async with asyncio.timeout(30):
            while await reader.read(65536):
                pass
    except ConnectionResetError:
        pass
    return True


async def test_frame_split_into_1_byte_writes_and_many_frames_in_one_write(store: Store) -> None:
    async with serving(store) as server:
        reader, writer = await open_raw(server)
        for byte in register("split"):
            writer.write(bytes([byte]))
            await writer.drain()
        batch = b"".join([find("split"), heartbeat(), find("nope"), register("two"), find("two")])
        writer.write(batch)
        writer.write_eof()
        frames, rest = await read_to_eof(reader)
        writer.close()
    bodies = [msgspec.json.decode(f.body) for f in frames]
    assert [(b["id"], b["errid"]) for b in bodies] == [
        ("split", 0),
        ("split", 0),
        ("nope", 1002),
        ("two", 0),
        ("two", 0),
    ]
    assert rest == b""


async def test_a_length_that_lies_closes_only_that_connection(store: Store) -> None:
    async with serving(store) as server:
        bystander = await client(server)
        reader, writer = await open_raw(server)
        lie = struct.pack(">IIII", 40, 2, 4, 4) + b"nullnull"  # 12 + 4 + 4 != 40
        writer.write(find("first") + lie + find("never"))
        frames, _ = await read_to_eof(reader)
        writer.close()
        assert [msgspec.json.decode(f.body)["id"] for f in frames] == ["first"], (
            "what was framed before is answered, nothing after"
        )
        assert server.counts["frame_errors"] == 1
        assert await bystander.register(RECORD) == {"id": "1234567", **OK}
        await bystander.close()


async def test_a_2_mib_frame_closes_the_connection_before_it_is_read(store: Store) -> None:
    async with serving(store) as server:
        reader, writer = await open_raw(server)
        writer.write(struct.pack(">IIII", 2 * 1024 * 1024 - 4, 2, 0, 2 * 1024 * 1024 - 16))
        writer.write(b"x" * 65536)  # the rest never needs to come
        assert await closed_by_server(reader)
        writer.close()
        assert server.counts["frame_errors"] == 1
        await async_wait_for(lambda: not server.connections)
        other = await client(server)
        assert (await other.find("x"))["errid"] == 1002
        await other.close()


async def test_heartbeats_keep_a_connection_past_the_idle_timeout_silence_closes_it(
    store: Store,
) -> None:
    async with serving(store, idle_timeout=2.0) as server:
        c = await client(server)
        loop = asyncio.get_running_loop()
        until = loop.time() + 5.0
        while loop.time() < until:  # three idle timeouts, kept alive by heartbeats only
            await c.heartbeat()
            await asyncio.sleep(0.1)
        assert server.counts["idle"] == 0
        assert (await c.find("x"))["errid"] == 1002, "still open"
        silent = await client(server)
        await async_wait_for(lambda: server.counts["idle"] >= 1, timeout=30)
        assert c._reader is not None and silent._reader is not None
        assert await closed_by_server(silent._reader)
        await c.close()
        await silent.close()


async def test_max_connections_refuses_the_one_too_many(store: Store) -> None:
    async with serving(store, max_connections=2) as server:
        first, second = await client(server), await client(server)
        third = await client(server)
        assert third._reader is not None
        assert await closed_by_server(third._reader)
        assert server.counts["refused_connections"] == 1
        assert (await first.find("x"))["errid"] == 1002
        await second.close()
        await async_wait_for(lambda: len(server.connections) == 1)
        fourth = await client(server)
        assert (await fourth.find("x"))["errid"] == 1002
        for c in (first, third, fourth):
            await c.close()


async def test_a_client_that_never_reads_is_dropped(store: Store) -> None:
    big = {"description": "d" * 4000, "url": "u" * 2000}
    async with serving(store, max_write_buffer=65536) as server:
        c = await client(server)
        await c.register({**RECORD, "id": "big", **big})
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        request = find("big")
        sent = 0
        loop = asyncio.get_running_loop()
        while server.counts["slow_clients"] == 0 and sent < 200_000:
            try:
                await loop.sock_sendall(sock, request * 50)
            except OSError:
                break
            sent += 50
        await async_wait_for(lambda: server.counts["slow_clients"] == 1, timeout=60)
        await async_wait_for(lambda: len(server.connections) == 1)
        sock.close()
        assert (await c.find("big"))["errid"] == 0, "the others are still served"
        await c.close()


async def test_500_connections_each_register_then_find(store: Store) -> None:
    async with serving(store) as server:

        async def one(i: int) -> tuple[int, int, str]:
            async with TcpClient("127.0.0.1", server.port or 0, timeout=60) as c:
                registered = await c.register({**RECORD, "id": f"t{i}", "user": f"u{i}"})
                found = await c.find(f"t{i}")
                return registered["errid"], found["errid"], found["user"]

        results = await asyncio.gather(*(one(i) for i in range(500)))
        assert results == [(0, 0, f"u{i}") for i in range(500)]
        assert await store.tasks.count_documents({}) == 500
        assert await store.tasks.count_documents({"assignee": {"$ne": ""}}) == 500
        await async_wait_for(lambda: not server.connections)
        assert server.handler.finder.queries < 500, "Finds shared round trips"


async def test_stop_answers_what_was_read_then_closes_and_accepts_nothing(store: Store) -> None:
    server = TcpServer(store, TcpSettings(port=0))
    await server.start()
    try:
        reader, writer = await open_raw(server)
        writer.write(b"".join(register(f"s{i}") for i in range(20)))
        await async_wait_for(lambda: server.requests >= 1)
        stopping = asyncio.create_task(server.stop())
        frames, _ = await read_to_eof(reader)
        await stopping
        writer.close()
    finally:
        await server.stop()
    assert [msgspec.json.decode(f.body)["errid"] for f in frames] == [0] * 20
    assert await store.tasks.count_documents({}) == 20
    assert server.check()[0] is False
    try:
        await TcpClient("127.0.0.1", server.port or 0, timeout=5).connect()
    except ClientError:
        pass
    else:
        raise AssertionError("a stopped server accepted a connection")


async def test_answers_keep_request_order_when_hits_follow_a_write(store: Store) -> None:
    """A cached Find is answered without waiting, but never before a request ahead of it."""
    async with serving(store) as server:
        async with TcpClient("127.0.0.1", server.port or 0) as c:
            assert (await c.register({**RECORD, "id": "y"}))["errid"] == 0
            assert (await c.find("y"))["errid"] == 0  # cached now
            assert (await c.find("y"))["errid"] == 0
        hits = server.find_stats()["hits"]
        reader, writer = await open_raw(server)
        not_json = pack(2, {"RequestID": "Find"}, None)[:-4] + b"{{{{"
        batch = [find("y"), register("z", name="zed"), find("y"), find("z"), not_json, find("y")]
        writer.write(b"".join(batch))
        writer.write_eof()
        frames, _ = await read_to_eof(reader)
        writer.close()
    replies = [
        (msgspec.json.decode(f.header)["RequestID"], msgspec.json.decode(f.body)) for f in frames
    ]
    assert [(name, body["id"], body["errid"]) for name, body in replies] == [
        ("RespFind", "y", 0),
        ("RespRegister", "z", 0),
        ("RespFind", "y", 0),
        ("RespFind", "z", 0),
        ("RespFind", "", 1000),
        ("RespFind", "y", 0),
    ]
    assert replies[3][1]["name"] == "zed", "the Find behind the Register saw it"
    assert server.find_stats()["hits"] >= hits + 3, "the cached Finds were hits"
