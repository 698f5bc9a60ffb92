"""Find's read cache against a real server and store: own writes at once, others' after the TTL.

The cache's clock is a :class:`ManualClock`: an entry expires only when a test advances it,
so nothing here waits for time to pass.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support import NxServer, async_wait_for
from tcp_helpers import NO_SUCH, OK, RECORD, STORE_FAILED, ManualClock, client, serving

from taskdash.errors import ConfigError
from taskdash.settings import TcpSettings, load
from taskdash.store import Store
from taskdash.tcp.cache import MISS
from taskdash.tcp.client import TcpClient
from taskdash.tcp.server import TcpServer

TTL = TcpSettings().find_cache_ttl


async def set_directly(store: Store, task_id: str, **fields: str) -> None:
    """A change made by another writer (the fetcher, the web, another daemon)."""
    result = await store.tasks.update_one({"_id": task_id}, {"$set": fields})
    assert result.matched_count == 1


async def test_a_write_over_tcp_is_seen_by_the_next_find_at_once(store: Store) -> None:
    clock = ManualClock()
    async with serving(store, clock=clock) as server:
        writer, reader = await client(server), await client(server)
        assert await reader.find("1234567") == {"id": "1234567", **NO_SUCH}, "cached as unknown"
        assert await writer.register(RECORD) == {"id": "1234567", **OK}
        assert (await reader.find("1234567"))["name"] == "abc", "Register seen at once"
        assert (await reader.find("1234567"))["name"] == "abc"
        hits = server.handler.finder.cache.hits
        assert hits >= 1, "the second Find was a hit"
        await writer.update({"id": "1234567", "name": "renamed", "user": "ann", "status": "x"})
        found = await reader.find("1234567")
        assert (found["name"], found["user"], found["status"]) == ("renamed", "ann", "x")
        await writer.update({"id": "1234567", "user": ""})
        assert (await reader.find("1234567"))["user"] == "", "a release too"
        assert server.find_stats()["entries"] == 1
        await writer.close()
        await reader.close()


async def test_a_change_made_elsewhere_is_seen_after_the_ttl_and_not_before(store: Store) -> None:
    clock = ManualClock()
    async with (
        serving(store, clock=clock) as server,
        serving(store, clock=clock) as other_daemon,
    ):
        c, other = await client(server), await client(other_daemon)
        assert await c.register(RECORD) == {"id": "1234567", **OK}
        assert (await c.find("1234567"))["status"] == "running"
        await set_directly(store, "1234567", status="finish")
        assert (await c.find("1234567"))["status"] == "running", "within the TTL: the cache"
        clock.advance(TTL - 0.001)
        assert (await c.find("1234567"))["status"] == "running", "still within it"
        clock.advance(0.001)
        assert (await c.find("1234567"))["status"] == "finish", "at the TTL: the store"
        # an unknown id is cached as unknown for the same TTL: another daemon's Register of it
        assert await c.find("later") == {"id": "later", **NO_SUCH}
        assert await other.register({"id": "later", "name": "elsewhere"}) == {"id": "later", **OK}
        assert await c.find("later") == {"id": "later", **NO_SUCH}
        clock.advance(TTL)
        assert (await c.find("later"))["name"] == "elsewhere"
        await c.close()
        await other.close()


async def test_ttl_zero_is_always_fresh(store: Store) -> None:
    async with serving(store, clock=ManualClock(), find_cache_ttl=0) as server:
        c = await client(server)
        assert await c.find("1234567") == {"id": "1234567", **NO_SUCH}
        await c.register(RECORD)
        for status in ("a", "b", "c"):
            await set_directly(store, "1234567", status=status)
            assert (await c.find("1234567"))["status"] == status
        stats = server.find_stats()
        assert (stats["entries"], stats["hits"], stats["queries"]) == (0, 0, 4)
        await c.close()


async def test_the_size_bound_holds_and_evicts_the_least_recently_used(store: Store) -> None:
    size = 20
    async with serving(store, clock=ManualClock(), find_cache_size=size) as server:
        cache = server.handler.finder.cache
        c = await client(server)
        for i in range(30):
            assert (await c.register({"id": f"t{i}", "name": f"n{i}"}))["errid"] == 0
        for i in range(30):
            assert (await c.find(f"t{i}"))["name"] == f"n{i}"
        for i in range(500):  # unknown ids take room too, never more than the bound
            assert (await c.find(f"none-{i}"))["errid"] == 1002
            assert len(cache) <= size
        assert len(cache) == size and cache.evictions == 530 - size
        finder = server.handler.finder
        queries = finder.queries
        assert (await c.find("none-480"))["errid"] == 1002
        assert finder.queries == queries, "the oldest entry left: a hit, now the most recent"
        assert (await c.find("t0"))["name"] == "n0"
        assert finder.queries == queries + 1, "evicted long ago: read again"
        assert (await c.find("none-480"))["errid"] == 1002
        assert finder.queries == queries + 1, "the hit kept it: none-481 was evicted instead"
        assert (await c.find("none-481"))["errid"] == 1002
        assert finder.queries == queries + 2
        await c.close()


async def test_concurrent_finds_of_one_id_during_a_miss_make_one_read(store: Store) -> None:
    """Finds arriving while the lookup of their id runs join it instead of queueing a second."""
    async with serving(store, clock=ManualClock()) as server:
        finder = server.handler.finder
        first = await client(server)
        others = [await client(server) for _ in range(20)]
        for attempt in range(20):
            task_id = f"x{attempt}"
            await first.register({"id": task_id, "name": "same"})
            reads, joined = finder.reads, finder.joined
            asked = asyncio.create_task(first.find(task_id))
            await async_wait_for(lambda: finder.reading(task_id) or asked.done(), every=0.0005)  # noqa: B023
            replies = await asyncio.gather(asked, *(c.find(task_id) for c in others))
            assert {r["name"] for r in replies} == {"same"}
            assert finder.reads == reads + 1, "one store read for all 21 Finds"
            if finder.joined > joined:
                break  # the lookup was caught running at least once: the join was exercised
        assert finder.joined > 0, "no Find ever arrived during a lookup"
        for c in (first, *others):
            await c.close()


async def test_a_write_during_a_lookup_keeps_its_result_out_of_the_cache(store: Store) -> None:
    """A lookup that may have read before this server's write neither fills the cache nor
    answers a Find that arrives after the write."""
    async with serving(store, clock=ManualClock()) as server:
        finder = server.handler.finder
        c = await client(server)
        await c.register(RECORD)
        before = asyncio.create_task(finder.find("1234567"))
        await async_wait_for(lambda: finder.reading("1234567"), every=0.0005)
        finder.invalidate("1234567")  # what a Register/Update over TCP does once written
        after = asyncio.create_task(finder.find("1234567"))
        assert (await before)["name"] == "abc"
        assert finder.cache.get("1234567") is MISS, "the possibly stale read was not cached"
        assert (await after)["name"] == "abc"
        assert (finder.queries, finder.joined) == (2, 0), "the later Find read again"
        assert finder.cache.get("1234567") is not MISS, "the fresh read is cached"
        await c.close()


async def test_a_store_outage_answers_fresh_entries_and_1001_once_they_expire(
    tmp_path: Path,
) -> None:
    """No stale answers during an outage: an entry is served for its TTL, never longer."""
    nx = NxServer(tmp_path / "nx")
    nx.start()
    store = Store(nx.uri, f"t_{uuid.uuid4().hex[:8]}", server_selection_timeout=1)
    clock = ManualClock()
    try:
        async with serving(store, clock=clock) as server:
            c = await client(server)
            assert await c.register(RECORD) == {"id": "1234567", **OK}
            assert (await c.find("1234567"))["name"] == "abc"
            nx.stop()
            assert (await c.find("1234567"))["name"] == "abc", "a fresh entry: the cache"
            clock.advance(TTL)
            assert await c.find("1234567") == {"id": "1234567", **STORE_FAILED}
            assert await c.find("new") == {"id": "new", **STORE_FAILED}, "a miss: 1001"
            nx.start()

            async def found() -> bool:
                return (await c.find("1234567"))["errid"] == 0

            await async_wait_for(found, timeout=30, every=0.2)
            await c.close()
    finally:
        await store.close()
        nx.stop()


async def test_readyz_details_carry_the_cache_counters(store: Store) -> None:
    server = TcpServer(store, TcpSettings(port=0, find_cache_size=5))
    await server.start()
    try:
        async with TcpClient("127.0.0.1", server.port or 0) as c:
            await c.find("a")
            await c.find("a")
        details = server.check()[1]["find_cache"]
        assert details["size"] == 5 and details["ttl"] == TTL
        assert (details["hits"], details["misses"], details["hit_ratio"]) == (1, 1, 0.5)
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("find_cache_ttl = -1", "tcp.find_cache_ttl: Expected `float` >= 0.0"),
        ("find_cache_ttl = 301", "tcp.find_cache_ttl: Expected `float` <= 300"),
        ("find_cache_ttl = 'soon'", "tcp.find_cache_ttl: Expected `float`, got `str`"),
        ("find_cache_size = 0", "tcp.find_cache_size: Expected `int` >= 1"),
        ("find_cache_size = 1.5", "tcp.find_cache_size: Expected `int`, got `float`"),
        ("find_cache_lookback = -1", "tcp.find_cache_lookback: Expected `float` >= 0.0"),
        ("find_cache_max_age = 0", "tcp.find_cache_max_age: Expected `float` > 0.0"),
        ("find_cache_max_age = 'x'", "tcp.find_cache_max_age: Expected `float`, got `str`"),
    ],
)
def test_bad_cache_settings_are_refused_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "taskdash.toml"
    path.write_text(f"[tcp]\n{text}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load(path, env={})
    assert str(raised.value).startswith(message)
    assert load(env={"TASKDASH_TCP__FIND_CACHE_TTL": "0"}).tcp.find_cache_ttl == 0


def test_check_config_refuses_a_bad_cache_size_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "taskdash.toml"
    path.write_text("[tcp]\nfind_cache_size = -5\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "taskdash", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"taskdash: config error: tcp.find_cache_size: Expected `int` >= 1 (in {path})"
    ]
