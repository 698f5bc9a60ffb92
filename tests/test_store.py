"""The store against a real MongoDB wire-protocol server."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from support import free_port, nx_server

from taskdash.errors import StoreUnavailable
from taskdash.models import HeartBeat, TaskManager, TaskMetaData, TaskService
from taskdash.store import Store, deadline
from taskdash.store.mongo import INDEXES
from taskdash.store.services import get_service, list_services

pytestmark = pytest.mark.asyncio


async def test_indexes_exist_and_creation_is_idempotent(store: Store) -> None:
    await store.ensure_indexes()  # a second daemon starting must not fail
    for collection, models in INDEXES.items():
        info = await store[collection].index_information()
        keys = [list(map(tuple, index["key"])) for index in info.values()]
        for model in models:  # compared by keys: servers may name indexes their own way
            assert list(model.document["key"].items()) in keys, (collection, model.document)
    info = await store.service_events.index_information()
    ttl = [i for i in info.values() if list(map(tuple, i["key"])) == [("expires_at", 1)]]
    assert ttl and ttl[0]["expireAfterSeconds"] == 0


@pytest.mark.parametrize(
    ("collection", "record"),
    [
        ("services", TaskService(id="s1", name="n", type="t", url="http://u", description="d")),
        ("services", HeartBeat(id="s1", reserved="r")),
        ("tasks", TaskMetaData(id="t1", name="n", url="http://u", status="running")),
        ("assignments", TaskManager(id="t1", user="alice", group_id="g")),
    ],
)
async def test_every_model_round_trips_through_mongodb(
    store: Store, collection: str, record: TaskService
) -> None:
    fields = record.to_dict()
    await store[collection].insert_one({"_id": record.id, **fields})
    doc = await store[collection].find_one({"_id": record.id}, {"_id": 0})
    assert doc == fields
    assert type(record)(**doc) == record


async def test_list_and_get_services(store: Store) -> None:
    await store.services.insert_many(
        [
            {"_id": f"s{i}", "name": f"n{i}", "status": "online" if i % 2 else "offline"}
            for i in range(5)
        ]
    )
    online = await list_services(store, status="online")
    assert [s["id"] for s in online] == ["s1", "s3"]
    page = await list_services(store, limit=2, skip=1)
    assert [s["id"] for s in page] == ["s1", "s2"]
    assert (await get_service(store, "s4"))["name"] == "n4"
    assert await get_service(store, "nope") is None


async def test_unreachable_mongodb_raises_one_typed_error() -> None:
    store = Store(f"mongodb://127.0.0.1:{free_port()}/?directConnection=true", "x",
                  server_selection_timeout=0.3)  # fmt: skip
    try:
        with pytest.raises(StoreUnavailable, match="MongoDB unreachable"):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await list_services(store)
        with pytest.raises(StoreUnavailable):
            await store.ensure_indexes()
        assert not store.indexes_ready
    finally:
        await store.close()


async def test_a_frozen_server_is_unavailable_within_the_deadline(tmp_path: Path) -> None:
    with nx_server(tmp_path / "nx") as server:
        store = Store(server.uri, "x", server_selection_timeout=60)
        assert server.proc is not None
        try:
            await store.ping(0.5)
            os.kill(server.proc.pid, signal.SIGSTOP)
            # the driver would wait 60 s (server selection) or 240 s (socket timeout)
            with pytest.raises(StoreUnavailable, match="timed out"):
                await store.ping(0.5)
            with deadline(0.5), pytest.raises(StoreUnavailable):
                await list_services(store)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
            await store.close()
