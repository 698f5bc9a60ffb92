"""Whatever a client sends, the answer is a clear refusal: never INTERNAL, never a 500.

Each input here once reached code that raised (RecursionError, OverflowError, ValueError,
UnicodeEncodeError) outside the refusals, and came back as INTERNAL / 500.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from conftest import Node, refused, register

from taskdash.periodic.proto import periodic_task_pb2 as pb

Code = grpc.StatusCode
Q = "/v1/services/svc/queues/q1"
INT64_MAX = 2**63 - 1
DEEP = "[" * 30000 + "]" * 30000  # valid JSON, nested deeper than any parser's recursion


@pytest.mark.parametrize(
    ("method", "fields", "code"),
    [
        ("CreateTask", {"task_data": DEEP}, Code.INVALID_ARGUMENT),
        ("CreateTask", {"task_data": '{"a":' * 10000 + "1" + "}" * 10000}, Code.INVALID_ARGUMENT),
        ("CompleteTask", {"task_id": INT64_MAX + 1}, Code.NOT_FOUND),
        ("CompleteTask", {"task_id": 2**64 - 1}, Code.NOT_FOUND),
        ("CompleteTask", {"task_id": INT64_MAX}, Code.NOT_FOUND),
        ("GetTaskList", {"limit": 2**32 - 1}, Code.INVALID_ARGUMENT),
        ("CreateTask", {"task_type": "x" * 257, "task_data": "1"}, Code.INVALID_ARGUMENT),
        ("CreateTask", {"task_data": "1" * 5000}, Code.INVALID_ARGUMENT),
    ],
)
async def test_grpc_bad_input_is_refused_clearly(
    node: Node, method: str, fields: dict[str, Any], code: grpc.StatusCode
) -> None:
    who = await register(node.stub)
    request = getattr(pb, f"{method}Request")(**who.q(**fields))
    async with refused(code):
        await getattr(node.stub, method)(request)


BIG = str(2**64)
HUGE = "9" * 5000  # more digits than int() converts by default


@pytest.mark.parametrize(
    ("method", "path", "raw", "status"),
    [
        ("POST", f"{Q}/tasks", b'{"task_data": ' + DEEP.encode() + b"}", 400),
        ("POST", "/v1/services", b'{"service_name": "' + b"[" * 30000 + b'"}', 400),
        ("POST", "/v1/services", b"[" * 30000 + b"]" * 30000, 400),
        ("GET", f"{Q}/tasks/{INT64_MAX + 1}", b"", 404),
        ("GET", f"{Q}/tasks/{2**64 - 1}", b"", 404),
        ("GET", f"{Q}/tasks/{BIG}", b"", 400),
        ("GET", f"{Q}/tasks/{HUGE}", b"", 400),
        ("GET", f"{Q}/tasks/%C2%B2", b"", 400),
        ("GET", f"{Q}/tasks/%D9%A1", b"", 400),
        ("DELETE", f"{Q}/tasks/{INT64_MAX + 1}", b"", 404),
        ("POST", f"{Q}/tasks/{INT64_MAX + 1}/complete", b'{"success": true}', 404),
        ("POST", f"{Q}/tasks/{INT64_MAX + 1}/extend", b"{}", 404),
        ("POST", f"{Q}/redrive", b'{"task_id": 9223372036854775808}', 404),
        ("POST", f"{Q}/redrive", b'{"task_id": ' + BIG.encode() + b"}", 400),
        ("GET", f"{Q}/tasks?after={INT64_MAX + 1}", b"", 200),
        ("GET", f"{Q}/tasks?after={BIG}", b"", 200),
        ("GET", f"{Q}/tasks?after={HUGE}", b"", 200),
        ("GET", f"{Q}/tasks?after=%C2%B2", b"", 400),
        ("GET", f"{Q}/tasks?limit=%C2%B2", b"", 400),
        ("GET", f"{Q}/tasks?limit={HUGE}", b"", 400),
        ("POST", f"{Q}/tasks/1/extend", b'{"seconds": 1' + b"0" * 400 + b"}", 400),
        ("POST", f"{Q}/tasks/1/extend", b'{"seconds": 1e400}', 400),
        ("POST", f"{Q}/tasks/1/extend", b'{"seconds": NaN}', 400),
        ("POST", f"{Q}/lease", b'{"limit": ' + b"9" * 400 + b"}", 400),
        ("POST", f"{Q}/lease", b'{"limit": Infinity}', 400),
        ("POST", "/v1/services", b'{"service_name": "\\ud800"}', 400),
        ("POST", f"{Q}/tasks", b'{"task_type": "\\ud800", "task_data": 1}', 400),
        ("POST", f"{Q}/tasks", b'{"task_data": "\\ud800"}', 400),
        ("POST", f"{Q}/tasks", b'{"task_data": {"\\udfff": 1}}', 400),
        ("POST", "/v1/services/svc/queues", b'{"queue_name": "\\ud800x"}', 400),
        ("POST", f"{Q}/tasks", b'{"task_data": NaN}', 400),
        ("POST", f"{Q}/tasks", b'{"task_data": 1e999}', 400),
        ("POST", f"{Q}/tasks", b"\xff\xfe{}", 400),
        ("GET", "/v1/services/%FF/queues", b"", 400),
    ],
)
async def test_http_bad_input_is_refused_clearly(
    make_api: Any, method: str, path: str, raw: bytes, status: int
) -> None:
    api = await make_api()
    secret = await api.setup()
    got_status, body = await api.call(method, path, token=secret, raw=raw)
    assert got_status == status, body
    if status != 200:
        assert body["error"] != "internal" and body["message"], body


async def test_deep_but_parseable_task_data_round_trips_or_is_refused(make_api: Any) -> None:
    """Around the recursion limit, HTTP either stores the task or answers 400, never 500."""
    api = await make_api()
    secret = await api.setup()
    for depth in range(900, 1100, 10):
        raw = b'{"task_data": ' + b"[" * depth + b"]" * depth + b"}"
        status, body = await api.call("POST", f"{Q}/tasks", token=secret, raw=raw)
        assert status in (201, 400), (depth, status, body)
    status, body = await api.call("GET", f"{Q}/tasks?limit=1000", token=secret)
    assert status == 200, body
