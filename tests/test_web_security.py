"""The web layer as an attacker meets it: headers on every kind of answer (framing, caching,
sniffing, CSP), the XSRF cookie, request bodies and numbers out of bounds, errors that must
not show internals, a store failing in the middle of a page, and the client's address behind
a reverse proxy (``[web] xheaders``)."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import pytest
from web_client import Served, WebClient, make_token, make_user, password_for, serve

from taskdash.errors import StoreError, StoreUnavailable
from taskdash.settings import load
from taskdash.store import Store, audit, tasklist
from taskdash.store.assignments import get_assignment
from taskdash.web.auth import CSP, ApiHandler, PageHandler
from taskdash.web.base import JSON_CSP, STORE_DOWN

SECRET = "internal-detail-7f3a"


class Boom(PageHandler):
    """A page that fails as a bug would."""

    def get(self) -> None:
        raise RuntimeError(f"{SECRET} at /srv/taskdash/x.py line 3")


class BoomApi(ApiHandler):
    def get(self) -> None:
        raise RuntimeError(f"{SECRET} at /srv/taskdash/x.py line 3")


@pytest.fixture
async def app(store: Store) -> AsyncIterator[Served]:
    await make_user(store, "alice")
    await store.tasks.insert_one({"_id": "t", "key": "t", "assignee": ""})
    routes = [(r"/boom", Boom), (r"/api/v1/boom", BoomApi)]
    async with serve(store, routes=routes) as served:
        yield served


async def alice_of(app: Served) -> WebClient:
    client = app.client()
    await client.login("alice", password_for("alice"))
    return client


def html_guarded(headers: Any) -> bool:
    return (
        headers.get("Content-Security-Policy") == CSP
        and "frame-ancestors 'none'" in CSP
        and headers.get("X-Frame-Options") == "DENY"
        and headers.get("Cache-Control") == "no-store"
        and headers.get("X-Content-Type-Options") == "nosniff"
    )


async def test_every_kind_of_answer_carries_its_guards(app: Served) -> None:
    anonymous, alice = app.client(), await alice_of(app)
    html = {
        "login form": await anonymous.fetch("/login"),
        "redirect to the login": await anonymous.fetch("/tasks"),
        "a page": await alice.fetch("/tasks"),
        "an error page": await alice.fetch("/tasks/nope"),
        "a 405 page": await alice.fetch("/tasks", "DELETE"),
        "a failed login": await anonymous.login_form("alice", "wrong"),
    }
    for what, reply in html.items():
        assert html_guarded(reply.headers), (what, dict(reply.headers))
    json = {
        "an answer": await alice.fetch("/api/v1/me"),
        "a refusal": await anonymous.fetch("/api/v1/me"),
        "an unknown path": await anonymous.fetch("/nope"),
        "health": await anonymous.fetch("/healthz"),
    }
    for what, reply in json.items():
        assert reply.headers["Content-Security-Policy"] == JSON_CSP, what
        assert reply.headers["Cache-Control"] == "no-store", what
        assert reply.headers["X-Content-Type-Options"] == "nosniff", what
    static = await anonymous.fetch("/static/app.js")
    assert static.status == 200 and static.headers["X-Content-Type-Options"] == "nosniff"
    assert (await anonymous.fetch("/static/../auth.py")).status in (403, 404)


def cookie_line(reply: Any, name: str) -> str:
    (line,) = [c for c in reply.headers.get_list("Set-Cookie") if c.startswith(name + "=")]
    return line


async def test_the_xsrf_cookie_follows_the_session_cookie_and_is_new_at_each_login(
    store: Store,
) -> None:
    await make_user(store, "alice")
    for secure in (False, True):
        settings = load(env={"TASKDASH_WEB__SECURE_COOKIES": str(secure).lower()})
        async with serve(store, settings) as served:
            client = served.client()
            line = cookie_line(await client.fetch("/login"), "_xsrf")
            assert "SameSite=Lax" in line and ("Secure" in line) is secure, line
            before = client.xsrf
            reply = await client.login_form("alice", password_for("alice"))
            line = cookie_line(reply, "_xsrf")
            assert ("Secure" in line) is secure and client.xsrf != before, line
            # the token planted or seen before the login is worth nothing now
            planted = await client.fetch("/api/v1/logout", "POST", headers={"X-XSRFToken": before})
            assert (planted.status, planted.json["error"]) == (403, "xsrf")
            assert (await client.fetch("/api/v1/logout", "POST")).status == 204


async def test_a_body_larger_than_any_form_is_refused_before_any_handler(app: Served) -> None:
    alice = await alice_of(app)
    body = "action=claim&pad=" + "x" * (100 * 1024)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    reply = await alice.fetch("/tasks/t", "POST", body, headers)
    assert (reply.status, reply.json["error"]) == (413, "payload_too_large"), reply.status
    assert (await get_assignment(app.store, "t")).version == 0
    assert (await alice.call("/api/v1/me"))[0] == 200, "the server is fine"


@pytest.mark.parametrize("version", ["²", "٣", "9" * 40, "-1", "1e3"])
async def test_numbers_out_of_bounds_are_400_not_500(app: Served, version: str) -> None:
    alice = await alice_of(app)
    form = urllib.parse.urlencode({"action": "claim", "version": version, "_xsrf": alice.xsrf})
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    reply = await alice.fetch("/tasks/t", "POST", form, headers, xsrf=False)
    assert reply.status == 400 and "version must be" in reply.text, reply.text[:500]
    if version.isascii() and version.lstrip("-").isdigit():
        status, body = await alice.call("/api/v1/tasks/t/claim", "POST", {"version": int(version)})
        assert status == 400 and "$.version" in body["message"]
    assert (await get_assignment(app.store, "t")).version == 0


async def test_bounded_inputs_on_the_pages(app: Served) -> None:
    alice = await alice_of(app)
    too_long = {
        "/tasks?per=201": "per must be between",
        "/tasks?q=" + "a" * 65: "q is longer than",
        "/tasks?description=" + "a" * 65: "description is longer than",
        "/tasks?service=" + "a" * 129: "service is longer than",
        "/tasks?after=" + "a" * 1025: "after is longer than",
        "/dead-letters?topic=" + "a" * 129: "topic is longer than",
        "/dead-letters?limit=1001": "limit must be between",
        "/services?page=0": "page must be between",
    }
    for path, message in too_long.items():
        reply = await alice.fetch(path)
        assert reply.status == 400 and message in reply.text, (path, reply.text[:300])


async def test_errors_never_show_internals(app: Served) -> None:
    alice = await alice_of(app)
    page = await alice.fetch("/boom")
    assert page.status == 500 and SECRET not in page.text and "Traceback" not in page.text
    assert "Error 500" in page.text and html_guarded(page.headers)
    status, body = await alice.call("/api/v1/boom")
    assert status == 500 and SECRET not in repr(body) and body["error"] == "internal_server_error"


async def test_a_store_failing_in_the_middle_of_a_page(
    app: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await alice_of(app)
    driver = f"find_tasks: MongoDB unreachable: 10.1.2.3:27017 {SECRET}"

    async def unreachable(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable(driver)

    monkeypatch.setattr(tasklist, "find_tasks", unreachable)
    reply = await alice.fetch("/tasks")
    assert reply.status == 503 and STORE_DOWN in reply.text and SECRET not in reply.text
    assert html_guarded(reply.headers)
    assert app.ctx.gate.monitor is not None and app.ctx.gate.monitor.probe_requested

    async def refused(*args: object, **kwargs: object) -> None:
        raise StoreError(f"find_tasks: E11000 duplicate key {SECRET}")

    monkeypatch.setattr(tasklist, "find_tasks", refused)
    reply = await alice.fetch("/tasks")
    assert reply.status == 500 and "the store refused the operation" in reply.text
    assert SECRET not in reply.text
    monkeypatch.undo()
    assert (await alice.fetch("/tasks")).status == 200, "and back once the store answers"


PROXIED = {
    "X-Real-IP": "203.0.113.7",
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Proto": "https",
}


@pytest.mark.parametrize("xheaders", [False, True])
async def test_behind_a_reverse_proxy(store: Store, xheaders: bool) -> None:
    await make_user(store, "alice")
    env = {"TASKDASH_WEB__XHEADERS": str(xheaders).lower(),
           "TASKDASH_WEB__LOGIN_ADDRESS_DELAY_AFTER": "2",
           "TASKDASH_WEB__LOGIN_ADDRESS_LOCK_AFTER": "2"}  # fmt: skip
    async with serve(store, load(env=env)) as served:
        client = served.client()
        await client.fetch("/login", headers=PROXIED)
        form = urllib.parse.urlencode(
            {"name": "alice", "password": password_for("alice"), "_xsrf": client.xsrf}
        )
        headers = {**PROXIED, "Content-Type": "application/x-www-form-urlencoded"}
        reply = await client.fetch("/login", "POST", form, headers, xsrf=False)
        assert reply.status == 302
        assert ("Secure" in cookie_line(reply, "taskdash_session")) is xheaders
        (entry,) = await audit.entries(store, action="login")
        assert entry.address == ("203.0.113.7" if xheaders else "127.0.0.1")
        # two failures lock the address: the client's behind the proxy, or the proxy's
        for _ in range(2):
            await client.fetch("/api/v1/login", "POST", '{"name": "x", "password": "y"}', PROXIED)
        other = served.client()
        await other.fetch("/login")
        other_proxied = {"X-Real-IP": "198.51.100.1", "X-Forwarded-For": "198.51.100.1"}
        status = (
            await other.fetch(
                "/api/v1/login", "POST", '{"name": "x", "password": "y"}', other_proxied
            )
        ).status
        assert status == (401 if xheaders else 429), "another client is not locked out"
        token = await make_token(store, "alice")
        web = served.client(token=token)
        assert (await web.fetch("/api/v1/me", headers={"X-Real-IP": "not-an-ip"})).status == 200
