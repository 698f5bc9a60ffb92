"""The daemon harvests task metadata from a service's URL and serves it on the JSON API."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from support import VENV_BIN, daemon_env, daemon_token, http_get, running_daemon, wait_for

TASKS = [
    {"id": "t-1", "name": "crawl", "url": "http://x/1", "description": "爬虫", "status": "running",
     "reserved": ""},
    {"id": "t-2", "name": "index", "url": "http://x/2", "description": "", "status": "finish",
     "reserved": ""},
    {"id": 3, "name": "bad record: id is a number"},
]  # fmt: skip


@contextmanager
def task_service() -> Iterator[str]:
    """A task service's HTTP URL on loopback, listing TASKS."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"tasks": TASKS}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/tasks"
    finally:
        server.shutdown()
        server.server_close()


def test_registered_service_tasks_are_harvested(tmp_path: Path) -> None:
    env = daemon_env(
        tmp_path,
        TASKDASH_FETCHER__FETCH_INTERVAL=0.5,
        TASKDASH_FETCHER__NODE_HEARTBEAT_INTERVAL=0.2,
        TASKDASH_FETCHER__NODE_TIMEOUT=1,
    )
    with task_service() as url, running_daemon(tmp_path, env) as daemon:
        components = daemon.wait_ready()["components"]
        assert "fetcher" in components
        assert {"passes", "last_pass_at"} <= components["window_judge"].keys()
        out = subprocess.run(
            [str(VENV_BIN / "taskdash"), "publish", "service", "--id", "svc-f", "--url", url],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        subprocess.run(
            [str(VENV_BIN / "taskdash"), "publish", "heartbeat", "--id", "svc-f"],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip

        token = daemon_token(env)

        def tasks() -> list[dict[str, object]]:
            status, body = http_get(f"{daemon.web}/api/tasks?service_id=svc-f", token=token)
            return body["tasks"] if status == 200 and len(body["tasks"]) == 2 else []

        got = wait_for(tasks, timeout=30)
        assert {(t["id"], t["status"], t["service_id"]) for t in got} == {
            ("t-1", "running", "svc-f"),
            ("t-2", "finish", "svc-f"),
        }
        assert [t["description"] for t in got if t["id"] == "t-1"] == ["爬虫"]
        status, result = http_get(f"{daemon.web}/api/services/svc-f/fetch", token=token)
        assert status == 200, result
        assert result["http_status"] == 200 and result["task_count"] == 2
        assert http_get(f"{daemon.web}/api/services/nope/fetch", token=token)[0] == 404
        assert http_get(f"{daemon.web}/api/tasks?include_gone=maybe", token=token)[0] == 400
        assert daemon.stop() == 0
