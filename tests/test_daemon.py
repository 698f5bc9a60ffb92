"""The daemon as a user runs it: a real subprocess, real HTTP, a real embedded MongoDB."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pymongo
import pytest
from support import (
    NxServer,
    daemon_env,
    daemon_token,
    free_port,
    http_get,
    http_head,
    pids_with_arg,
    running_daemon,
    wait_for,
)


def embedded_client(env: dict[str, str]) -> pymongo.MongoClient:
    port = env["TASKDASH_MONGODB__EMBEDDED_PORT"]
    return pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true")


def test_lifecycle_sigterm_restart_and_systemd_notify(tmp_path: Path) -> None:
    sock_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(sock_path)
    notify.settimeout(30)
    env = daemon_env(tmp_path, NOTIFY_SOCKET=sock_path, TASKDASH_DAEMON__SHUTDOWN_TIMEOUT=8)
    data_dir = env["TASKDASH_DAEMON__DATA_DIR"]
    with running_daemon(tmp_path, env, ready=False) as daemon:
        assert notify.recv(256).startswith(b"READY=1")
        ready = daemon.wait_ready()
        assert ready["phase"] == "running"
        assert ready["components"]["store"] == {"ready": True, "indexes": True, "outages": 0}
        assert http_get(f"{daemon.web}/healthz") == (200, {"status": "ok", "version": "0.1.0"})
        assert pids_with_arg(data_dir), "the embedded MongoDB runs as a child"
        with embedded_client(env) as client:
            client.taskdash.services.insert_one(
                {"_id": "svc-1", "name": "kept", "status": "online"}
            )
        daemon.sighup()
        wait_for(lambda: "reload_requested" in daemon.event_names(), timeout=15)
        assert http_get(f"{daemon.web}/healthz")[0] == 200, "SIGHUP never ends the daemon"
        assert daemon.stop() == 0
        assert notify.recv(256) == b"STOPPING=1"
        assert not pids_with_arg(data_dir), "no child process is left behind"
        events = daemon.event_names()
        assert events.index("component_stopped") > events.index("stop_requested")
        assert events[-1] == "daemon_stopped"
        # within the budget: every part stopped in turn, nothing was cut off
        assert "shutdown_timed_out" not in events
        started = {e["component"] for e in daemon.events() if e["event"] == "component_started"}
        stopped = {e["component"] for e in daemon.events() if e["event"] == "component_stopped"}
        assert started == stopped and "embedded_mongodb" in stopped
    notify.close()
    env.pop("NOTIFY_SOCKET")
    with running_daemon(tmp_path, env) as daemon:
        token = daemon_token(env)
        assert http_get(f"{daemon.web}/api/services")[0] == 401, "the API needs a token"
        status, body = http_get(f"{daemon.web}/api/services", token=token)
        assert status == 200
        assert [(s["id"], s["name"]) for s in body["services"]] == [("svc-1", "kept")]
        assert http_get(f"{daemon.web}/api/services/svc-1", token=token)[1]["status"] == "online"
        assert http_get(f"{daemon.web}/api/services/nope", token=token)[0] == 404
        assert http_get(f"{daemon.web}/api/services?limit=0", token=token)[0] == 400
        assert http_get(f"{daemon.web}/api/services?status=weird", token=token)[0] == 400
        assert daemon.stop() == 0


def test_killed_embedded_mongodb_turns_not_ready_then_ready(tmp_path: Path) -> None:
    env = daemon_env(
        tmp_path,
        TASKDASH_MONGODB__PROBE_INTERVAL=0.2,
        TASKDASH_MONGODB__RETRY_INITIAL=0.2,
        TASKDASH_MONGODB__RETRY_MAX=0.5,
        TASKDASH_MONGODB__SERVER_SELECTION_TIMEOUT=1,
    )
    with running_daemon(tmp_path, env) as daemon:
        (first,) = pids_with_arg(env["TASKDASH_DAEMON__DATA_DIR"])
        os.kill(first, signal.SIGKILL)
        # the transition is asserted from what was recorded, not from catching a 503 window
        # that a fast restart can close before a poll sees it
        wait_for(lambda: "embedded_mongodb_restarted" in daemon.event_names(), timeout=30)
        body = daemon.wait_ready(timeout=30)
        assert body["components"]["store"]["outages"] == 1
        assert http_get(f"{daemon.web}/healthz")[0] == 200, "the daemon itself stays alive"
        (second,) = pids_with_arg(env["TASKDASH_DAEMON__DATA_DIR"])
        assert second != first
        events = daemon.event_names()
        died, restarted = (
            events.index("embedded_mongodb_died"),
            events.index("embedded_mongodb_restarted"),
        )
        down = events.index("store_unreachable")
        assert died < restarted and events.index("store_ready", down) > down
        assert events.count("store_unreachable") == 1, "an outage is logged once"
        assert daemon.stop() == 0


def test_external_mongodb_down_at_start_then_up(tmp_path: Path) -> None:
    port = free_port()
    env = daemon_env(
        tmp_path,
        TASKDASH_MONGODB__URI=f"mongodb://127.0.0.1:{port}/?directConnection=true",
        # a long server selection: nothing below may wait for it
        TASKDASH_MONGODB__SERVER_SELECTION_TIMEOUT=60,
        TASKDASH_MONGODB__RETRY_INITIAL=0.2,
        TASKDASH_MONGODB__RETRY_MAX=0.5,
    )
    with running_daemon(tmp_path, env, ready=False) as daemon:
        # /healthz answers while the store is still unreachable (the web server starts first)
        wait_for(lambda: http_get(f"{daemon.web}/healthz")[0] == 200, timeout=30)
        wait_for(lambda: "store_unreachable" in daemon.event_names(), timeout=30)
        status, body = http_get(f"{daemon.web}/readyz")
        assert status == 503 and body["components"]["store"]["ready"] is False
        assert body["phase"] == "starting", "the start waits for the store; not ready meanwhile"
        assert "error" in body["components"]["store"]
        assert http_head(f"{daemon.web}/healthz") == (200, b"")
        assert http_head(f"{daemon.web}/readyz") == (503, b"")
        for path in ("/api/services", "/api/services/x", "/api/dead-letters", "/api/tasks"):
            # answered from what the monitor knows, not after a 60 s server selection
            status, body = http_get(f"{daemon.web}{path}", timeout=20)
            assert status == 503, (path, status, body)
            assert body["error"] == "store_unavailable" and body["message"], body
        assert http_get(f"{daemon.web}/api/nope")[0] == 404, "routing still works"
        assert not pids_with_arg(env["TASKDASH_DAEMON__DATA_DIR"]), "no embedded server with a uri"
        server = NxServer(tmp_path / "late-mongo", port=port)
        server.start()
        try:
            daemon.wait_ready(timeout=60)
            token = daemon_token(env)
            assert http_get(f"{daemon.web}/api/services", token=token)[0] == 200
            assert http_head(f"{daemon.web}/readyz") == (200, b"")
            assert daemon.stop() == 0
        finally:
            server.stop()
    events = daemon.events()
    names = [e["event"] for e in events]
    assert names.count("store_unreachable") == 1 and names.count("store_ready") == 1
    assert names.index("web_listening") < names.index("store_unreachable")
    tracebacks = [e for e in events if "exception" in e or "exc_info" in e]
    assert not tracebacks, "an outage is one line, never a traceback per request"


def test_sigterm_while_waiting_for_the_store_at_start(tmp_path: Path) -> None:
    log_file = tmp_path / "taskdash.log"
    env = daemon_env(
        tmp_path,
        TASKDASH_MONGODB__URI=f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
        TASKDASH_MONGODB__SERVER_SELECTION_TIMEOUT=120,
        TASKDASH_LOG__FILE=str(log_file),
    )
    with running_daemon(tmp_path, env, ready=False) as daemon:
        wait_for(lambda: "store_unreachable" in daemon.event_names(), timeout=30)
        # logrotate moves the file away, then reloads: the daemon writes to a new file
        log_file.rename(tmp_path / "taskdash.log.1")
        daemon.sighup()
        wait_for(lambda: log_file.exists() and "reload_requested" in log_file.read_text())
        assert daemon.proc is not None
        daemon.proc.terminate()
        # the start waits up to 120 s for the store; a stop request does not
        assert daemon.proc.wait(60) == 0
    names = daemon.event_names()
    assert "daemon_ready" not in names and names[-1] == "daemon_stopped"
    assert "shutdown_timed_out" not in names
    assert "daemon_stopped" in log_file.read_text()
    assert "reload_requested" not in (tmp_path / "taskdash.log.1").read_text()


def test_credentials_never_reach_the_logs(tmp_path: Path) -> None:
    uri = f"mongodb://admin:hunter2@127.0.0.1:{free_port()}/?directConnection=true&authSource=admin"
    env = daemon_env(
        tmp_path,
        TASKDASH_MONGODB__URI=uri,
        TASKDASH_MONGODB__SERVER_SELECTION_TIMEOUT=0.3,
        TASKDASH_LOG__LEVEL="debug",
    )
    with running_daemon(tmp_path, env, ready=False) as daemon:
        wait_for(lambda: "store_unreachable" in daemon.logs(), timeout=30)
        assert daemon.stop() == 0
    assert "hunter2" not in daemon.logs()


def test_killed_daemon_takes_its_child_along(tmp_path: Path) -> None:
    env = daemon_env(tmp_path)
    with running_daemon(tmp_path, env) as daemon:
        assert pids_with_arg(env["TASKDASH_DAEMON__DATA_DIR"])
        assert daemon.proc is not None
        daemon.proc.kill()
        daemon.proc.wait()
        wait_for(lambda: not pids_with_arg(env["TASKDASH_DAEMON__DATA_DIR"]), timeout=10)


@pytest.mark.parametrize(
    ("variable", "setting"),
    [
        ("TASKDASH_WEB__PORT", "web.port"),
        ("TASKDASH_MONGODB__EMBEDDED_PORT", "mongodb.embedded_port"),
        ("TASKDASH_NSQ__EMBEDDED_TCP_PORT", "nsq.embedded_tcp_port"),
        ("TASKDASH_NSQ__EMBEDDED_HTTP_PORT", "nsq.embedded_http_port"),
    ],
)
def test_port_in_use_fails_with_a_clear_line(tmp_path: Path, variable: str, setting: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = daemon_env(tmp_path, **{variable: port})
        with running_daemon(tmp_path, env, ready=False) as daemon:
            assert daemon.proc is not None
            assert daemon.proc.wait(60) == 1
    events = daemon.events()
    errors = [e for e in events if e["level"] in ("error", "critical")]
    assert [e["event"] for e in errors] == ["start_failed"], errors
    assert errors[0]["error"].startswith(f"{setting} 127.0.0.1:{port} already in use"), errors
    assert not [e for e in events if "exception" in e], "one line, no traceback"
    assert not pids_with_arg(env["TASKDASH_DAEMON__DATA_DIR"]), "nothing left running"


def test_bad_config_exits_2_before_starting_anything(tmp_path: Path) -> None:
    env = daemon_env(tmp_path, TASKDASH_WEB__PORT="not-a-port")
    with running_daemon(tmp_path, env, ready=False) as daemon:
        assert daemon.proc is not None and daemon.proc.wait(30) == 2
    assert "web.port: Expected `int`, got `str` (in TASKDASH_WEB__PORT)" in daemon.logs()
    assert not (tmp_path / "var").exists()
