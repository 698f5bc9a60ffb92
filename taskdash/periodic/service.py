"""One ``taskdash periodic`` process: store, gRPC, HTTP, the schedules' firer, then the announcer;
stopped in reverse.

It runs on other machines than the daemon, so it is its own process with its own unit, but it
has the daemon's shape: the start/stop bookkeeping, signals, systemd READY/STOPPING and the
bounded shutdown come from :class:`~taskdash.daemon.Daemon`; only :meth:`start` differs.
"""

from __future__ import annotations

import asyncio
import socket

import structlog

from taskdash.alerts.periodic import AlertingPeriodicStore
from taskdash.daemon import Daemon, nsqd_http_address
from taskdash.models import TaskService
from taskdash.nsq.announce import Announcer
from taskdash.periodic.firing import Firer, StoreClock
from taskdash.periodic.grpc import GrpcServer
from taskdash.periodic.http import make_app
from taskdash.periodic.leasing import Leasing
from taskdash.periodic.schedules import Schedules
from taskdash.periodic.schedules_http import routes
from taskdash.settings import PeriodicSettings
from taskdash.store.schedules import ScheduleStore

log = structlog.get_logger("taskdash.periodic.service")


def advertised_base(cfg: PeriodicSettings, port: int) -> str:
    """Where TaskDash reaches this node's HTTP API: configured, else its own host and port."""
    if cfg.advertise_url:
        return cfg.advertise_url.rstrip("/")
    host = cfg.http_host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://{host}:{port}"


class PeriodicService(Daemon):
    """The periodic task service as a process (``taskdash periodic``)."""

    grpc_port: int | None = None

    @property
    def node_name(self) -> str:
        return self.settings.periodic.node_id or self.node_id

    async def start(self) -> None:
        """Store, then gRPC and HTTP on the same rules, then (with NSQ) the announcer.

        On failure :meth:`Daemon.run` stops what started, within the shutdown budget.
        """
        store = await self._start_store()
        self.store = store
        cfg = self.settings.periodic
        # dead tasks raise alerts, sent by the daemons that list webhooks (docs/alerts.md)
        tasks = AlertingPeriodicStore(store, keep_days=self.settings.alerts.keep_days)
        leasing = Leasing(tasks, cfg, node_id=self.node_name)
        schedule_store = ScheduleStore(store)
        clock = StoreClock(schedule_store.server_time)
        firer = Firer(leasing, schedule_store, clock=clock, sync=clock.sync)
        schedules = Schedules(leasing, schedule_store, clock=clock, changed=firer.poke)
        if self.metrics is not None:
            self.metrics.watch_leasing(leasing, tasks)
            self.metrics.watch_firer(firer)
        await self._start_grpc(leasing, cfg)
        await self._start_http(leasing, cfg, schedules)
        await self._start_firer(leasing, firer)
        await self._start_announcer(cfg)
        log.info("periodic_ready", node_id=self.node_name, grpc_port=self.grpc_port)

    async def _start_grpc(self, leasing: Leasing, cfg: PeriodicSettings) -> None:
        server = GrpcServer(
            leasing,
            host=cfg.grpc_host,
            port=cfg.grpc_port,
            max_message=cfg.max_body_size,
            interceptors=[self.metrics.grpc()] if self.metrics is not None else [],
        )
        await server.start()
        self.grpc_port = server.port
        grace = self.settings.daemon.shutdown_timeout / 2

        async def stop() -> None:
            await server.stop(grace)

        self._started("grpc", stop)
        log.info("grpc_listening", host=cfg.grpc_host, port=server.port)

    async def _start_http(
        self, leasing: Leasing, cfg: PeriodicSettings, schedules: Schedules
    ) -> None:
        app = make_app(leasing, cfg, self.health, routes(schedules), metrics=self.metrics)
        self.web_port = self._serve_http(
            "http", app, "periodic.http_port", cfg.http_host, cfg.http_port,
            max_body_size=cfg.max_body_size, limit_setting="[periodic] max_body_size",
        )  # fmt: skip

    async def _start_firer(self, leasing: Leasing, firer: Firer) -> None:
        """Fire the schedules of the queues started here (``schedules`` in ``/readyz``)."""
        leasing.on_start = firer.poke
        await firer.start()
        self.health.add("schedules", firer.check)
        self._started("schedules", firer.stop)

    async def _start_announcer(self, cfg: PeriodicSettings) -> None:
        """With NSQ configured: register as a task service and heartbeat, like any other."""
        nsq = self.settings.nsq
        nsqd_http = nsqd_http_address(nsq)
        if not nsqd_http:
            log.info("announce_disabled", why="no [nsq] nsqd_http_address or nsqd_tcp_addresses")
            return
        assert self.web_port is not None
        service = TaskService(
            id=cfg.service_id,
            name="periodic task service",
            type="periodic",
            url=f"{advertised_base(cfg, self.web_port)}/metadata",
            description="TaskDash periodic task service (gRPC PeriodicTask + HTTP)",
        )
        announcer = Announcer(
            nsqd_http,
            service,
            every=cfg.announce_interval,
            service_topic=nsq.service_topic,
            heartbeat_topic=nsq.heartbeat_topic,
        )
        announcer.start()

        async def stop() -> None:
            await asyncio.to_thread(announcer.stop)

        self._started("announcer", stop)
        log.info("announcing", nsqd_http=nsqd_http, service_id=cfg.service_id, url=service.url)
