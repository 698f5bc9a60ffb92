"""systemd's watchdog pings, in-process: a real unix datagram socket stands in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskdash.systemd import Notifier
from taskdash.watchdog import WatchdogPings

PING = b"WATCHDOG=1"


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """What systemd listens on: ``NOTIFY_SOCKET``, non-blocking so the loop can await it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify.sock"))
        sock.setblocking(False)
        yield sock


def notifier_for(sock: socket.socket, watchdog_usec: int) -> Notifier:
    return Notifier({"NOTIFY_SOCKET": sock.getsockname(), "WATCHDOG_USEC": str(watchdog_usec)})


def queued(sock: socket.socket) -> list[bytes]:
    """Every datagram already delivered, without waiting."""
    got = []
    while True:
        try:
            got.append(sock.recv(64))
        except BlockingIOError:
            return got


async def test_pings_stop_while_the_loop_is_blocked_then_resume(
    systemd_socket: socket.socket,
) -> None:
    pings = WatchdogPings(notifier_for(systemd_socket, 100_000))
    assert pings.interval == 0.05
    loop = asyncio.get_running_loop()
    await pings.start()
    try:
        for _ in range(3):
            assert await asyncio.wait_for(loop.sock_recv(systemd_socket, 64), 10) == PING
        queued(systemd_socket)
        sent = pings.sent
        # the loop is held here, as a hung synchronous call would hold it, for many intervals:
        # sends are synchronous, so a ping from anywhere else (a thread) would be queued now
        time.sleep(20 * pings.interval)  # noqa: ASYNC251 (blocking the loop is the test)
        assert queued(systemd_socket) == [] and pings.sent == sent, "pinged for a blocked loop"
        # the loop runs again: so do the pings
        assert await asyncio.wait_for(loop.sock_recv(systemd_socket, 64), 10) == PING
        assert pings.sent > sent
    finally:
        await pings.stop()
    await asyncio.sleep(0)
    queued(systemd_socket)
    await asyncio.sleep(3 * pings.interval)
    assert queued(systemd_socket) == [], "no ping after stop"
    await pings.stop()  # idempotent


async def test_the_first_ping_goes_out_at_start(systemd_socket: socket.socket) -> None:
    pings = WatchdogPings(notifier_for(systemd_socket, 3_600_000_000))  # every 30 minutes
    await pings.start()
    try:
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(loop.sock_recv(systemd_socket, 64), 10) == PING
    finally:
        await pings.stop()


@pytest.mark.parametrize(
    "env",
    [
        {},  # not under systemd
        {"WATCHDOG_USEC": "1000000"},  # no socket to send to
        {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "0"},
        {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "soon"},
        {"NOTIFY_SOCKET": "/run/x"},  # WatchdogSec= not set
    ],
)
async def test_without_a_watchdog_nothing_starts(env: dict[str, str]) -> None:
    pings = WatchdogPings(Notifier(env))
    assert not pings.enabled
    await pings.start()
    assert pings.sent == 0
    await pings.stop()


def test_a_watchdog_meant_for_another_process_is_not_ours() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "2000000"}
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 1.0
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval is None
