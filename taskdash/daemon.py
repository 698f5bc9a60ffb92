"""The daemon: starts the parts in dependency order, stops them in reverse.

A signal handler only sets an event; shutdown then stops intake, drains within
``[daemon] shutdown_timeout`` and cancels whatever is left, telling systemd STOPPING.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import tornado.httpserver
import tornado.netutil

from taskdash.checker import Checker
from taskdash.errors import TaskDashError
from taskdash.fetcher import Fetcher
from taskdash.health import Health
from taskdash.logs import ReopenableFileHandler
from taskdash.nsq.publisher import StatusPublisher
from taskdash.nsq.readers import Ingestion
from taskdash.settings import NsqSettings, Settings
from taskdash.store import Store
from taskdash.store.embedded import EmbeddedMongo
from taskdash.store.monitor import StoreMonitor
from taskdash.systemd import Notifier
from taskdash.web.app import make_app

log = structlog.get_logger("taskdash.daemon")

Stopper = Callable[[], Awaitable[None]]


def nsqd_http_address(cfg: NsqSettings) -> str:
    """Where to publish: configured, else the first nsqd's host on nsqd's default HTTP port."""
    if cfg.nsqd_http_address:
        return cfg.nsqd_http_address
    if cfg.nsqd_tcp_addresses:
        return f"http://{cfg.nsqd_tcp_addresses[0].rsplit(':', 1)[0]}:4151"
    return ""


class Daemon:
    """Owns every long-lived part of one TaskDash process."""

    def __init__(
        self,
        settings: Settings,
        *,
        notifier: Notifier | None = None,
        log_file: ReopenableFileHandler | None = None,
    ) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.log_file = log_file
        self.health = Health()
        self.node_id = settings.daemon.node_name()
        self.stop_requested = asyncio.Event()
        self._stoppers: list[tuple[str, Stopper]] = []
        self.store: Store | None = None
        self.broker: Any = None
        self.checker: Checker | None = None
        self.web_port: int | None = None

    def _started(self, name: str, stop: Stopper) -> None:
        self._stoppers.append((name, stop))
        log.info("component_started", component=name)

    async def _start_store(self) -> Store:
        cfg = self.settings.mongodb
        uri = cfg.uri
        if not uri:
            data_dir = self.settings.data_path("mongodb")
            if cfg.embedded_data_dir:
                data_dir = type(data_dir)(cfg.embedded_data_dir)
            embedded = EmbeddedMongo(
                host=cfg.embedded_host, port=cfg.embedded_port, data_dir=data_dir.absolute()
            )
            await embedded.start()
            self._started("embedded_mongodb", embedded.stop)
            uri = embedded.uri
        store = Store(
            uri,
            cfg.database,
            server_selection_timeout=cfg.server_selection_timeout,
            history_ttl_days=self.settings.checker.history_ttl_days,
        )
        self._started("store", store.close)
        monitor = StoreMonitor(
            store,
            interval=cfg.probe_interval,
            retry_initial=cfg.retry_initial,
            retry_max=cfg.retry_max,
        )
        await monitor.start()
        self.health.add("store", monitor.check)
        self._started("store_monitor", monitor.stop)
        if not await monitor.wait_ready(cfg.server_selection_timeout):
            log.warning("store_not_ready_at_start", note="continuing; retrying in the background")
        return store

    async def _start_web(self, store: Store) -> None:
        cfg = self.settings.web
        app = make_app(health=self.health, store=store)
        server = tornado.httpserver.HTTPServer(app, xheaders=False)
        sockets = tornado.netutil.bind_sockets(cfg.port, cfg.host)
        server.add_sockets(sockets)
        self.web_port = sockets[0].getsockname()[1]

        async def stop() -> None:
            server.stop()
            await server.close_all_connections()

        self._started("web", stop)
        log.info("web_listening", host=cfg.host, port=self.web_port)

    async def _start_nsq(self) -> tuple[list[str], list[str], str]:
        """The embedded broker when no NSQ is configured; returns (nsqd tcp, lookupd, nsqd http)."""
        cfg = self.settings.nsq
        if not cfg.embedded:
            return cfg.nsqd_tcp_addresses, cfg.lookupd_http_addresses, nsqd_http_address(cfg)
        from taskdash.nsq.broker import Broker

        broker = Broker(
            host=cfg.embedded_host,
            tcp_port=cfg.embedded_tcp_port,
            http_port=cfg.embedded_http_port,
            lookupd_http_port=cfg.embedded_lookupd_port,
            data_dir=self.settings.data_path("nsq").absolute(),
            broadcast_address=cfg.embedded_host,
        )
        await broker.start()
        self._started("embedded_nsqd", broker.stop)
        self.broker = broker
        host = cfg.embedded_host
        http = f"http://{host}:{broker.http_port}"
        return [f"{host}:{broker.tcp_port}"], [], cfg.nsqd_http_address or http

    async def _start_ingestion(self, store: Store) -> None:
        """Status publisher, checker, then the readers (intake last, so nothing waits on us)."""
        nsqd, lookupd, nsqd_http = await self._start_nsq()
        cfg = self.settings.nsq
        on_change = None
        if nsqd_http:
            publisher = StatusPublisher(store, nsqd_http=nsqd_http, topic=cfg.status_topic)
            await publisher.start()
            self.health.add("status_publisher", publisher.check)
            self._started("status_publisher", publisher.stop)
            on_change = publisher.kick
        else:
            log.warning("status_publishing_disabled", why="set [nsq] nsqd_http_address")
        if self.settings.checker.enabled:
            self.checker = Checker(
                store, self.settings.checker, node_id=self.node_id, on_change=on_change
            )
            await self.checker.start()
            self.health.add("checker", self.checker.check)
            self._started("checker", self.checker.stop)
        ingestion = Ingestion(
            store,
            cfg,
            node_id=self.node_id,
            nsqd_tcp_addresses=nsqd,
            lookupd_http_addresses=lookupd,
        )
        for consumer in ingestion.consumers:
            await consumer.start()
            self.health.add(f"reader:{consumer.topic}", consumer.check)
            self._started(f"reader:{consumer.topic}", consumer.stop)

    async def _start_fetcher(self, store: Store) -> None:
        """The metadata fetcher: services come from the readers, so it starts after them."""
        if not self.settings.fetcher.enabled:
            return
        fetcher = Fetcher(store, self.settings.fetcher, node_id=self.node_id)
        await fetcher.start()
        self.health.add("fetcher", fetcher.check)
        self._started("fetcher", fetcher.stop)

    async def _start_tcp(self, store: Store) -> None:
        """The tcpx interface (issue 9): it only needs the store; it drains within half the
        shutdown budget, so the parts stopped after it keep the rest."""
        if not self.settings.tcp.enabled:
            return
        from taskdash.tcp.server import TcpServer

        drain = self.settings.daemon.shutdown_timeout / 2
        server = TcpServer(store, self.settings.tcp, drain_timeout=drain)
        await server.start()
        self.health.add("tcp", server.check)
        self._started("tcp", server.stop)

    async def start(self) -> None:
        """Start every part; on failure, stop what already started and re-raise."""
        try:
            self.store = await self._start_store()
            await self._start_ingestion(self.store)
            await self._start_fetcher(self.store)
            await self._start_tcp(self.store)
            await self._start_web(self.store)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the parts in reverse order, each at most once. Idempotent."""
        while self._stoppers:
            name, stop = self._stoppers.pop()
            try:
                await stop()
            except Exception:
                log.exception("component_stop_failed", component=name)
            else:
                log.info("component_stopped", component=name)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        if self.log_file is not None:
            loop.add_signal_handler(signal.SIGHUP, self.log_file.reopen)

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        log.info("stop_requested", signal=sig.name)
        self.stop_requested.set()

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit code."""
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        try:
            await self.start()
        except (TaskDashError, OSError) as exc:
            log.error("start_failed", error=str(exc))
            return 1
        self.notifier.ready()
        log.info("daemon_ready", node_id=self.node_id, web_port=self.web_port)
        await self.stop_requested.wait()
        self.notifier.stopping()
        timeout = self.settings.daemon.shutdown_timeout
        try:
            async with asyncio.timeout(timeout):
                await self.stop()
        except TimeoutError:
            log.error("shutdown_timed_out", timeout=timeout, left=[n for n, _ in self._stoppers])
            # Whatever is left still gets a last chance, so that no child process survives us.
            await self.stop()
        log.info("daemon_stopped")
        return 0
