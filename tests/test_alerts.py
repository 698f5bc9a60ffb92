"""Alerts end to end on a real store, with real webhook receivers on 127.0.0.1.

The checker makes real state changes on a controlled clock; dispatchers (two where it
matters) share one nx-27017; receivers are real Tornado servers that answer as each test
scripts them. Time is moved by the clock, never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import tornado.httpserver
import tornado.httputil
import tornado.netutil
import tornado.web
from fetcher_site import T0, Clock

from taskdash.alerts import enqueue
from taskdash.alerts.dispatcher import Dispatcher
from taskdash.alerts.fanout import FanOut
from taskdash.alerts.signing import HEADER, verify
from taskdash.checker import Checker
from taskdash.fetcher.rules import Rules
from taskdash.models import TaskService
from taskdash.settings import AlertsSettings, CheckerSettings, FetcherSettings, WebhookSettings
from taskdash.store import Store
from taskdash.store import alerts as outbox
from taskdash.store.services import record_heartbeats, register_services
from taskdash.store.times import to_ms

SECRET = "s3cret-for-tests-only"


@dataclass
class Receiver:
    """A webhook receiver: answers with ``script`` in turn (then 200), records every request.

    ``"hang"`` in the script never answers (until the test ends).
    """

    script: list[int | str] = field(default_factory=list)
    requests: list[tuple[tornado.httputil.HTTPHeaders, bytes]] = field(default_factory=list)
    port: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]


class _Hook(tornado.web.RequestHandler):
    def initialize(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def post(self) -> None:
        r = self.receiver
        r.requests.append((tornado.httputil.HTTPHeaders(self.request.headers), self.request.body))
        answer = r.script.pop(0) if r.script else 200
        if answer == "hang":
            await r.release.wait()
            return
        self.set_status(int(answer))
        self.finish("ok" if answer == 200 else "receiver says no")


@contextlib.asynccontextmanager
async def started_receivers() -> AsyncIterator[Any]:
    """Start receivers on demand; all stopped at the end."""
    started: list[tuple[tornado.httpserver.HTTPServer, Receiver]] = []

    async def start(*script: int | str) -> Receiver:
        receiver = Receiver(list(script))
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        receiver.port = sockets[0].getsockname()[1]
        server = tornado.httpserver.HTTPServer(
            tornado.web.Application([(r"/hook", _Hook, {"receiver": receiver})])
        )
        server.add_sockets(sockets)
        started.append((server, receiver))
        return receiver

    try:
        yield start
    finally:
        for server, receiver in started:
            receiver.release.set()
            server.stop()


@pytest.fixture
async def receivers() -> AsyncIterator[Any]:
    async with started_receivers() as start:
        yield start


def loopback_rules(**overrides: Any) -> Rules:
    """The fetcher's rules as a test deployment sets them: only 127.0.0.1 allowed."""
    return Rules.from_settings(FetcherSettings(allowed_cidrs=["127.0.0.1/32"], **overrides))


def alerts(*hooks: WebhookSettings, **overrides: Any) -> AlertsSettings:
    values: dict[str, Any] = {
        "webhooks": list(hooks),
        "backoff_initial": 1.0,
        "backoff_max": 8.0,
        "connect_timeout": 2.0,
        "request_timeout": 2.0,
        "claim_lease": 10.0,
        "rate_limit": 0,
        **overrides,
    }
    return AlertsSettings(**values)


def hook(receiver: Receiver, name: str = "ops", **overrides: Any) -> WebhookSettings:
    return WebhookSettings(name=name, url=receiver.url, **overrides)


def dispatcher(store: Store, settings: AlertsSettings, clock: Clock, **kw: Any) -> Dispatcher:
    return Dispatcher(store, settings, kw.pop("rules", loopback_rules()), clock=clock, **kw)


async def deliveries(store: Store, subject: str) -> list[dict[str, Any]]:
    return await outbox.recent(store, subject, 100)


# --- state changes ---------------------------------------------------------------------------


async def test_stale_offline_online_each_reach_the_receiver_once_signed(
    store: Store, receivers: Any
) -> None:
    clock = Clock()
    receiver = await receivers()
    checker = Checker(
        store, CheckerSettings(stale_after=15, offline_after=60), node_id="n1", clock=clock
    )
    sender = dispatcher(store, alerts(hook(receiver, secret=SECRET)), clock, node_id="d1")
    await register_services(store, [TaskService(id="svc-1", url="http://h/1")], clock.now)
    await record_heartbeats(store, {"svc-1": (1, clock.now)})
    await checker.check_once()  # unknown -> online: alerted too
    await sender.once()
    clock.advance(16)
    await checker.check_once()  # -> stale
    clock.advance(45)
    await checker.check_once()  # -> offline
    await sender.once()
    clock.advance(1)
    await record_heartbeats(store, {"svc-1": (2, clock.now)})
    await checker.check_once()  # 2 consecutive beats -> online
    await sender.once()
    await sender.once()  # nothing left: nothing sent again

    kinds = [(b["kind"], b["subject"], b["details"]["from"]) for b in receiver.bodies()]
    assert kinds == [
        ("service.online", "svc-1", "unknown"),
        ("service.stale", "svc-1", "online"),
        ("service.offline", "svc-1", "stale"),
        ("service.online", "svc-1", "offline"),
    ]
    first_headers, first_body = receiver.requests[1]
    assert verify(SECRET, first_headers[HEADER], first_body, now=time.time())
    assert not verify("another secret", first_headers[HEADER], first_body, now=time.time())
    assert not verify(SECRET, first_headers[HEADER], first_body + b" ", now=time.time())
    stale = receiver.bodies()[1]
    assert stale["title"] == "Service svc-1 is stale: no heartbeat"
    assert stale["at"] == (T0 + timedelta(seconds=16)).isoformat()
    assert first_headers["X-TaskDash-Event"] == "service.stale"
    assert first_headers["Content-Type"] == "application/json"
    shown = await deliveries(store, "svc-1")
    assert [d["state"] for d in shown] == ["delivered"] * 4
    assert shown[0]["attempt_log"][0]["code"] == 200


async def test_slack_format_escapes_what_an_outsider_named(store: Store, receivers: Any) -> None:
    clock = Clock()
    receiver = await receivers()
    sender = dispatcher(store, alerts(hook(receiver, format="slack")), clock, node_id="d1")
    await enqueue(
        store,
        kind="service.offline",
        subject="<!channel> & co",
        details={"reason": "no heartbeat"},
        key="k1",
        at=to_ms(clock.now),
    )
    await sender.once()
    (body,) = receiver.bodies()
    assert body["text"] == ":red_circle: Service &lt;!channel&gt; &amp; co is offline: no heartbeat"
    assert "<!channel>" not in json.dumps(body)
    assert body["blocks"][0]["text"]["text"] == body["text"]


async def test_a_webhook_gets_only_the_kinds_it_asked_for(store: Store, receivers: Any) -> None:
    clock = Clock()
    everything, offline_only = await receivers(), await receivers()
    settings = alerts(hook(everything, "all"), hook(offline_only, "off", events=["*.offline"]))
    sender = dispatcher(store, settings, clock, node_id="d1")
    for i, kind in enumerate(["service.stale", "service.offline", "periodic.task_dead"]):
        await enqueue(store, kind=kind, subject="s", details={}, key=f"k{i}", at=to_ms(clock.now))
    await sender.once()
    assert sorted(b["kind"] for b in everything.bodies()) == [
        "periodic.task_dead",
        "service.offline",
        "service.stale",
    ]
    assert [b["kind"] for b in offline_only.bodies()] == ["service.offline"]


async def test_an_event_enqueued_twice_is_sent_once(store: Store, receivers: Any) -> None:
    clock = Clock()
    receiver = await receivers()
    sender = dispatcher(store, alerts(hook(receiver)), clock, node_id="d1")
    first = await enqueue(store, kind="service.stale", subject="s", details={}, key="same")
    again = await enqueue(store, kind="service.stale", subject="s", details={}, key="same")
    assert (first, again) == (True, False)
    clock.now = datetime.now(UTC)
    await sender.once()
    await sender.once()
    assert len(receiver.requests) == 1


async def test_old_state_changes_are_not_alerted(store: Store, receivers: Any) -> None:
    """A store with history, alerts switched on: the past is not sent."""
    clock = Clock()
    receiver = await receivers()
    checker = Checker(store, CheckerSettings(), node_id="n1", clock=clock)
    await register_services(store, [TaskService(id="old", url="http://h/1")], clock.now)
    await record_heartbeats(store, {"old": (1, clock.now)})
    await checker.check_once()
    clock.advance(3601)
    await checker.check_once()  # online -> stale now: news
    sender = dispatcher(store, alerts(hook(receiver), max_event_age=3600), clock, node_id="d1")
    await sender.once()
    assert [b["kind"] for b in receiver.bodies()] == ["service.stale"]
    marks = {d["to"]: d["alerted"] async for d in store.service_events.find({})}
    assert marks == {"online": "too_old", "stale": "queued"}


# --- retries and timeouts --------------------------------------------------------------------


async def test_500s_are_retried_with_backoff_then_delivered(store: Store, receivers: Any) -> None:
    clock = Clock()
    receiver = await receivers(500, 503)
    settings = alerts(hook(receiver), backoff_initial=1.0, retries=5)
    sender = dispatcher(store, settings, clock, node_id="d1")
    await enqueue(store, kind="service.offline", subject="s", details={}, key="k", at=to_ms(T0))
    await sender.once()
    assert len(receiver.requests) == 1
    clock.advance(0.9)  # the first backoff (1 s) has not passed
    await sender.once()
    assert len(receiver.requests) == 1
    clock.advance(0.2)
    await sender.once()  # second attempt: 503, next in 2 s
    clock.advance(1.9)
    await sender.once()
    assert len(receiver.requests) == 2
    clock.advance(0.2)
    await sender.once()
    assert len(receiver.requests) == 3
    (shown,) = await deliveries(store, "s")
    assert shown["state"] == "delivered" and shown["attempts"] == 3
    log = [(a["attempt"], a["outcome"], a["code"]) for a in shown["attempt_log"]]
    assert log == [(1, "retry", 500), (2, "retry", 503), (3, "delivered", 200)]
    assert "receiver says no" in shown["attempt_log"][0]["error"]
    assert [h["X-TaskDash-Attempt"] for h, _ in receiver.requests] == ["1", "2", "3"]
    assert len({body for _, body in receiver.requests}) == 1  # the same body every time


async def test_retries_run_out_and_a_4xx_is_not_retried(store: Store, receivers: Any) -> None:
    clock = Clock()
    failing, refusing = await receivers(500, 500, 500), await receivers(404)
    settings = alerts(hook(failing, "a"), hook(refusing, "b"), retries=1, backoff_initial=1.0)
    sender = dispatcher(store, settings, clock, node_id="d1")
    await enqueue(store, kind="service.offline", subject="s", details={}, key="k", at=to_ms(T0))
    for _ in range(4):
        await sender.once()
        clock.advance(10)
    assert (len(failing.requests), len(refusing.requests)) == (2, 1)
    states = {d["webhook"]: (d["state"], d["last_code"]) for d in await deliveries(store, "s")}
    assert states == {"a": ("failed", 500), "b": ("failed", 404)}


async def test_a_receiver_that_hangs_times_out_and_is_retried(store: Store, receivers: Any) -> None:
    clock = Clock()
    receiver = await receivers("hang")
    settings = alerts(hook(receiver), request_timeout=0.3, connect_timeout=0.3)
    sender = dispatcher(store, settings, clock, node_id="d1")
    await enqueue(store, kind="service.offline", subject="s", details={}, key="k", at=to_ms(T0))
    await sender.once()
    (shown,) = await deliveries(store, "s")
    assert shown["state"] == "pending"
    (attempt,) = shown["attempt_log"]
    assert attempt["outcome"] == "retry" and attempt["code"] is None
    assert "timed out" in attempt["error"]
    clock.advance(1.1)
    await sender.once()
    (shown,) = await deliveries(store, "s")
    assert shown["state"] == "delivered"


# --- rate limit ------------------------------------------------------------------------------


async def test_a_flapping_service_gets_its_limit_then_one_summary(
    store: Store, receivers: Any
) -> None:
    clock = Clock()
    receiver = await receivers()
    settings = alerts(hook(receiver), rate_limit=3, rate_window=600)
    sender = dispatcher(store, settings, clock, node_id="d1")
    start = to_ms(T0) - to_ms(T0) % 600_000  # the start of a window
    clock.now = datetime.fromtimestamp(start / 1000 + 1, UTC)
    await enqueue(store, kind="service.stale", subject="steady", details={}, key="s0", at=start)
    for i in range(10):
        kind = "service.stale" if i % 2 == 0 else "service.online"
        at = start + 1 + i
        await enqueue(store, kind=kind, subject="flappy", details={}, key=f"f{i}", at=at)
    await sender.once()
    sent = [(b["subject"], b["id"]) for b in receiver.bodies()]
    assert sent == [
        ("steady", "s0"),
        ("flappy", "f0"),
        ("flappy", "f1"),
        ("flappy", "f2"),
    ]
    clock.advance(598)  # the window has not ended: no summary yet
    await sender.once()
    assert len(receiver.requests) == 4
    clock.advance(2)
    await sender.once()
    await sender.once()
    summary = receiver.bodies()[-1]
    assert len(receiver.requests) == 5
    assert summary["kind"] == "alerts.suppressed" and summary["subject"] == "flappy"
    assert summary["details"]["suppressed"] == 7
    assert summary["title"].startswith("7 more alert(s) about flappy held back")
    states = Counter(d["state"] for d in await deliveries(store, "flappy"))
    assert states == {"delivered": 4, "suppressed": 7}  # 3 + the summary; 7 held back


# --- several daemons -------------------------------------------------------------------------


async def test_two_dispatchers_deliver_each_alert_exactly_once(
    store: Store, receivers: Any
) -> None:
    clock = Clock()
    receiver = await receivers()
    settings = alerts(hook(receiver), batch_size=7)
    pair = [dispatcher(store, settings, clock, node_id=f"d{i}") for i in range(2)]
    for i in range(40):
        await enqueue(store, kind="service.stale", subject=f"s{i}", details={}, key=f"k{i}")
    clock.now = datetime.now(UTC)
    for _ in range(8):
        await asyncio.gather(*(d.once() for d in pair))
    ids = Counter(b["id"] for b in receiver.bodies())
    assert ids == Counter({f"k{i}": 1 for i in range(40)})
    attempts = [a async for a in store["alert_attempts"].find({})]
    assert len(attempts) == 40


async def test_a_claim_left_by_a_dead_daemon_is_retaken_after_the_lease(
    store: Store, receivers: Any
) -> None:
    clock = Clock()
    receiver = await receivers()
    settings = alerts(hook(receiver), claim_lease=10.0)
    await enqueue(store, kind="service.stale", subject="s", details={}, key="k", at=to_ms(T0))
    now = to_ms(clock.now)
    await outbox.ensure_indexes(store)
    dead = dispatcher(store, settings, clock, node_id="dead")
    await dead.fan_out.once(now)
    assert len(await outbox.claim_deliveries(store, now, now + 10_000, 10, ["ops"])) == 1
    alive = dispatcher(store, settings, clock, node_id="alive")
    clock.advance(9.9)
    await alive.once()
    assert receiver.requests == []
    clock.advance(0.2)
    await alive.once()
    (shown,) = await deliveries(store, "s")
    assert (shown["state"], shown["attempts"]) == ("delivered", 2)  # the lost one counted


# --- SSRF rules ------------------------------------------------------------------------------


async def test_a_refused_address_is_never_contacted_and_the_refusal_recorded(
    store: Store, receivers: Any
) -> None:
    clock = Clock()
    receiver = await receivers()
    rules = Rules.from_settings(FetcherSettings(refused_cidrs=["127.0.0.0/8"]))
    sender = dispatcher(store, alerts(hook(receiver)), clock, node_id="d1", rules=rules)
    await enqueue(store, kind="service.offline", subject="s", details={}, key="k", at=to_ms(T0))
    await sender.once()
    clock.advance(100)
    await sender.once()
    assert receiver.requests == []
    (shown,) = await deliveries(store, "s")
    assert shown["state"] == "refused" and shown["attempts"] == 1
    assert "refused network 127.0.0.0/8" in shown["last_error"]
    assert shown["attempt_log"][0]["outcome"] == "refused"


async def test_a_name_resolving_to_a_refused_address_is_refused_too(
    store: Store, receivers: Any
) -> None:
    clock = Clock()
    receiver = await receivers()
    rules = Rules.from_settings(FetcherSettings(allowed_cidrs=["10.0.0.0/8"]))
    named = WebhookSettings(name="ops", url=f"http://localhost:{receiver.port}/hook")
    sender = dispatcher(store, alerts(named), clock, node_id="d1", rules=rules)
    await enqueue(store, kind="service.offline", subject="s", details={}, key="k", at=to_ms(T0))
    await sender.once()
    assert receiver.requests == []
    (shown,) = await deliveries(store, "s")
    assert shown["state"] == "refused" and "not in allowed_cidrs" in shown["last_error"]


async def test_a_redirect_is_not_followed(store: Store, receivers: Any) -> None:
    clock = Clock()
    receiver = await receivers(302)
    sender = dispatcher(store, alerts(hook(receiver)), clock, node_id="d1")
    await enqueue(store, kind="service.offline", subject="s", details={}, key="k", at=to_ms(T0))
    await sender.once()
    (shown,) = await deliveries(store, "s")
    assert shown["state"] == "failed" and "redirects are not followed" in shown["last_error"]
    assert len(receiver.requests) == 1


async def test_a_delivery_claimed_meanwhile_is_not_claimed_again(store: Store) -> None:
    """Two daemons read the same due ids; the one that claims second gets none of them."""
    clock = Clock()
    await enqueue(store, kind="service.stale", subject="s", details={}, key="k", at=to_ms(T0))
    await FanOut(store, alerts(WebhookSettings(name="ops", url="http://127.0.0.1:9/"))).once(
        to_ms(clock.now)
    )
    now = to_ms(clock.now)
    ids = ["k|ops"]
    first = await outbox.claim_ids(store, outbox.DELIVERIES, ids, now=now, until=now + 10, inc={})
    second = await outbox.claim_ids(store, outbox.DELIVERIES, ids, now=now, until=now + 10, inc={})
    assert [d["_id"] for d in first] == ids and second == []
