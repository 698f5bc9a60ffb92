"""Every page and every form action tried by every role, by session and by token.

Roles: anonymous, ann (a user holding task ``t``), bob (another user: ``t`` is held by someone
else), dis (a user disabled after logging in and after making a token), root (an admin).
Before each attempt the store is put back the same way (``t`` held by ann, no ``carol``, vic an
enabled user with one token); a refused attempt must leave every collection but the audit log
exactly as it was. The API's matrix is tests/test_api_authz.py.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from web_client import (
    CHEAP,
    Reply,
    Served,
    WebClient,
    client_of,
    make_token,
    make_user,
    password_for,
    serve,
)

from taskdash.models import TaskMetaData
from taskdash.store import Store, audit, tokens, users
from taskdash.store.assignments import get_assignment, set_assignment
from taskdash.store.tasks import ServiceListing, apply_listings, load_known
from taskdash.web import pages

ROLES = ("anonymous", "dis", "ann", "bob", "root")
PAGES = ["/tasks", "/tasks/t", "/services", "/services/svc", "/pipeline", "/dead-letters",
         "/account"]  # fmt: skip
ADMIN_PAGES = ["/users", "/audit"]
LOGIN = "login"  # sent to the login form
OK = "ok"  # the change was made (checked by the action's own test)

Check = Callable[[Store, str], Awaitable[bool]]
NEW_PASSWORD = "pw-changed-0123456789"


async def holder_is(store: Store, name: str) -> bool:
    return (await get_assignment(store, "t")).user == name


async def role_of(store: Store, name: str) -> str | None:
    user = await users.get_user(store, name)
    return None if user is None else f"{user.role}{' disabled' if user.disabled else ''}"


async def verifies(store: Store, name: str, password: str) -> bool:
    return await users.verify_login(store, name, password) is not None


async def has_token(store: Store, name: str, label: str) -> bool:
    return label in [t.name for t in await tokens.list_for(store, name)]


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


#: (label, path, form fields, what it did when allowed (store, role), {role: its status}) for
#: the roles that get past the login; the others are sent to the login form, nothing done
FORMS: list[tuple[str, str, dict[str, str], Check, dict[str, int]]] = [
    ("claim", "/tasks/t", {"action": "claim"}, lambda s, r: holder_is(s, "ann"),
     {"ann": 303, "bob": 409, "root": 409}),
    ("release", "/tasks/t", {"action": "release"}, lambda s, r: holder_is(s, ""),
     {"ann": 303, "bob": 403, "root": 303}),
    ("assign", "/tasks/t", {"action": "assign", "user": "bob"},
     lambda s, r: holder_is(s, "bob"), {"ann": 403, "bob": 403, "root": 303}),
    ("unassign", "/tasks/t", {"action": "unassign"}, lambda s, r: holder_is(s, ""),
     {"ann": 403, "bob": 403, "root": 303}),
    ("add user", "/users", {"action": "add", "name": "carol", "role": "admin",
                            "password": "pw-carol-0123456789"},
     lambda s, r: _is(role_of(s, "carol"), "admin"), {"ann": 403, "bob": 403, "root": 303}),
    ("set role", "/users", {"action": "role", "name": "vic", "role": "admin"},
     lambda s, r: _is(role_of(s, "vic"), "admin"), {"ann": 403, "bob": 403, "root": 303}),
    ("disable", "/users", {"action": "disable", "name": "vic"},
     lambda s, r: _is(role_of(s, "vic"), "user disabled"), {"ann": 403, "bob": 403, "root": 303}),
    ("enable", "/users", {"action": "enable", "name": "dis"},
     lambda s, r: _is(role_of(s, "dis"), "user"), {"ann": 403, "bob": 403, "root": 303}),
    ("set password", "/users", {"action": "password", "name": "vic", "password": NEW_PASSWORD},
     lambda s, r: verifies(s, "vic", NEW_PASSWORD), {"ann": 403, "bob": 403, "root": 303}),
    # the account page acts on one's own account only: vic's token is nobody else's to revoke
    ("revoke vic's token", "/account", {"action": "revoke", "id": "VIC_TOKEN"},
     lambda s, r: has_token(s, "vic", "vic's"), {"ann": 404, "bob": 404, "root": 404}),
    ("own token", "/account", {"action": "token", "name": "mine"},
     lambda s, r: has_token(s, r, "mine"), {"ann": 201, "bob": 201, "root": 201}),
    ("own password", "/account", {"action": "password", "current": "OWN", "new": NEW_PASSWORD},
     lambda s, r: verifies(s, r, NEW_PASSWORD), {"ann": 303, "bob": 303, "root": 303}),
]  # fmt: skip


async def snapshot(store: Store) -> dict[str, list[Any]]:
    """Every document of every collection but the audit log (refusals are audited)."""
    out = {}
    for name in sorted(await store.db.list_collection_names()):
        if name != audit.COLLECTION:
            out[name] = [doc async for doc in store[name].find({}).sort("_id", 1)]
    return out


@pytest.fixture
async def served(store: Store) -> AsyncIterator[Served]:
    known = (await load_known(store, ["svc"]))["svc"]
    await apply_listings(store, [ServiceListing("svc", [TaskMetaData(id="t")], known)], 1)
    await store.services.insert_one({"_id": "svc", "status": "online"})
    for name, role in (("ann", "user"), ("bob", "user"), ("dis", "user"), ("vic", "user"),
                       ("root", "admin")):  # fmt: skip
        await make_user(store, name, role)  # type: ignore[arg-type]
    async with serve(store) as running:
        yield running


async def reset(store: Store) -> str:
    """The same state before every attempt; returns the id of vic's one token."""
    await set_assignment(store, "t", user="ann", source="web", by="ann", now_ms=1)
    await store.users.delete_one({"_id": "carol"})
    await store.users.update_one({"_id": "vic"}, {"$set": {"role": "user", "disabled": False}})
    await store.users.update_one({"_id": "dis"}, {"$set": {"disabled": True}})
    await users.set_password(store, "vic", password_for("vic"), passwords=CHEAP)
    for name in ("ann", "bob", "root", "vic"):
        for token in await tokens.list_for(store, name):
            if token.name != "client":
                await tokens.revoke(store, name, token.id)
    await make_token(store, "vic", label="vic's")
    (vic,) = [t for t in await tokens.list_for(store, "vic") if t.name == "vic's"]
    return vic.id


async def post(client: WebClient, path: str, fields: dict[str, str]) -> Reply:
    """A form as the browser posts it (the XSRF field from the cookie, if there is one)."""
    body = urllib.parse.urlencode({**fields, "_xsrf": client.xsrf})
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return await client.fetch(path, "POST", body, headers, xsrf=False)


def sent_to_login(reply: Reply, path: str, status: int) -> bool:
    location = urllib.parse.urlsplit(reply.headers.get("Location", ""))
    query = urllib.parse.parse_qs(location.query).get("next", [""])[0]
    return (reply.status, location.path, query.split("?")[0]) == (status, "/login", path)


def test_the_matrix_covers_every_page_and_every_form_action() -> None:
    routed = {p for p, _ in pages.ROUTES if "(" not in p} | {"/tasks/t", "/services/svc"}
    assert routed == {"/", *PAGES, *ADMIN_PAGES}
    with_forms = {p.replace("([^/]{1,1536})", "t") for p, h in pages.ROUTES if "post" in vars(h)}
    assert with_forms == {path for _, path, *_ in FORMS}
    # every action each form takes (the pages' own dispatch lists them)
    assert {f["action"] for _, path, f, *_ in FORMS if path == "/tasks/t"} == {
        "claim", "release", "assign", "unassign"}  # fmt: skip
    assert {f["action"] for _, path, f, *_ in FORMS if path == "/users"} >= {
        "add", "role", "disable", "password"}  # fmt: skip
    assert {f["action"] for _, path, f, *_ in FORMS if path == "/account"} == {
        "token", "revoke", "password"}  # fmt: skip


@pytest.mark.parametrize("via", ["session", "token"])
@pytest.mark.parametrize("role", ROLES)
async def test_every_role_on_every_page_and_form(
    served: Served, store: Store, role: str, via: str
) -> None:
    web = await client_of(served, role, via, label="client")
    out = role in ("anonymous", "dis")
    wrong = []
    for path in ["/", *PAGES, *ADMIN_PAGES]:
        reply = await web.fetch(path)
        if out:
            ok = sent_to_login(reply, path, 302)
        elif path == "/":
            ok = (reply.status, reply.headers.get("Location")) == (302, "/tasks")
        elif path in ADMIN_PAGES and role != "root":
            ok = reply.status == 403 and "Not allowed" in reply.text
        else:
            ok = reply.status == 200
        if not ok:
            wrong.append(("GET", path, reply.status))
    for label, path, fields, effect, allowed in FORMS:
        vic_token = await reset(store)
        own = password_for(role)
        fields = {
            k: v.replace("VIC_TOKEN", vic_token).replace("OWN", own) for k, v in fields.items()
        }
        before = await snapshot(store)
        reply = await post(web, path, fields)
        ok = sent_to_login(reply, path, 303) if out else reply.status == allowed[role]
        if out or reply.status >= 400:
            done = await snapshot(store) != before  # refused: nothing may have changed
        else:
            done = not await effect(store, role)  # allowed: the change is there
        if not ok or done:
            wrong.append((label, reply.status, "wrong effect" if done else ""))
    # logging out (the form as any page has it): always back to the form; a session ends
    if not web.xsrf:
        await web.fetch("/login")
    reply = await post(web, "/logout", {})
    if (reply.status, reply.headers.get("Location")) != (302, "/login"):
        wrong.append(("logout", reply.status))
    if via == "session" and not out and (await web.fetch("/tasks")).status != 302:
        wrong.append(("logout", "the session still works"))
    assert wrong == [], f"{role} by {via}"
