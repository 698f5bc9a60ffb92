"""Property: random and mutated frames never crash the server, leak a connection or a task,
and never stop the other clients from being served.

The expected outcome of each example comes from the pure model (the frame decoder and the
request parser): exactly the well-framed Registers before the first broken frame create
tasks, and every well-framed non-heartbeat frame before it gets one reply. The test owns its
event loop, so hypothesis runs many examples against one server and one store.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import async_wait_for

from taskdash.settings import TcpSettings
from taskdash.store import Store
from taskdash.tcp.client import TcpClient
from taskdash.tcp.protocol import HEARTBEAT_ID, FrameDecoder, encode, heartbeat, pack
from taskdash.tcp.requests import Request, parse_request
from taskdash.tcp.server import TcpServer

LIMIT = 4096
ids = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True)
names = st.sampled_from(["Register", "Update", "Find", "Nope"])
records = st.fixed_dictionaries(
    {"id": ids},
    optional={"name": st.text(max_size=10), "start_time": st.sampled_from(["", "9:30", "x"])},
)
good = st.builds(lambda n, r: pack(2, {"RequestID": n}, r), names, records)
junk = st.builds(
    encode,
    st.sampled_from([0, 1, 2, 3, HEARTBEAT_ID, 0xFFFFFFFF]),
    st.binary(max_size=40),
    st.binary(max_size=40),
)


def mutate(args: tuple[bytes, int, bytes, str]) -> bytes:
    """Damage a frame at one place: replace, insert or cut (lengths included)."""
    frame, at, noise, how = args
    at %= len(frame)
    if how == "replace":
        return frame[:at] + noise + frame[at + len(noise) :]
    if how == "insert":
        return frame[:at] + noise + frame[at:]
    return frame[:at]


mutated = st.tuples(
    good,
    st.integers(0, 200),
    st.binary(min_size=1, max_size=4),
    st.sampled_from(["replace", "insert", "cut"]),
).map(mutate)
pieces = st.lists(
    st.one_of(good, junk, mutated, st.just(heartbeat()), st.binary(max_size=30)), max_size=6
)


def model(stream: bytes) -> tuple[int, set[str]]:
    """(replies expected, task ids a Register creates) from the pure decoder and parser."""
    frames, _ = FrameDecoder(LIMIT).feed(stream)
    answered = [f for f in frames if f.message_id != HEARTBEAT_ID]
    parsed = [parse_request(f) for f in answered]
    created = {p.id for p in parsed if isinstance(p, Request) and p.name == "Register"}
    return len(answered), created


class World:
    """One server, one store, one bystander client kept open across every example."""

    def __init__(self, store: Store, server: TcpServer, bystander: TcpClient) -> None:
        self.store, self.server, self.bystander = store, server, bystander
        self.created: set[str] = {"bystander"}

    @classmethod
    async def start(cls, mongo_uri: str) -> World:
        store = Store(mongo_uri, f"t_{uuid.uuid4().hex[:12]}", server_selection_timeout=5)
        await store.ensure_indexes()
        server = TcpServer(store, TcpSettings(port=0, max_frame_size=LIMIT))
        await server.start()
        bystander = await TcpClient("127.0.0.1", server.port or 0, timeout=30).connect()
        assert (await bystander.register({"id": "bystander"}))["errid"] == 0
        return cls(store, server, bystander)

    async def stop(self) -> None:
        await self.bystander.close()
        await self.server.stop()
        await self.store.client.drop_database(self.store.db.name)
        await self.store.close()

    async def example(self, chunks: list[bytes]) -> None:
        stream = b"".join(chunks)
        replies, created = model(stream)
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        for chunk in chunks:
            writer.write(chunk)
        writer.write_eof()
        data = b""
        async with asyncio.timeout(30):
            while part := await reader.read(65536):
                data += part
        writer.close()
        frames, error = FrameDecoder(1 << 20).feed(data)
        assert error is None and len(frames) == replies, "one reply per request, no more"
        self.created |= created
        stored = {doc["_id"] async for doc in self.store.tasks.find({}, {"_id": 1})}
        assert stored == self.created, "tasks come from well-framed Registers only"
        assert (await self.bystander.find("bystander"))["errid"] == 0, "others still served"
        await async_wait_for(lambda: len(self.server.connections) == 1, timeout=30)


@pytest.mark.timeout(300)
def test_random_and_mutated_frames(mongo_uri: str) -> None:
    loop = asyncio.new_event_loop()
    try:
        world = loop.run_until_complete(World.start(mongo_uri))
        try:

            @settings(
                max_examples=60,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(chunks=pieces)
            def check(chunks: list[bytes]) -> None:
                loop.run_until_complete(world.example(chunks))

            check()
            assert world.server.check()[0]
        finally:
            loop.run_until_complete(world.stop())
    finally:
        loop.close()
