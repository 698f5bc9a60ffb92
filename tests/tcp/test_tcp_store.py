"""The TCP interface against the store: outages (1001), the ownership rule, adoption."""

from __future__ import annotations

import uuid
from pathlib import Path

from support import NxServer, async_wait_for, harvest
from tcp_helpers import NO_SUCH, OK, RECORD, STORE_FAILED, ManualClock, client, serving

from taskdash.models import TaskMetaData
from taskdash.store import Store
from taskdash.store.assignments import AssignmentConflict, claim, get_assignment
from taskdash.store.tasks import (
    Conflict,
    list_tasks,
)


async def test_mongodb_stopped_mid_stream_gives_1001_then_recovers(tmp_path: Path) -> None:
    nx = NxServer(tmp_path / "nx")
    nx.start()
    store = Store(nx.uri, f"t_{uuid.uuid4().hex[:8]}", server_selection_timeout=1)
    try:
        async with serving(store) as server:
            c = await client(server)
            assert await c.register(RECORD) == {"id": "1234567", **OK}
            nx.stop()
            assert await c.register({**RECORD, "id": "down"}) == {"id": "down", **STORE_FAILED}
            assert await c.find("1234567") == {"id": "1234567", **STORE_FAILED}
            assert await c.update(RECORD) == {"id": "1234567", **STORE_FAILED}
            assert server.check()[1]["store_failures"] == 3
            nx.start()  # same port, same data: no restart of TaskDash

            async def registered() -> bool:
                return (await c.register({**RECORD, "id": "back"}))["errid"] == 0

            await async_wait_for(registered, timeout=30, every=0.2)
            found = await c.find("1234567")
            assert found["name"] == RECORD["name"] and found["user"] == "wsg", "nothing lost"
            assert server.check()[0], "the server itself stayed up"
            await c.close()
    finally:
        await store.close()
        nx.stop()


async def test_ownership_a_fetched_task_keeps_what_its_service_lists(store: Store) -> None:
    harvested = TaskMetaData(id="1234567", name="from-svc", url="http://svc/t", status="running")
    await harvest(store, "svc", harvested, now_ms=1000)
    clock = ManualClock()
    async with serving(store, clock=clock) as server:
        c = await client(server)
        sent = {**RECORD, "name": "tcp-name", "status": "finish"}
        assert await c.register(sent) == {"id": "1234567", **OK}, "accepted part: errid 0"
        assert await c.update({**sent, "description": "x"}) == {"id": "1234567", **OK}
        found = await c.find("1234567")
        assert (found["name"], found["status"], found["url"]) == (
            "from-svc",
            "running",
            "http://svc/t",
        )
        assert (found["user"], found["group_id"]) == ("wsg", "mx"), "the binding applies"
        assert (found["start_time"], found["stop_time"]) == ("12:00", "18:00"), "so does the window"
        # the next fetch changes the status; the TCP window and binding stay
        await harvest(
            store, "svc", TaskMetaData(**{**harvested.to_dict(), "status": "finish"}), now_ms=2000
        )
        clock.advance(1.0)  # the fetcher's write is seen once the Find cache's entry expires
        found = await c.find("1234567")
        assert (found["status"], found["user"], found["start_time"]) == ("finish", "wsg", "12:00")
        await c.close()
    doc = await store.tasks.find_one({"_id": "1234567"})
    assert doc["service_id"] == "svc"


async def test_a_service_listing_a_tcp_task_adopts_it(store: Store) -> None:
    async with serving(store) as server:
        c = await client(server)
        assert await c.register(RECORD) == {"id": "1234567", **OK}
        (tcp_task,) = await list_tasks(store)
        assert tcp_task["service_id"] is None and tcp_task["start_time"] == "12:00"
        listed = TaskMetaData(id="1234567", name="svc-name", status="running")
        await harvest(store, "svc", listed, now_ms=5000)
        second = await harvest(store, "other", listed, now_ms=6000)
        assert second.conflicts == [Conflict("1234567", "other", "svc")], "one adopter only"
        (task,) = await list_tasks(store)
        assert (task["service_id"], task["name"], task["start_time"]) == (
            "svc",
            "svc-name",
            "12:00",
        )
        assert task["first_seen_at"] == tcp_task["first_seen_at"]
        assert await c.update({"id": "1234567", "name": "tcp-again"}) == {"id": "1234567", **OK}
        assert (await c.find("1234567"))["name"] == "svc-name", "adopted: the service owns it"
        assert await c.update({"id": "nope"}) == {"id": "nope", **NO_SUCH}
        await c.close()


async def test_the_web_claim_and_tcp_share_one_binding(store: Store) -> None:
    """A task TCP bound to wsg cannot be claimed on the web; TCP's ``"user": ""`` frees it,
    and a web claim is then what Find answers."""
    async with serving(store) as server:
        c = await client(server)
        assert await c.register(RECORD) == {"id": "1234567", **OK}
        try:
            await claim(store, "1234567", "ann", now_ms=1)
        except AssignmentConflict as exc:
            assert exc.holder == "wsg"
        else:
            raise AssertionError("a task held over TCP must not be claimable")
        assert await c.update({"id": "1234567", "user": ""}) == {"id": "1234567", **OK}
        taken, changed = await claim(store, "1234567", "ann", now_ms=2)
        assert changed and (taken.user, taken.group_id, taken.version) == ("ann", "mx", 3)
        found = await c.find("1234567")
        assert (found["user"], found["group_id"]) == ("ann", "mx")
        await c.close()
    assert (await get_assignment(store, "1234567")).source == "web"
