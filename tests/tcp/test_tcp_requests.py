"""Every request and every error code, over real loopback sockets into a real MongoDB."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from tcp_helpers import BAD, NO_SUCH, OK, RECORD, client, read_to_eof, serving

from taskdash.store import Store
from taskdash.store.assignments import assignment_history, get_assignment
from taskdash.tcp.protocol import decode, encode, pack

FIELDS = {k: v for k, v in RECORD.items() if k != "id"}


async def test_register_find_update_find_with_the_seeds_exact_replies(store: Store) -> None:
    async with serving(store) as server:
        c = await client(server)
        assert await c.register(RECORD) == {"id": "1234567", **OK}
        assert await c.find("1234567") == {"id": "1234567", **FIELDS, **OK}
        changed = {**RECORD, "status": "finish", "user": "ssx", "stop_time": "19:30"}
        assert await c.update(changed) == {"id": "1234567", **OK}
        found = await c.find("1234567")
        assert (found["status"], found["user"], found["group_id"], found["stop_time"]) == (
            "finish",
            "ssx",
            "mx",
            "19:30",
        )
        assert list(found) == ["id", *FIELDS, "errid", "errmsg"]
        await c.close()
    binding = await get_assignment(store, "1234567")
    assert (binding.user, binding.group_id, binding.source, binding.version) == (
        "ssx",
        "mx",
        "tcp",
        2,
    )
    assert binding.by.startswith("tcp:127.0.0.1:"), "the peer that set it"
    history = await assignment_history(store, "1234567")
    assert [(h["user"], h["previous_user"], h["source"]) for h in history] == [
        ("ssx", "wsg", "tcp"),
        ("wsg", "", "tcp"),
    ]


async def test_reply_frames_byte_for_byte(store: Store) -> None:
    async with serving(store) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(pack(2, {"RequestID": "Find"}, {"id": "nope"}))
        writer.write(pack(2, {"RequestID": "Register"}, {"id": "x"}))
        writer.write_eof()
        frames, rest = await read_to_eof(reader)
        writer.close()
    assert rest == b""
    assert [(f.message_id, f.header) for f in frames] == [
        (2, b'{"RequestID":"RespFind"}'),
        (2, b'{"RequestID":"RespRegister"}'),
    ]
    assert frames[0].body == '{"id":"nope","errid":1002,"errmsg":"不存在该任务id"}'.encode()
    assert frames[1].body == '{"id":"x","errid":0,"errmsg":"正确"}'.encode()


async def test_register_of_an_existing_id_updates_it(store: Store) -> None:
    async with serving(store) as server:
        c = await client(server)
        assert await c.register(RECORD) == {"id": "1234567", **OK}
        before = await store.tasks.find_one({"_id": "1234567"})
        assert await c.register({**RECORD, "name": "renamed"}) == {"id": "1234567", **OK}
        assert (await c.find("1234567"))["name"] == "renamed"
        await c.close()
    after = await store.tasks.find_one({"_id": "1234567"})
    assert after["first_seen_at"] == before["first_seen_at"]
    assert await store.tasks.count_documents({}) == 1
    history = await assignment_history(store, "1234567")
    assert len(history) == 1, "re-registering the same binding writes no history"


async def test_update_keeps_what_is_not_sent_and_unknown_ids_get_1002(store: Store) -> None:
    async with serving(store) as server:
        c = await client(server)
        assert await c.update({"id": "ghost", "name": "x"}) == {"id": "ghost", **NO_SUCH}
        assert await c.find("ghost") == {"id": "ghost", **NO_SUCH}
        assert await store.tasks.count_documents({}) == 0, "a refused Update stores nothing"
        await c.register(RECORD)
        assert await c.update({"id": "1234567", "status": "shutdown"}) == {"id": "1234567", **OK}
        assert await c.find("1234567") == {"id": "1234567", **FIELDS, "status": "shutdown", **OK}
        assert await c.update({"id": "1234567", "user": ""}) == {"id": "1234567", **OK}
        assert (await c.find("1234567"))["user"] == "", "an empty user releases the task"
        await c.close()


BAD_REQUESTS = [
    (2, b"not json", b'{"id":"a"}'),
    (2, b"null", b'{"id":"a"}'),
    (2, b'{"RequestID":"Delete"}', b'{"id":"a"}'),
    (2, b'{"RequestID":"Register"}', b"{not json"),
    (2, b'{"RequestID":"Register"}', b'{"name":"no id"}'),
    (2, b'{"RequestID":"Register"}', b'{"id":"a","name":5}'),
    (2, b'{"RequestID":"Update"}', b'{"id":"a","start_time":"noon"}'),
    (2, b'{"RequestID":"Find"}', b"null"),
    (2, b'{"RequestID":"Find"}', b""),
    (77, b'{"RequestID":"Find"}', b'{"id":"a"}'),
]


@pytest.mark.parametrize(("message_id", "header", "body"), BAD_REQUESTS)
async def test_bad_requests_get_1000_and_the_connection_stays_open(
    store: Store, message_id: int, header: bytes, body: bytes
) -> None:
    async with serving(store) as server:
        c = await client(server)
        await c.send_raw(encode(message_id, header, body))
        frame = await c.read_frame()
        assert frame.message_id == message_id
        answer = msgspec.json.decode(frame.body)
        assert {k: answer[k] for k in ("errid", "errmsg")} == BAD
        assert await c.register(RECORD) == {"id": "1234567", **OK}, "still served"
        await c.close()
        assert server.counts["frame_errors"] == 0
    ids = [doc["_id"] async for doc in store.tasks.find({})]
    assert ids == ["1234567"], "nothing stored for a bad request"


async def test_heartbeats_get_no_reply(store: Store) -> None:
    async with serving(store) as server:
        c = await client(server)
        for _ in range(3):
            await c.heartbeat()
        await c.send_raw(encode(1392, b"", b""))
        assert await c.find("nope") == {"id": "nope", **NO_SUCH}, "the next frame is the reply"
        await c.close()


def test_reply_decodes_with_the_frame_decoder() -> None:
    frame, end = decode(pack(2, {"RequestID": "RespFind"}, {"id": "a"}), 1024)
    assert frame is not None and end == 16 + 24 + 10
