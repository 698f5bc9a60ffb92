"""Real servers for the whole suite: one nx-27017 (or $TASKDASH_TEST_MONGODB_URI), fresh DBs."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support import free_port, nx_server

from taskdash.store import Store


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MongoDB wire-protocol server for the session: external if configured, else nx."""
    external = os.environ.get("TASKDASH_TEST_MONGODB_URI")
    if external:
        yield external
        return
    with nx_server(Path(tmp_path_factory.mktemp("mongo"))) as server:
        yield server.uri


@pytest.fixture
async def store(mongo_uri: str) -> AsyncIterator[Store]:
    """A Store on a database of its own (dropped afterwards), indexes created."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    store = Store(mongo_uri, name, server_selection_timeout=5)
    await store.ensure_indexes()
    try:
        yield store
    finally:
        await store.client.drop_database(name)
        await store.close()


@pytest.fixture
async def dead() -> AsyncIterator[Store]:
    """A store whose server is not there."""
    store = Store(
        f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
        "t",
        server_selection_timeout=0.3,
    )
    try:
        yield store
    finally:
        await store.close()
