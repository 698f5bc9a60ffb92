"""Every /api/v1 endpoint of the task API tried by every role, by token and by session.

Roles: anonymous, ann (a user holding task ``t``), bob (another user: the claim is held by
someone else), dis (a disabled user whose token and session were valid before), root (an
admin). Before each attempt ``t`` is given back to ann, so every attempt meets the same state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from web_client import Served, client_of, make_user, password_for, serve

from taskdash.models import TaskMetaData
from taskdash.store import Store
from taskdash.store.assignments import get_assignment, set_assignment
from taskdash.store.tasks import ServiceListing, apply_listings, load_known
from taskdash.web import api

READS = [
    "/api/v1/services",
    "/api/v1/services/svc",
    "/api/v1/services/svc/history",
    "/api/v1/services/svc/alerts",
    "/api/v1/dead-letters",
    "/api/v1/tasks",
    "/api/v1/tasks/t",
    "/api/v1/openapi.json",
    "/api/services",
    "/api/tasks",
]
WRITES: list[tuple[str, dict[str, Any] | None]] = [
    ("/api/v1/tasks/t/claim", None),
    ("/api/v1/tasks/t/release", None),
    ("/api/v1/tasks/t/assign", {"user": "bob"}),
    ("/api/v1/tasks/t/unassign", None),
]
#: role -> (status of every read, {write: (status, who holds t afterwards)})
MATRIX: dict[str, tuple[int, dict[str, tuple[int, str]]]] = {
    "anonymous": (401, {path: (401, "ann") for path, _ in WRITES}),
    "dis": (401, {path: (401, "ann") for path, _ in WRITES}),
    "ann": (
        200,
        {
            "/api/v1/tasks/t/claim": (200, "ann"),
            "/api/v1/tasks/t/release": (200, ""),
            "/api/v1/tasks/t/assign": (403, "ann"),
            "/api/v1/tasks/t/unassign": (403, "ann"),
        },
    ),
    "bob": (
        200,
        {
            "/api/v1/tasks/t/claim": (409, "ann"),
            "/api/v1/tasks/t/release": (403, "ann"),
            "/api/v1/tasks/t/assign": (403, "ann"),
            "/api/v1/tasks/t/unassign": (403, "ann"),
        },
    ),
    "root": (
        200,
        {
            "/api/v1/tasks/t/claim": (409, "ann"),
            "/api/v1/tasks/t/release": (200, ""),
            "/api/v1/tasks/t/assign": (200, "bob"),
            "/api/v1/tasks/t/unassign": (200, ""),
        },
    ),
}


@pytest.fixture
async def served(store: Store) -> AsyncIterator[Served]:
    known = (await load_known(store, ["svc"]))["svc"]
    await apply_listings(store, [ServiceListing("svc", [TaskMetaData(id="t")], known)], 1)
    await store.services.insert_one({"_id": "svc", "status": "online"})
    for name, role in (("ann", "user"), ("bob", "user"), ("dis", "user"), ("root", "admin")):
        await make_user(store, name, role)  # type: ignore[arg-type]
    async with serve(store) as running:
        yield running


def test_the_matrix_covers_every_task_write_route() -> None:
    posts = {p for p, h in api.ROUTES if "post" in vars(h) and p.startswith("/api/v1/tasks/")}
    assert len(posts) == len(WRITES) == len(MATRIX["ann"][1])


@pytest.mark.parametrize("via", ["token", "session"])
@pytest.mark.parametrize("role", list(MATRIX))
async def test_every_role_on_every_endpoint(
    served: Served, store: Store, role: str, via: str
) -> None:
    web = await client_of(served, role, via)
    read_status, writes = MATRIX[role]
    wrong = []
    for path in READS:
        status, body = await web.call(path)
        if status != read_status:
            wrong.append((path, status, body))
    for path, body in WRITES:
        await set_assignment(store, "t", user="ann", source="web", now_ms=1)
        status, answer = await web.call(path, "POST", body)
        holder = (await get_assignment(store, "t")).user
        if (status, holder) != writes[path]:
            wrong.append((path, status, holder, answer))
        if status in (403, 409) and path.endswith(("claim", "release")) and role != "ann":
            assert answer["holder"] == "ann", answer
    assert wrong == [], f"{role} by {via}"


async def test_a_session_write_without_the_xsrf_token_is_refused(
    served: Served, store: Store
) -> None:
    web = served.client()
    await web.login("ann", password_for("ann"))
    reply = await web.fetch("/api/v1/tasks/t/claim", "POST", b"", xsrf=False)
    assert (reply.status, reply.json["error"]) == (403, "xsrf")
    assert (await get_assignment(store, "t")).version == 0, "nothing happened"
