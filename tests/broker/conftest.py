"""A real Broker on loopback (ports picked by the OS, data dir in tmp_path) for every test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from broker_helpers import RawClient
from nsq_tls import Pki, make_pki

from taskdash.nsq.broker import Broker
from taskdash.nsq.broker.options import SecurityOptions

# Short enough that a test forgetting to FIN never waits long; timeout tests still set their own
# msg_timeout through IDENTIFY, as a client would.
FIXTURE_MSG_TIMEOUT_MS = 5000


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Where the broker persists unfinished messages."""
    return tmp_path / "nsq-data"


@pytest.fixture
async def broker(data_dir: Path) -> AsyncIterator[Broker]:
    """A started broker with all three listeners; stopped (and persisted) afterwards."""
    instance = Broker(
        tcp_port=0,
        http_port=0,
        lookupd_http_port=0,
        data_dir=data_dir,
        msg_timeout_ms=FIXTURE_MSG_TIMEOUT_MS,
    )
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


@pytest.fixture
async def raw(broker: Broker) -> AsyncIterator[Callable[..., Awaitable[RawClient]]]:
    """Factory of raw V2 connections to ``broker``; all closed at the end."""
    clients: list[RawClient] = []

    async def connect(**kwargs: object) -> RawClient:
        client = await RawClient.connect(broker.tcp_port, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA with broker and client certificates (and a rogue CA's client)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def make_broker(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Broker]]]:
    """Brokers with the given SecurityOptions fields (``https``: an HTTPS listener too)."""
    brokers: list[Broker] = []

    async def build(https: bool = False, **security: object) -> Broker:
        instance = Broker(
            tcp_port=0,
            http_port=0,
            lookupd_http_port=None,
            data_dir=tmp_path / f"nsq{len(brokers)}",
            security=SecurityOptions(**security),  # type: ignore[arg-type]
            https_port=0 if https else None,
        )
        await instance.start()
        brokers.append(instance)
        return instance

    yield build
    for instance in brokers:
        await instance.stop()
