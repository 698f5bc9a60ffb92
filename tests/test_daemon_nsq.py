"""The whole path as users run it: `taskdash publish` -> embedded NSQ -> readers -> checker."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support import VENV_BIN, daemon_env, daemon_token, http_get, running_daemon, wait_for


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "taskdash"), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_publish_register_heartbeat_stale_offline_recover(tmp_path: Path) -> None:
    env = daemon_env(
        tmp_path,
        TASKDASH_CHECKER__STALE_AFTER=1.5,
        TASKDASH_NSQ__HEARTBEAT_RESOLUTION=0.5,
        TASKDASH_CHECKER__OFFLINE_AFTER=3,
        TASKDASH_CHECKER__CHECK_INTERVAL=0.2,
        TASKDASH_CHECKER__RECOVER_BEATS=2,
        TASKDASH_NSQ__HEARTBEAT_FLUSH_INTERVAL=0.05,
    )
    with running_daemon(tmp_path, env) as daemon:
        ready = daemon.wait_ready()
        components = ready["components"]
        assert components["checker"]["mode"] == "normal"

        def connected() -> bool:
            parts = http_get(f"{daemon.web}/readyz")[1]["components"]
            return all(parts[f"reader:taskdash.{t}"]["connections"] == 1 for t in topics)

        topics = ("service", "heartbeat")
        wait_for(connected)  # pynsq connects in the background, after the daemon is ready

        out = cli(env, "publish", "service", "--id", "svc-e2e", "--name", "crawler",
                  "--type", "batch", "--url", "http://127.0.0.1:9/tasks")  # fmt: skip
        assert out.returncode == 0, out.stderr
        url = f"{daemon.web}/api/services/svc-e2e"
        token = daemon_token(env)
        wait_for(lambda: http_get(url, token=token)[0] == 200)
        assert http_get(url, token=token)[1]["status"] == "unknown"

        out = cli(env, "publish", "heartbeat", "--id", "svc-e2e", "--every", "0.2", "--count", "3")
        assert out.returncode == 0 and "published 3 heartbeat(s)" in out.stdout, out.stderr
        wait_for(lambda: http_get(url, token=token)[1]["status"] == "online")
        wait_for(lambda: http_get(url, token=token)[1]["status"] == "stale", timeout=10)
        wait_for(lambda: http_get(url, token=token)[1]["status"] == "offline", timeout=10)

        # beats for longer than the resolution (0.5 s): a burst within it is one stored beat
        out = cli(env, "publish", "heartbeat", "--id", "svc-e2e", "--every", "0.2", "--count", "6")
        assert out.returncode == 0
        wait_for(lambda: http_get(url, token=token)[1]["status"] == "online", timeout=10)

        status, body = http_get(f"{url}/history", token=token)
        assert status == 200
        transitions = [(e["from"], e["to"]) for e in reversed(body["history"])]
        assert transitions[:4] == [
            ("unknown", "online"),
            ("online", "stale"),
            ("stale", "offline"),
            ("offline", "online"),
        ]

        nsqd = f"http://127.0.0.1:{env['TASKDASH_NSQ__EMBEDDED_HTTP_PORT']}"

        def status_topic_depth() -> int:
            stats = http_get(f"{nsqd}/stats?format=json")[1]
            topics = {t["topic_name"]: t for t in stats["topics"]}
            topic = topics.get("taskdash.service_status")
            return topic["message_count"] if topic else 0

        wait_for(lambda: status_topic_depth() >= 4, timeout=10)

        out = cli(env, "publish", "service", "--id", "", "--nsqd-http", nsqd)
        assert out.returncode == 2 and "invalid service" in out.stderr
        out = cli(env, "publish", "heartbeat", "--id", "x", "--nsqd-http", "http://127.0.0.1:9")
        assert out.returncode == 1 and "cannot reach nsqd" in out.stderr

        assert daemon.stop() == 0
    events = [e["event"] for e in daemon.events()]
    assert "service_registered" in events and "service_status_changed" in events
    # a clean stop closes the NSQ connections without pynsq's "failed to unpack size" errors
    # or "connection closed" warnings (the fetcher's warnings about the test's unreachable
    # service URL are expected)
    errors = [e for e in daemon.events() if e["level"] in ("error", "critical")]
    nsq_warnings = [
        e for e in daemon.events() if e["logger"].startswith("nsq") and e["level"] != "info"
    ]
    assert not errors and not nsq_warnings, errors + nsq_warnings


def test_poison_message_shows_in_the_dead_letter_api(tmp_path: Path) -> None:
    env = daemon_env(tmp_path)
    with running_daemon(tmp_path, env) as daemon:
        nsqd = f"http://127.0.0.1:{env['TASKDASH_NSQ__EMBEDDED_HTTP_PORT']}"
        import requests

        resp = requests.post(f"{nsqd}/pub?topic=taskdash.service", data=b'{"id": 7}', timeout=5)
        assert resp.status_code == 200
        token = daemon_token(env)
        letters = wait_for(
            lambda: http_get(f"{daemon.web}/api/dead-letters", token=token)[1]["dead_letters"]
        )
        assert letters[0]["topic"] == "taskdash.service" and letters[0]["field"] == "id"
        assert letters[0]["body"] == '{"id": 7}'
        assert daemon.stop() == 0
    dead = [e for e in daemon.events() if e["event"] == "message_dead_lettered"]
    assert len(dead) == 1 and dead[0]["topic"] == "taskdash.service"
