"""Property: whatever is published, each message ends stored or dead-lettered, and never blocks.

Random bytes, random JSON, deep nesting and mutated valid bodies go to both topics through the
real embedded broker and the real pynsq readers into a real MongoDB. The test owns its event
loop, so hypothesis can run many examples against one broker, one store and one set of readers.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ingest_helpers import (
    channel_stats,
    drained,
    fast_nsq,
    mpub_binary,
    new_broker,
    start_ingestion,
    stop_ingestion,
)
from support import async_wait_for

from taskdash.nsq.broker import Broker
from taskdash.nsq.readers import Ingestion
from taskdash.store import Store

NSQ = fast_nsq(max_message_size=1024, max_attempts=3)
PROBE = "svc-probe"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ids = st.from_regex(r"[a-z0-9][a-z0-9-]{0,19}", fullmatch=True)
valid = st.fixed_dictionaries(
    {"id": ids}, optional={"name": st.text(max_size=30), "url": st.text(max_size=30)}
).map(lambda d: json.dumps(d).encode())


def mutate(args: tuple[bytes, int, bytes, str]) -> bytes:
    """Damage a valid body at one place: replace, insert or cut."""
    body, at, junk, how = args
    at %= len(body)
    if how == "replace":
        return body[:at] + junk + body[at + len(junk) :]
    if how == "insert":
        return body[:at] + junk + body[at:]
    return body[:at] or junk


def break_utf8(args: tuple[bytes, int, bytes]) -> bytes:
    """Put bytes that are not UTF-8 inside one of a valid body's strings."""
    body, which, junk = args
    quotes = [i for i, byte in enumerate(body) if byte == ord('"')]
    at = quotes[which % len(quotes)] + 1
    return body[:at] + junk + body[at:]


not_utf8 = st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
mutated_utf8 = st.tuples(valid, st.integers(0, 50), not_utf8).map(break_utf8)
mutated = st.tuples(
    valid,
    st.integers(0, 500),
    st.binary(min_size=1, max_size=3),
    st.sampled_from(["replace", "insert", "cut"]),
).map(mutate)
bodies = st.one_of(
    st.binary(min_size=1, max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"id": json_values}).map(lambda d: json.dumps(d).encode()),
    st.integers(50, 3000).map(lambda n: b'{"id":' + b"[" * n + b"]" * n + b"}"),
    mutated,
    mutated_utf8,
    valid,
)


class World:
    """One broker, one store and the readers, shared by every example."""

    def __init__(self, broker: Broker, store: Store, ingestion: Ingestion) -> None:
        self.broker, self.store, self.ingestion = broker, store, ingestion

    @classmethod
    async def start(cls, mongo_uri: str, tmp_path: Path) -> World:
        broker = new_broker(tmp_path)
        await broker.start()
        store = Store(mongo_uri, f"t_{uuid.uuid4().hex[:12]}", server_selection_timeout=5)
        await store.ensure_indexes()
        ingestion = await start_ingestion(store, broker, NSQ, node="prop")
        world = cls(broker, store, ingestion)
        for consumer in ingestion.consumers:
            await async_wait_for(lambda c=consumer: c.check()[1]["connections"] == 1)
        await mpub_binary(broker, NSQ.service_topic, [json.dumps({"id": PROBE}).encode()])
        await async_wait_for(lambda: store.services.find_one({"_id": PROBE}))
        return world

    async def stop(self) -> None:
        await stop_ingestion(self.ingestion)
        await self.broker.stop()
        await self.store.client.drop_database(self.store.db.name)
        await self.store.close()

    def settled(self) -> dict[str, int]:
        """Messages each topic's reader stored or dead-lettered so far."""
        return {
            c.topic: c.counters.stored + c.counters.dead_lettered for c in self.ingestion.consumers
        }

    async def probe_beats(self) -> int:
        doc = await self.store.services.find_one({"_id": PROBE})
        return int(doc.get("heartbeats_total", 0))

    async def example(self, published: dict[str, list[bytes]]) -> None:
        """Publish, then a good heartbeat behind; check where every message ended."""
        before, dead_before = self.settled(), self.dead_lettered()
        letters_before = await self.store.dead_letters.count_documents({})
        requeues_before = {
            t: (await channel_stats(self.broker, t))["requeue_count"] for t in published
        }
        probe_before = await self.probe_beats()
        for topic, items in published.items():
            if items:
                await mpub_binary(self.broker, topic, items)
        await mpub_binary(self.broker, NSQ.heartbeat_topic, [json.dumps({"id": PROBE}).encode()])
        # the good heartbeat behind them is not held up by them
        await async_wait_for(lambda: self._probe_after(probe_before), timeout=2.0, every=0.01)
        for topic in published:
            await async_wait_for(lambda t=topic: drained(self.broker, t), timeout=30)
        after = self.settled()
        expected = {t: len(items) for t, items in published.items()}
        expected[NSQ.heartbeat_topic] += 1
        assert {t: after[t] - before[t] for t in published} == expected, "each exactly once"
        letters = await self.store.dead_letters.count_documents({}) - letters_before
        assert letters == self.dead_lettered() - dead_before, "every dead letter kept, once"
        late = await self.store.dead_letters.count_documents(
            {"attempts": {"$gt": NSQ.max_attempts}}
        )
        assert late == 0, "dead-lettered within bounded attempts"
        for topic, count in requeues_before.items():
            requeued = (await channel_stats(self.broker, topic))["requeue_count"] - count
            assert requeued <= expected[topic] * (NSQ.max_attempts - 1), "bounded retries"

    def dead_lettered(self) -> int:
        return sum(c.counters.dead_lettered for c in self.ingestion.consumers)

    async def _probe_after(self, count: int) -> bool:
        return await self.probe_beats() > count


@pytest.mark.timeout(300)
def test_every_message_ends_stored_or_dead_lettered(mongo_uri: str, tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    try:
        world = loop.run_until_complete(World.start(mongo_uri, tmp_path))
        try:

            @settings(
                max_examples=20,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @example(services=[b'{"id":"a\xffb"}'], beats=[b'{"id":"a\xffb"}', b"[" * 3000])
            @given(services=st.lists(bodies, max_size=6), beats=st.lists(bodies, max_size=6))
            def check(services: list[bytes], beats: list[bytes]) -> None:
                published: dict[str, Any] = {
                    NSQ.service_topic: services,
                    NSQ.heartbeat_topic: beats,
                }
                loop.run_until_complete(world.example(published))

            check()
        finally:
            loop.run_until_complete(world.stop())
    finally:
        loop.close()
