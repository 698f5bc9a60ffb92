"""``taskdash periodic`` stopped by SIGTERM while gRPC calls flow: every call acknowledged is
kept, every call executed was answered, the rest refused; exit status 0. The process also
pings systemd's watchdog from its loop from the start."""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path
from threading import Thread

import grpc
from support import wait_for
from test_process import PeriodicProcess, periodic_env, register_and_start

from taskdash.periodic.proto import periodic_task_pb2 as pb
from taskdash.periodic.proto import periodic_task_pb2_grpc as pb_grpc

WORKERS = 8


def create_until_refused(
    target: str, auth: dict[str, str], numbers: itertools.count[int],
    acked: list[int], errors: list[grpc.StatusCode],
) -> None:  # fmt: skip
    """CreateTask with a numbered body, again and again, until the service refuses."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.PeriodicTaskStub(channel)
        while True:
            n = next(numbers)
            request = pb.CreateTaskRequest(**auth, task_type="t", task_data=json.dumps({"n": n}))
            try:
                reply = stub.CreateTask(request, timeout=30)
            except grpc.RpcError as exc:
                errors.append(exc.code())
                return
            assert reply.success
            acked.append(n)


def test_sigterm_while_calls_flow_keeps_every_acknowledged_task(
    mongo_uri: str, tmp_path: Path
) -> None:
    notify_path = str(tmp_path / "notify")
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(notify_path)
    systemd.settimeout(30)
    env = periodic_env(
        mongo_uri,
        NOTIFY_SOCKET=notify_path,
        WATCHDOG_USEC="400000",
        TASKDASH_PERIODIC__MAX_LIMIT="100000",
    )
    service = PeriodicProcess(tmp_path, env)
    try:
        got = [systemd.recv(256)]
        while not got[-1].startswith(b"READY=1"):
            got.append(systemd.recv(256))
        assert got[0] == b"WATCHDOG=1" and systemd.recv(256) == b"WATCHDOG=1"
        service.wait_ready()
        with grpc.insecure_channel(service.grpc_target) as channel:
            auth = register_and_start(pb_grpc.PeriodicTaskStub(channel))
        numbers, acked, errors = itertools.count(), [], []
        args = (service.grpc_target, auth, numbers, acked, errors)
        workers = [Thread(target=create_until_refused, args=args) for _ in range(WORKERS)]
        for worker in workers:
            worker.start()
        wait_for(lambda: len(acked) >= 200, timeout=60)
        code = service.stop()
        for worker in workers:
            worker.join(60)
    finally:
        systemd.close()
        if service.proc.poll() is None:
            service.stop()
    assert code == 0, service.logs()
    # each worker ends on a refusal: UNAVAILABLE (connection going away) or CANCELLED (gRPC had
    # received the call but never handed it to the service): neither was executed, see below
    assert len(errors) == WORKERS, errors
    assert set(errors) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, errors
    assert service.events()[-1] == "daemon_stopped"

    again = PeriodicProcess(tmp_path, env | {"NOTIFY_SOCKET": ""})
    try:
        again.wait_ready()
        with grpc.insecure_channel(again.grpc_target) as channel:
            stub = pb_grpc.PeriodicTaskStub(channel)
            stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**auth))  # per start
            listed = stub.GetTaskList(pb.GetTaskListRequest(**auth, limit=100_000))
        stored = {t["task_data"]["n"] for t in json.loads(listed.task_list)}
    finally:
        assert again.stop() == 0
    missing, unanswered = set(acked) - stored, stored - set(acked)
    assert not missing, f"{len(missing)} acknowledged task(s) lost"
    assert not unanswered, f"executed without an answer: {sorted(unanswered)}"
