"""Logins, sessions, cookies and XSRF through a real HTTP client against the real application
on loopback, over nx-27017 (taskdash/web/auth.py, taskdash/store/sessions.py)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import urllib.parse
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import tornado.escape
import tornado.template
from web_client import Served, WebClient, make_token, make_user, password_for, serve

from taskdash.settings import load
from taskdash.store import Store, audit, sessions, users
from taskdash.store.times import from_ms
from taskdash.web.auth import SESSION_COOKIE, PageHandler, safe_next


class HelloPage(PageHandler):
    """A page written for these tests: it needs a login like every real one."""

    def get(self) -> None:
        self.finish(f"hello {self.user.name} via {self.via}")

    def post(self) -> None:
        self.finish(f"posted by {self.user.name}")


@pytest.fixture
async def app(store: Store) -> AsyncIterator[Served]:
    async with serve(store, routes=[(r"/hello", HelloPage)]) as served:
        yield served


async def test_login_opens_a_session_the_api_and_pages_accept(app: Served) -> None:
    await make_user(app.store, "alice")
    client = app.client()
    reply = await client.login_form("alice", password_for("alice"), next_="/hello?x=1")
    assert (reply.status, reply.headers["Location"]) == (302, "/hello?x=1")
    status, me = await client.call("/api/v1/me")
    assert (status, me["name"], me["role"], me["via"]) == (200, "alice", "user", "session")
    assert me["disabled"] is False and "password" not in me
    page = await client.fetch("/hello")
    assert (page.status, page.text) == (200, "hello alice via session")
    (entry,) = await audit.entries(app.store, action="login")
    assert (entry.actor, entry.outcome, entry.address) == ("alice", "ok", "127.0.0.1")


async def test_cookie_flags(store: Store) -> None:
    await make_user(store, "alice")
    for secure in (False, True):
        settings = load(env={"TASKDASH_WEB__SECURE_COOKIES": str(secure).lower()})
        async with serve(store, settings) as served:
            client = served.client()
            reply = await client.login_form("alice", password_for("alice"))
            (line,) = [c for c in reply.headers.get_list("Set-Cookie") if SESSION_COOKIE in c]
            flags = {part.strip().split("=")[0].lower() for part in line.split(";")}
            assert {"httponly", "samesite", "path", "expires"} <= flags, line
            assert "SameSite=Lax" in line
            assert ("secure" in flags) is secure, line
            # the browser holds a signed id; the store only its digest
            raw = client.session.strip('"')
            assert not await store["sessions"].find_one({"_id": raw})
            assert await store["sessions"].count_documents({"user": "alice"}) >= 1


@pytest.fixture
def tls(tmp_path: Path) -> ssl.SSLContext:
    """A server context with a self-signed certificate made by openssl for this test."""
    if not shutil.which("openssl"):
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_cookies_are_secure_over_https(store: Store, tls: ssl.SSLContext) -> None:
    await make_user(store, "alice")
    async with serve(store, ssl_options=tls) as served:
        client = served.client()
        client.validate_cert = False
        reply = await client.login_form("alice", password_for("alice"))
        (line,) = [c for c in reply.headers.get_list("Set-Cookie") if SESSION_COOKIE in c]
        assert "Secure" in line and "HttpOnly" in line, line
        assert (await client.call("/api/v1/me"))[0] == 200


@pytest.mark.parametrize("case", ["bad_password", "unknown", "disabled", "too_long", "empty"])
async def test_every_failed_login_gets_the_same_answer(app: Served, case: str) -> None:
    await make_user(app.store, "alice")
    await make_user(app.store, "dora")
    await users.set_disabled(app.store, "dora", True)
    name, password = {
        "bad_password": ("alice", "not-the-password"),
        "unknown": ("nobody", password_for("nobody")),
        "disabled": ("dora", password_for("dora")),
        "too_long": ("a" * 5000, "x" * 5000),
        "empty": ("", ""),
    }[case]
    client = app.client()
    reply = await client.login_form(name, password)
    assert reply.status == 401 and "wrong name or password" in reply.text
    assert not client.session
    assert await client.call("/api/v1/login", "POST", {"name": name, "password": password}) == (
        401,
        {"error": "unauthorized", "message": "wrong name or password", "status": 401},
    )
    (entry, _) = await audit.entries(app.store, action="login")
    assert (entry.actor, entry.outcome) == (name[:256], "failed")


async def test_anonymous_is_refused_by_api_and_sent_to_the_form_by_pages(app: Served) -> None:
    client = app.client()
    status, body = await client.call("/api/v1/me")
    assert (status, body["error"]) == (401, "unauthorized")
    reply = await client.fetch("/hello?a=b&c=d")
    assert reply.status == 302
    location = urllib.parse.urlsplit(reply.headers["Location"])
    assert location.path == "/login"
    assert urllib.parse.parse_qs(location.query) == {"next": ["/hello?a=b&c=d"]}
    form = await client.fetch(reply.headers["Location"])
    assert form.status == 200 and 'name="next" value="/hello?a=b&amp;c=d"' in form.text
    assert 'name="_xsrf"' in form.text and "/static/app.css" in form.text


async def test_a_disabled_user_is_out_at_once(app: Served) -> None:
    await make_user(app.store, "alice")
    client = app.client()
    await client.login("alice", password_for("alice"))
    token = WebClient(app.base, token=await make_token(app.store, "alice"))
    assert (await token.call("/api/v1/me"))[0] == 200
    # disabled behind this daemon's back (another daemon, `taskdash user disable`): the
    # next request is out, by session and by token
    await users.set_disabled(app.store, "alice", True)
    assert (await client.call("/api/v1/tasks"))[0] == 401
    assert (await token.call("/api/v1/tasks"))[0] == 401
    assert await sessions.count_for_user(app.store, "alice") == 0
    # enabled again: the token works again, the session is gone for good
    await users.set_disabled(app.store, "alice", False)
    assert (await token.call("/api/v1/tasks"))[0] == 200
    assert (await client.call("/api/v1/tasks"))[0] == 401


async def test_a_role_change_reaches_every_session_and_token_at_once(app: Served) -> None:
    await make_user(app.store, "root", "admin")
    await make_user(app.store, "other", "admin")
    session = app.client()
    await session.login("root", password_for("root"))
    token = WebClient(app.base, token=await make_token(app.store, "root"))
    for web in (session, token):
        assert (await web.call("/api/v1/users"))[0] == 200
    await users.change_guarded(app.store, "root", role="user")
    for web in (session, token):
        assert (await web.call("/api/v1/users"))[0] == 403
        assert (await web.call("/api/v1/me"))[1]["role"] == "user"
    await users.change_guarded(app.store, "root", role="admin")
    for web in (session, token):
        assert (await web.call("/api/v1/users"))[0] == 200


async def test_credentials_from_before_they_carried_the_role_still_work(app: Served) -> None:
    await make_user(app.store, "alice", "admin")
    secret = await make_token(app.store, "alice")
    web = WebClient(app.base, token=secret)
    await app.store["api_tokens"].update_many({}, {"$unset": {"role": "", "disabled": ""}})
    assert (await web.call("/api/v1/users"))[0] == 200, "the account read, as before"
    doc = await app.store["api_tokens"].find_one({"user": "alice"})
    assert doc is not None and (doc["role"], doc["disabled"]) == ("admin", False), "brought up"
    await app.store["api_tokens"].update_many({}, {"$unset": {"role": ""}})
    await app.store.users.update_one({"_id": "alice"}, {"$set": {"disabled": True}})
    assert (await web.call("/api/v1/users"))[0] == 401, "an old token of a disabled account"


async def test_session_ends_after_its_ttl_and_when_idle(store: Store) -> None:
    await make_user(store, "alice")
    settings = load(
        env={"TASKDASH_WEB__SESSION_TTL": "7200", "TASKDASH_WEB__SESSION_IDLE_TIMEOUT": "600"}
    )
    async with serve(store, settings) as app:
        client = app.client()
        await client.login("alice", password_for("alice"))
        # used every 9 minutes: idle never, until the absolute limit
        for _ in range(13):
            app.clock.advance(540)
            assert (await client.call("/api/v1/me"))[0] == 200
        app.clock.advance(7200 - 13 * 540)
        assert (await client.call("/api/v1/me"))[0] == 401
        assert await sessions.count_for_user(store, "alice") == 0, "deleted when found expired"

        await client.login("alice", password_for("alice"))
        app.clock.advance(599)
        assert (await client.call("/api/v1/me"))[0] == 200
        app.clock.advance(599)
        assert (await client.call("/api/v1/me"))[0] == 200
        app.clock.advance(601)
        assert (await client.call("/api/v1/me"))[0] == 401


async def test_logout_kills_the_session_server_side(app: Served) -> None:
    await make_user(app.store, "alice")
    client = app.client()
    await client.login("alice", password_for("alice"))
    stolen = dict(client.cookies)
    reply = await client.logout()
    assert (reply.status, reply.headers["Location"]) == (302, "/login")
    assert not client.session
    replay = app.client()
    replay.cookies = stolen  # the cookie copied before the logout is worth nothing now
    assert (await replay.call("/api/v1/me"))[0] == 401
    assert [e.actor for e in await audit.entries(app.store, action="logout")] == ["alice"]


async def test_api_logout(app: Served) -> None:
    await make_user(app.store, "alice")
    client = app.client()
    await client.login("alice", password_for("alice"))
    assert (await client.call("/api/v1/logout", "POST"))[0] == 204
    assert (await client.call("/api/v1/me"))[0] == 401
    assert await sessions.count_for_user(app.store, "alice") == 0


async def test_forged_and_tampered_cookies_are_nobody(app: Served) -> None:
    await make_user(app.store, "alice")
    client = app.client()
    await client.login("alice", password_for("alice"))
    signed = client.session.strip('"')
    for forged in (
        signed[:-1] + ("0" if signed[-1] != "0" else "1"),  # signature broken
        signed.replace("|", "|x", 1),
        "2|1:0|10:1700000000|16:taskdash_session|8:c2Vzc2lvbg==|" + "0" * 64,
        "not-even-signed",
    ):
        other = app.client()
        other.cookies = {**client.cookies, SESSION_COOKIE: forged}
        assert (await other.call("/api/v1/me"))[0] == 401, forged
    # a correctly signed cookie for a session id that does not exist is nobody too
    async with serve(app.store) as second:  # another secret: its cookies mean nothing here
        other = second.client()
        await other.login("alice", password_for("alice"))
        foreign = app.client()
        foreign.cookies = {SESSION_COOKIE: other.session}
        assert (await foreign.call("/api/v1/me"))[0] == 401


async def test_xsrf_needed_with_a_session_not_with_a_token(app: Served) -> None:
    await make_user(app.store, "alice")
    client = app.client()
    await client.login("alice", password_for("alice"))
    expected = {"error": "xsrf", "status": 403}
    for headers in ({}, {"X-XSRFToken": "2|00000000|" + "0" * 32 + "|1700000000"}):
        reply = await client.fetch("/api/v1/logout", "POST", b"", headers, xsrf=False)
        assert reply.status == 403 and expected.items() <= reply.json.items(), reply.json
        page = await client.fetch("/hello", "POST", b"", headers, xsrf=False)
        assert page.status == 403 and "XSRF" in page.text
    assert (await client.call("/api/v1/me"))[0] == 200, "the session is still there"
    page = await client.fetch("/hello", "POST", b"")
    assert (page.status, page.text) == (200, "posted by alice")
    # a token needs no XSRF token, and a cookie-less script cannot be forged against
    token = WebClient(app.base, token=await make_token(app.store, "alice"))
    assert (await token.fetch("/api/v1/logout", "POST", b"")).status == 204
    # the login form itself needs it (no logging a browser into someone else's account)
    bare = app.client()
    form = urllib.parse.urlencode({"name": "alice", "password": password_for("alice")})
    reply = await bare.fetch("/login", "POST", form, xsrf=False)
    assert reply.status == 403 and not bare.session


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "/"),
        ("", "/"),
        ("/tasks?status=open", "/tasks?status=open"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("evil.example", "/"),
        ("/ok\r\nSet-Cookie: x=1", "/"),
        ("/\tevil", "/"),
        ("/" + "a" * 3000, "/"),
    ],
)
def test_safe_next(raw: str | None, expected: str) -> None:
    assert safe_next(raw) == expected


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example"])
async def test_no_open_redirect_after_login(app: Served, target: str) -> None:
    await make_user(app.store, "alice")
    client = app.client()
    reply = await client.login_form("alice", password_for("alice"), next_=target)
    assert (reply.status, reply.headers["Location"]) == (302, "/")
    already = await client.fetch("/login?" + urllib.parse.urlencode({"next": target}))
    assert (already.status, already.headers["Location"]) == (302, "/")


async def test_admin_only_check(app: Served) -> None:
    class AdminOnly(PageHandler):
        def get(self) -> None:
            self.require_admin()
            self.finish("admin page")

    await make_user(app.store, "alice")
    await make_user(app.store, "root", "admin")
    async with serve(app.store, routes=[(r"/admin-only", AdminOnly)]) as served:
        user, admin = served.client(), served.client()
        await user.login("alice", password_for("alice"))
        await admin.login("root", password_for("root"))
        reply = await user.fetch("/admin-only")
        assert reply.status == 403 and "admin role" in reply.text
        assert (await admin.fetch("/admin-only")).text == "admin page"


THROTTLE = {
    "TASKDASH_WEB__LOGIN_USER_DELAY_AFTER": "3",
    "TASKDASH_WEB__LOGIN_USER_LOCK_AFTER": "5",
    "TASKDASH_WEB__LOGIN_ADDRESS_DELAY_AFTER": "7",
    "TASKDASH_WEB__LOGIN_ADDRESS_LOCK_AFTER": "9",
    "TASKDASH_WEB__LOGIN_DELAY_INITIAL": "1",
    "TASKDASH_WEB__LOGIN_DELAY_MAX": "4",
    "TASKDASH_WEB__LOGIN_LOCK_TIME": "600",
}


async def _attempt(client: WebClient, name: str, password: str) -> tuple[int, str, str]:
    """(status, Retry-After, message) of one JSON login."""
    reply = await client.fetch(
        "/api/v1/login",
        "POST",
        tornado.escape.json_encode({"name": name, "password": password}),
    )
    return reply.status, reply.headers.get("Retry-After", ""), (reply.json or {}).get("message", "")


async def test_throttling_per_user_slows_down_then_locks(store: Store) -> None:
    await make_user(store, "alice")
    async with serve(store, load(env=THROTTLE)) as app:
        client = app.client()
        await client.fetch("/login")  # the XSRF cookie
        for _ in range(3):
            assert (await _attempt(client, "alice", "wrong-password-0"))[0] == 401
        # the 4th must wait 1 s after the 3rd failure: refused unchecked, the right password too
        status, retry, message = await _attempt(client, "alice", password_for("alice"))
        assert (status, retry) == (429, "1") and "too many failed logins" in message
        app.clock.advance(1)
        assert (await _attempt(client, "alice", "wrong-password-0"))[0] == 401
        assert (await _attempt(client, "alice", "wrong-password-0"))[:2] == (429, "2")
        app.clock.advance(2)
        assert (await _attempt(client, "alice", "wrong-password-0"))[0] == 401
        status, retry, message = await _attempt(client, "alice", password_for("alice"))
        assert (status, retry) == (429, "600") and "locked" in message
        # the form says so too
        form = await client.login_form("alice", password_for("alice"))
        assert form.status == 429 and form.headers["Retry-After"] == "600"
        assert "locked after too many failed logins" in form.text
        app.clock.advance(599)
        assert (await _attempt(client, "alice", password_for("alice")))[0] == 429
        # another name from the same address is not locked (the address is under its limits)
        await make_user(store, "bob")
        assert (await _attempt(client, "bob", password_for("bob")))[0] == 200
        app.clock.advance(1)
        assert (await _attempt(client, "alice", password_for("alice")))[0] == 200
        outcomes = [(e.actor, e.outcome) for e in await audit.entries(store, action="login")]
        assert outcomes[::-1] == [
            *[("alice", "failed")] * 3,
            ("alice", "throttled"),
            ("alice", "failed"),
            ("alice", "throttled"),
            ("alice", "failed"),
            *[("alice", "throttled")] * 3,
            ("bob", "ok"),
            ("alice", "ok"),
        ]
        # a success clears the name's failures: one more typo does not lock again
        assert (await _attempt(client, "alice", "wrong-password-0"))[0] == 401
        assert (await _attempt(client, "alice", password_for("alice")))[0] == 200


async def test_throttling_per_address_across_names(store: Store) -> None:
    await make_user(store, "alice")
    async with serve(store, load(env=THROTTLE)) as app:
        client = app.client()
        await client.fetch("/login")
        for i in range(7):  # one failure per name: no name reaches its own limit
            assert (await _attempt(client, f"user{i}", "wrong-password-0"))[0] == 401
        assert (await _attempt(client, "alice", password_for("alice")))[:2] == (429, "1")
        app.clock.advance(1)
        assert (await _attempt(client, "nobody", "wrong-password-0"))[0] == 401
        app.clock.advance(2)
        assert (await _attempt(client, "nobody2", "wrong-password-0"))[0] == 401
        assert (await _attempt(client, "alice", password_for("alice")))[:2] == (429, "600")
        # another daemon on the same store sees the same failures
        async with serve(store, load(env=THROTTLE), clock=app.clock) as other:
            second = other.client()
            await second.fetch("/login")
            assert (await _attempt(second, "alice", password_for("alice")))[0] == 429
        app.clock.advance(600)
        assert (await _attempt(client, "alice", password_for("alice")))[0] == 200


class NavPage(PageHandler):
    """Renders what every page template gets: the user, the navigation, the XSRF field."""

    def get(self) -> None:
        template = tornado.template.Template(
            "{{ user.name }}#{% for item in nav %}{{ item['href'] }}{% if item['current'] %}*"
            "{% end %} {% end %}#{% module xsrf_form_html() %}"
        )
        self.finish(template.generate(**self.get_template_namespace()))


async def test_pages_get_user_nav_and_xsrf_field(store: Store) -> None:
    await make_user(store, "alice")
    await make_user(store, "root", "admin")
    async with serve(store, routes=[(r"/tasks", NavPage)]) as app:
        user, admin = app.client(), app.client()
        await user.login("alice", password_for("alice"))
        await admin.login("root", password_for("root"))
        name, nav, field = (await user.fetch("/tasks")).text.split("#")
        assert name == "alice" and 'name="_xsrf"' in field
        assert nav.split() == ["/tasks*", "/services", "/pipeline", "/dead-letters"]
        _, nav, _ = (await admin.fetch("/tasks")).text.split("#")
        assert nav.split()[-2:] == ["/users", "/audit"]


async def test_store_down_is_503_json_for_the_api_and_a_page_for_pages(app: Served) -> None:
    app.ctx.gate.close()
    client = app.client()
    status, body = await client.call("/api/v1/me")
    assert (status, body["error"]) == (503, "store_unavailable")
    for path in ("/hello", "/login"):
        reply = await client.fetch(path)
        assert reply.status == 503 and reply.headers["Content-Type"].startswith("text/html")
        assert "TaskDash is stopping" in reply.text and "HTTP 503" in reply.text


async def test_a_login_over_a_session_replaces_it(app: Served) -> None:
    await make_user(app.store, "alice")
    client, phone = app.client(), app.client()
    await phone.login("alice", password_for("alice"))
    await client.login("alice", password_for("alice"))
    first = client.session
    await client.login("alice", password_for("alice"))
    assert client.session != first, "a new id at every login (no session fixation)"
    assert await sessions.count_for_user(app.store, "alice") == 2, "the phone's and the new one"
    assert (await phone.call("/api/v1/me"))[0] == 200


async def test_an_unknown_path_is_404_whatever_the_method(app: Served) -> None:
    for method in ("GET", "POST", "DELETE"):
        reply = await app.client().fetch("/nope", method)
        assert (reply.status, reply.json["error"]) == (404, "not_found"), method


async def test_audit_entries_are_kept_audit_ttl_days(store: Store) -> None:
    """Every entry a request writes expires [web] audit_ttl_days after it (a TTL index)."""
    await make_user(store, "alice")
    async with serve(store, load(env={"TASKDASH_WEB__AUDIT_TTL_DAYS": "7"})) as app:
        client = app.client()
        await client.login_form("alice", "wrong password")
        await client.login("alice", password_for("alice"))
        await client.call("/api/v1/me/tokens", "POST", {"name": "x"})
        docs = [doc async for doc in store.audit.find({})]
        assert {d["action"] for d in docs} == {"login", "token.create"} and len(docs) == 3
        for doc in docs:
            kept = doc["expires_at"] - from_ms(doc["at"])
            assert kept == timedelta(days=7), doc
