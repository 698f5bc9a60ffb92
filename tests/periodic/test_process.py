"""``taskdash periodic`` as ops run it: a subprocess, systemd notify, SIGTERM, its unit file."""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support import VENV_BIN, http_get, periodic_env, wait_for

from taskdash.periodic.proto import periodic_task_pb2 as pb
from taskdash.periodic.proto import periodic_task_pb2_grpc as pb_grpc


class PeriodicProcess:
    """One ``taskdash periodic`` subprocess, output to a file."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.env = env
        self.output = tmp / f"periodic-{uuid.uuid4().hex[:6]}.log"
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "taskdash"), "periodic"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp,
            )

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.env['TASKDASH_PERIODIC__HTTP_PORT']}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.env['TASKDASH_PERIODIC__GRPC_PORT']}"

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, self.logs()
            return http_get(f"{self.http}/readyz")[0] == 200

        wait_for(ready, timeout=30, every=0.1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(30)

    def logs(self) -> str:
        return self.output.read_text(errors="replace")

    def events(self) -> list[str]:
        found = []
        for line in self.logs().splitlines():
            try:
                found.append(json.loads(line)["event"])
            except (ValueError, KeyError):
                continue
        return found


def register_and_start(stub: pb_grpc.PeriodicTaskStub) -> dict[str, str]:
    """Register service "s", create and start queue "q"; the fields that authenticate."""
    secret = stub.ServiceRegistry(pb.ServiceRegistryRequest(service_name="s")).secret
    auth = {"service_name": "s", "secret": secret, "queue_name": "q"}
    stub.CreatePeriodicTaskQueue(pb.CreatePeriodicTaskQueueRequest(**auth))
    stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**auth))
    return auth


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(30)
    yield sock
    sock.close()


def test_runs_serves_and_stops_cleanly_on_sigterm(
    mongo_uri: str, tmp_path: Path, notify_socket: socket.socket
) -> None:
    env = periodic_env(mongo_uri, NOTIFY_SOCKET=str(tmp_path / "notify"))
    service = PeriodicProcess(tmp_path, env)
    try:
        assert notify_socket.recv(4096).startswith(b"READY=1")
        service.wait_ready()
        with grpc.insecure_channel(service.grpc_target) as channel:
            stub = pb_grpc.PeriodicTaskStub(channel)
            auth = register_and_start(stub)
            stub.CreateTask(pb.CreateTaskRequest(**auth, task_type="t", task_data="{}"))
            listed = stub.GetTaskList(pb.GetTaskListRequest(**auth))
        assert len(json.loads(listed.task_list)) == 1
        status, body = http_get(f"{service.http}/metadata")
        assert status == 200 and [r["status"] for r in body] == ["running"]
    finally:
        code = service.stop()
    assert code == 0, service.logs()
    assert notify_socket.recv(4096) == b"STOPPING=1"
    events = service.events()
    assert "periodic_ready" in events and "announce_disabled" in events
    assert events[-1] == "daemon_stopped"


def test_a_port_in_use_fails_the_start(mongo_uri: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        service = PeriodicProcess(
            tmp_path, periodic_env(mongo_uri, TASKDASH_PERIODIC__GRPC_PORT=port)
        )
        assert service.proc.wait(30) == 1
    assert "start_failed" in service.events(), service.logs()
    assert f"127.0.0.1:{port}" in service.logs()
