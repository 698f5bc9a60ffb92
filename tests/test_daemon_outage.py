"""A frozen MongoDB (SIGSTOP on the embedded nx-27017): readiness, the API, and a bounded stop."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import requests
from support import (
    daemon_env,
    daemon_token,
    http_get,
    nsqd_channel_stats,
    pid_alive,
    pids_with_arg,
    running_daemon,
    wait_for,
)

from taskdash.nsq.broker import persist


def test_frozen_store_turns_not_ready_then_shutdown_kills_it_within_budget(
    tmp_path: Path,
) -> None:
    env = daemon_env(
        tmp_path,
        # long driver timeouts: readiness and the API must not wait for them
        TASKDASH_MONGODB__SERVER_SELECTION_TIMEOUT=60,
        TASKDASH_MONGODB__PROBE_INTERVAL=0.2,
        TASKDASH_MONGODB__RETRY_INITIAL=0.2,
        TASKDASH_MONGODB__RETRY_MAX=0.5,
        TASKDASH_DAEMON__SHUTDOWN_TIMEOUT=2,
        TASKDASH_NSQ__HEARTBEAT_FLUSH_INTERVAL=0.05,
    )
    data_dir = env["TASKDASH_DAEMON__DATA_DIR"]
    try:
        check_frozen_store(tmp_path, env)
    finally:
        for pid in pids_with_arg(data_dir):  # a failed run must not leave a frozen server
            os.kill(pid, signal.SIGKILL)


def check_frozen_store(tmp_path: Path, env: dict[str, str]) -> None:
    data_dir = env["TASKDASH_DAEMON__DATA_DIR"]
    nsqd = f"http://127.0.0.1:{env['TASKDASH_NSQ__EMBEDDED_HTTP_PORT']}"
    with running_daemon(tmp_path, env) as daemon:
        (child,) = [e["pid"] for e in daemon.events() if e["event"] == "embedded_mongodb_started"]
        assert pids_with_arg(data_dir) == [child]
        os.kill(child, signal.SIGSTOP)
        try:
            # a probe with a short timeout sees the freeze (a 60 s driver timeout would not)
            wait_for(lambda: http_get(f"{daemon.web}/readyz")[0] == 503, timeout=20)
            status, body = http_get(f"{daemon.web}/api/services", timeout=20)
            assert (status, body["error"]) == (503, "store_unavailable"), body
        finally:
            os.kill(child, signal.SIGCONT)
        daemon.wait_ready(timeout=60)
        assert http_get(f"{daemon.web}/api/services", token=daemon_token(env))[0] == 200

        # under load, frozen again: the readers hold a batch the store never answers
        beats = "\n".join(f'{{"id": "svc-{i}"}}' for i in range(200)).encode()
        os.kill(child, signal.SIGSTOP)
        resp = requests.post(f"{nsqd}/mpub?topic=taskdash.heartbeat", data=beats, timeout=10)
        assert resp.status_code == 200
        stats = lambda: nsqd_channel_stats(nsqd, "taskdash.heartbeat", "taskdash")  # noqa: E731
        wait_for(lambda: stats().get("in_flight_count", 0) > 0, timeout=20)
        assert daemon.proc is not None
        daemon.proc.terminate()
        # the budget is 2 s; the generous deadline only keeps a broken build from hanging
        assert daemon.proc.wait(60) == 0, daemon.logs()
    events = daemon.events()
    names = [e["event"] for e in events]
    (timed_out,) = [e for e in events if e["event"] == "shutdown_timed_out"]
    assert any(name.startswith("reader:") for name in timed_out["left"]), timed_out
    assert "embedded_mongodb_killed" in names
    persisted = [e for e in events if e["event"] == "messages_persisted"]
    assert persisted and persisted[0]["count"] >= 1, "the broker saved what was unfinished"
    # every heartbeat the frozen store never took is in the saved file, none lost
    saved = persist.load(Path(data_dir) / "nsq").messages
    kept = {m.body for m in saved if (m.topic, m.channel) == ("taskdash.heartbeat", "taskdash")}
    assert kept == set(beats.split(b"\n")), len(kept)
    assert names[-1] == "daemon_stopped"
    assert not pid_alive(child), "the frozen nx-27017 was killed, not orphaned"
    assert not pids_with_arg(data_dir), "no child survives"
