"""Find's cache kept confirmed by change looks: unchanged entries stay, changes arrive at once.

Every writer of what Find returns stamps ``changed_at``; the server reads what changed since its
last look. Most tests drive the looks by hand with a :class:`ManualClock`; one runs the real
loop on the real clock.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import pytest
from support import NxServer, async_wait_for, harvest
from tcp_helpers import OK, RECORD, STORE_FAILED, ManualClock, client, serving

from taskdash.errors import StoreError
from taskdash.models import TaskMetaData
from taskdash.store import Store
from taskdash.store.assignments import claim, release, set_assignment
from taskdash.store.tasks import write_registered
from taskdash.store.times import to_ms, utcnow
from taskdash.tcp.cache import MISS
from taskdash.tcp.lookup import LookOverflow

TTL = 1.0


def now_ms() -> int:
    return to_ms(utcnow())


def listed(status: str) -> TaskMetaData:
    """Task 1234567 as a service lists it."""
    return TaskMetaData(id="1234567", name="abc", url="http://x/", description="d", status=status)


async def stamp_of(store: Store, task_id: str) -> int:
    doc = await store.tasks.find_one({"_id": task_id}, {"changed_at": 1})
    assert doc is not None
    return int(doc["changed_at"])


async def test_an_unchanged_entry_stays_a_hit_long_past_the_ttl(store: Store) -> None:
    clock = ManualClock()
    async with serving(store, clock=clock, find_cache_ttl=TTL) as server:
        finder = server.handler.finder
        c = await client(server)
        await c.register(RECORD)
        assert (await c.find("1234567"))["name"] == "abc"
        await finder.look()  # the chain begins: entries read from now on are confirmed
        assert (await c.find("1234567"))["name"] == "abc"
        queries = finder.queries
        for _ in range(20):  # 10 TTLs, a look every half TTL
            clock.advance(TTL / 2)
            await finder.look()
            assert (await c.find("1234567"))["name"] == "abc"
        assert finder.queries == queries, "every Find a hit: no look saw a change"
        clock.advance(TTL)  # no look for a whole TTL: the last confirmation is too old
        assert (await c.find("1234567"))["name"] == "abc"
        assert finder.queries == queries + 1
        await c.close()


async def test_entries_read_before_the_chain_began_only_live_their_ttl(store: Store) -> None:
    clock = ManualClock()
    async with serving(store, clock=clock, find_cache_ttl=TTL) as server:
        finder = server.handler.finder
        c = await client(server)
        # stamped long ago: no look's window holds it, so no look refreshes its entry
        await write_registered(store, "1234567", {"name": "abc"}, {}, create=True, now_ms=1000)
        assert (await c.find("1234567"))["name"] == "abc"  # read before any look
        clock.advance(0.1)
        await finder.look()
        clock.advance(TTL - 0.1)
        await finder.look()
        queries = finder.queries
        assert (await c.find("1234567"))["name"] == "abc"
        assert finder.queries == queries + 1, "its TTL ran out: changes before the chain unseen"
        await c.close()


@pytest.mark.parametrize(
    "writer", ["tcp_elsewhere", "web_claim", "web_release", "fetch", "tcp_set"]
)
async def test_a_change_by_any_writer_is_seen_after_the_next_look(
    store: Store, writer: str
) -> None:
    """Each write path stamps ``changed_at``: without the stamp, Find would answer stale."""
    clock = ManualClock()
    # no lookback: the first write's own stamp is outside every window, so only the change's
    # stamp can bring the change
    async with serving(store, clock=clock, find_cache_ttl=TTL, find_cache_lookback=0) as server:
        finder = server.handler.finder
        c = await client(server)
        task = listed("s")
        if writer == "fetch":
            await harvest(store, "svc", task, now_ms=now_ms())
        else:
            await c.register({**RECORD, "user": ""})  # nobody holds it: claimable
        if writer == "web_release":
            await claim(store, "1234567", "ann", now_ms=now_ms())
        await finder.look()
        before = await c.find("1234567")
        if writer == "tcp_elsewhere":
            await write_registered(
                store, "1234567", {"status": "finish"}, {}, create=False, now_ms=now_ms()
            )
        elif writer == "web_claim":
            await claim(store, "1234567", "bob", now_ms=now_ms())
        elif writer == "web_release":
            await release(store, "1234567", "ann", now_ms=now_ms())
        elif writer == "fetch":
            changed = TaskMetaData(
                id="1234567", name="abc", url="http://x/", description="d", status="t"
            )
            await harvest(store, "svc", changed, now_ms=now_ms())
        else:
            await set_assignment(
                store, "1234567", user="carl", group_id="g", source="tcp", now_ms=now_ms()
            )
        assert await c.find("1234567") == before, "within the TTL, before a look: the cache"
        clock.advance(TTL / 2)
        await finder.look()
        queries = finder.queries
        after = await c.find("1234567")
        assert finder.queries == queries, "the look put the change in: a hit"
        expected = {
            "tcp_elsewhere": ("status", "finish"),
            "web_claim": ("user", "bob"),
            "web_release": ("user", ""),
            "fetch": ("status", "t"),
            "tcp_set": ("user", "carl"),
        }[writer]
        assert after[expected[0]] == expected[1]
        assert after != before
        await c.close()


async def test_an_owned_tasks_window_set_over_tcp_is_stamped(store: Store) -> None:
    task = TaskMetaData(id="t1", name="abc", url="http://x/", description="d", status="s")
    await harvest(store, "svc", task, now_ms=1000)
    assert await stamp_of(store, "t1") == 1000
    written = await write_registered(
        store, "t1", {}, {"start_time": "08:00"}, create=False, now_ms=2000
    )
    assert written.outcome == "owned"
    assert await stamp_of(store, "t1") == 2000


async def test_an_unknown_id_registered_elsewhere_is_seen_after_the_next_look(store: Store) -> None:
    clock = ManualClock()
    async with serving(store, clock=clock, find_cache_ttl=TTL) as server:
        finder = server.handler.finder
        c = await client(server)
        await finder.look()
        assert (await c.find("later"))["errid"] == 1002
        await write_registered(store, "later", {"name": "n"}, {}, create=True, now_ms=now_ms())
        await finder.look()
        assert (await c.find("later"))["name"] == "n"
        await c.close()


async def test_a_look_never_puts_back_what_this_server_wrote_meanwhile(tmp_path: Path) -> None:
    """The look's query is held (the store frozen with SIGSTOP) while this server writes the
    task and a Find caches the write: the look's older read must not replace it."""
    nx = NxServer(tmp_path / "nx")
    nx.start()
    store = Store(nx.uri, f"t_{uuid.uuid4().hex[:8]}", server_selection_timeout=30)
    clock = ManualClock()
    try:
        await store.ensure_indexes()
        async with serving(store, clock=clock, find_cache_ttl=TTL) as server:
            finder = server.handler.finder
            c = await client(server)
            await c.register(RECORD)
            await finder.look()
            assert (await c.find("1234567"))["status"] == "running"
            await write_registered(
                store, "1234567", {"status": "a"}, {}, create=False, now_ms=now_ms()
            )
            assert nx.proc is not None
            nx.proc.send_signal(signal.SIGSTOP)
            try:
                looking = asyncio.create_task(finder.look())  # will read "a"
                await async_wait_for(lambda: finder.looking, every=0.0005)
                await asyncio.sleep(0.2)  # its query is out, held by the frozen store
                # what a Register/Update over TCP does once written, then a Find re-reading it
                finder.invalidate("1234567")
                fresh = {"name": "abc", "status": "b"}  # its written state, re-read
            finally:
                nx.proc.send_signal(signal.SIGCONT)
            finder.cache.put("1234567", fresh)
            await looking
            assert finder.looks >= 2
            assert finder.cache.get("1234567") == fresh, "the look's older read was not put"
            await c.close()
    finally:
        await store.close()
        nx.stop()


async def test_more_changes_than_a_look_reads_break_the_chain(store: Store) -> None:
    clock = ManualClock()
    async with serving(store, clock=clock, find_cache_ttl=TTL) as server:
        finder = server.handler.finder
        finder.look_limit = 2
        c = await client(server)
        await finder.look()
        for i in range(3):
            await c.register({"id": f"t{i}", "name": "a"})
            assert (await c.find(f"t{i}"))["name"] == "a"
        for i in range(3):
            await write_registered(store, f"t{i}", {"name": "b"}, {}, create=False, now_ms=now_ms())
        clock.advance(TTL / 2)
        with pytest.raises(LookOverflow):
            await finder.look()
        assert not server.find_stats()["confirmed"]
        clock.advance(TTL / 2)
        assert {(await c.find(f"t{i}"))["name"] for i in range(3)} == {"b"}, "read again"
        await c.close()


async def test_max_age_rereads_a_confirmed_entry(store: Store) -> None:
    clock = ManualClock()
    async with serving(store, clock=clock, find_cache_ttl=TTL, find_cache_max_age=3.0) as server:
        finder = server.handler.finder
        c = await client(server)
        await finder.look()
        # stamped long ago: no look window holds it, so no look refreshes its entry
        await write_registered(store, "1234567", {"name": "abc"}, {}, create=True, now_ms=1000)
        await c.find("1234567")
        queries = finder.queries
        for _ in range(5):
            clock.advance(0.5)
            await finder.look()
            await c.find("1234567")
        assert finder.queries == queries, "2.5 s: confirmed"
        clock.advance(0.5)
        await finder.look()
        await c.find("1234567")
        assert finder.queries == queries + 1, "3 s: max_age, read again"
        await c.close()


async def test_a_failed_look_falls_back_to_the_ttl(tmp_path: Path) -> None:
    """During an outage no entry is served past its own TTL, confirmed or not."""
    nx = NxServer(tmp_path / "nx")
    nx.start()
    store = Store(nx.uri, f"t_{uuid.uuid4().hex[:8]}", server_selection_timeout=1)
    clock = ManualClock()
    try:
        async with serving(store, clock=clock, find_cache_ttl=TTL) as server:
            finder = server.handler.finder
            c = await client(server)
            await finder.look()
            assert await c.register(RECORD) == {"id": "1234567", **OK}
            assert (await c.find("1234567"))["name"] == "abc"
            clock.advance(TTL / 2)
            await finder.look()
            nx.stop()
            clock.advance(TTL / 2)
            with pytest.raises(StoreError):
                await finder.look()
            assert not server.find_stats()["confirmed"]
            assert (await c.find("1234567"))["name"] == "abc", "within its own TTL"
            clock.advance(TTL / 2)
            assert await c.find("1234567") == {"id": "1234567", **STORE_FAILED}
            await c.close()
    finally:
        await store.close()
        nx.stop()


async def test_the_real_loop_keeps_hot_entries_and_brings_changes(store: Store) -> None:
    ttl = 0.2
    async with serving(store, find_cache_ttl=ttl) as server:
        finder = server.handler.finder
        c = await client(server)
        await c.register(RECORD)
        await async_wait_for(lambda: finder.looks >= 1, timeout=10)
        assert (await c.find("1234567"))["name"] == "abc"
        queries, looks = finder.queries, finder.looks
        await async_wait_for(lambda: finder.looks >= looks + 6, timeout=20)  # >= 3 TTLs
        assert (await c.find("1234567"))["name"] == "abc"
        assert finder.queries == queries, "still a hit after three TTLs"
        await write_registered(
            store, "1234567", {"status": "finish"}, {}, create=False, now_ms=now_ms()
        )

        async def changed() -> bool:
            return (await c.find("1234567"))["status"] == "finish"

        await async_wait_for(changed, timeout=10, every=0.05)
        assert finder.queries == queries, "the change came by a look, not by a miss"
        assert server.check()[1]["find_cache"]["looks"] >= looks + 6
        await c.close()


async def test_without_the_cache_nothing_looks(store: Store) -> None:
    async with serving(store, find_cache_ttl=0) as server:
        c = await client(server)
        await c.register(RECORD)
        assert (await c.find("1234567"))["name"] == "abc"
        assert server.find_stats()["looks"] == 0
        assert server.handler.finder.cache.get("1234567") is MISS
        await c.close()
