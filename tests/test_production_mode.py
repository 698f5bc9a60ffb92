"""Production mode end to end: `taskdash run` against an external nsqd/nsqlookupd and MongoDB.

Nothing is embedded: the broker is a separate `taskdash nsqd` process (our nsqd + nsqlookupd, as
a real nsqd would run beside the daemon), MongoDB is the suite's server at its URI. A service
announces itself and beats with `taskdash publish`; the daemon discovers nsqd (through lookupd
or at its TCP address), stores, shows the service online over HTTP, and publishes each status
change to ``taskdash.service_status``, where a consumer reads exactly those changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support import (
    VENV_BIN,
    async_wait_for,
    daemon_env,
    free_ports,
    http_get,
    new_daemon_token,
    pids_with_arg,
    running_daemon,
    wait_for,
)

from taskdash.store.embedded import port_open
from taskdash.testing import Subscriber

STATUS_TOPIC = "taskdash.service_status"


class NsqdProcess:
    """`taskdash nsqd` as an operator runs it: a subprocess on fixed loopback ports and data."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tcp_port, self.http_port, self.lookupd_port = free_ports(3)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TASKDASH_")}
        self.env.update(
            TASKDASH_DAEMON__DATA_DIR=str(tmp / "nsqd-var"),
            TASKDASH_NSQ__EMBEDDED_TCP_PORT=str(self.tcp_port),
            TASKDASH_NSQ__EMBEDDED_HTTP_PORT=str(self.http_port),
            TASKDASH_NSQ__EMBEDDED_LOOKUPD_PORT=str(self.lookupd_port),
            TASKDASH_LOG__FORMAT="json",
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = tmp / "nsqd.log"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def lookupd(self) -> str:
        return f"http://127.0.0.1:{self.lookupd_port}"

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process (appending to its log) without waiting for it."""
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "taskdash"), "nsqd"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self.proc

    def start(self) -> NsqdProcess:
        """Start and wait until nsqd and lookupd answer ``/ping``."""
        proc = self.spawn()
        wait_for(lambda: proc.poll() is not None or http_get(f"{self.http}/ping")[0] == 200)
        assert proc.poll() is None, self.output.read_text()
        assert http_get(f"{self.lookupd}/ping")[0] == 200
        return self

    def stop(self) -> int:
        """SIGTERM, as systemd stops it; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(20)

    def events(self) -> list[dict[str, Any]]:
        lines = self.output.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@contextmanager
def nsqd_process(tmp: Path) -> Iterator[NsqdProcess]:
    """Run `taskdash nsqd` until the block ends; it must stop cleanly on SIGTERM."""
    nsqd = NsqdProcess(tmp).start()
    try:
        yield nsqd
    finally:
        assert nsqd.stop() == 0, nsqd.output.read_text()
    assert nsqd.events()[-1]["event"] == "broker_stopped"


def publish(nsqd: NsqdProcess, *args: str) -> None:
    """`taskdash publish ...` at this nsqd, as a task service (or its operator) would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKDASH_")}
    out = subprocess.run(
        [str(VENV_BIN / "taskdash"), "publish", *args, "--nsqd-http", nsqd.http],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


def service(daemon_web: str, sid: str, token: str) -> dict[str, Any] | None:
    status, body = http_get(f"{daemon_web}/api/services/{sid}", token=token)
    return body if status == 200 else None


@pytest.mark.parametrize("discovery", ["lookupd", "nsqd_tcp"])
async def test_external_nsqd_and_mongodb_end_to_end(
    tmp_path: Path, mongo_uri: str, discovery: str
) -> None:
    sid = f"svc-{uuid.uuid4().hex[:8]}"
    database = f"prod_{uuid.uuid4().hex[:12]}"
    with nsqd_process(tmp_path) as nsqd:
        # the topics exist before the daemon starts, as they do where services already run
        # (lookupd only knows a topic once something was published to it)
        publish(nsqd, "service", "--id", sid, "--name", "crawler", "--url", "http://h/tasks")
        publish(nsqd, "heartbeat", "--id", sid)
        status_reader = await Subscriber.open(nsqd.tcp_port, STATUS_TOPIC, "downstream")

        where = (
            {"TASKDASH_NSQ__LOOKUPD_HTTP_ADDRESSES": json.dumps([nsqd.lookupd])}
            if discovery == "lookupd"
            else {"TASKDASH_NSQ__NSQD_TCP_ADDRESSES": json.dumps([f"127.0.0.1:{nsqd.tcp_port}"])}
        )
        env = daemon_env(
            tmp_path,
            TASKDASH_MONGODB__URI=mongo_uri,
            TASKDASH_MONGODB__DATABASE=database,
            TASKDASH_NSQ__NSQD_HTTP_ADDRESS=nsqd.http,
            TASKDASH_DAEMON__NODE_ID="prod-node-1",
            TASKDASH_CHECKER__STALE_AFTER=1.5,
            TASKDASH_NSQ__HEARTBEAT_RESOLUTION=0.5,
            TASKDASH_CHECKER__OFFLINE_AFTER=3,
            TASKDASH_CHECKER__CHECK_INTERVAL=0.2,
            TASKDASH_NSQ__HEARTBEAT_FLUSH_INTERVAL=0.05,
            **where,
        )
        # the API's token, made before the start: the service turns stale 1.5 s after its
        # first beat, which the test must see online first
        token = await new_daemon_token(env)
        try:
            with running_daemon(tmp_path, env) as daemon:
                # nothing embedded: no nx-27017 child, no broker of its own
                assert pids_with_arg(env["TASKDASH_DAEMON__DATA_DIR"]) == []
                assert not port_open("127.0.0.1", int(env["TASKDASH_NSQ__EMBEDDED_TCP_PORT"]))
                started = {e["event"] for e in daemon.events()}
                assert not started & {"embedded_mongodb_started", "broker_started"}

                # the registration published before the start is read from the external nsqd
                wait_for(lambda: service(daemon.web, sid, token))
                publish(nsqd, "heartbeat", "--id", sid, "--every", "0.2", "--count", "3")
                wait_for(lambda: (service(daemon.web, sid, token) or {}).get("status") == "online")
                body = service(daemon.web, sid, token)
                assert body is not None and body["name"] == "crawler"
                components = http_get(f"{daemon.web}/readyz")[1]["components"]
                assert components["store"]["ready"] is True
                assert components["reader:taskdash.heartbeat"]["connections"] == 1

                # silence: stale, then offline; each change goes out to taskdash.service_status
                wait_for(lambda: service(daemon.web, sid, token)["status"] == "offline", timeout=20)
                await async_wait_for(
                    lambda: (
                        http_get(f"{daemon.web}/readyz")[1]["components"]["status_publisher"][
                            "published"
                        ]
                        == 3
                    )
                )
                changes = await status_reader.take_json(3)
                history = http_get(f"{daemon.web}/api/services/{sid}/history", token=token)[1][
                    "history"
                ]
                assert daemon.stop() == 0
        finally:
            await status_reader.close()
    assert [(c["id"], c["from"], c["to"]) for c in changes] == [
        (sid, "unknown", "online"),
        (sid, "online", "stale"),
        (sid, "stale", "offline"),
    ]
    assert {c["node"] for c in changes} == {"prod-node-1"}
    assert [c["reason"] for c in changes] == ["first heartbeat", "no heartbeat", "no heartbeat"]
    # what was published is what the store recorded (newest first in the API)
    assert [(h["from"], h["to"]) for h in reversed(history)] == [
        (c["from"], c["to"]) for c in changes
    ]


async def test_taskdash_nsqd_keeps_unfinished_messages_across_a_restart(tmp_path: Path) -> None:
    with nsqd_process(tmp_path) as nsqd:
        publish(nsqd, "heartbeat", "--id", "kept-1")
        publish(nsqd, "heartbeat", "--id", "kept-2")
        assert nsqd.stop() == 0
        persisted = [e for e in nsqd.events() if e["event"] == "messages_persisted"]
        assert persisted and persisted[-1]["count"] == 2
        nsqd.start()  # same ports, same data directory
        subscriber = await Subscriber.open(nsqd.tcp_port, "taskdash.heartbeat", "after")
        try:
            bodies = await subscriber.take_json(2)
        finally:
            await subscriber.close()
    assert sorted(b["id"] for b in bodies) == ["kept-1", "kept-2"]


def test_taskdash_nsqd_on_a_port_in_use_exits_1_naming_the_error(tmp_path: Path) -> None:
    with nsqd_process(tmp_path) as first:
        second = NsqdProcess(tmp_path / "second")
        second.env["TASKDASH_NSQ__EMBEDDED_TCP_PORT"] = str(first.tcp_port)
        (tmp_path / "second").mkdir()
        assert second.spawn().wait(30) == 1
        (failure,) = [e for e in second.events() if e["event"] == "start_failed"]
        address = f"127.0.0.1:{first.tcp_port}"
        assert failure["error"] == f"nsq.embedded_tcp_port {address} already in use"
        assert (failure["setting"], failure["address"]) == ("nsq.embedded_tcp_port", address)
        assert http_get(f"{first.http}/ping")[0] == 200  # the running one is unharmed
