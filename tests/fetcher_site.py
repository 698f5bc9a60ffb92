"""A real loopback HTTP server playing many task services for the fetcher tests.

Each service is a path ``/t/<name>`` whose behaviour the test sets: a JSON listing (optionally
with an ETag or Last-Modified), a raw body, a forced status, slowness, a redirect, or a body
too large in one of several ways. Every request is counted per name; POST bodies are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web

from taskdash.models import TaskService
from taskdash.settings import FetcherSettings
from taskdash.store import Store
from taskdash.store.services import register_services

T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
LAST_MODIFIED = "Mon, 23 Nov 2026 11:00:00 GMT"


class Clock:
    """The daemons' clock, moved by the test instead of by waiting."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def settings(**overrides: Any) -> FetcherSettings:
    """Small intervals and timeouts so that the suite stays fast."""
    values: dict[str, Any] = {
        "fetch_interval": 10.0,
        "connect_timeout": 2.0,
        "request_timeout": 2.0,
        "backoff_initial": 1.0,
        "backoff_max": 60.0,
        "node_heartbeat_interval": 1.0,
        "node_timeout": 5.0,
        **overrides,
    }
    return FetcherSettings(**values)


def task(task_id: str, **fields: str) -> dict[str, str]:
    """A TaskMetaData record as a service lists it."""
    return {
        "id": task_id,
        "name": fields.get("name", f"name of {task_id}"),
        "url": fields.get("url", f"http://example.test/{task_id}"),
        "description": fields.get("description", ""),
        "status": fields.get("status", "running"),
        "reserved": fields.get("reserved", ""),
    }


async def register(store: Store, urls: dict[str, str], now: datetime = T0) -> None:
    """Register services (status ``unknown``: fetchable) as the NSQ reader would."""
    await register_services(store, [TaskService(id=sid, url=url) for sid, url in urls.items()], now)


class _Service(tornado.web.RequestHandler):
    site: Site

    def initialize(self, site: Site) -> None:
        self.site = site

    def compute_etag(self) -> None:
        return None  # ETags only where a test asks for them

    async def get(self, name: str) -> None:
        await self._answer(name)

    async def post(self, name: str) -> None:
        self.site.posts.append((name, self.request.body, self.request.headers.get("Content-Type")))
        await self._answer(name)

    async def _answer(self, name: str) -> None:
        site = self.site
        site.hits[name] += 1
        site.headers.append((name, dict(self.request.headers)))
        if name in site.slow:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(site.release.wait(), 30)
        if name in site.status:
            self.set_status(site.status[name])
            self.write("boom")
            return
        if name in site.redirects:
            self.redirect(site.redirects[name], status=302)
            return
        if name in site.huge:
            await self._huge(site.huge[name])
            return
        if name in site.raw:
            self.write(site.raw[name])
            return
        body = json.dumps(site.listings.get(name, [])).encode()
        self.set_header("Content-Type", "application/json")
        if name in site.etag:
            tag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            self.set_header("ETag", tag)
            if self.request.headers.get("If-None-Match") == tag:
                self.set_status(304)
                return
        if name in site.last_modified:
            self.set_header("Last-Modified", LAST_MODIFIED)
            if self.request.headers.get("If-Modified-Since") == LAST_MODIFIED:
                self.set_status(304)
                return
        self.write(body)

    async def _huge(self, mode: str) -> None:
        size = self.site.huge_size
        if mode == "gzip":  # small on the wire, huge once decoded
            self.set_header("Content-Encoding", "gzip")
            self.write(gzip.compress(b"[" + b" " * size + b"]"))
            return
        if mode == "length":
            self.set_header("Content-Length", str(size))
        chunk = b" " * 65536
        with contextlib.suppress(tornado.iostream.StreamClosedError):
            for _ in range(size // len(chunk)):
                self.write(chunk)
                await self.flush()
            self.write(b" " * (size % len(chunk)))


class Site:
    """The server and the behaviour of each service name."""

    def __init__(self) -> None:
        self.listings: dict[str, Any] = {}
        self.raw: dict[str, bytes] = {}
        self.status: dict[str, int] = {}
        self.redirects: dict[str, str] = {}
        self.huge: dict[str, str] = {}
        self.huge_size = 0
        self.etag: set[str] = set()
        self.last_modified: set[str] = set()
        self.slow: set[str] = set()
        self.release = asyncio.Event()
        self.hits: Counter[str] = Counter()
        self.posts: list[tuple[str, bytes, str | None]] = []
        self.headers: list[tuple[str, dict[str, str]]] = []
        self._server: tornado.httpserver.HTTPServer | None = None
        self.port = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/t/{name}"

    async def start(self) -> Site:
        app = tornado.web.Application([(r"/t/([^/]+)", _Service, {"site": self})])
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self._server = tornado.httpserver.HTTPServer(app)
        self._server.add_sockets(sockets)
        return self

    async def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
