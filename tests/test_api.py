"""The /api/v1 task API through a real HTTP client: listing, detail, claim, release, assign."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from web_client import Served, WebClient, make_token, make_user, serve

from taskdash.models import TaskMetaData, TaskService
from taskdash.settings import TcpSettings
from taskdash.store import Store, audit, users
from taskdash.store.services import register_services
from taskdash.store.tasks import ServiceListing, apply_listings, load_known
from taskdash.tcp.client import TcpClient
from taskdash.tcp.server import TcpServer


async def harvest(store: Store, service_id: str, *tasks: TaskMetaData, now_ms: int = 1) -> None:
    known = (await load_known(store, [service_id]))[service_id]
    await apply_listings(store, [ServiceListing(service_id, list(tasks), known)], now_ms)


class People:
    """ann and bob (users), root (admin): a token-carrying client each."""

    def __init__(self, served: Served, tokens: dict[str, str]) -> None:
        self.served = served
        self.clients = {name: served.client(token=token) for name, token in tokens.items()}

    def __getattr__(self, name: str) -> WebClient:
        return self.clients[name]


@pytest.fixture
async def people(store: Store) -> AsyncIterator[People]:
    tokens = {}
    for name, role in (("ann", "user"), ("bob", "user"), ("root", "admin")):
        await make_user(store, name, role)  # type: ignore[arg-type]
        tokens[name] = await make_token(store, name)
    tasks = [
        TaskMetaData(id=f"t{i}", name=f"Task {i}", status="running" if i % 2 else "finish")
        for i in range(6)
    ]
    await harvest(store, "svc", *tasks)
    async with serve(store) as served:
        yield People(served, tokens)


async def actions(store: Store, action: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(actor, target, outcome, details) of the audit entries of ``action``, oldest first."""
    found = await audit.entries(store, action=action)
    return [(e.actor, e.target, e.outcome, e.details) for e in reversed(found)]


async def test_claim_release_and_the_holder_named_in_a_conflict(
    store: Store, people: People
) -> None:
    status, body = await people.ann.call("/api/v1/tasks/t1/claim", "POST")
    assert status == 200 and body["changed"] is True
    assert (body["task"]["assignee"], body["task"]["assignment"]["source"]) == ("ann", "web")
    status, body = await people.ann.call("/api/v1/tasks/t1/claim", "POST")
    assert (status, body["changed"]) == (200, False), "claiming one's own task again"
    status, body = await people.bob.call("/api/v1/tasks/t1/claim", "POST")
    assert (status, body["error"], body["holder"]) == (409, "conflict", "ann")
    assert "held by ann" in body["message"]
    status, body = await people.bob.call("/api/v1/tasks/t1/release", "POST")
    assert (status, body["error"], body["holder"]) == (403, "forbidden", "ann")
    status, body = await people.ann.call("/api/v1/tasks/t1/release", "POST")
    assert (status, body["changed"], body["task"]["assignee"]) == (200, True, "")
    assert await actions(store, "claim") == [
        ("ann", "t1", "ok", {"changed": True}),
        ("ann", "t1", "ok", {"changed": False}),
        ("bob", "t1", "conflict", {"holder": "ann"}),
    ]
    assert await actions(store, "release") == [
        ("bob", "t1", "forbidden", {"holder": "ann"}),
        ("ann", "t1", "ok", {"changed": True, "holder": "ann"}),
    ]


async def test_a_claim_at_a_version_the_task_left_is_a_conflict(people: People) -> None:
    await people.ann.call("/api/v1/tasks/t2/claim", "POST")
    await people.ann.call("/api/v1/tasks/t2/release", "POST")
    status, body = await people.bob.call("/api/v1/tasks/t2/claim", "POST", {"version": 0})
    assert (status, body["holder"]) == (409, "")
    status, body = await people.bob.call("/api/v1/tasks/t2/claim", "POST", {"version": 2})
    assert (status, body["task"]["assignment"]["version"]) == (200, 3)


async def test_ten_users_claiming_at_once_one_wins(store: Store, people: People) -> None:
    claimers = []
    for i in range(10):
        await make_user(store, f"u{i}")
        claimers.append(people.served.client(token=await make_token(store, f"u{i}")))
    answers = await asyncio.gather(*(c.call("/api/v1/tasks/t3/claim", "POST") for c in claimers))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] + [409] * 9
    (winner,) = [body["task"]["assignee"] for status, body in answers if status == 200]
    assert {body["holder"] for status, body in answers if status == 409} == {winner}


async def test_an_admin_assigns_and_unassigns_over_a_claim(store: Store, people: People) -> None:
    await people.ann.call("/api/v1/tasks/t1/claim", "POST")
    status, body = await people.root.call(
        "/api/v1/tasks/t1/assign", "POST", {"user": "bob", "group_id": "ops"}
    )
    assert status == 200 and body["changed"] is True
    binding = body["task"]["assignment"]
    assert (binding["user"], binding["group_id"], binding["by"]) == ("bob", "ops", "root")
    status, body = await people.root.call("/api/v1/tasks/t1/release", "POST")
    assert (status, body["changed"], body["task"]["assignee"]) == (200, True, "")
    status, body = await people.root.call("/api/v1/tasks/t1/unassign", "POST")
    assert (status, body["changed"]) == (200, False)
    status, detail = await people.ann.call("/api/v1/tasks/t1")
    assert status == 200 and detail["task"]["assignment"]["group_id"] == "ops"
    assert [(h["user"], h["previous_user"], h["by"]) for h in detail["history"]] == [
        ("", "bob", "root"),
        ("bob", "ann", "root"),
        ("ann", "", "ann"),
    ]
    assert await actions(store, "assign") == [
        ("root", "t1", "ok", {"changed": True, "user": "bob", "holder": "ann"})
    ]
    assert await actions(store, "unassign") == [
        ("root", "t1", "ok", {"changed": False, "holder": ""})
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"user": "nobody"}, "user: no enabled account 'nobody'"),
        ({"user": "Not A Name"}, "user: no enabled account 'Not A Name'"),
        ({"user": "gone"}, "user: no enabled account 'gone'"),
        ({"user": ""}, "Expected `str` of length >= 1 - at `$.user`"),
        ({"user": "bob", "group_id": "g" * 257}, "Expected `str` of length <= 256"),
        ({"user": "bob", "extra": 1}, "Object contains unknown field `extra`"),
        ({}, "Object missing required field `user`"),
        ([], "Expected `object`, got `array`"),
        ("not json", "Expected `object`, got `str`"),
    ],
)
async def test_bad_assignments_are_refused_naming_what_is_wrong(
    store: Store, people: People, body: Any, message: str
) -> None:
    await make_user(store, "gone")
    await users.set_disabled(store, "gone", True)
    status, answer = await people.root.call("/api/v1/tasks/t1/assign", "POST", body)
    assert (status, answer["error"]) == (400, "bad_request")
    assert message in answer["message"]
    assert (await people.root.call("/api/v1/tasks/t1"))[1]["history"] == [], "nothing stored"


async def test_bad_bodies_and_ids_are_400s_unknown_tasks_404s(people: People) -> None:
    raw = await people.ann.fetch("/api/v1/tasks/t1/claim", "POST", b"{not json")
    assert raw.status == 400 and "bad body" in raw.json["message"]
    raw = await people.ann.fetch("/api/v1/tasks/t1/claim", "POST", b" " * 16385)
    assert raw.status == 400 and "too large" in raw.json["message"]
    status, body = await people.ann.call("/api/v1/tasks/t1/claim", "POST", {"version": -1})
    assert status == 400 and "$.version" in body["message"]
    long_id = urllib.parse.quote("x" * 129)
    for path in (f"/api/v1/tasks/{long_id}", f"/api/v1/tasks/{long_id}/claim"):
        status, body = await people.ann.call(path, "POST" if path.endswith("claim") else "GET")
        assert (status, body["message"]) == (400, "task_id is longer than 128 characters")
    for path in ("/api/v1/tasks/nope", "/api/v1/tasks/nope/claim", "/api/v1/tasks/nope/release"):
        status, body = await people.ann.call(path, "GET" if path.endswith("nope") else "POST")
        assert (status, body["error"]) == (404, "not_found"), path
    status, _ = await people.root.call("/api/v1/tasks/nope/assign", "POST", {"user": "bob"})
    assert status == 404


async def test_the_listing_filters_sorts_and_pages(store: Store, people: People) -> None:
    await people.ann.call("/api/v1/tasks/t4/claim", "POST")
    status, page = await people.ann.call("/api/v1/tasks?mine=true")
    assert (status, [t["id"] for t in page["tasks"]]) == (200, ["t4"])
    status, page = await people.bob.call("/api/v1/tasks?unassigned=true&status=finish&order=desc")
    assert [t["id"] for t in page["tasks"]] == ["t2", "t0"]
    status, page = await people.bob.call("/api/v1/tasks?assignee=ann")
    assert [t["id"] for t in page["tasks"]] == ["t4"]
    status, page = await people.bob.call("/api/v1/tasks?q=TASK%203")
    assert [t["id"] for t in page["tasks"]] == ["t3"]
    seen, path = [], "/api/v1/tasks?sort=name&order=desc&limit=4"
    while True:
        status, page = await people.bob.call(path)
        assert status == 200 and page["limit"] == 4 and page["count"] == len(page["tasks"])
        seen += [t["id"] for t in page["tasks"]]
        if not page["next"]:
            break
        path = f"/api/v1/tasks?sort=name&order=desc&limit=4&after={page['next']}"
    assert seen == ["t5", "t4", "t3", "t2", "t1", "t0"]
    status, back = await people.bob.call(
        f"/api/v1/tasks?sort=name&order=desc&limit=4&before={page['prev']}"
    )
    assert [t["id"] for t in back["tasks"]] == ["t5", "t4", "t3", "t2"] and back["prev"] is None
    await harvest(store, "svc", now_ms=2)  # every task gone
    assert (await people.bob.call("/api/v1/tasks"))[1]["tasks"] == []
    status, page = await people.bob.call("/api/v1/tasks?gone=only&limit=1")
    assert page["tasks"][0]["gone"] is True
    assert [t["id"] for t in (await people.bob.call("/api/tasks?include_gone=true"))[1]["tasks"]]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", "limit must be between 1 and 200"),
        ("limit=201", "limit must be between 1 and 200"),
        ("limit=x", "limit must be an integer"),
        ("q=" + "x" * 65, "q is longer than 64 characters"),
        ("description=" + "x" * 65, "description is longer than 64 characters"),
        ("status=" + "x" * 65, "status is longer than 64 characters"),
        ("service_id=" + "x" * 129, "service_id is longer than 128 characters"),
        ("sort=url", "sort must be one of id, name, status, service, assignee, last_seen"),
        ("order=up", "order must be one of asc, desc"),
        ("gone=maybe", "gone must be one of hide, show, only"),
        ("mine=1", "mine must be true or false"),
        ("include_gone=maybe", "include_gone must be true or false"),
        ("mine=true&assignee=bob", "give one of assignee, mine, unassigned"),
        ("mine=true&unassigned=true", "give one of assignee, mine, unassigned"),
        ("after=nonsense", "after is not a cursor this API gave"),
        ("after=" + "A" * 1025, "after is longer than 1024 characters"),
        ("skip=10", "pages are keyset pages now: follow next"),
        ("stauts=running", "unknown parameter 'stauts'"),
    ],
)
async def test_bad_listing_parameters_are_400s_naming_them(
    people: People, query: str, message: str
) -> None:
    for prefix in ("/api/v1/tasks", "/api/tasks"):
        status, body = await people.ann.call(f"{prefix}?{query}")
        assert (status, body["error"]) == (400, "bad_request")
        assert message in body["message"], body["message"]


async def test_a_cursor_of_another_order_is_refused(people: People) -> None:
    _, page = await people.ann.call("/api/v1/tasks?limit=2")
    status, body = await people.ann.call(f"/api/v1/tasks?limit=2&sort=name&after={page['next']}")
    assert (status, body["message"]) == (400, "after belongs to another sort order")


async def test_a_task_bound_over_tcp_is_held_on_the_web(store: Store, people: People) -> None:
    server = TcpServer(store, TcpSettings(port=0))
    await server.start()
    try:
        async with TcpClient("127.0.0.1", server.port or 0) as c:
            record = {"id": "1234567", "user": "wsg", "start_time": "12:00"}
            assert (await c.register(record))["errid"] == 0
    finally:
        await server.stop()
    status, body = await people.ann.call("/api/v1/tasks/1234567/claim", "POST")
    assert (status, body["holder"]) == (409, "wsg")
    status, detail = await people.ann.call("/api/v1/tasks/1234567")
    assert detail["task"]["assignment"]["source"] == "tcp"
    assert detail["task"]["service_id"] is None and detail["task"]["start_time"] == "12:00"
    assert [h["source"] for h in detail["history"]] == ["tcp"]


async def test_the_old_paths_are_the_same_handlers(people: People) -> None:
    for old, new in (
        ("/api/tasks", "/api/v1/tasks"),
        ("/api/services", "/api/v1/services"),
        ("/api/dead-letters", "/api/v1/dead-letters"),
    ):
        assert await people.ann.call(old) == await people.ann.call(new)
    assert (await people.ann.call("/api/services/svc"))[0] == 404
    await register_services(people.served.store, [TaskService(id="svc")], datetime.now(UTC))
    status, body = await people.ann.call("/api/services/svc/fetch")
    assert (status, body["message"]) == (404, "this service was not fetched yet")
    assert (await WebClient(people.served.base).call("/api/tasks"))[0] == 401
