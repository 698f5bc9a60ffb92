"""Schedules over the HTTP API, through a real HTTP client on loopback, over nx-27017."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Clock

from taskdash.periodic.views import iso

Q = "/v1/services/svc/queues/q1"
SCHEDULES = f"{Q}/schedules"


async def test_schedules_over_http(make_api: Any, clock: Clock) -> None:
    api = await make_api()
    secret = await api.setup()
    created_at = clock.now
    body = {"schedule_id": "hourly", "cron": "0 * * * *", "timezone": "Europe/Paris",
            "task_type": "report", "task_data": {"kind": "hourly"}, "misfire": "skip",
            "misfire_grace": 30, "jitter": 2.5}  # fmt: skip
    status, view = await api.call("POST", SCHEDULES, body, secret)
    assert status == 201
    assert {k: view[k] for k in body} == body
    assert view["state"] == "active" and len(view["next_runs"]) == 5
    assert view["created_at"] == iso(created_at)
    status, again = await api.call("POST", SCHEDULES, body, secret)
    assert status == 409 and "already has a schedule 'hourly'" in again["message"]
    status, generated = await api.call("POST", SCHEDULES, {"interval": 10, "task_data": 0}, secret)
    assert status == 201 and generated["schedule_id"].startswith("s-")
    assert generated["interval"] == 10 and "cron" not in generated

    status, listed = await api.call("GET", f"{SCHEDULES}?limit=1", token=secret)
    assert status == 200 and [s["schedule_id"] for s in listed["schedules"]] == ["hourly"]
    _, rest = await api.call("GET", f"{SCHEDULES}?after={listed['next_after']}", token=secret)
    assert [s["schedule_id"] for s in rest["schedules"]] == [generated["schedule_id"]]

    clock.advance(10)
    await api.node.firer.fire_due()
    status, shown = await api.call("GET", f"{SCHEDULES}/{generated['schedule_id']}", token=secret)
    assert status == 200 and shown["last_run"]["outcome"] == "pending"
    _, tasks = await api.call("GET", f"{Q}/tasks", token=secret)
    [task] = tasks["tasks"]
    assert task["schedule_id"] == generated["schedule_id"]
    assert task["scheduled_for"] == iso(created_at + 10_000)
    assert shown["last_run"]["task_id"] == task["task_id"]
    status, runs = await api.call(
        "GET", f"{SCHEDULES}/{generated['schedule_id']}/runs", token=secret
    )
    assert status == 200 and runs["next_before"] is None
    assert [(r["task_id"], r["outcome"]) for r in runs["runs"]] == [(task["task_id"], "pending")]

    status, paused = await api.call("POST", f"{SCHEDULES}/hourly/pause", {}, secret)
    assert status == 200 and paused["state"] == "paused"
    status, resumed = await api.call("POST", f"{SCHEDULES}/hourly/resume", None, secret)
    assert status == 200 and resumed["state"] == "active"
    assert await api.call("DELETE", f"{SCHEDULES}/hourly", token=secret) == (200, {"success": True})
    status, gone = await api.call("GET", f"{SCHEDULES}/hourly", token=secret)
    assert status == 404 and "no schedule 'hourly'" in gone["message"]


async def test_a_schedule_id_in_the_path_is_url_encoded(make_api: Any) -> None:
    api = await make_api()
    secret = await api.setup()
    body = {"schedule_id": "a/b c", "interval": 60, "task_data": None}
    assert (await api.call("POST", SCHEDULES, body, secret))[0] == 201
    status, shown = await api.call("GET", f"{SCHEDULES}/a%2Fb%20c", token=secret)
    assert status == 200 and shown["schedule_id"] == "a/b c" and shown["task_data"] is None


GOOD = {"interval": 10, "task_data": {"n": 1}}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([1], "the body must be a JSON object"),
        ({}, "task_data is required"),
        ({"task_data": 1}, "give either interval (seconds) or cron (5 fields)"),
        ({**GOOD, "cron": "* * * * *"}, "not both"),
        ({**GOOD, "intervall": 10}, "unknown field 'intervall'; the fields are schedule_id,"),
        ({**GOOD, "interval": "10"}, "interval must be a number"),
        ({**GOOD, "interval": True}, "interval must be a number"),
        ({**GOOD, "interval": 0.5}, "interval must be between 1 and 31622400 seconds, got 0.5"),
        ({**GOOD, "interval": 10**400}, "interval must be between 1 and 31622400 seconds, got inf"),
        ({**GOOD, "timezone": "UTC"}, "timezone applies to cron schedules only"),
        ({"task_data": 1, "cron": "* * * *"}, "cron must have 5 fields"),
        ({"task_data": 1, "cron": "* * * * * *"}, "got 6"),
        ({"task_data": 1, "cron": "0 0 30 2 *"}, "cron '0 0 30 2 *' is not valid"),
        ({"task_data": 1, "cron": "61 * * * *"}, "is not valid"),
        ({"task_data": 1, "cron": 5}, "cron must be a string"),
        ({"task_data": 1, "cron": "0 * * * *", "timezone": "Mars/Base"}, "not an IANA time zone"),
        ({"task_data": 1, "cron": "0 * * * *", "timezone": "localtime"}, "name the zone"),
        ({"task_data": 1, "cron": "0 * * * *", "timezone": 1}, "timezone must be a string"),
        ({**GOOD, "misfire": "later"}, "misfire must be one of skip, once, got 'later'"),
        ({**GOOD, "misfire": None}, "misfire must be a string"),
        ({**GOOD, "misfire_grace": 0}, "misfire_grace must be between 1 and 86400 seconds"),
        ({**GOOD, "jitter": -1}, "jitter must be between 0 and 3600 seconds"),
        ({**GOOD, "jitter": 11}, "jitter must not be longer than the interval"),
        ({**GOOD, "paused": "yes"}, "paused must be true or false"),
        ({**GOOD, "schedule_id": ""}, "schedule_id must be 1-128 characters"),
        ({**GOOD, "schedule_id": " x"}, "schedule_id must be 1-128 characters"),
        ({**GOOD, "schedule_id": "x" * 129}, "schedule_id must be 1-128 characters"),
        ({**GOOD, "schedule_id": 7}, "schedule_id must be a string"),
        ({**GOOD, "task_type": 7}, "task_type must be a string"),
        ({**GOOD, "task_type": "a\nb"}, "task_type must be at most 256 characters"),
        ({**GOOD, "task_data": "x" * 2000}, "more than the 1024 allowed"),
        ({**GOOD, "task_data": "\ud800"}, "task_data is not valid Unicode text"),
        ({**GOOD, "schedule_id": "\udfff"}, "schedule_id must be 1-128 characters"),
    ],
)
async def test_bad_schedules_are_refused_and_nothing_is_stored(
    make_api: Any, body: Any, fragment: str
) -> None:
    api = await make_api(max_task_data_size=1024)
    secret = await api.setup()
    keep = {"schedule_id": "keep", "interval": 60, "task_data": {"kept": True}}
    _, before = await api.call("POST", SCHEDULES, keep, secret)
    status, got = await api.call("POST", SCHEDULES, body, secret)
    assert (status, got["error"]) == (400, "invalid_argument"), got
    assert fragment in got["message"]
    assert len(got["message"]) < 400
    _, listed = await api.call("GET", SCHEDULES, token=secret)
    before.pop("next_runs")  # a listing leaves them out
    assert listed["schedules"] == [before]  # nothing new, the existing one untouched


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"interval": 10, "task_data": ' + b"[" * 100000, "nested too deeply"),
        (b'{"interval": 10, "task_data": NaN}', "NaN is not JSON"),
        (b'{"interval": 10, "task_data": {"a": 1}', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_bodies_that_are_not_json(make_api: Any, raw: bytes, fragment: str) -> None:
    api = await make_api()
    secret = await api.setup()
    status, got = await api.call("POST", SCHEDULES, token=secret, raw=raw)
    assert (status, got["error"]) == (400, "invalid_argument") and fragment in got["message"]
    assert (await api.call("GET", SCHEDULES, token=secret))[1]["schedules"] == []


@pytest.mark.parametrize(
    ("method", "path", "auth", "status", "error", "fragment"),
    [
        ("POST", SCHEDULES, False, 401, "unauthenticated", "Bearer"),
        ("GET", SCHEDULES, False, 401, "unauthenticated", "Bearer"),
        ("GET", f"{SCHEDULES}/nope", True, 404, "not_found", "has no schedule 'nope'"),
        ("POST", f"{SCHEDULES}/nope/pause", True, 404, "not_found", "no schedule 'nope'"),
        ("POST", f"{SCHEDULES}/nope/resume", True, 404, "not_found", "no schedule 'nope'"),
        ("DELETE", f"{SCHEDULES}/nope", True, 404, "not_found", "no schedule 'nope'"),
        ("POST", f"{SCHEDULES}/keep/explode", True, 404, "not_found", "no such endpoint"),
        ("GET", "/v1/services/svc/queues/nope/schedules", True, 404, "not_found", "no queue"),
        ("GET", f"{SCHEDULES}?limit=5000", True, 400, "invalid_argument", "max_limit"),
        ("GET", f"{SCHEDULES}?limit=x", True, 400, "invalid_argument", "limit"),
        ("GET", f"{SCHEDULES}/%20x", True, 400, "invalid_argument", "schedule_id must be"),
        ("GET", f"{SCHEDULES}/keep/runs?before=-1", True, 400, "invalid_argument", "before"),
        ("GET", f"{SCHEDULES}/keep/runs?limit=1001", True, 400, "invalid_argument", "max_limit"),
        ("GET", f"{SCHEDULES}/nope/runs", True, 404, "not_found", "no schedule 'nope'"),
    ],
)
async def test_schedule_errors(
    make_api: Any, method: str, path: str, auth: bool, status: int, error: str, fragment: str
) -> None:
    api = await make_api()
    secret = await api.setup()
    await api.call("POST", SCHEDULES, {"schedule_id": "keep", **GOOD}, secret)
    body = {"interval": 10, "task_data": 1} if method == "POST" else None
    got_status, got = await api.call(method, path, body, secret if auth else None)
    assert (got_status, got["error"]) == (status, error), got
    assert fragment in got["message"]


async def test_wrong_secret(make_api: Any) -> None:
    api = await make_api()
    await api.setup()
    status, body = await api.call("POST", SCHEDULES, GOOD, "not-the-secret")
    assert status == 401 and "wrong secret" in body["message"]
