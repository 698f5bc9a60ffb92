"""gRPC calls by method and status code, with their latency: a server interceptor."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class GrpcMetrics(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts unary calls by method and code; streaming calls (reflection, Watch) pass through.

    Only methods the server serves are counted (an unknown one gets no handler), so the
    method label is bounded by the services registered.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "taskdash_grpc_requests_total",
            "gRPC calls answered, by full method name and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "taskdash_grpc_request_duration_seconds",
            "Seconds one gRPC call took, by full method name.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method: str = details.method
        inner = handler.unary_unary

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await inner(request, context)
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                self.calls.labels(method, _name(code)).inc()
                self.duration.labels(method).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _name(code: Any) -> str:
    """``StatusCode.NOT_FOUND`` -> ``NOT_FOUND`` (an int code as its StatusCode's name)."""
    if isinstance(code, grpc.StatusCode):
        return code.name
    found = [c for c in grpc.StatusCode if c.value[0] == code]
    return found[0].name if found else "UNKNOWN"
