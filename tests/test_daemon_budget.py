"""The shutdown budget as a user meets it: `taskdash run` subprocesses, a real broker and MongoDB.

A tiny ``shutdown_timeout`` makes the budget run out at the first part stopped, every time
(no part stops in a millisecond), so the emergency path is taken without any timing guess;
the tests then read what the daemon recorded and what it saved.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import requests
from support import daemon_env, pids_with_arg, running_daemon

from taskdash.lifecycle import HARD_EXIT_AFTER
from taskdash.nsq.broker import persist

TINY_BUDGET = 0.001


def one(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The single event called ``name``."""
    (found,) = [e for e in events if e["event"] == name]
    return found


def test_after_the_budget_the_broker_saves_every_message_on_the_signals_deadline(
    tmp_path: Path,
) -> None:
    env = daemon_env(tmp_path, TASKDASH_DAEMON__SHUTDOWN_TIMEOUT=TINY_BUDGET)
    nsqd = f"http://127.0.0.1:{env['TASKDASH_NSQ__EMBEDDED_HTTP_PORT']}"
    bodies = [f"kept-{i}".encode() for i in range(50)]
    with running_daemon(tmp_path, env) as daemon:
        # a topic nobody reads: its messages are unfinished whatever the readers do
        resp = requests.post(f"{nsqd}/mpub?topic=kept", data=b"\n".join(bodies), timeout=10)
        assert resp.status_code == 200
        assert daemon.stop() == 0, daemon.logs()
    events = daemon.events()
    names = [e["event"] for e in events]
    deadline = one(events, "shutdown_deadline")
    assert names.index("stop_requested") < names.index("shutdown_deadline")
    # one deadline, taken at the signal, for the budget and for the watchdog
    assert one(events, "shutdown_timed_out")["deadline"] == deadline["deadline"]
    assert deadline["watchdog_after"] == HARD_EXIT_AFTER
    saved = persist.load(Path(env["TASKDASH_DAEMON__DATA_DIR"]) / "nsq").messages
    assert sorted(m.body for m in saved if m.topic == "kept") == sorted(bodies)
    # the save is the first emergency step: before any child is killed or task cancelled
    assert names.index("messages_persisted") < names.index("embedded_mongodb_killed")
    assert names[-1] == "daemon_stopped"
    assert not pids_with_arg(env["TASKDASH_DAEMON__DATA_DIR"]), "no child survives"


def test_a_failed_start_whose_stop_runs_out_of_budget_exits_1(tmp_path: Path) -> None:
    # the broker's port is taken: the start fails after the web server and the embedded
    # MongoDB started, and stopping those exceeds the budget
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = daemon_env(
            tmp_path,
            TASKDASH_DAEMON__SHUTDOWN_TIMEOUT=TINY_BUDGET,
            TASKDASH_NSQ__EMBEDDED_HTTP_PORT=port,
        )
        with running_daemon(tmp_path, env, ready=False) as daemon:
            assert daemon.proc is not None
            assert daemon.proc.wait(60) == 1, daemon.logs()
    events = daemon.events()
    names = [e["event"] for e in events]
    failed = one(events, "start_failed")
    assert failed["error"].startswith(f"nsq.embedded_http_port 127.0.0.1:{port} already in use")
    # the bounded stop ran after the start task ended, under a watchdog, to its end
    assert names.index("start_failed") < names.index("shutdown_deadline")
    assert one(events, "shutdown_deadline")["watchdog_after"] == HARD_EXIT_AFTER, "armed"
    assert "shutdown_timed_out" in names
    assert "CancelledError" not in daemon.logs()
    assert not pids_with_arg(env["TASKDASH_DAEMON__DATA_DIR"]), "nothing left running"
