"""The fifth simulated service: a worker of the periodic service, over its gRPC stubs.

It registers with ``taskdash periodic`` (ServiceRegistry, its secret kept in the data
directory so that a reused ``--data-dir`` works), creates and starts a queue, adds a schedule
firing every few seconds (HTTP: schedules have no gRPC call), then leases tasks with
GetTaskList and completes them with CompleteTask: every fifth one fails, so it is handed out
again. Like every task service it also heartbeats and lists its recent tasks at its own URL.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from pathlib import Path
from typing import Any

import grpc
import structlog
import tornado.escape
import tornado.httpclient

from taskdash.background import Background
from taskdash.demo.config import HOST
from taskdash.demo.services import SimulatedService
from taskdash.demo.timing import Timings
from taskdash.errors import TaskDashError
from taskdash.logs import RateLimitedLog
from taskdash.periodic.proto import periodic_task_pb2 as pb
from taskdash.periodic.proto import periodic_task_pb2_grpc as pb_grpc
from taskdash.settings import Settings

log = structlog.get_logger("taskdash.demo.worker")

SERVICE_NAME = "demo-worker"
QUEUE = "demo-jobs"
SCHEDULE_ID = "tick"
SECRET_FILE = "demo-worker.secret"
#: every FAIL_EVERY-th task is completed with success=false (it comes back, attempt 2)
FAIL_EVERY = 5
RECENT = 8  # tasks listed at the worker's own URL


class WorkerError(TaskDashError):
    """The worker could not set itself up with the periodic service."""


def outcome(number: int) -> bool:
    """Whether the ``number``-th task handled (from 0) is completed as a success."""
    return number % FAIL_EVERY != FAIL_EVERY - 1


class Worker:
    """Leases the demo queue's tasks over gRPC and completes them."""

    def __init__(self, settings: Settings, timings: Timings, data_dir: Path) -> None:
        cfg = settings.periodic
        self.target = f"{HOST}:{cfg.grpc_port}"
        self.http = f"http://{HOST}:{cfg.http_port}"
        self.timings = timings
        self.secret_path = data_dir / SECRET_FILE
        self.handled = 0
        self.recent: deque[dict[str, str]] = deque(maxlen=RECENT)
        self.service = SimulatedService(
            id=SERVICE_NAME,
            kind="worker",
            description="leases periodic tasks over gRPC and completes them",
            listing=lambda _elapsed: list(self.recent),
            nsq=settings.nsq,
            beat_every=timings.beat_every,
        )
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._auth: dict[str, str] = {}
        self._loop = Background("demo_worker", self._work)
        self._failed = RateLimitedLog(log, "demo_worker_call_failed")

    async def start(self) -> None:
        """Set up service, queue and schedule, then lease in the background."""
        await self.service.start()
        self._channel = grpc.aio.insecure_channel(self.target)
        self._stub = pb_grpc.PeriodicTaskStub(self._channel)
        try:
            await self._set_up()
        except grpc.aio.AioRpcError as exc:
            raise WorkerError(f"periodic service: {exc.code().name}: {exc.details()}") from None
        except tornado.httpclient.HTTPClientError as exc:  # no answer (599)
            raise WorkerError(f"periodic service: schedule not created: {exc}") from None
        await self._loop.start()
        log.info("demo_worker_started", queue=QUEUE, every=self.timings.schedule_every)

    async def _set_up(self) -> None:
        secret = await self._secret()
        self._auth = {"service_name": SERVICE_NAME, "secret": secret, "queue_name": QUEUE}
        await self._queue()
        await self._schedule(secret)
        for name in ("welcome", "warm-up"):
            await self._stub.CreateTask(
                pb.CreateTaskRequest(**self._auth, task_type=f"demo.{name}", task_data="{}")
            )

    async def _secret(self) -> str:
        """Registered once per data directory: the secret is handed out only once."""
        if self.secret_path.exists():
            return self.secret_path.read_text(encoding="utf-8").strip()
        request = pb.ServiceRegistryRequest(service_name=SERVICE_NAME)
        reply = await self._stub.ServiceRegistry(request)
        fd = os.open(self.secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(reply.secret)
        return str(reply.secret)

    async def _queue(self) -> None:
        """Create the queue (it may exist from an earlier run) and serve it on this node."""
        try:
            request = pb.CreatePeriodicTaskQueueRequest(**self._auth)
            await self._stub.CreatePeriodicTaskQueue(request)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        await self._stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**self._auth))

    async def _schedule(self, secret: str) -> None:
        """A schedule firing every few seconds (409: it exists from an earlier run)."""
        body = {
            "schedule_id": SCHEDULE_ID,
            "interval": round(self.timings.schedule_every, 3),
            "task_type": "demo.tick",
            "task_data": {"from": "taskdash demo"},
        }
        url = f"{self.http}/v1/services/{SERVICE_NAME}/queues/{QUEUE}/schedules"
        request = tornado.httpclient.HTTPRequest(
            url,
            method="POST",
            body=tornado.escape.json_encode(body),
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        )
        response = await tornado.httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
        if response.code not in (201, 409):
            raise WorkerError(f"periodic schedule refused ({response.code}): {response.body!r}")

    async def _work(self) -> None:
        while True:
            try:
                await self._lease_and_complete()
            except grpc.aio.AioRpcError as exc:  # the periodic service restarting, stopping
                self._failed(code=exc.code().name, error=exc.details())
            await asyncio.sleep(self.timings.worker_poll)

    async def _lease_and_complete(self) -> None:
        reply = await self._stub.GetTaskList(pb.GetTaskListRequest(**self._auth, limit=10))
        for task in json.loads(reply.task_list):
            success = outcome(self.handled)
            self.handled += 1
            await self._stub.CompleteTask(
                pb.CompleteTaskRequest(**self._auth, task_id=task["task_id"], success=success)
            )
            self.recent.appendleft(
                {
                    "id": f"{SERVICE_NAME}-job-{task['task_id']}",
                    "name": task["task_type"],
                    "status": "finish" if success else "restart",
                    "description": f"attempt {task['attempts']} of periodic task {task['task_id']}",
                }
            )
            log.info("demo_worker_completed", task_id=task["task_id"], success=success)

    async def stop(self) -> None:
        """Stop leasing, close the channel, stop the service. Idempotent."""
        await self._loop.stop()
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
        await self.service.stop()
