"""SIGTERM while 10,000 messages flow: exit 0 within TimeoutStopSec, and after a restart
every message is stored.

The broker is a separate ``taskdash nsqd`` process, as a real nsqd would be: what the stopped
daemon had not acknowledged waits there for the next start. The 10,000 messages are
registrations of distinct services, so each one is a document that must exist at the end.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pymongo
import requests
from support import VENV_BIN, daemon_env, free_port, http_get, running_daemon, wait_for

from taskdash.models import TaskService
from taskdash.nsq.announce import encode
from taskdash.store.embedded import die_with_parent, port_open

TOTAL, BATCH = 10_000, 250
UNIT = Path(__file__).resolve().parent.parent / "config" / "taskdash.service"


def timeout_stop_sec() -> float:
    found = re.search(r"^TimeoutStopSec=(\d+)$", UNIT.read_text(), re.MULTILINE)
    assert found, "the unit sets TimeoutStopSec"
    return float(found.group(1))


def registration(n: int) -> bytes:
    service = TaskService(id=f"load-{n:05d}", name="load", type="t", url="http://127.0.0.1:9/t")
    return encode(service)


def publish_all(nsqd_http: str, failures: list[str]) -> None:
    """Every registration through nsqd's /mpub, in batches, as fast as it takes them."""
    with requests.Session() as http:
        for start in range(0, TOTAL, BATCH):
            body = b"\n".join(registration(n) for n in range(start, start + BATCH))
            resp = http.post(f"{nsqd_http}/mpub?topic=taskdash.service", data=body, timeout=30)
            if resp.status_code != 200:
                failures.append(f"{start}: {resp.status_code} {resp.text}")


def test_sigterm_under_load_loses_no_message(tmp_path: Path, mongo_uri: str) -> None:
    tcp, http = free_port(), free_port()
    nsqd_http = f"http://127.0.0.1:{http}"
    broker_env = daemon_env(
        tmp_path / "nsqd",
        TASKDASH_NSQ__EMBEDDED_TCP_PORT=tcp,
        TASKDASH_NSQ__EMBEDDED_HTTP_PORT=http,
    )
    (tmp_path / "nsqd").mkdir()
    with open(tmp_path / "nsqd.log", "wb") as out:
        broker = subprocess.Popen(
            [str(VENV_BIN / "taskdash"), "nsqd", "--msg-timeout=5s"],
            env=broker_env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path / "nsqd",
            preexec_fn=die_with_parent,
        )  # fmt: skip
    database = f"load_{uuid.uuid4().hex[:10]}"
    env = daemon_env(
        tmp_path,
        TASKDASH_MONGODB__URI=mongo_uri,
        TASKDASH_MONGODB__DATABASE=database,
        TASKDASH_NSQ__NSQD_TCP_ADDRESSES=f'["127.0.0.1:{tcp}"]',
        TASKDASH_NSQ__NSQD_HTTP_ADDRESS=nsqd_http,
        TASKDASH_FETCHER__ENABLED="false",  # 10,000 unreachable metadata URLs: not the point
    )
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_uri)
    services = client[database].services
    try:
        wait_for(lambda: port_open("127.0.0.1", http), timeout=30)
        with running_daemon(tmp_path, env) as daemon:
            failures: list[str] = []
            publisher = threading.Thread(target=publish_all, args=(nsqd_http, failures))
            publisher.start()
            wait_for(lambda: services.count_documents({}) > 0, timeout=60)
            asked = time.monotonic()
            code = daemon.stop(timeout=timeout_stop_sec() + 5)
            took = time.monotonic() - asked
            publisher.join(120)
            assert not publisher.is_alive() and not failures, failures
            assert code == 0, daemon.logs()
            assert took < timeout_stop_sec(), f"stopped in {took:.1f}s: systemd would kill it"
            stored_at_stop = services.count_documents({})
            assert stored_at_stop < TOTAL, "all stored before the signal: nothing was flowing"
            events = daemon.event_names()
            assert "shutdown_timed_out" not in events and events[-1] == "daemon_stopped"
        with running_daemon(tmp_path, env) as daemon:
            wait_for(lambda: services.count_documents({}) == TOTAL, timeout=120, every=0.5)
            assert http_get(f"{daemon.web}/readyz")[0] == 200
            assert daemon.stop() == 0, daemon.logs()
        ids = {d["_id"] for d in services.find({}, {"_id": 1})}
        assert ids == {f"load-{n:05d}" for n in range(TOTAL)}
        assert client[database].dead_letters.count_documents({}) == 0
    finally:
        client.close()
        broker.terminate()
        broker.wait(30)
