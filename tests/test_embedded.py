"""The supervised nx-27017 child: restart after a crash, a failed restart, stop and kill."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog
from support import async_wait_for, free_port, pid_alive

from taskdash.errors import EmbeddedServerError
from taskdash.store.embedded import EmbeddedMongo
from taskdash.store.mongo import Store

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[EmbeddedMongo]:
    """A real nx-27017 child on a free port, always stopped afterwards."""
    server = EmbeddedMongo(host="127.0.0.1", port=free_port(), data_dir=tmp_path / "nx")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def pings(uri: str) -> bool:
    store = Store(uri, "x", server_selection_timeout=1)
    try:
        await store.ping()
    except Exception:
        return False
    finally:
        await store.close()
    return True


def squat(port: int) -> socket.socket:
    """Take the child's port as another program would."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    sock.listen()
    return sock


def try_squat(port: int) -> socket.socket | None:
    """:func:`squat` once the killed child has released the port (a moment after SIGKILL)."""
    try:
        return squat(port)
    except OSError:
        return None


async def test_a_restart_that_fails_is_retried_until_the_port_is_free(
    embedded: EmbeddedMongo,
) -> None:
    died: list[str] = []
    embedded.on_died = died.append
    assert embedded.proc is not None
    first = embedded.proc.pid
    os.kill(first, signal.SIGKILL)
    squatter = await async_wait_for(lambda: try_squat(embedded.port), timeout=10, every=0.01)
    try:
        await async_wait_for(lambda: embedded.restart_failures >= 2, timeout=30)
        assert embedded.restarts == 0, "a port someone else holds is no restarted server"
        assert died and "nx-27017" in died[0]
    finally:
        squatter.close()
    await async_wait_for(lambda: embedded.restarts == 1, timeout=60)
    assert embedded.proc is not None and embedded.proc.pid != first
    assert await async_wait_for(lambda: pings(embedded.uri), timeout=30)


async def test_kill_ends_a_frozen_child_at_once(embedded: EmbeddedMongo) -> None:
    assert embedded.proc is not None
    pid = embedded.proc.pid
    os.kill(pid, signal.SIGSTOP)  # SIGTERM would stay pending forever
    embedded.kill()
    await async_wait_for(lambda: not pid_alive(pid), timeout=10)
    await embedded.stop()  # idempotent after a kill
    assert embedded.proc is None


async def test_stop_ends_a_frozen_child_gracefully(embedded: EmbeddedMongo) -> None:
    assert embedded.proc is not None
    pid = embedded.proc.pid
    os.kill(pid, signal.SIGSTOP)
    with structlog.testing.capture_logs() as logs:
        await embedded.stop(timeout=10.0)
    assert not pid_alive(pid)
    (stopped,) = [e for e in logs if e["event"] == "embedded_mongodb_stopped"]
    # continued, it acted on SIGTERM itself: SIGKILL was not needed
    assert stopped["returncode"] != -signal.SIGKILL


async def test_a_port_in_use_names_the_setting(tmp_path: Path) -> None:
    port = free_port()
    with squat(port):
        server = EmbeddedMongo(host="127.0.0.1", port=port, data_dir=tmp_path / "nx")
        with pytest.raises(EmbeddedServerError, match=rf"^mongodb.embedded_port 127.0.0.1:{port} "):
            await server.start()
    assert server.proc is None
