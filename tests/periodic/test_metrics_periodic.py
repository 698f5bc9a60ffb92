"""``taskdash periodic``'s ``/metrics`` after real gRPC and HTTP calls: calls by method and
code, leases granted and expired, completions, dead tasks, queue depths by state; schedule
runs fired, on a node in process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Clock, Node, register
from support import http_get, wait_for
from test_process import PeriodicProcess, periodic_env, register_and_start

from taskdash.metrics import Metrics
from taskdash.metrics.reading import Scrape, scrape
from taskdash.periodic.proto import periodic_task_pb2 as pb
from taskdash.periodic.proto import periodic_task_pb2_grpc as pb_grpc
from taskdash.settings import MetricsSettings

TOKEN = "periodic-metrics-token-0123456789"
CALLS = "taskdash_grpc_requests_total"
DEPTH = "taskdash_periodic_queue_tasks"


def rpc(method: str) -> str:
    return f"/PeriodicTask/{method}"


def lease(stub: pb_grpc.PeriodicTaskStub, auth: dict[str, str], limit: int) -> list[Any]:
    reply = stub.GetTaskList(pb.GetTaskListRequest(**auth, limit=limit))
    return list(json.loads(reply.task_list))


def complete(stub: pb_grpc.PeriodicTaskStub, auth: dict[str, str], task: Any, ok: bool) -> None:
    stub.CompleteTask(pb.CompleteTaskRequest(**auth, task_id=task["task_id"], success=ok))


@pytest.mark.slow
def test_periodic_metrics_after_real_calls(mongo_uri: str, tmp_path: Path) -> None:
    env = periodic_env(
        mongo_uri,
        TASKDASH_PERIODIC__VISIBILITY_TIMEOUT="0.5",
        TASKDASH_PERIODIC__MAX_ATTEMPTS="2",
        TASKDASH_METRICS__TOKEN=TOKEN,
        TASKDASH_METRICS__STORE_COUNTS_TTL="0",
    )
    service = PeriodicProcess(tmp_path, env)
    try:
        service.wait_ready()
        page = f"{service.http}/metrics"
        assert http_get(page)[0] == 401
        with grpc.insecure_channel(service.grpc_target) as channel:
            stub = pb_grpc.PeriodicTaskStub(channel)
            auth = register_and_start(stub)
            for _ in range(4):
                stub.CreateTask(pb.CreateTaskRequest(**auth, task_type="t", task_data="{}"))
            first = lease(stub, auth, 2)
            complete(stub, auth, first[0], True)  # done
            complete(stub, auth, first[1], False)  # failed: handed out again
            wrong = {**auth, "secret": "not-the-secret"}
            with pytest.raises(grpc.RpcError) as refused:
                stub.CreateTask(pb.CreateTaskRequest(**wrong, task_type="t", task_data="{}"))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as unknown:  # a method nobody serves
                channel.unary_unary("/PeriodicTask/Nope")(b"")
            assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED

            now = scrape(page, TOKEN)
            assert now.value(CALLS, method=rpc("ServiceRegistry"), code="OK") == 1
            assert now.value(CALLS, method=rpc("CreatePeriodicTaskQueue"), code="OK") == 1
            assert now.value(CALLS, method=rpc("StartPeriodicTaskQueue"), code="OK") == 1
            assert now.value(CALLS, method=rpc("CreateTask"), code="OK") == 4
            assert now.value(CALLS, method=rpc("CreateTask"), code="UNAUTHENTICATED") == 1
            assert now.value(CALLS, method=rpc("GetTaskList"), code="OK") == 1
            assert now.value(CALLS, method=rpc("CompleteTask"), code="OK") == 2
            assert now.sum(CALLS) == 11  # the unknown method is not counted: bounded labels
            count = "taskdash_grpc_request_duration_seconds_count"
            assert now.value(count, method=rpc("CreateTask")) == 5
            assert now.value("taskdash_periodic_leases_granted_total") == 2
            done = "taskdash_periodic_tasks_completed_total"
            assert now.value(done, outcome="done") == 1
            assert now.value(done, outcome="failed") == 1
            queue = {"service": "s", "queue": "q"}
            assert now.value(DEPTH, **queue, state="pending") == 2
            assert now.value(DEPTH, **queue, state="failed") == 1
            assert now.value(DEPTH, **queue, state="leased") == 0

            held = lease(stub, auth, 10)  # the failed one (its last attempt) and two pending
            assert len(held) == 3
            # nobody completes them: once the leases run out the two with an attempt left are
            # handed out again, the third is buried (dead)
            again = wait_for(lambda: lease(stub, auth, 10), timeout=20, every=0.2)
            assert len(again) == 2
            complete(stub, auth, again[0], False)  # its last attempt: dead

        end = scrape(page, TOKEN)
        assert end.value("taskdash_periodic_leases_granted_total") == 7
        assert end.value("taskdash_periodic_leases_expired_total") == 3
        dead = "taskdash_periodic_tasks_dead_total"
        assert end.value(dead, cause="expired") == 1
        assert end.value(dead, cause="failed") == 1
        assert end.value(done, outcome="dead") == 1
        assert end.value(DEPTH, **queue, state="dead") == 2
        assert end.value(DEPTH, **queue, state="leased") == 1
        assert end.value("taskdash_periodic_schedule_runs_total", outcome="fired") == 0

        queues = f"{service.http}/v1/services/s/queues"
        assert http_get(queues)[0] == 401
        assert http_get(queues, token=auth["secret"])[0] == 200
        http = scrape(page, TOKEN)
        total, route = "taskdash_http_requests_total", "/v1/services/([^/]+)/queues"
        assert http.value(total, route=route, method="GET", status="200") == 1
        assert http.value(total, route=route, method="GET", status="401") == 1
        assert http.value(total, route="/metrics", method="GET", status="401") == 1
    finally:
        code = service.stop()
    assert code == 0, service.logs()


async def test_schedule_runs_fired_are_counted(node: Node, clock: Clock) -> None:
    metrics = Metrics(MetricsSettings())
    metrics.watch_firer(node.firer)
    who = await register(node.stub)
    body = {"schedule_id": "tick", "interval": 10, "task_type": "r", "task_data": {}}
    await node.schedules.create(who.caller, who.queue, body)
    for _ in range(3):
        clock.advance(10)
        await node.firer.fire_due()
    await node.firer.fire_due()  # the same moment again: nothing more
    found = Scrape(metrics.expose("")[0].decode())
    runs = "taskdash_periodic_schedule_runs_total"
    assert found.value(runs, outcome="fired") == 3
    assert found.value(runs, outcome="skipped") == 0
