"""Two ``taskdash run`` daemons sharing one MongoDB and one webhook: each alert arrives once."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support import DaemonProcess, async_wait_for, daemon_env
from test_alerts import started_receivers

from taskdash.alerts import enqueue
from taskdash.store import Store


@pytest.fixture
async def receivers() -> AsyncIterator[Any]:
    async with started_receivers() as start:
        yield start


def env_for(tmp: Path, mongo_uri: str, database: str, url: str) -> dict[str, str]:
    return daemon_env(
        tmp,
        TASKDASH_MONGODB__URI=mongo_uri,
        TASKDASH_MONGODB__DATABASE=database,
        TASKDASH_ALERTS__WEBHOOKS=f'[{{name = "ops", url = "{url}", secret = "s3cret"}}]',
        TASKDASH_ALERTS__POLL_INTERVAL="0.2",
        TASKDASH_ALERTS__RATE_LIMIT="0",
        TASKDASH_ALERTS__BATCH_SIZE="5",
        TASKDASH_FETCHER__ALLOWED_CIDRS='["127.0.0.1/32"]',
        TASKDASH_FETCHER__ENABLED="false",
    )


async def test_two_daemons_send_each_alert_exactly_once(
    tmp_path: Path, mongo_uri: str, receivers: Any
) -> None:
    receiver = await receivers()
    database = f"t_{uuid.uuid4().hex[:12]}"
    daemons = []
    for i in range(2):
        home = tmp_path / f"d{i}"
        home.mkdir()
        daemons.append(DaemonProcess(home, env_for(home, mongo_uri, database, receiver.url)))
    store = Store(mongo_uri, database)
    try:
        for daemon in daemons:
            daemon.start()
        for daemon in daemons:
            ready = await asyncio.to_thread(daemon.wait_ready)
            assert ready["components"]["alerts"]["webhooks"] == 1, ready
        for i in range(30):
            await enqueue(store, kind="service.offline", subject=f"s{i}", details={}, key=f"k{i}")

        async def all_delivered() -> bool:
            found = store["alert_deliveries"].find({"state": "delivered"})
            return len([d async for d in found]) == 30

        await async_wait_for(all_delivered, timeout=30)
        ids = Counter(json.loads(body)["id"] for _, body in receiver.requests)
        assert ids == Counter({f"k{i}": 1 for i in range(30)})
        attempts = [a async for a in store["alert_attempts"].find({})]
        assert len(attempts) == 30  # one attempt each, whichever daemon made it
    finally:
        for daemon in daemons:
            if daemon.proc is not None:
                await asyncio.to_thread(daemon.stop)
        await store.client.drop_database(database)
        await store.close()
