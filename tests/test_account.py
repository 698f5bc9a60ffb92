"""The account API through a real HTTP client: tokens, password changes, user admin, the audit
log, and every admin endpoint tried by every role (taskdash/web/account.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from web_client import Served, WebClient, make_token, make_user, password_for, serve

from taskdash.store import Store, audit, sessions, tokens, users
from taskdash.store.sessions import digest


@dataclass
class People:
    """Clients of one running app: nobody, a user, a disabled user (token), an admin."""

    app: Served
    anonymous: WebClient
    alice: WebClient  # role user, logged in through the form
    dora: WebClient  # role user, disabled after making a token: that token is worth nothing
    root: WebClient  # role admin, logged in through the form


@pytest.fixture
async def people(store: Store) -> AsyncIterator[People]:
    async with serve(store) as app:
        await make_user(store, "alice")
        await make_user(store, "dora")
        await make_user(store, "root", "admin")
        alice, root = app.client(), app.client()
        await alice.login("alice", password_for("alice"))
        await root.login("root", password_for("root"))
        dora = app.client(token=await make_token(store, "dora"))
        await store.users.update_one({"_id": "dora"}, {"$set": {"disabled": True}})
        yield People(app, app.client(), alice, dora, root)


# (method, path, body) of every admin endpoint
ADMIN_CALLS = [
    ("GET", "/api/v1/users", None),
    ("POST", "/api/v1/users", {"name": "newbie", "password": "a-long-password-1"}),
    ("GET", "/api/v1/users/alice", None),
    ("PATCH", "/api/v1/users/alice", {"role": "user"}),
    ("GET", "/api/v1/users/alice/tokens", None),
    ("DELETE", "/api/v1/users/alice/tokens/0123456789abcdef", None),
    ("GET", "/api/v1/audit", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
async def test_admin_endpoints_refuse_everyone_but_admins(
    people: People, method: str, path: str, body: object
) -> None:
    for who, expected in (("anonymous", 401), ("dora", 401), ("alice", 403)):
        status, answer = await getattr(people, who).call(path, method, body)
        code = "unauthorized" if expected == 401 else "forbidden"
        assert (status, answer["error"], answer["status"]) == (expected, code, expected), who
        assert set(answer) == {"error", "message", "status"}
    status, _ = await people.root.call(path, method, body)
    assert status in (200, 201, 404), status  # 404: alice has no token of that id
    assert await users.get_user(people.app.store, "alice") is not None


async def test_the_own_account_endpoints_need_a_live_login(people: People) -> None:
    for method, path in [
        ("GET", "/api/v1/me"),
        ("GET", "/api/v1/me/tokens"),
        ("POST", "/api/v1/me/tokens"),
        ("DELETE", "/api/v1/me/tokens/x"),
        ("POST", "/api/v1/me/password"),
        ("POST", "/api/v1/logout"),
    ]:
        for who in ("anonymous", "dora"):
            status, body = await getattr(people, who).call(path, method, {})
            assert (status, body["error"]) == (401, "unauthorized"), (who, path)


async def test_tokens_create_use_list_revoke(people: People) -> None:
    store = people.app.store
    status, made = await people.alice.call("/api/v1/me/tokens", "POST", {"name": "ci job"})
    assert status == 201 and made["name"] == "ci job"
    secret = made["token"]
    assert secret.startswith("taskdash_") and len(secret) == len("taskdash_") + 43
    # stored hashed: neither the secret nor anything containing it
    (doc,) = [d async for d in store["api_tokens"].find({"user": "alice"})]
    assert doc["_id"] == digest(secret) and secret not in repr(doc)
    script = people.app.client(token=secret)
    status, me = await script.call("/api/v1/me")
    assert (status, me["name"], me["via"]) == (200, "alice", "token")
    status, listed = await people.alice.call("/api/v1/me/tokens")
    (shown,) = listed["tokens"]
    assert shown["id"] == made["id"] and "token" not in shown and secret not in repr(listed)
    assert shown["last_used"] is not None, "the use above was noted"
    # a token can revoke itself (no XSRF needed without a cookie)
    assert (await script.call(f"/api/v1/me/tokens/{made['id']}", "DELETE"))[0] == 204
    assert (await script.call("/api/v1/me"))[0] == 401
    assert await people.alice.call("/api/v1/me/tokens") == (200, {"tokens": []})
    actions = [(e.action, e.target) for e in await audit.entries(store, actor="alice")]
    assert ("token.create", made["id"]) in actions and ("token.revoke", made["id"]) in actions


async def test_last_used_is_written_at_most_once_a_minute(people: People) -> None:
    store, clock = people.app.store, people.app.clock
    secret = await make_token(store, "alice")
    script = people.app.client(token=secret)
    first = await tokens.resolve(store, secret, now=clock())
    assert first is not None and first.last_used is not None
    clock.advance(30)
    assert (await script.call("/api/v1/me"))[0] == 200
    (token,) = await tokens.list_for(store, "alice")
    assert token.last_used == first.last_used
    clock.advance(31)
    assert (await script.call("/api/v1/me"))[0] == 200
    (token,) = await tokens.list_for(store, "alice")
    assert token.last_used == first.last_used + 61_000


async def test_an_expired_token_is_refused(people: People) -> None:
    status, made = await people.alice.call(
        "/api/v1/me/tokens", "POST", {"name": "short", "expires_in_days": 1}
    )
    assert status == 201 and made["expires_at"]
    script = people.app.client(token=made["token"])
    people.app.clock.advance(86400 - 1)
    assert (await script.call("/api/v1/me"))[0] == 200
    people.app.clock.advance(1)
    assert (await script.call("/api/v1/me"))[0] == 401


async def test_another_users_token_cannot_be_revoked_but_by_an_admin(people: People) -> None:
    store = people.app.store
    await make_user(store, "bob")
    bob_secret = await make_token(store, "bob")
    (bob_token,) = await tokens.list_for(store, "bob")
    bob = people.app.client(token=bob_secret)
    status, body = await people.alice.call(f"/api/v1/me/tokens/{bob_token.id}", "DELETE")
    assert (status, body["error"]) == (404, "not_found")
    status, body = await people.alice.call(f"/api/v1/users/bob/tokens/{bob_token.id}", "DELETE")
    assert (status, body["error"]) == (403, "forbidden")
    assert (await bob.call("/api/v1/me"))[0] == 200, "still valid"
    status, listed = await people.root.call("/api/v1/users/bob/tokens")
    assert [t["id"] for t in listed["tokens"]] == [bob_token.id]
    assert (await people.root.call(f"/api/v1/users/bob/tokens/{bob_token.id}", "DELETE"))[0] == 204
    assert (await bob.call("/api/v1/me"))[0] == 401
    (entry,) = await audit.entries(store, action="token.revoke")
    assert (entry.actor, entry.target, entry.details) == ("root", bob_token.id, {"owner": "bob"})


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("Bearer nope", "no prefix"),
        ("Bearer taskdash_" + "A" * 43, "unknown"),
        ("Bearer taskdash_" + "A" * 300, "too long"),
        ("Basic dXNlcjpwYXNz", "another scheme"),
        ("Bearer", "empty"),
    ],
)
async def test_bad_bearer_tokens(people: People, header: str, why: str) -> None:
    reply = await people.anonymous.fetch("/api/v1/me", headers={"Authorization": header})
    assert reply.status == 401, why
    assert reply.headers["WWW-Authenticate"] == 'Bearer realm="taskdash"'


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "bad JSON body"),
        (b"[]", "Expected `object`"),
        (b'{"name": ""}', "Expected `str` of length >= 1"),
        (b'{"name": "' + b"n" * 65 + b'"}', "length <= 64"),
        (b'{"name": "tab\\there"}', "matching regex"),
        (b'{"name": "x", "scope": "all"}', "unknown field `scope`"),
        (b'{"name": 7}', "Expected `str`, got `int`"),
        (b'{"name": "x", "expires_in_days": 0}', "Expected `float` > 0.0"),
        (b'{"name": "' + b"n" * 20000 + b'"}', "body too large"),
        (b"\xff\xfe", "bad JSON body"),
    ],
)
async def test_bad_token_requests_are_400_and_store_nothing(
    people: People, body: bytes, fragment: str
) -> None:
    headers = {"Content-Type": "application/json"}
    reply = await people.alice.fetch("/api/v1/me/tokens", "POST", body, headers)
    assert reply.status == 400 and reply.json["error"] == "bad_request", reply.json
    assert fragment in reply.json["message"], reply.json["message"]
    assert await tokens.list_for(people.app.store, "alice") == []


async def test_a_user_holds_a_bounded_number_of_tokens(people: People) -> None:
    for i in range(tokens.MAX_PER_USER):
        await make_token(people.app.store, "alice", label=f"t{i}")
    status, body = await people.alice.call("/api/v1/me/tokens", "POST", {"name": "one more"})
    assert (status, body["error"]) == (409, "conflict") and "revoke one" in body["message"]


async def test_password_change_ends_the_other_sessions(people: People) -> None:
    store = people.app.store
    phone = people.app.client()
    await phone.login("alice", password_for("alice"))
    script = people.app.client(token=await make_token(store, "alice"))
    new = "a-brand-new-password"
    wrong = await people.alice.call(
        "/api/v1/me/password", "POST", {"current": "not-it-at-all", "new": new}
    )
    assert (wrong[0], wrong[1]["error"]) == (403, "forbidden")
    weak = await people.alice.call(
        "/api/v1/me/password", "POST", {"current": password_for("alice"), "new": "short"}
    )
    assert (weak[0], weak[1]["error"]) == (400, "bad_request") and "too short" in weak[1]["message"]
    assert (await phone.call("/api/v1/me"))[0] == 200, "refused changes end nothing"
    ok = await people.alice.call(
        "/api/v1/me/password", "POST", {"current": password_for("alice"), "new": new}
    )
    assert ok[0] == 204
    assert (await people.alice.call("/api/v1/me"))[0] == 200, "the session that changed it stays"
    assert (await phone.call("/api/v1/me"))[0] == 401, "the others end"
    assert (await script.call("/api/v1/me"))[0] == 200, "tokens are separate credentials"
    assert await users.verify_login(store, "alice", new) is not None
    outcomes = [e.outcome for e in await audit.entries(store, action="user.password")]
    assert outcomes == ["ok", "failed"]


async def test_admin_manages_users(people: People) -> None:
    store, root = people.app.store, people.root
    status, made = await root.call(
        "/api/v1/users", "POST", {"name": "carol", "password": "carols-password", "role": "admin"}
    )
    assert (status, made["name"], made["role"], made["disabled"]) == (201, "carol", "admin", False)
    again = await root.call("/api/v1/users", "POST", {"name": "carol", "password": "x" * 12})
    assert (again[0], again[1]["error"]) == (409, "conflict")
    for body, fragment in [
        ({"name": "Carol", "password": "x" * 12}, "invalid user name"),
        ({"name": "n" * 65, "password": "x" * 12}, "length <= 64"),
        ({"name": "erin", "password": "short"}, "too short"),
        ({"name": "erin", "password": "x" * 12, "role": "root"}, "Invalid enum value 'root'"),
    ]:
        status, answer = await root.call("/api/v1/users", "POST", body)
        assert status == 400 and fragment in answer["message"], answer
    assert await users.get_user(store, "erin") is None
    status, listed = await root.call("/api/v1/users")
    assert [u["name"] for u in listed["users"]] == ["alice", "carol", "dora", "root"]
    assert "password" not in repr(listed)
    assert (await root.call("/api/v1/users/nobody"))[0] == 404
    assert (await root.call("/api/v1/users/" + "x" * 3000))[0] == 404
    assert (await root.call("/api/v1/users/nobody", "PATCH", {"disabled": True}))[0] == 404
    # disabling ends alice's session at once; enabling does not bring it back
    status, changed = await root.call("/api/v1/users/alice", "PATCH", {"disabled": True})
    assert (status, changed["disabled"]) == (200, True)
    assert (await people.alice.call("/api/v1/me"))[0] == 401
    assert await sessions.count_for_user(store, "alice") == 0
    await root.call("/api/v1/users/alice", "PATCH", {"disabled": False, "role": "admin"})
    assert (await people.alice.call("/api/v1/me"))[0] == 401
    # a password reset: the new one works, alice's other sessions end
    await people.alice.login("alice", password_for("alice"))
    reset = await root.call("/api/v1/users/alice", "PATCH", {"password": "reset-by-root-1"})
    assert (reset[0], reset[1]["role"]) == (200, "admin")
    assert (await people.alice.call("/api/v1/me"))[0] == 401
    assert await users.verify_login(store, "alice", "reset-by-root-1") is not None
    bad = await root.call("/api/v1/users/alice", "PATCH", {"role": "boss"})
    assert bad[0] == 400
    assert (await root.call("/api/v1/users/alice", "PATCH", {"colour": "red"}))[0] == 400
    actions = [(e.action, e.target) for e in await audit.entries(store, actor="root")]
    assert ("user.create", "carol") in actions and ("user.password", "alice") in actions
    changes = [e.details for e in await audit.entries(store, action="user.change")]
    assert changes[::-1] == [{"disabled": True}, {"role": "admin", "disabled": False}]
    assert "reset-by-root-1" not in repr(await audit.entries(store))


async def test_the_last_enabled_admin_cannot_be_demoted_or_disabled(people: People) -> None:
    store, root = people.app.store, people.root
    for change in ({"role": "user"}, {"disabled": True}, {"role": "user", "disabled": True}):
        status, body = await root.call("/api/v1/users/root", "PATCH", change)
        assert (status, body["error"]) == (409, "last_admin"), change
        assert "last enabled admin" in body["message"]
    # all or nothing: a refused change sets no password, a bad password changes no role
    status, _ = await root.call(
        "/api/v1/users/root", "PATCH", {"role": "user", "password": "never-stored-1"}
    )
    assert status == 409 and await users.verify_login(store, "root", "never-stored-1") is None
    status, _ = await root.call("/api/v1/users/alice", "PATCH", {"role": "admin", "password": "x"})
    assert status == 400 and (await users.get_user(store, "alice")).role == "user"  # type: ignore[union-attr]
    user = await users.get_user(store, "root")
    assert user is not None and (user.role, user.disabled) == ("admin", False)
    assert (await root.call("/api/v1/me"))[0] == 200
    # a disabled admin does not count; a second enabled one does
    await make_user(store, "ghost", "admin")
    await users.set_disabled(store, "ghost", True)
    assert (await root.call("/api/v1/users/root", "PATCH", {"role": "user"}))[0] == 409
    await root.call("/api/v1/users/ghost", "PATCH", {"disabled": False})
    status, body = await root.call("/api/v1/users/root", "PATCH", {"role": "user"})
    assert (status, body["role"]) == (200, "user")
    assert (await root.call("/api/v1/users"))[0] == 403, "root is a user now"


async def test_audit_listing_filters_and_bounds(people: People) -> None:
    store, root, clock = people.app.store, people.root, people.app.clock
    clock.advance(10)
    start = clock()
    await make_token(store, "alice")
    await people.alice.call("/api/v1/me/tokens", "POST", {"name": "later"})
    status, body = await root.call("/api/v1/audit?actor=alice")
    assert status == 200 and [e["action"] for e in body["entries"]] == ["token.create", "login"]
    entry = body["entries"][0]
    assert set(entry) == {"id", "at", "actor", "action", "target", "outcome", "address", "details"}
    assert entry["address"] == "127.0.0.1" and entry["at"].startswith(str(clock().year))
    since = start.isoformat().replace("+00:00", "Z")
    status, body = await root.call(f"/api/v1/audit?since={since}")
    assert [e["action"] for e in body["entries"]] == ["token.create"]
    ms = int(start.timestamp() * 1000)
    assert (await root.call(f"/api/v1/audit?since={ms}"))[1]["count"] == 1
    status, body = await root.call("/api/v1/audit?action=login&limit=1")
    assert body["count"] == 1 and body["entries"][0]["actor"] == "root"
    for query in ("limit=0", "limit=1001", "limit=x", "since=yesterday", "since=2026-01-01T00:00"):
        status, body = await root.call(f"/api/v1/audit?{query}")
        assert (status, body["error"]) == (400, "bad_request"), query
    status, body = await root.call("/api/v1/audit?actor=" + "a" * 300)
    assert status == 400 and "actor" in body["message"]
