"""Deliveries on the service page and in the API, through the real application on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from test_alerts import Clock, alerts, dispatcher, hook, started_receivers
from web_client import Served, make_token, make_user, password_for, serve

from taskdash.alerts import enqueue
from taskdash.models import TaskService
from taskdash.store import Store
from taskdash.store.services import register_services
from taskdash.store.times import to_ms

XSS = "<script>alert(1)</script>"


@pytest.fixture
async def app(store: Store) -> AsyncIterator[Served]:
    await make_user(store, "alice")
    await register_services(store, [TaskService(id="svc-a", name="a")], datetime.now(UTC))
    async with serve(store) as served:
        yield served


async def sent(store: Store, *script: int | str, reason: str = "no heartbeat") -> None:
    """One offline alert about svc-a, sent (attempted once) to a receiver answering ``script``."""
    clock = Clock(datetime.now(UTC))
    async with started_receivers() as start:
        receiver = await start(*script)
        sender = dispatcher(store, alerts(hook(receiver, "ops-hook")), clock, node_id="d1")
        details: dict[str, Any] = {"reason": reason}
        at = to_ms(clock.now)
        await enqueue(
            store, kind="service.offline", subject="svc-a", details=details, key="e1", at=at
        )
        await sender.once()


async def test_the_service_page_shows_the_last_deliveries(app: Served) -> None:
    await sent(app.store, 503)
    alice = app.client()
    await alice.login("alice", password_for("alice"))
    page = (await alice.fetch("/services/svc-a")).text
    section = page.split('id="alerts-h"')[1].split("</section>")[0]
    assert "service.offline" in section and "ops-hook" in section
    assert ">pending</span>" in section and "HTTP 503" in section
    assert "receiver says no" in section


async def test_the_service_page_says_when_nothing_was_sent(app: Served) -> None:
    alice = app.client()
    await alice.login("alice", password_for("alice"))
    page = (await alice.fetch("/services/svc-a")).text
    assert "No alert sent about this service." in page


async def test_the_api_lists_deliveries_with_their_attempts(app: Served) -> None:
    await sent(app.store, 200)
    api = app.client(token=await make_token(app.store, "alice"))
    status, body = await api.call("/api/v1/services/svc-a/alerts?limit=5")
    assert status == 200
    (shown,) = body["alerts"]
    assert shown["id"] == "e1|ops-hook" and shown["state"] == "delivered"
    assert [(a["attempt"], a["outcome"], a["code"]) for a in shown["attempt_log"]] == [
        (1, "delivered", 200)
    ]
    assert "url" not in shown  # the webhook's URL (which may carry a token) is never shown


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/api/v1/services/nope/alerts", 404, "not_found"),
        ("/api/v1/services/svc-a/alerts?limit=0", 400, "bad_request"),
        ("/api/v1/services/svc-a/alerts?limit=201", 400, "bad_request"),
        ("/api/v1/services/svc-a/alerts?since=1", 400, "bad_request"),
    ],
)
async def test_bad_api_requests_are_refused_clearly(
    app: Served, path: str, status: int, error: str
) -> None:
    api = app.client(token=await make_token(app.store, "alice"))
    got, body = await api.call(path)
    assert (got, body["error"]) == (status, error)


async def test_nobody_sees_alerts_without_a_login(app: Served) -> None:
    got, _ = await app.client().call("/api/v1/services/svc-a/alerts")
    assert got == 401


async def test_outsider_text_in_an_alert_is_escaped_on_the_page(app: Served) -> None:
    await sent(app.store, 500, reason=XSS)
    alice = app.client()
    await alice.login("alice", password_for("alice"))
    page = (await alice.fetch("/services/svc-a")).text
    assert XSS not in page
    assert "is offline: &lt;script&gt;alert(1)&lt;/script&gt;" in page
