"""Broker + TaskDash + periodic service, three processes: its tasks appear in TaskDash's API,
it shows online, and once stopped it goes stale, then offline."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
from support import (
    VENV_BIN,
    daemon_env,
    daemon_token,
    free_ports,
    http_get,
    running_daemon,
    wait_for,
)
from test_process import PeriodicProcess, periodic_env

from taskdash.periodic.proto import periodic_task_pb2 as pb
from taskdash.periodic.proto import periodic_task_pb2_grpc as pb_grpc

SERVICE_ID = "taskdash-periodic"


def _broker(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """``taskdash nsqd`` on free ports: (process, TCP port, HTTP port)."""
    tcp, http = free_ports(2)
    env = daemon_env(
        tmp_path / "nsqd",
        TASKDASH_NSQ__EMBEDDED_TCP_PORT=tcp,
        TASKDASH_NSQ__EMBEDDED_HTTP_PORT=http,
    )
    (tmp_path / "nsqd").mkdir()
    out = open(tmp_path / "nsqd.log", "wb")  # noqa: SIM115 - the process outlives this block
    proc = subprocess.Popen([str(VENV_BIN / "taskdash"), "nsqd"], env=env, stdout=out, stderr=out)
    wait_for(lambda: http_get(f"http://127.0.0.1:{http}/ping")[0] == 200, timeout=20)
    return proc, tcp, http


def _create_tasks(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.PeriodicTaskStub(channel)
        secret = stub.ServiceRegistry(pb.ServiceRegistryRequest(service_name="e2e")).secret
        auth = {"service_name": "e2e", "secret": secret, "queue_name": "q"}
        stub.CreatePeriodicTaskQueue(pb.CreatePeriodicTaskQueueRequest(**auth))
        stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**auth))
        for kind in ("backup", "report"):
            stub.CreateTask(pb.CreateTaskRequest(**auth, task_type=kind, task_data="{}"))
        stub.GetTaskList(pb.GetTaskListRequest(**auth, limit=1))  # backup: running


def test_periodic_service_shows_in_taskdash(mongo_uri: str, tmp_path: Path) -> None:
    broker, tcp, http = _broker(tmp_path)
    nsqd_http = f"http://127.0.0.1:{http}"
    env = daemon_env(
        tmp_path,
        TASKDASH_NSQ__NSQD_TCP_ADDRESSES=f'["127.0.0.1:{tcp}"]',
        TASKDASH_NSQ__NSQD_HTTP_ADDRESS=nsqd_http,
        TASKDASH_NSQ__HEARTBEAT_RESOLUTION=0.2,
        TASKDASH_CHECKER__CHECK_INTERVAL=0.2,
        TASKDASH_CHECKER__STALE_AFTER=2,
        TASKDASH_CHECKER__OFFLINE_AFTER=4,
        TASKDASH_FETCHER__FETCH_INTERVAL=0.5,
        TASKDASH_FETCHER__NODE_HEARTBEAT_INTERVAL=0.2,
        TASKDASH_FETCHER__NODE_TIMEOUT=1,
    )
    periodic = None
    try:
        with running_daemon(tmp_path, env) as daemon:
            periodic = PeriodicProcess(
                tmp_path,
                periodic_env(
                    mongo_uri,
                    TASKDASH_NSQ__NSQD_HTTP_ADDRESS=nsqd_http,
                    TASKDASH_PERIODIC__ANNOUNCE_INTERVAL="0.3",
                ),
            )
            periodic.wait_ready()
            _create_tasks(periodic.grpc_target)
            service_url = f"{daemon.web}/api/services/{SERVICE_ID}"
            token = daemon_token(env)

            def status() -> str | None:
                code, body = http_get(service_url, token=token)
                return body.get("status") if code == 200 else None

            wait_for(lambda: status() == "online", timeout=30)

            def tasks() -> dict[str, str]:
                _, body = http_get(f"{daemon.web}/api/tasks?service_id={SERVICE_ID}", token=token)
                return {t["name"]: t["status"] for t in (body or {}).get("tasks", [])}

            assert wait_for(lambda: len(tasks()) == 2 and tasks(), timeout=30) == {
                "backup": "running",
                "report": "pending",
            }
            assert periodic.stop() == 0
            wait_for(lambda: status() == "stale", timeout=30)
            wait_for(lambda: status() == "offline", timeout=30)
    finally:
        if periodic is not None:
            periodic.stop()
        broker.terminate()
        broker.wait(20)
