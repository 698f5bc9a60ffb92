"""A real HTTP client for the web tests, an application served on loopback, and account helpers.

- :class:`WebClient`: Tornado's AsyncHTTPClient bound to a base URL, with its own cookies.
  ``await client.login(name, password)`` goes through the login form as a browser does (GET
  ``/login`` for the XSRF cookie, POST the form); afterwards ``call`` sends the session
  cookie and, on state-changing methods, the XSRF token. ``WebClient(base, token=...)`` sends
  ``Authorization: Bearer`` instead and no cookie at all.
- :func:`serve`: the application on a free loopback port over a real store (an async context
  manager), with a :class:`SettableClock` the sessions and the throttle read.
- :func:`make_user` / :func:`make_token`: an account with a known password, a token for it,
  written straight to the store.
"""

from __future__ import annotations

import contextlib
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from typing import Any

import tornado.escape
import tornado.httpclient
import tornado.httputil
import tornado.netutil
import tornado.web
from argon2 import PasswordHasher

from taskdash.draining import DrainingHTTPServer
from taskdash.health import Health
from taskdash.passwords import Passwords
from taskdash.settings import Settings, load
from taskdash.store import Store, users
from taskdash.store.monitor import StoreMonitor
from taskdash.web.app import make_app, server_options
from taskdash.web.auth import SESSION_COOKIE
from taskdash.web.base import StoreGate
from taskdash.web.context import WebContext

#: argon2 at its cheapest: creating test accounts costs milliseconds, not 0.1 s each (the
#: first login renews the hash to today's parameters, as it would in production)
CHEAP = Passwords(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


def password_for(name: str) -> str:
    """The password :func:`make_user` gives ``name`` unless told otherwise."""
    return f"pw-{name}-0123456789"


async def make_user(
    store: Store, name: str, role: users.Role = "user", password: str | None = None
) -> users.User:
    """An account with a known password (default :func:`password_for`)."""
    return await users.add_user(
        store, name, password or password_for(name), role=role, passwords=CHEAP
    )


async def make_token(
    store: Store, name: str, *, label: str = "test", expires_in_days: float | None = None
) -> str:
    """A new API token of ``name``'s (the secret)."""
    secret, _ = await users.new_token(
        store, name, label, now=datetime.now(UTC), expires_in_days=expires_in_days
    )
    return secret


@dataclass
class SettableClock:
    """A clock the test moves: sessions and login throttling read it, not the wall clock."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Reply:
    """One answer: status, headers, the body parsed as JSON when it is JSON."""

    status: int
    headers: tornado.httputil.HTTPHeaders
    body: bytes

    @property
    def json(self) -> Any:
        if "json" not in self.headers.get("Content-Type", "") or not self.body:
            return None
        return tornado.escape.json_decode(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class WebClient:
    """A browser-like (or, with ``token``, script-like) client of one running application."""

    def __init__(self, base: str, *, token: str | None = None) -> None:
        self.base = base.rstrip("/")
        #: off for a test's own self-signed certificate
        self.validate_cert = True
        self.token = token
        self.cookies: dict[str, str] = {}
        self.http = tornado.httpclient.AsyncHTTPClient()

    @property
    def xsrf(self) -> str:
        return self.cookies.get("_xsrf", "")

    @property
    def session(self) -> str:
        return self.cookies.get(SESSION_COOKIE, "")

    async def fetch(
        self,
        path: str,
        method: str = "GET",
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        *,
        xsrf: bool = True,
    ) -> Reply:
        """One request, redirects not followed; the cookies it sets are kept."""
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if self.token is not None:
            sent["Authorization"] = f"Bearer {self.token}"
        if xsrf and self.xsrf and method not in ("GET", "HEAD") and "X-XSRFToken" not in sent:
            sent["X-XSRFToken"] = self.xsrf
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        resp = await self.http.fetch(
            self.base + path,
            method=method,
            body=body,
            headers=sent,
            follow_redirects=False,
            raise_error=False,
            request_timeout=30,
            allow_nonstandard_methods=True,
            validate_cert=self.validate_cert,
        )
        self.keep_cookies(resp.headers.get_list("Set-Cookie"))
        return Reply(resp.code, resp.headers, resp.body or b"")

    def keep_cookies(self, set_cookies: list[str]) -> None:
        for line in set_cookies:
            for name, morsel in SimpleCookie(line).items():
                expired = morsel["expires"] and "1970" in morsel["expires"]
                if expired or morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value

    async def call(self, path: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
        """A JSON call: ``body`` sent as JSON; (status, parsed answer or None)."""
        raw = None if body is None else tornado.escape.json_encode(body)
        headers = {"Content-Type": "application/json"} if raw is not None else {}
        reply = await self.fetch(path, method, raw, headers)
        return reply.status, reply.json

    async def login_form(self, name: str, password: str, next_: str = "") -> Reply:
        """GET the form (for the XSRF cookie), then POST it; the raw answer."""
        if not self.xsrf:
            await self.fetch("/login")
        fields = {"name": name, "password": password, "_xsrf": self.xsrf}
        if next_:
            fields["next"] = next_
        form = urllib.parse.urlencode(fields)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return await self.fetch("/login", "POST", form, headers, xsrf=False)

    async def login(self, name: str, password: str) -> None:
        """Log in through the form; AssertionError unless a session cookie came back."""
        reply = await self.login_form(name, password)
        assert reply.status == 302 and self.session, (reply.status, reply.text[:500])

    async def logout(self) -> Reply:
        return await self.fetch("/logout", "POST", b"")


@dataclass
class Served:
    """A running application: its base URL, context and clock."""

    base: str
    ctx: WebContext
    clock: SettableClock
    store: Store

    def client(self, *, token: str | None = None) -> WebClient:
        return WebClient(self.base, token=token)


async def client_of(served: Served, role: str, via: str, *, label: str = "test") -> WebClient:
    """A client acting as the account named ``role`` ("anonymous": nobody), by ``via``
    ("session": logged in through the form; "token": a token named ``label``); the account
    "dis" is disabled once its session or token exists (a disabled user's credentials)."""
    if role == "anonymous":
        return served.client()
    if via == "token":
        web = served.client(token=await make_token(served.store, role, label=label))
    else:
        web = served.client()
        await web.login(role, password_for(role))
    if role == "dis":
        await users.set_disabled(served.store, "dis", True)
    return web


@contextlib.asynccontextmanager
async def serve(
    store: Store,
    settings: Settings | None = None,
    *,
    clock: SettableClock | None = None,
    routes: list[tuple[str, type[tornado.web.RequestHandler]]] | None = None,
    ssl_options: ssl.SSLContext | None = None,
) -> AsyncIterator[Served]:
    """The whole application on a free loopback port, its store gate open on ``store``;
    ``routes`` are added to it (handlers written for a test); HTTPS with ``ssl_options``."""
    await store.ensure_account_indexes()
    gate = StoreGate(request_timeout=5)
    monitor = StoreMonitor(store, interval=60, retry_initial=1, retry_max=1)
    assert await monitor.probe()
    gate.attach(store, monitor)
    clock = clock or SettableClock()
    ctx = WebContext(settings=settings or load(env={}), health=Health(), gate=gate, clock=clock)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    app = make_app(ctx)
    app.add_handlers(r".*", [(pattern, handler, {"ctx": ctx}) for pattern, handler in routes or []])
    options = server_options(ctx.settings.web)
    server = DrainingHTTPServer(app, ssl_options=ssl_options, **options)
    server.add_sockets(sockets)
    scheme = "https" if ssl_options else "http"
    try:
        yield Served(f"{scheme}://127.0.0.1:{sockets[0].getsockname()[1]}", ctx, clock, store)
    finally:
        server.stop()
        await server.close_all_connections()
