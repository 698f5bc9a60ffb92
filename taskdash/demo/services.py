"""Simulated task services: each a real HTTP server (its metadata URL) and an NSQ publisher.

They speak docs/protocol.md as any service would: a TaskService registration, then HeartBeats,
both through nsqd's HTTP ``/pub`` (:func:`taskdash.nsq.announce.publish`), and a JSON list of
TaskMetaData at their URL. What makes each one show something on the dashboard is a
:class:`Behaviour`: when it is silent, how slowly it answers, when it dies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
import structlog
import tornado.escape
import tornado.httpserver
import tornado.netutil
import tornado.web

from taskdash.background import Background
from taskdash.demo.config import HOST
from taskdash.demo.timing import Timings
from taskdash.logs import RateLimitedLog
from taskdash.models import HeartBeat, TaskService
from taskdash.nsq.announce import PublishError, encode, publish
from taskdash.settings import NsqSettings

log = structlog.get_logger("taskdash.demo.services")

#: registered again this often, as docs/protocol.md advises (seconds, not scaled)
REREGISTER_EVERY = 60.0
STATUSES = ("pending", "running", "finish")

Listing = Callable[[float], list[dict[str, str]]]


@dataclass(frozen=True)
class Behaviour:
    """How a simulated service misbehaves, as pure functions of time and request count."""

    #: (up, down): beat for ``up`` seconds, then stay silent for ``down``, again and again
    flaps: tuple[float, float] | None = None
    #: seconds to answer the n-th metadata request (0 = at once)
    delays: tuple[float, ...] = ()
    #: seconds after its start at which it dies: no more beats, its URL closed
    dies_after: float | None = None

    def silent(self, elapsed: float) -> bool:
        """Whether it skips its heartbeat ``elapsed`` seconds after its start."""
        if self.flaps is None:
            return False
        up, down = self.flaps
        return elapsed % (up + down) >= up

    def delay(self, request_number: int) -> float:
        """How long the ``request_number``-th request (from 0) waits before its answer."""
        return self.delays[request_number % len(self.delays)] if self.delays else 0.0

    def dead(self, elapsed: float) -> bool:
        return self.dies_after is not None and elapsed >= self.dies_after


def cycling_tasks(prefix: str, names: tuple[str, ...], every: float) -> Listing:
    """Tasks whose status moves through :data:`STATUSES` every ``every`` seconds, plus a
    batch task replaced every ``5 * every`` seconds (the one before shows as gone)."""

    def listing(elapsed: float) -> list[dict[str, str]]:
        step = int(elapsed // every)
        tasks = [
            {
                "id": f"{prefix}-{name}",
                "name": name,
                "status": STATUSES[(step + i) % len(STATUSES)],
                "description": f"a task of {prefix}",
            }
            for i, name in enumerate(names)
        ]
        batch = step // 5
        tasks.append(
            {"id": f"{prefix}-batch-{batch}", "name": f"batch {batch}", "status": "running"}
        )
        return tasks

    return listing


class _Metadata(tornado.web.RequestHandler):
    """``GET /tasks``: the service's task list, after the behaviour's delay."""

    def initialize(self, service: SimulatedService) -> None:
        self.service = service

    async def get(self) -> None:
        number = self.service.request_count
        self.service.request_count += 1
        delay = self.service.behaviour.delay(number)
        if delay:
            await asyncio.sleep(delay)
        self.set_header("Content-Type", "application/json")
        self.finish(tornado.escape.json_encode(self.service.tasks()))


@dataclass
class SimulatedService:
    """One task service: its metadata server on a free loopback port, its heartbeat loop."""

    id: str
    kind: str
    description: str
    listing: Listing
    nsq: NsqSettings
    beat_every: float
    behaviour: Behaviour = field(default_factory=Behaviour)
    request_count: int = 0
    port: int | None = None
    _started_at: float = 0.0
    _server: tornado.httpserver.HTTPServer | None = None
    _loop: Background | None = None
    _session: requests.Session = field(default_factory=requests.Session)
    _publish_failed: RateLimitedLog = field(
        default_factory=lambda: RateLimitedLog(log, "demo_publish_failed")
    )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/tasks"

    def elapsed(self) -> float:
        return time.monotonic() - self._started_at

    def tasks(self) -> list[dict[str, str]]:
        return self.listing(self.elapsed())

    async def start(self) -> None:
        """Serve the metadata URL, then register and beat in the background."""
        self._started_at = time.monotonic()
        sockets = tornado.netutil.bind_sockets(0, HOST)
        self._server = tornado.httpserver.HTTPServer(
            tornado.web.Application(
                [(r"/tasks", _Metadata, {"service": self})], log_function=lambda _handler: None
            )
        )
        self._server.add_sockets(sockets)
        self.port = int(sockets[0].getsockname()[1])
        self._loop = Background(f"demo_service:{self.id}", self._run)
        await self._loop.start()
        log.info("demo_service_started", service_id=self.id, kind=self.kind, url=self.url)

    async def _publish(self, topic: str, body: bytes) -> bool:
        nsqd_http = self.nsq.nsqd_http_address
        try:
            await asyncio.to_thread(publish, nsqd_http, topic, body, session=self._session)
        except PublishError as exc:  # the broker away: said at most every 10 s per service
            self._publish_failed(service_id=self.id, error=str(exc))
            return False
        return True

    async def _register(self) -> bool:
        record = TaskService(
            id=self.id, name=self.id, type=self.kind, url=self.url, description=self.description
        )
        return await self._publish(self.nsq.service_topic, encode(record))

    async def _run(self) -> None:
        """Register, then beat every ``beat_every`` seconds as the behaviour says, until dead."""
        registered_at: float | None = None
        was_silent = False
        while not self.behaviour.dead(self.elapsed()):
            now = self.elapsed()
            if registered_at is None or now - registered_at >= REREGISTER_EVERY:
                registered_at = now if await self._register() else None
            silent = self.behaviour.silent(now)
            if silent != was_silent:
                log.info("demo_service_silent" if silent else "demo_service_beating_again",
                         service_id=self.id)  # fmt: skip
                was_silent = silent
            if not silent:
                await self._publish(self.nsq.heartbeat_topic, encode(HeartBeat(id=self.id)))
            await asyncio.sleep(self.beat_every)
        log.info("demo_service_died", service_id=self.id, after=round(self.elapsed(), 1))
        await self._close_server()

    async def _close_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            await server.close_all_connections()

    async def stop(self) -> None:
        """Stop beating and serving. Idempotent."""
        if self._loop is not None:
            await self._loop.stop()
        await self._close_server()
        self._session.close()


def simulated(nsq: NsqSettings, t: Timings) -> list[SimulatedService]:
    """The four services that only beat and list tasks (the fifth, the worker, leases too)."""
    every = t.fetch_interval * 2

    def make(name: str, description: str, behaviour: Behaviour, *tasks: str) -> SimulatedService:
        return SimulatedService(
            id=f"demo-{name}",
            kind=name,
            description=description,
            listing=cycling_tasks(f"demo-{name}", tasks, every),
            nsq=nsq,
            beat_every=t.beat_every,
            behaviour=behaviour,
        )

    return [
        make("steady", "beats steadily, answers at once", Behaviour(), "ingest", "report", "sync"),
        make(
            "flaky",
            f"beats {t.flaky_up:.3g} s, then is silent {t.flaky_down:.3g} s: stale, then back",
            Behaviour(flaps=(t.flaky_up, t.flaky_down)),
            "crawl",
            "index",
        ),
        make(
            "slow",
            f"answers its URL in {t.slow_delay:.3g} s, every third time too late",
            Behaviour(delays=(t.slow_delay, t.slow_delay, t.slow_stall)),
            "render",
            "encode",
        ),
        make(
            "doomed",
            f"dies {t.doomed_after:.3g} s after the start: stale, then offline",
            Behaviour(dies_after=t.doomed_after),
            "migrate",
            "vacuum",
        ),
    ]
