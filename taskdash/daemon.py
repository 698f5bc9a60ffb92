"""The daemon: starts the parts in dependency order, stops them in reverse.

A signal handler only sets an event; shutdown then stops intake, drains within
``[daemon] shutdown_timeout`` and cancels whatever is left, telling systemd STOPPING.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog
import tornado.httpserver
import tornado.netutil

from taskdash.errors import TaskDashError
from taskdash.health import Health
from taskdash.logs import ReopenableFileHandler
from taskdash.settings import Settings
from taskdash.store import Store
from taskdash.store.embedded import EmbeddedMongo
from taskdash.store.monitor import StoreMonitor
from taskdash.systemd import Notifier
from taskdash.web.app import make_app

log = structlog.get_logger("taskdash.daemon")

Stopper = Callable[[], Awaitable[None]]


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
        self.web_port: int | None = None

    def _started(self, name: str, stop: Stopper) -> None:
        self._stoppers.append((name, stop))
        log.info("component_started", component=name)

    async def _start_store(self) -> Store:
        cfg = self.settings.mongodb
        uri = cfg.uri
        if not uri:
            db_file = self.settings.data_path("mongodb", "taskdash.db")
            if cfg.embedded_db_file:
                db_file = type(db_file)(cfg.embedded_db_file)
            embedded = EmbeddedMongo(
                host=cfg.embedded_host, port=cfg.embedded_port, db_file=db_file.absolute()
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

    async def start(self) -> None:
        """Start every part; on failure, stop what already started and re-raise."""
        try:
            self.store = await self._start_store()
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
