"""The HTTP API through a real HTTP client, on loopback, over nx-27017."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import Clock, register

from taskdash.models import TaskMetaData, convert

ADMIN = "admin-token-0123456789"


Q = "/v1/services/svc/queues/q1"


async def test_the_whole_flow_over_http(make_api: Any) -> None:
    api = await make_api()
    secret = await api.setup()
    ids = []
    for n in range(3):
        status, body = await api.call(
            "POST", f"{Q}/tasks", {"task_type": "mail", "task_data": {"n": n}}, secret
        )
        assert status == 201 and body["success"]
        ids.append(body["task_id"])
    status, body = await api.call("POST", f"{Q}/lease", {"limit": 2}, secret)
    assert status == 200
    assert [(t["task_id"], t["task_data"]) for t in body["task_list"]] == [
        (ids[0], {"n": 0}),
        (ids[1], {"n": 1}),
    ]
    ok = await api.call("POST", f"{Q}/tasks/{ids[0]}/complete", {"success": True}, secret)
    failed = await api.call("POST", f"{Q}/tasks/{ids[1]}/complete", {"success": False}, secret)
    assert ok == (200, {"success": True, "state": "done"})
    assert failed == (200, {"success": True, "state": "failed"})
    status, body = await api.call("GET", f"{Q}/tasks?state=done", token=secret)
    assert [t["task_id"] for t in body["tasks"]] == [ids[0]]
    status, page = await api.call("GET", f"{Q}/tasks?limit=2", token=secret)
    assert [t["state"] for t in page["tasks"]] == ["done", "failed"]
    status, rest = await api.call("GET", f"{Q}/tasks?after={page['next_after']}", token=secret)
    assert [t["state"] for t in rest["tasks"]] == ["pending"]
    status, body = await api.call("GET", f"{Q}/tasks/{ids[2]}", token=secret)
    assert status == 200 and body["task_data"] == {"n": 2}
    assert await api.call("DELETE", f"{Q}/tasks/{ids[2]}", token=secret) == (200, {"success": True})
    status, body = await api.call("GET", f"{Q}/tasks/{ids[2]}", token=secret)
    assert status == 404 and body["error"] == "not_found"
    status, body = await api.call("GET", "/v1/services/svc/queues", token=secret)
    assert [(q["queue_name"], q["started_here"]) for q in body["queues"]] == [("q1", True)]


async def test_extend_a_lease(make_api: Any, clock: Clock) -> None:
    api = await make_api()
    secret = await api.setup()
    _, created = await api.call("POST", f"{Q}/tasks", {"task_data": [1]}, secret)
    await api.call("POST", f"{Q}/lease", {}, secret)
    clock.advance(200)
    status, body = await api.call("POST", f"{Q}/tasks/{created['task_id']}/extend", {}, secret)
    assert status == 200 and body["lease_until"] == clock.now + 300_000
    clock.advance(200)  # past the first lease's end, within the extension
    assert (await api.call("POST", f"{Q}/lease", {}, secret))[1]["task_list"] == []
    status, body = await api.call(
        "POST", f"{Q}/tasks/{created['task_id']}/extend", {"seconds": 0}, secret
    )
    assert status == 400 and "seconds" in body["message"]


async def test_dead_and_redrive(make_api: Any) -> None:
    api = await make_api(max_attempts=1)
    secret = await api.setup()
    _, created = await api.call("POST", f"{Q}/tasks", {"task_data": {}}, secret)
    task_id = created["task_id"]
    await api.call("POST", f"{Q}/lease", {}, secret)
    _, body = await api.call("POST", f"{Q}/tasks/{task_id}/complete", {"success": False}, secret)
    assert body["state"] == "dead"
    status, body = await api.call("POST", f"{Q}/redrive", {"task_id": task_id + 1}, secret)
    assert status == 404
    assert (await api.call("POST", f"{Q}/redrive", {}, secret))[1]["redriven"] == 1
    status, body = await api.call("POST", f"{Q}/redrive", {"task_id": task_id}, secret)
    assert status == 409 and "not dead (it is pending)" in body["message"]
    _, body = await api.call("POST", f"{Q}/lease", {}, secret)
    assert [(t["task_id"], t["attempts"]) for t in body["task_list"]] == [(task_id, 1)]


async def test_stop_destroy_deregister(make_api: Any) -> None:
    api = await make_api()
    secret = await api.setup()
    await api.call("POST", f"{Q}/tasks", {"task_data": 1}, secret)
    assert (await api.call("POST", f"{Q}/stop", {}, secret))[1]["was_started"] is True
    status, body = await api.call("POST", f"{Q}/lease", {}, secret)
    assert status == 409 and body["error"] == "failed_precondition"
    assert (await api.call("DELETE", Q, token=secret))[0] == 200
    status, body = await api.call("GET", f"{Q}/tasks", token=secret)
    assert status == 404 and "no queue 'q1'" in body["message"]
    assert (await api.call("DELETE", "/v1/services/svc", token=secret))[0] == 200
    status, body = await api.call("GET", "/v1/services/svc/queues", token=secret)
    assert status == 401 and body["error"] == "unauthenticated"
    # the name is free again, with a new secret
    assert (await api.call("POST", "/v1/services", {"service_name": "svc"}))[0] == 201


@pytest.mark.parametrize(
    ("method", "path", "body", "auth", "status", "error", "fragment"),
    [
        ("POST", "/v1/services", None, False, 400, "invalid_argument", "service_name is required"),
        ("POST", "/v1/services", [1], False, 400, "invalid_argument", "JSON object"),
        ("POST", "/v1/services", {"service_name": 5}, False, 400, "invalid_argument", "string"),
        (
            "POST",
            "/v1/services",
            {"service_name": "svc"},
            False,
            409,
            "already_exists",
            "handed out",
        ),
        ("POST", f"{Q}/tasks", {"task_data": 1}, False, 401, "unauthenticated", "Bearer"),
        ("POST", f"{Q}/tasks", {"task_type": "x"}, True, 400, "invalid_argument", "task_data"),
        ("POST", f"{Q}/lease", {"limit": "5"}, True, 400, "invalid_argument", "integer"),
        ("POST", f"{Q}/lease", {"limit": 1001}, True, 400, "invalid_argument", "max_limit"),
        ("POST", f"{Q}/lease", {"limit": True}, True, 400, "invalid_argument", "integer"),
        ("GET", f"{Q}/tasks?limit=5000", None, True, 400, "invalid_argument", "max_limit"),
        ("GET", f"{Q}/tasks?state=odd", None, True, 400, "invalid_argument", "state must be"),
        ("GET", f"{Q}/tasks?after=-1", None, True, 400, "invalid_argument", "after"),
        ("GET", f"{Q}/tasks/abc", None, True, 400, "invalid_argument", "task_id"),
        ("POST", f"{Q}/tasks/7/complete", {}, True, 400, "invalid_argument", "success"),
        ("POST", f"{Q}/tasks/7/complete", {"success": 1}, True, 400, "invalid_argument", "true"),
        ("POST", f"{Q}/tasks/7/complete", {"success": True}, True, 404, "not_found", "no task 7"),
        ("POST", "/v1/services/svc/queues/nope/start", {}, True, 404, "not_found", "nope"),
        ("GET", "/v1/nothing", None, False, 404, "not_found", "no such endpoint"),
    ],
)
async def test_errors(
    make_api: Any,
    method: str,
    path: str,
    body: Any,
    auth: bool,
    status: int,
    error: str,
    fragment: str,
) -> None:
    api = await make_api()
    secret = await api.setup()
    got_status, got = await api.call(method, path, body, secret if auth else None)
    assert (got_status, got["error"]) == (status, error), got
    assert fragment in got["message"]


async def test_wrong_secret_and_bad_bodies(make_api: Any) -> None:
    api = await make_api(max_body_size=2048, max_task_data_size=1024)
    await api.setup()
    status, body = await api.call("POST", f"{Q}/lease", {}, "wrong")
    assert status == 401 and "wrong secret" in body["message"]
    status, body = await api.call("POST", "/v1/services", raw=b"{not json")
    assert status == 400 and "not valid JSON" in body["message"]
    status, body = await api.call("POST", "/v1/services", raw=b"x" * 3000)
    assert status == 413 and body["error"] == "payload_too_large"
    assert body["message"] == (
        "the request body (3000 bytes) is over the limit of 2048 bytes ([periodic] max_body_size)"
    )
    status, body = await api.call("POST", "/v1/services", raw=b"x" * 2048)  # the limit: read
    assert status == 400 and "not valid JSON" in body["message"]


async def test_admin_lists_services(make_api: Any) -> None:
    off = await make_api()
    status, body = await off.call("GET", "/v1/services", token="anything-at-all-long")
    assert status == 403 and "admin_token" in body["message"]
    api = await make_api(admin_token=ADMIN)
    await api.setup("alpha")
    await api.setup("beta")
    assert (await api.call("GET", "/v1/services", token="x" * 22))[0] == 401
    assert (await api.call("GET", "/v1/services"))[0] == 401
    status, body = await api.call("GET", "/v1/services?limit=1", token=ADMIN)
    assert status == 200 and [s["service_name"] for s in body["services"]] == ["alpha"]
    _, body = await api.call("GET", "/v1/services?after=alpha", token=ADMIN)
    assert [sorted(s) for s in body["services"]] == [["created_at", "service_name"]]


async def test_grpc_and_http_share_the_queue(make_api: Any) -> None:
    api = await make_api()
    who = await register(api.node.stub)
    await who.create(2)
    _, body = await api.call("POST", f"{Q}/lease", {"limit": 1}, who.secret)
    [task] = body["task_list"]
    await who.complete(task["task_id"])  # leased over HTTP, completed over gRPC
    assert [t["task_id"] for t in await who.lease()] == [task["task_id"] + 1]


async def test_metadata_lists_tasks_as_task_metadata(make_api: Any) -> None:
    api = await make_api()
    who = await register(api.node.stub)
    await who.create(3, task_type="report")
    leased = await who.lease(2)
    await who.complete(leased[0]["task_id"])
    status, records = await api.call("GET", "/metadata")
    assert status == 200
    for record in records:
        convert(TaskMetaData, record)  # valid for TaskDash's fetcher
    by_id = {r["id"]: r for r in records}
    first, second = (f"periodic-{t['task_id']}" for t in leased)
    assert by_id[first]["status"] == "finish" and by_id[second]["status"] == "running"
    assert sorted(r["status"] for r in records) == ["finish", "pending", "running"]
    assert by_id[first]["url"].endswith(f"/v1/services/svc/queues/q1/tasks/{leased[0]['task_id']}")
    assert json.loads(by_id[first]["reserved"])["queue_name"] == "q1"
