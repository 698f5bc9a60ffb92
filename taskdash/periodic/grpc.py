"""The seed's gRPC service ``PeriodicTask`` on ``grpc.aio``, with health checking and reflection.

Each method is one call into :class:`~taskdash.periodic.leasing.Leasing`; what it refuses
becomes a gRPC status with the same sentence, decided in one place (:func:`_answer`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from taskdash.errors import StoreError, StoreUnavailable
from taskdash.logs import RateLimitedLog
from taskdash.periodic.errors import Kind, PeriodicError
from taskdash.periodic.leasing import Caller, Leasing
from taskdash.periodic.proto import periodic_task_pb2 as pb
from taskdash.periodic.proto import periodic_task_pb2_grpc as pb_grpc
from taskdash.periodic.views import encode

log = structlog.get_logger("taskdash.periodic.grpc")

T = TypeVar("T")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PeriodicTask"].full_name  # "PeriodicTask"

STATUS = {kind: grpc.StatusCode[kind.name] for kind in Kind}


_bug_log = RateLimitedLog(log, "periodic_rpc_failed", every=10.0)


async def _answer(context: grpc.aio.ServicerContext[Any, Any], call: Awaitable[T]) -> T:
    """Await ``call``; any refusal or failure aborts the RPC with a status a person reads."""
    try:
        return await call
    except PeriodicError as exc:
        await context.abort(STATUS[exc.kind], str(exc))
    except StoreUnavailable:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the task store (MongoDB) is unreachable")
    except StoreError:
        log.exception("periodic_store_error")
        await context.abort(grpc.StatusCode.INTERNAL, "the task store refused the operation")
    except Exception as exc:  # a bug: answered and logged (rate-limited), never a traceback
        _bug_log(error=repr(exc))
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log")
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


def _who(request: Any) -> Caller:
    return Caller(request.service_name, request.secret)


class PeriodicTaskServicer(pb_grpc.PeriodicTaskServicer):
    """The six RPCs; ``success`` is true on every OK reply."""

    def __init__(self, leasing: Leasing) -> None:
        self.leasing = leasing

    async def ServiceRegistry(self, request: Any, context: Any) -> pb.ServiceRegistryReply:
        secret = await _answer(context, self.leasing.register(request.service_name))
        return pb.ServiceRegistryReply(secret=secret)

    async def CreatePeriodicTaskQueue(
        self, request: Any, context: Any
    ) -> pb.CreatePeriodicTaskQueueReply:
        await _answer(context, self.leasing.create_queue(_who(request), request.queue_name))
        return pb.CreatePeriodicTaskQueueReply(success=True)

    async def StartPeriodicTaskQueue(
        self, request: Any, context: Any
    ) -> pb.StartPeriodicTaskQueueReply:
        await _answer(context, self.leasing.start_queue(_who(request), request.queue_name))
        return pb.StartPeriodicTaskQueueReply(success=True)

    async def CreateTask(self, request: Any, context: Any) -> pb.CreateTaskReply:
        call = self.leasing.create_task(
            _who(request), request.queue_name, request.task_type, request.task_data
        )
        await _answer(context, call)
        return pb.CreateTaskReply(success=True)

    async def GetTaskList(self, request: Any, context: Any) -> pb.GetTaskListReply:
        call = self.leasing.lease(_who(request), request.queue_name, request.limit)
        tasks = await _answer(context, call)
        return pb.GetTaskListReply(task_list=encode(tasks))

    async def CompleteTask(self, request: Any, context: Any) -> pb.CompleteTaskReply:
        call = self.leasing.complete(
            _who(request), request.queue_name, request.task_id, request.success
        )
        await _answer(context, call)
        return pb.CompleteTaskReply(success=True)


class GrpcServer:
    """``grpc.aio`` server: PeriodicTask, health (``""`` and ``PeriodicTask``), reflection."""

    def __init__(
        self,
        leasing: Leasing,
        *,
        host: str,
        port: int,
        max_message: int,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self.leasing = leasing
        self.address = f"{host}:{port}"
        self.port: int | None = None
        self.health = health.aio.HealthServicer()
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not a shared port
            ],
            interceptors=list(interceptors),  # the metrics' (calls by method and code)
        )
        pb_grpc.add_PeriodicTaskServicer_to_server(PeriodicTaskServicer(leasing), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self._server)

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address cannot be bound."""
        try:
            self.port = self._server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.address} (gRPC): {exc}") from None
        if not self.port:
            raise OSError(f"cannot listen on {self.address} (gRPC)")
        await self._server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, let calls in flight finish within ``grace``, then close."""
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
