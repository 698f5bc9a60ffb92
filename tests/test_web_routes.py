"""Every route of ``app.ROUTES``, walked: only ``/healthz`` and ``/readyz`` (and the login
itself) answer anonymous requests; every other one refuses every method, the API with 401 and
the pages with a redirect to the login form. Every state-changing method a session sends
without the XSRF token is refused (403) and changes nothing in the store.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import pytest
import tornado.web
from web_client import Served, make_user, password_for, serve

from taskdash.store import Store
from taskdash.web.account import LoginApi, LoginPage, LogoutPage
from taskdash.web.app import ROUTES
from taskdash.web.auth import ApiHandler, PageHandler
from taskdash.web.health import HealthzHandler, ReadyzHandler
from taskdash.web.scrape import MetricsPage

#: what anyone may ask, on purpose: liveness and readiness (systemd, load balancers), and
#: /metrics (Prometheus: open, or behind its own [metrics] token, docs/metrics.md) ...
OPEN = {HealthzHandler, ReadyzHandler, MetricsPage}
#: ... and the way in (and out): the login form, its JSON twin, the logout form
PUBLIC = {LoginPage, LoginApi, LogoutPage}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
WRITES = ("POST", "PUT", "PATCH", "DELETE")
SAMPLE = "t-1"


def sample(pattern: str) -> str:
    """A URL the pattern matches, each group replaced by SAMPLE."""
    return re.sub(r"\((?:\?P<\w+>)?[^()]*\)", SAMPLE, pattern).rstrip("$")


def closed_routes() -> list[tuple[str, type[tornado.web.RequestHandler]]]:
    return [(p, h) for p, h in ROUTES if h not in OPEN | PUBLIC]


def test_every_route_is_open_on_purpose_or_needs_a_login() -> None:
    for pattern, handler in ROUTES:
        if handler in OPEN | PUBLIC:
            continue
        assert issubclass(handler, ApiHandler | PageHandler), (pattern, handler)
    assert {h for _, h in ROUTES} >= OPEN | PUBLIC
    assert sample(r"/api/v1/users/(?P<name>[^/]+)/tokens") == "/api/v1/users/t-1/tokens"


async def snapshot(store: Store) -> dict[str, list[Any]]:
    """Every document of every collection (what a refused request must leave as it was)."""
    out = {}
    for name in sorted(await store.db.list_collection_names()):
        out[name] = [doc async for doc in store[name].find({}).sort("_id", 1)]
    return out


@pytest.fixture
async def app(store: Store) -> AsyncIterator[Served]:
    await make_user(store, "root", "admin")
    await store.tasks.insert_one({"_id": SAMPLE, "key": SAMPLE, "assignee": ""})
    async with serve(store) as served:
        yield served


async def test_anonymous_is_refused_everywhere_but_on_the_open_routes(app: Served) -> None:
    client = app.client()
    before = await snapshot(app.store)
    wrong = []
    for pattern, handler in closed_routes():
        url = sample(pattern)
        for method in METHODS:
            reply = await client.fetch(url, method)
            if issubclass(handler, ApiHandler):
                body = reply.json if method != "HEAD" else {"error": "unauthorized"}
                ok = reply.status == 401 and (body or {}).get("error") == "unauthorized"
                ok = ok and reply.headers.get("WWW-Authenticate", "").startswith("Bearer")
            else:
                location = urllib.parse.urlsplit(reply.headers.get("Location", ""))
                query = urllib.parse.parse_qs(location.query)
                status = 302 if method in ("GET", "HEAD") else 303
                ok = (reply.status, location.path, query.get("next")) == (status, "/login", [url])
            if not ok:
                wrong.append((method, url, reply.status, reply.headers.get("Location")))
    assert wrong == []
    assert await snapshot(app.store) == before
    assert (await client.fetch("/healthz")).json["status"] == "ok"
    assert (await client.fetch("/readyz")).json["phase"] == "starting"  # 503, but an answer
    assert (await client.fetch("/login")).status == 200
    assert (await client.fetch("/static/app.css")).status == 200


async def test_every_write_without_the_xsrf_token_is_refused_and_changes_nothing(
    app: Served,
) -> None:
    client = app.client()
    await client.login("root", password_for("root"))
    before = await snapshot(app.store)
    wrong = []
    for pattern, handler in ROUTES:
        url = sample(pattern)
        for method in WRITES:
            body = "action=claim&name=x&password=p&role=admin"
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            reply = await client.fetch(url, method, body, headers, xsrf=False)
            json_body = reply.json or {}
            if reply.status != 403 or (
                issubclass(handler, ApiHandler | LoginApi) and json_body.get("error") != "xsrf"
            ):
                wrong.append((method, url, reply.status, reply.text[:200]))
    assert wrong == []
    assert await snapshot(app.store) == before
    assert (await client.call("/api/v1/me"))[0] == 200, "still logged in: /logout refused too"
