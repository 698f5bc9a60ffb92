"""sd_notify over a real unix datagram socket."""

from __future__ import annotations

import socket
from pathlib import Path

from taskdash.systemd import Notifier


def test_notifications_arrive_on_the_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(2)
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
        assert notifier.enabled and notifier.watchdog_interval == 2.0
        assert notifier.ready() and notifier.stopping() and notifier.watchdog()
        got = [server.recv(256).decode() for _ in range(3)]
    assert got[0].startswith("READY=1\nMAINPID=")
    assert got[1:] == ["STOPPING=1", "WATCHDOG=1"]


def test_abstract_socket_address() -> None:
    name = f"taskdash-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert server.recv(256).startswith(b"READY=1")


def test_outside_systemd_it_does_nothing() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.ready() is False


def test_a_vanished_socket_never_raises(tmp_path: Path) -> None:
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).stopping() is False
