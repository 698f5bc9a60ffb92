"""The HTTP API in process, against a real nx-27017: the store gate, error shape, HEAD.

Every /api call carries a bearer token (the API needs a login or a token: tests/test_api*.py).
"""

from __future__ import annotations

import logging
import os
import signal
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
from support import NxServer
from web_client import make_token, make_user

from taskdash.health import Health
from taskdash.models import TaskService
from taskdash.settings import load
from taskdash.store import Store
from taskdash.store.monitor import StoreMonitor
from taskdash.store.services import register_services
from taskdash.web.app import make_app
from taskdash.web.base import STORE_DOWN, StoreGate
from taskdash.web.context import WebContext

pytestmark = pytest.mark.asyncio


class Api:
    """A running application on a free loopback port and a client for it."""

    def __init__(self, gate: StoreGate, health: Health) -> None:
        self.gate, self.health = gate, health
        self.token = ""
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.server = tornado.httpserver.HTTPServer(
            make_app(WebContext(settings=load(env={}), health=health, gate=gate))
        )
        self.server.add_sockets(sockets)
        self.base = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        self.client = tornado.httpclient.AsyncHTTPClient()

    async def call(self, path: str, method: str = "GET") -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        resp = await self.client.fetch(
            self.base + path, method=method, headers=headers, raise_error=False, request_timeout=30
        )
        body = tornado.escape.json_decode(resp.body) if resp.body else None
        return resp.code, body


@pytest.fixture
def nx(tmp_path: Path) -> Iterator[NxServer]:
    """A server of the test's own, so that it can be frozen."""
    server = NxServer(tmp_path / "nx")
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


async def with_token(api: Api, store: Store) -> None:
    """A user and a token for it; the API's calls carry it from now on."""
    await make_user(store, "reader")
    api.token = await make_token(store, "reader")


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    running = Api(StoreGate(request_timeout=0.5), Health())
    try:
        yield running
    finally:
        running.server.stop()


async def test_before_the_store_is_attached_the_api_says_so(api: Api) -> None:
    assert await api.call("/healthz") == (200, {"status": "ok", "version": "0.1.0"})
    status, body = await api.call("/api/services")
    assert status == 503 and body["error"] == "store_unavailable"
    assert "starting" in body["message"] and body["status"] == 503
    status, body = await api.call("/readyz")
    assert (status, body["phase"]) == (503, "starting")
    assert await api.call("/readyz", "HEAD") == (503, None)
    assert await api.call("/healthz", "HEAD") == (200, None)


async def test_ready_only_while_running(api: Api) -> None:
    api.health.add("part", lambda: (True, {}))
    assert (await api.call("/readyz"))[0] == 503, "every part is ready, the start is not over"
    api.health.set_phase("running")
    assert await api.call("/readyz") == (
        200,
        {"status": "ready", "phase": "running", "components": {"part": {"ready": True}}},
    )
    assert await api.call("/readyz", "HEAD") == (200, None)
    api.health.set_phase("stopping")
    assert (await api.call("/readyz"))[0] == 503


async def test_errors_have_one_shape(api: Api, nx: NxServer) -> None:
    store = Store(nx.uri, f"t_{uuid.uuid4().hex[:8]}", server_selection_timeout=5)
    monitor = StoreMonitor(store, interval=1, retry_initial=0.5, retry_max=1)
    try:
        assert await monitor.probe()
        api.gate.attach(store, monitor)
        await with_token(api, store)
        assert await api.call("/api/services/nope") == (
            404,
            {"error": "not_found", "message": "no service with this id", "status": 404},
        )
        status, body = await api.call("/api/services?limit=0")
        assert (status, body["error"]) == (400, "bad_request")
        assert body["message"] == "limit must be between 1 and 1000"
        assert (await api.call("/api/services"))[0] == 200
    finally:
        await store.close()


def server_selections(caplog: pytest.LogCaptureFixture) -> int:
    """How many operations the driver was asked for so far, from pymongo's own DEBUG log.

    Each operation starts with a server selection (logged on ``pymongo.serverSelection``);
    against a frozen server it can fail before any command is sent, so a CommandListener
    would not see it.
    """
    return sum(
        r.name == "pymongo.serverSelection" and "Server selection started" in r.getMessage()
        for r in caplog.records
    )


async def test_a_freeze_the_monitor_has_not_seen_is_a_bounded_503(
    api: Api, nx: NxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pymongo.serverSelection")
    store = Store(nx.uri, f"t_{uuid.uuid4().hex[:8]}", server_selection_timeout=60)
    monitor = StoreMonitor(store, interval=60, retry_initial=60, retry_max=60, timeout=0.5)
    try:
        assert await monitor.probe()  # the last probe succeeded: the gate lets requests in
        api.gate.attach(store, monitor)
        await with_token(api, store)
        assert nx.proc is not None
        os.kill(nx.proc.pid, signal.SIGSTOP)
        # the request's own deadline (0.5 s), not the driver's 60 s, ends it
        before = server_selections(caplog)
        status, body = await api.call("/api/services")
        assert (status, body["error"]) == (503, "store_unavailable"), body
        assert "timed out" not in body["message"], "driver text stays in the logs"
        assert server_selections(caplog) > before, "this one went to MongoDB"
        assert monitor.probe_requested, "the monitor was told to probe now"
        assert not await monitor.probe()
        # now the monitor knows: the gate answers, without asking the driver for anything
        before = server_selections(caplog)
        status, body = await api.call("/api/services")
        assert (status, body["message"]) == (503, STORE_DOWN)
        assert server_selections(caplog) == before, "answered by the gate, not by a timeout"
    finally:
        os.kill(nx.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        await store.close()


async def test_a_long_non_ascii_id_can_be_looked_up(api: Api, nx: NxServer) -> None:
    """Ids are limited to 128 characters once decoded, not 128 characters of percent-encoding."""
    store = Store(nx.uri, f"t_{uuid.uuid4().hex[:8]}", server_selection_timeout=5)
    monitor = StoreMonitor(store, interval=1, retry_initial=0.5, retry_max=1)
    longest = "服" * 128  # 384 bytes of UTF-8, 1,152 characters percent-encoded
    try:
        assert await monitor.probe()
        api.gate.attach(store, monitor)
        await with_token(api, store)
        await register_services(store, [TaskService(id=longest)], datetime.now(UTC))
        quoted = urllib.parse.quote(longest)
        status, body = await api.call(f"/api/services/{quoted}")
        assert (status, body["id"]) == (200, longest)
        assert (await api.call(f"/api/services/{quoted}/history"))[0] == 200
        too_long = urllib.parse.quote("服" * 129)
        status, body = await api.call(f"/api/services/{too_long}")
        assert (status, body["message"]) == (400, "service_id is longer than 128 characters")
        beyond = urllib.parse.quote("服" * 129 * 4)  # longer than any route takes: no route
        assert (await api.call(f"/api/services/{beyond}"))[0] == 404
    finally:
        await store.close()
