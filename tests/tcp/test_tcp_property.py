"""Property: for random, mutated, deep and large frames the server answers exactly what the wire
documents say, never crashes, never leaks a connection or a task, and keeps serving others.

The expected replies come from an oracle written here from the documents alone
(``../shared/docs/tcpx-wire.md`` and docs/tcp.md), not from the code under test: frames cut
with ``struct``, JSON read with the standard library's strict parser, the record checked
against the documented limits, and the store modelled as a dict. Every reply is checked —
messageID, header, ``id``, ``errid``, ``errmsg``, and Find's fields — in order. Each example
starts from an empty store, so a failing example shrinks on its own. The test owns its event
loop, so hypothesis runs every example against one server and one store.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support import async_wait_for

from taskdash.settings import TcpSettings
from taskdash.store import Store
from taskdash.store.assignments import HISTORY
from taskdash.tcp.client import TcpClient
from taskdash.tcp.server import TcpServer

LIMIT = 64 * 1024  # max_frame_size: room for deep and large JSON
HEARTBEAT = 1392
PREFIX = struct.Struct(">IIII")

# -- the oracle: the documents, nothing imported from taskdash.tcp -----------------------------

OK = (0, "正确")
BAD = (1000, "请求格式不正确")
NO_SUCH = (1002, "不存在该任务id")
FIELDS = ("name", "url", "user", "group_id", "description", "status", "start_time", "stop_time")
MAX_LENGTH = {"name": 256, "url": 2048, "user": 128, "group_id": 256, "description": 4096,
              "status": 64}  # fmt: skip
CLOCKS = ("start_time", "stop_time")
SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
INVALID = object()


class Ambiguous(Exception):
    """Input whose expected answer the documents leave open: the example is skipped."""


def frames_of(stream: bytes) -> list[tuple[int, bytes, bytes]]:
    """(messageID, header, body) of each whole frame before the first broken or cut one.

    tcpx-wire.md: four big-endian uint32 (length = 12 + headerLength + bodyLength, messageID,
    headerLength, bodyLength), then header and body. A length below 12, over the limit (the 4
    length bytes included), or not the sum of its parts ends the connection.
    """
    frames, at = [], 0
    while len(stream) - at >= 4:
        (length,) = struct.unpack_from(">I", stream, at)
        if length < 12 or length + 4 > LIMIT or len(stream) - at < 16:
            break
        _, message_id, header_len, body_len = PREFIX.unpack_from(stream, at)
        if 12 + header_len + body_len != length or len(stream) - at < 4 + length:
            break
        split = at + 16 + header_len
        frames.append((message_id, stream[at + 16 : split], stream[split : at + 4 + length]))
        at += 4 + length
    return frames


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({key for key, _ in pairs}) != len(pairs):
        raise Ambiguous("duplicate keys: RFC 8259 leaves the meaning open")
    return dict(pairs)


def _refuse(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _strings(value: Any) -> Iterator[str]:
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            todo.extend(item)
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)


def json_of(data: bytes) -> Any:
    """The JSON value of ``data`` as RFC 8259 reads it, or INVALID (docs/tcp.md: UTF-8, no BOM,
    no NaN/Infinity, no unpaired surrogate escape; nesting deep enough to defeat a decoder is
    refused too, and the examples keep nesting far from that edge)."""
    try:
        text = data.decode("utf-8")
        value = json.loads(text, parse_constant=_refuse, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):
        return INVALID
    if any(LONE_SURROGATE.search(s) for s in _strings(value)):
        return INVALID
    return value


def good_id(value: Any) -> bool:
    """docs/tcp.md: 1 to 128 characters without leading/trailing blanks or a line break."""
    if not isinstance(value, str) or "\n" in value:
        return False
    return 1 <= len(value) <= 128 and value == value.strip()


def good_clock(value: str) -> bool:
    """docs/tcp.md: "H:MM" or "HH:MM" from 00:00 to 23:59, or ""."""
    if value == "":
        return True
    hours, colon, minutes = value.partition(":")
    digits = set("0123456789")
    if not colon or not 1 <= len(hours) <= 2 or len(minutes) != 2:
        return False
    if not set(hours + minutes) <= digits:
        return False
    return int(hours) < 24 and int(minutes) < 60


def record_of(body: Any) -> dict[str, str] | None:
    """The fields a Register/Update body sets, or None when docs/tcp.md makes it a 1000."""
    if not isinstance(body, dict) or not good_id(body.get("id")):
        return None
    given: dict[str, str] = {}
    for key in FIELDS:
        if key not in body:
            continue
        value = body[key]
        if not isinstance(value, str):
            return None
        if not (good_clock(value) if key in CLOCKS else len(value) <= MAX_LENGTH[key]):
            return None
        given[key] = value
    return given


@dataclass
class Reply:
    """One expected reply frame."""

    message_id: int
    name: str
    body: list[tuple[str, Any]]  # in order


def expected(stream: bytes, stored: dict[str, dict[str, str]]) -> list[Reply]:
    """The replies the documents promise for ``stream``, updating the model ``stored``."""
    replies = []
    for message_id, header_bytes, body_bytes in frames_of(stream):
        if message_id == HEARTBEAT:
            continue
        header, body = json_of(header_bytes), json_of(body_bytes)
        asked = header.get("RequestID") if isinstance(header, dict) else None
        name = asked if isinstance(asked, str) and SAFE_NAME.fullmatch(asked) else "Unknown"
        hint = body.get("id") if isinstance(body, dict) else None
        hint = hint if isinstance(hint, str) and 1 <= len(hint) <= 128 else ""

        def answer(task_id: str, outcome: tuple[int, str], *fields: tuple[str, str]) -> None:
            errid, errmsg = outcome
            pairs = [("id", task_id), *fields, ("errid", errid), ("errmsg", errmsg)]
            replies.append(Reply(message_id, name, pairs))  # noqa: B023 - called at once

        if message_id != 2:
            answer("", BAD)
            continue
        if name == "Find":
            if not isinstance(body, dict) or not good_id(body.get("id")):
                answer(hint, BAD)
            elif (task := stored.get(body["id"])) is None:
                answer(body["id"], NO_SUCH)
            else:
                answer(body["id"], OK, *((key, task[key]) for key in FIELDS))
            continue
        record = record_of(body) if name in ("Register", "Update") else None
        if record is None:
            answer(hint, BAD)
        elif name == "Update" and body["id"] not in stored:
            answer(body["id"], NO_SUCH)
        else:
            stored.setdefault(body["id"], dict.fromkeys(FIELDS, "")).update(record)
            answer(body["id"], OK)
    return replies


def replies_of(data: bytes) -> list[Reply]:
    """The frames the server sent, read with the oracle's own framing."""
    frames = frames_of(data)
    assert sum(16 + len(h) + len(b) for _, h, b in frames) == len(data), "only whole frames"
    out = []
    for message_id, header, body in frames:
        (key, resp), *more = json.loads(header, object_pairs_hook=list)
        assert key == "RequestID" and not more and resp.startswith("Resp")
        out.append(Reply(message_id, resp[4:], json.loads(body, object_pairs_hook=list)))
    return out


# -- what the clients send ---------------------------------------------------------------------


def frame(message_id: int, header: bytes, body: bytes) -> bytes:
    """A tcpx frame, packed here as tcpx-wire.md says."""
    return PREFIX.pack(12 + len(header) + len(body), message_id, len(header), len(body)) + (
        header + body
    )


DEEP = "\x00deep\x00"  # stands for a nested value, spliced into the JSON text


def nested(depth: int, arrays: bool) -> str:
    """Valid JSON nested ``depth`` levels (json.dumps would itself recurse too deep)."""
    return "[" * (depth + 1) + "]" * (depth + 1) if arrays else '{"a":' * depth + "1" + "}" * depth


def to_json(value: Any, ascii_only: bool, deep: str) -> bytes:
    """``value`` as JSON text; ``ascii_only=False`` writes raw UTF-8 (surrogates as CESU)."""
    text = json.dumps(value, ensure_ascii=ascii_only).replace(json.dumps(DEEP), deep)
    return text.encode("utf-8", "surrogatepass")


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``choices``, each drawn in proportion to its weight (``st.one_of`` does not
    keep repeated branches' weight), shrinking towards the first."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(
        lambda strategy: strategy
    )


id_text = st.text(max_size=6)
pool = st.sampled_from(["a", "b", "c"])  # ids shared by the requests of one example
ids = weighted(
    (12, pool),
    (1, id_text),
    (1, st.sampled_from(["", " a", "a ", "x" * 128, "x" * 129, "é" * 128, "\ud800"])),
    (1, st.one_of(st.integers(), st.none(), st.lists(st.just("a"), max_size=1))),
)


def field_values(key: str) -> st.SearchStrategy[Any]:
    """Short text, text at the documented limit (±1), a bad window, or the wrong type."""
    if key in CLOCKS:
        text = st.one_of(
            st.sampled_from(["", "9:30", "09:30", "23:59", "24:00", "12:60", "1:2", "12:00\n"]),
            st.sampled_from(["٠٩:٣٠", " 9:30", "9:30 ", "x", "\n", "9:30\n"]),
            st.text(max_size=6),
        )
    else:
        limit = MAX_LENGTH[key]
        text = st.one_of(
            st.text(max_size=12),
            st.builds(lambda ch, n: ch * n, st.sampled_from("xé中😀"),
                      st.sampled_from([limit - 1, limit, limit + 1])),
        )  # fmt: skip
    wrong = st.one_of(st.integers(), st.none(), st.booleans(), st.lists(st.just("x"), max_size=1))
    short = st.sampled_from(["9:30", "18:00", ""]) if key in CLOCKS else st.text(max_size=8)
    return weighted((12, short), (4 if key in CLOCKS else 2, text), (1, wrong))


depths = st.one_of(st.integers(0, 120), st.integers(1500, 2500))  # never near ~1,000
deeps = st.builds(nested, depths, st.booleans())
extras = weighted(
    (3, st.just({})),
    (
        1,
        st.dictionaries(
            st.sampled_from(["extra", "reserved", "n"]),
            st.one_of(st.just(DEEP), st.integers(-5, 5), st.text(max_size=5), st.just("\udcff")),
            min_size=1,
            max_size=2,
        ),
    ),
)
records = st.builds(
    lambda id_, fields, more: {"id": id_, **fields, **more},
    ids,
    st.fixed_dictionaries({}, optional={key: field_values(key) for key in FIELDS}),
    extras,
)
bodies = weighted(
    (12, records),
    (1, records.map(lambda r: {k: v for k, v in r.items() if k != "id"})),
    (1, st.sampled_from([None, [], "a", 5, DEEP])),
)
plain = st.builds(lambda name: {"RequestID": name}, st.sampled_from(["Register", "Update", "Find"]))
headers = weighted(
    (12, plain),
    (
        1,
        st.builds(
            lambda name, more: {"RequestID": name, **more},
            st.one_of(
                st.sampled_from(["Register", "Update", "Find", "Nope", "N" * 64, "N" * 65]),
                st.text(max_size=4),
            ),
            extras,
        ),
    ),
    (1, st.sampled_from([None, {}, {"RequestID": 2}, [], "Find", DEEP])),
)
requests = st.builds(
    lambda mid, header, body, ascii_only, deep: frame(
        mid, to_json(header, ascii_only, deep), to_json(body, ascii_only, deep)
    ),
    st.sampled_from([2] * 16 + [HEARTBEAT, 0, 3, 0xFFFFFFFF]),
    headers,
    bodies,
    st.booleans(),
    deeps,
)
junk = st.one_of(
    st.builds(frame, st.sampled_from([0, 2, HEARTBEAT]), st.binary(max_size=64),
              st.binary(max_size=64)),
    st.builds(lambda n, rest: struct.pack(">I", n) + rest,
              st.sampled_from([0, 11, LIMIT - 3, 2 * LIMIT, 0xFFFFFFFF]), st.binary(max_size=20)),
    st.builds(lambda n, h, b: PREFIX.pack(n, 2, h, b), st.integers(12, 64), st.integers(0, 40),
              st.integers(0, 40)),
    st.just(frame(HEARTBEAT, b"null", b"null")),
    st.just(frame(HEARTBEAT, b"", b"")),
    st.binary(max_size=64),
)  # fmt: skip


def mutate(args: tuple[bytes, int, bytes, str]) -> bytes:
    """Damage a frame at one place (its length fields included): replace, insert or cut."""
    data, at, noise, how = args
    at %= len(data)
    if how == "replace":
        return data[:at] + noise + data[at + len(noise) :]
    if how == "insert":
        return data[:at] + noise + data[at:]
    return data[:at]


mutated = st.tuples(
    requests,
    st.integers(0, 1 << 16),
    st.binary(min_size=1, max_size=4),
    st.sampled_from(["replace", "insert", "cut"]),
).map(mutate)
pieces = st.lists(weighted((12, requests), (1, mutated), (1, junk)), min_size=1, max_size=10)
cuts = st.lists(st.integers(0, 1 << 20), max_size=6)


# -- the world ---------------------------------------------------------------------------------


PRESET = {"name": "preset", "user": "wsg", "start_time": "12:00"}  # task "a" before each example


class World:
    """One server, one store, one bystander client kept open across every example."""

    def __init__(self, store: Store, server: TcpServer, bystander: TcpClient) -> None:
        self.store, self.server, self.bystander = store, server, bystander

    @classmethod
    async def start(cls, mongo_uri: str) -> World:
        store = Store(mongo_uri, f"t_{uuid.uuid4().hex[:12]}", server_selection_timeout=5)
        await store.ensure_indexes()
        server = TcpServer(store, TcpSettings(port=0, max_frame_size=LIMIT))
        await server.start()
        bystander = await TcpClient("127.0.0.1", server.port or 0, timeout=30).connect()
        return cls(store, server, bystander)

    async def stop(self) -> None:
        await self.bystander.close()
        await self.server.stop()
        await self.store.client.drop_database(self.store.db.name)
        await self.store.close()

    async def reset(self) -> dict[str, dict[str, str]]:
        """The store emptied but for the bystander's task and task "a"; its model."""
        for name in ("tasks", HISTORY):
            await self.store[name].delete_many({})
        self.server.handler.finder.cache.clear()  # deleted behind its back: no TTL to wait
        assert (await self.bystander.register({"id": "bystander"}))["errid"] == 0
        assert (await self.bystander.register({"id": "a", **PRESET}))["errid"] == 0
        return {
            "bystander": dict.fromkeys(FIELDS, ""),
            "a": {**dict.fromkeys(FIELDS, ""), **PRESET},
        }

    async def exchange(self, stream: bytes, at: list[int]) -> bytes:
        """Send ``stream`` cut at ``at`` on a new connection; everything the server sends."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        bounds = sorted({0, len(stream), *(i % (len(stream) + 1) for i in at)})
        with contextlib.suppress(ConnectionError):  # the server may close first: its right
            for start, end in itertools.pairwise(bounds):
                writer.write(stream[start:end])
                await writer.drain()
            writer.write_eof()
        data = b""
        async with asyncio.timeout(30):
            with contextlib.suppress(ConnectionError):  # closed with our bytes unread: a reset
                while part := await reader.read(65536):
                    data += part
        writer.close()
        return data

    async def example(
        self, stream: bytes, at: list[int], stored: dict[str, dict[str, str]]
    ) -> None:
        want = expected(stream, stored)
        got = replies_of(await self.exchange(stream, at))
        assert got == want, "every reply as the documents say, in order"
        tasks = {doc["_id"] async for doc in self.store.tasks.find({}, {"_id": 1})}
        assert tasks == set(stored), "tasks come from accepted Registers only"
        assert (await self.bystander.find("bystander"))["errid"] == 0, "others still served"
        await async_wait_for(lambda: len(self.server.connections) == 1, timeout=30)
        assert self.server.counts["internal_errors"] == 0


@pytest.mark.timeout(300)
def test_random_mutated_deep_and_large_frames(mongo_uri: str) -> None:
    loop = asyncio.new_event_loop()
    try:
        world = loop.run_until_complete(World.start(mongo_uri))
        try:

            @settings(
                max_examples=200,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(chunks=pieces, at=cuts)
            def check(chunks: list[bytes], at: list[int]) -> None:
                stream = b"".join(chunks)
                try:
                    expected(
                        stream, {"a": dict.fromkeys(FIELDS, "")}
                    )  # decided by the documents, or skipped
                except Ambiguous:
                    assume(False)
                stored = loop.run_until_complete(world.reset())
                loop.run_until_complete(world.example(stream, at, stored))

            check()
            assert world.server.check()[0]
        finally:
            loop.run_until_complete(world.stop())
    finally:
        loop.close()
