"""``taskdash run`` under a stand-in systemd with ``WatchdogSec=``: pings from start to stop."""

from __future__ import annotations

import socket
from pathlib import Path

from support import daemon_env, running_daemon


def test_the_daemon_pings_from_its_start_to_its_stop(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(path)
        systemd.settimeout(30)
        env = daemon_env(tmp_path, NOTIFY_SOCKET=path, WATCHDOG_USEC=400_000)
        with running_daemon(tmp_path, env, ready=False) as daemon:
            got = [systemd.recv(256)]
            while not got[-1].startswith(b"READY=1"):
                got.append(systemd.recv(256))
            assert got[0] == b"WATCHDOG=1", "the pings start before the rest of the daemon"
            after_ready = [systemd.recv(256) for _ in range(3)]
            assert after_ready == [b"WATCHDOG=1"] * 3
            assert daemon.stop() == 0, daemon.logs()
        systemd.setblocking(False)
        rest = []
        while True:
            try:
                rest.append(systemd.recv(256))
            except BlockingIOError:
                break
    assert b"STOPPING=1" in rest and set(rest) <= {b"STOPPING=1", b"WATCHDOG=1"}
    events = daemon.events()
    (enabled,) = [e for e in events if e["event"] == "systemd_watchdog_enabled"]
    assert enabled["interval"] == 0.2
    stopped = [e["component"] for e in events if e["event"] == "component_stopped"]
    assert stopped[-1] == "systemd_watchdog", "pinging until everything else has stopped"
    assert events[-1]["event"] == "daemon_stopped"
