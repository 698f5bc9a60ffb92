"""The daemon: starts the parts in dependency order, stops them in reverse.

The HTTP server starts first, so ``/healthz`` answers from the first second (``/readyz`` says
503 until everything started). A signal handler only sets an event; shutdown then stops
intake and the parts in reverse order within ``[daemon] shutdown_timeout``, counted from the
stop signal. After the budget the embedded broker saves its unfinished messages first (a
synchronous step no deadline can cut short), child processes are killed, the rest is
cancelled and the process exits; a watchdog thread, armed at the signal on the same deadline,
ends the process a moment later whatever the event loop is doing (saving the broker itself if
the loop never got to it), so SIGTERM always ends TaskDash within the budget plus a second.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any

import structlog
import tornado.web

from taskdash.background import Background
from taskdash.checker import Checker
from taskdash.cookie_secret import cookie_secret
from taskdash.draining import DrainingHTTPServer
from taskdash.errors import StoreError, StoreUnavailable, TaskDashError
from taskdash.fetcher import Fetcher
from taskdash.health import Health
from taskdash.lifecycle import (
    ABORT_STEP,
    CANCEL_WAIT,
    HARD_EXIT_AFTER,
    Component,
    HardExit,
    Rescue,
    Stopper,
    bind_setting,
    broker_bind_error,
    on_reload_signal,
    run_rescue,
)
from taskdash.logs import ReopenableFileHandler
from taskdash.metrics import Metrics
from taskdash.nsq.publisher import StatusPublisher, https_context
from taskdash.nsq.readers import Ingestion
from taskdash.settings import NsqSettings, Settings
from taskdash.store import Store, users
from taskdash.store.embedded import EmbeddedMongo
from taskdash.store.monitor import StoreMonitor, probe_timeout
from taskdash.systemd import Notifier
from taskdash.watchdog import WatchdogPings
from taskdash.web.app import make_app, server_options
from taskdash.web.base import StoreGate
from taskdash.web.context import WebContext
from taskdash.web.pipeline import Pipeline
from taskdash.window_judge import WindowJudge

log = structlog.get_logger("taskdash.daemon")


def nsqd_http_address(cfg: NsqSettings) -> str:
    """Where to publish: configured, else the first nsqd's host on nsqd's default HTTP port.

    With ``tls`` the default is nsqd's HTTPS port (``--https-address``, 4152): an nsqd that
    requires TLS refuses its plain HTTP port.
    """
    if cfg.nsqd_http_address:
        return cfg.nsqd_http_address
    if cfg.nsqd_tcp_addresses:
        scheme, port = ("https", 4152) if cfg.tls else ("http", 4151)
        return f"{scheme}://{cfg.nsqd_tcp_addresses[0].rsplit(':', 1)[0]}:{port}"
    return ""


class Daemon:
    """Owns every long-lived part of one TaskDash process."""

    def __init__(
        self,
        settings: Settings,
        *,
        notifier: Notifier | None = None,
        log_file: ReopenableFileHandler | None = None,
        hard_exit: bool = True,
    ) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.log_file = log_file
        self.hard_exit = hard_exit
        self.health = Health()
        self.gate = StoreGate(request_timeout=settings.mongodb.server_selection_timeout)
        self.node_id = settings.daemon.node_name()
        self.stop_requested = asyncio.Event()
        self._components: list[Component] = []
        self._stopping_now: Component | None = None
        self._children: list[EmbeddedMongo] = []
        self._rescues: list[Rescue] = []  # kept after the stop: the watchdog reads it
        self._watchdog: HardExit | None = None
        self._deadline: float | None = None  # loop clock: the end of the shutdown budget
        self._deadline_wall = 0.0  # the same moment as a timestamp, for the logs
        self.store: Store | None = None
        self.monitor: StoreMonitor | None = None
        self.broker: Any = None
        self.checker: Checker | None = None
        self.web_port: int | None = None
        self.pipeline = Pipeline(node_id=self.node_id)  # the Pipeline page's view of the parts
        # /metrics (docs/metrics.md): this process's registry, fed by the parts as they start
        self.metrics = Metrics(settings.metrics) if settings.metrics.enabled else None

    def _started(
        self,
        name: str,
        stop: Stopper,
        abort: Stopper | None = None,
        rescue: Rescue | None = None,
    ) -> None:
        self._components.append(Component(name, stop, abort, rescue))
        if rescue is not None:
            self._rescues.append(rescue)
        log.info("component_started", component=name)

    async def _start_embedded_mongodb(self) -> EmbeddedMongo:
        """The supervised nx-27017 child, killed (not waited for) if the budget runs out."""
        cfg = self.settings.mongodb
        embedded = EmbeddedMongo(
            host=cfg.embedded_host,
            port=cfg.embedded_port,
            data_dir=self.settings.embedded_mongodb_dir().absolute(),
        )
        self._children.append(embedded)
        await embedded.start()

        async def kill() -> None:
            embedded.kill()
            await embedded.stop(timeout=ABORT_STEP / 2)  # reaps it

        self._started("embedded_mongodb", embedded.stop, kill)
        return embedded

    async def _start_store(self) -> Store:
        cfg = self.settings.mongodb
        embedded = None if cfg.uri else await self._start_embedded_mongodb()
        uri = embedded.uri if embedded is not None else cfg.uri
        store = Store(
            uri,
            cfg.database,
            server_selection_timeout=cfg.server_selection_timeout,
            history_ttl_days=self.settings.checker.history_ttl_days,
            window_rules=self.settings.tasks.window_rules(),
            share_reads=self.settings.web.share_reads,
        )

        async def close() -> None:
            self.gate.close()
            await store.close()

        self._started("store", close)
        monitor = StoreMonitor(
            store,
            interval=cfg.probe_interval,
            retry_initial=cfg.retry_initial,
            retry_max=cfg.retry_max,
            timeout=probe_timeout(
                interval=cfg.probe_interval, server_selection_timeout=cfg.server_selection_timeout
            ),
        )
        if embedded is not None:
            embedded.on_died = monitor.mark_down  # a dead child is an outage, known at once
        await monitor.start()
        self.monitor = monitor
        self.health.add("store", monitor.check)
        self.gate.attach(store, monitor)
        self._started("store_monitor", monitor.stop)
        if not await monitor.wait_ready(cfg.server_selection_timeout):
            log.warning("store_not_ready_at_start", note="continuing; retrying in the background")
        return store

    async def _start_first_admin(self, store: Store) -> None:
        """With no user at all, create ``admin`` as soon as the store is ready (docs/users.md).

        In the background, so a store that is down at start delays nothing; the password goes
        to stderr once, never to the log. Several daemons may race: one insert wins.
        """
        monitor = self.monitor
        assert monitor is not None
        retry = self.settings.mongodb.retry_initial

        async def once() -> None:
            while True:
                await monitor.until_ready()
                try:
                    password = await users.create_first_admin(store)
                except StoreUnavailable:
                    monitor.suspect()  # the next readiness is a new chance
                    await asyncio.sleep(retry)
                    continue
                except StoreError as exc:
                    log.error("initial_admin_failed", error=str(exc), hint=users.ADD_HINT)
                    return
                if password is None:
                    log.info("initial_admin_not_needed", why="users exist")
                else:
                    print(users.first_admin_notice(password), file=sys.stderr, flush=True)
                    log.warning("initial_admin_created", user=users.FIRST_ADMIN, hint=users.HINT)
                break
            try:  # sessions, tokens, login failures, audit (store/mongo.py ACCOUNT_INDEXES)
                await store.ensure_account_indexes()
            except StoreError as exc:
                log.error("account_indexes_failed", error=str(exc), note="retried at next start")

        task = Background("first_admin", once)
        await task.start()
        self._started("first_admin", task.stop)

    async def _start_web(self) -> None:
        """First of all: /healthz answers while the rest starts; a taken port fails at once."""
        cfg = self.settings.web
        secret = cookie_secret(self.settings)
        ctx = WebContext(self.settings, self.health, self.gate, cookie_secret=secret)
        ctx.extra["pipeline"] = self.pipeline
        if self.metrics is not None:
            ctx.extra["metrics"] = self.metrics
        app = make_app(ctx)
        self.web_port = self._serve_http(
            "web", app, "web.port", cfg.host, cfg.port, **server_options(cfg)
        )

    def _serve_http(
        self, name: str, app: tornado.web.Application, setting: str, host: str, port: int,
        **options: Any,
    ) -> int:  # fmt: skip
        """Serve ``app`` on ``host:port`` as component ``name``; returns the bound port.

        A taken port is one line naming ``setting``. Stopping answers the requests already read
        (within half the shutdown budget), then closes every connection; after the budget only
        the listener is closed.
        """
        sockets = bind_setting(setting, host, port)
        server = DrainingHTTPServer(app, **options)
        server.add_sockets(sockets)
        bound: int = sockets[0].getsockname()[1]

        async def stop() -> None:  # requests already read are answered first
            await server.drain(self.settings.daemon.shutdown_timeout / 2)

        async def abort() -> None:
            server.stop()

        self._started(name, stop, abort)
        log.info(f"{name}_listening", host=host, port=bound)
        return bound

    async def _start_nsq(self) -> tuple[list[str], list[str], str]:
        """The embedded broker when no NSQ is configured; returns (nsqd tcp, lookupd, nsqd http)."""
        cfg = self.settings.nsq
        if not cfg.embedded:
            return cfg.nsqd_tcp_addresses, cfg.lookupd_http_addresses, nsqd_http_address(cfg)
        from taskdash.nsq.broker import Broker
        from taskdash.nsq.broker.embedded import broker_kwargs

        broker = Broker(**broker_kwargs(cfg, self.settings.data_path("nsq").absolute()))
        try:
            await broker.start()
        except OSError as exc:
            raise broker_bind_error(exc, cfg) from None
        # after the budget (or from the watchdog) the broker still saves what is unfinished,
        # synchronously: a stop cut short half-way cannot keep it from saving
        self._started("embedded_nsqd", broker.stop, rescue=broker.save_now)
        self.broker = broker
        host = cfg.embedded_host
        http = f"http://{host}:{broker.http_port}"
        return [f"{host}:{broker.tcp_port}"], [], cfg.nsqd_http_address or http

    async def _start_ingestion(self, store: Store) -> None:
        """Status publisher, checker, then the readers (intake last, so nothing waits on us)."""
        nsqd, lookupd, nsqd_http = await self._start_nsq()
        self.pipeline.nsqd_http = [nsqd_http] if nsqd_http else []
        self.pipeline.lookupd_http = lookupd
        cfg = self.settings.nsq
        on_change = None
        if nsqd_http:
            publisher = StatusPublisher(
                store,
                nsqd_http=nsqd_http,
                topic=cfg.status_topic,
                tls=https_context(cfg, nsqd_http),
            )
            await publisher.start()
            self.health.add("status_publisher", publisher.check)
            self._started("status_publisher", publisher.stop)
            on_change = publisher.kick
        else:
            log.warning("status_publishing_disabled", why="set [nsq] nsqd_http_address")
        if self.settings.checker.enabled:
            self.checker = Checker(
                store,
                self.settings.checker,
                node_id=self.node_id,
                on_change=on_change,
                summary_threshold=self.settings.log.summary_threshold,
            )
            await self.checker.start()
            self.pipeline.checker = self.checker
            if self.metrics is not None:
                self.metrics.watch_checker(self.checker)
            self.health.add("checker", self.checker.check)
            self._started("checker", self.checker.stop)
        ingestion = Ingestion(
            store,
            cfg,
            node_id=self.node_id,
            log_summary_threshold=self.settings.log.summary_threshold,
            nsqd_tcp_addresses=nsqd,
            lookupd_http_addresses=lookupd,
        )
        for consumer in ingestion.consumers:
            await consumer.start()
            self.health.add(f"reader:{consumer.topic}", consumer.check)
            self._started(f"reader:{consumer.topic}", consumer.stop)
        self.pipeline.readers = list(ingestion.consumers)
        if self.metrics is not None:
            self.metrics.watch_readers(ingestion.consumers)
            self.metrics.watch_services(store)
            self.metrics.watch_reads(store)
        await self.pipeline.start()
        self._started("pipeline_rates", self.pipeline.stop)

    async def _start_fetcher(self, store: Store) -> None:
        """The metadata fetcher: services come from the readers, so it starts after them."""
        if not self.settings.fetcher.enabled:
            return
        fetcher = Fetcher(
            store,
            self.settings.fetcher,
            node_id=self.node_id,
            summary_threshold=self.settings.log.summary_threshold,
        )
        await fetcher.start()
        self.pipeline.fetcher = fetcher
        if self.metrics is not None:
            self.metrics.watch_fetcher(fetcher)
        self.health.add("fetcher", fetcher.check)
        self._started("fetcher", fetcher.stop)

    async def _start_window_judge(self, store: Store) -> None:
        """Daily windows opening and closing with no write (docs/windows.md)."""
        cfg = self.settings.tasks
        judge = WindowJudge(store, interval=cfg.window_check_interval, node_id=self.node_id)
        await judge.start()
        self.health.add("window_judge", judge.check)
        self._started("window_judge", judge.stop)

    async def _start_alerts(self, store: Store) -> None:
        """Webhooks for state changes and dead periodic tasks, under the fetcher's SSRF rules."""
        if not self.settings.alerts.webhooks:
            return
        from taskdash.alerts.dispatcher import Dispatcher
        from taskdash.fetcher.rules import Rules

        rules = Rules.from_settings(self.settings.fetcher)
        dispatcher = Dispatcher(store, self.settings.alerts, rules, node_id=self.node_id)
        if self.metrics is not None:
            self.metrics.watch_alerts(dispatcher, store)
        await dispatcher.start()
        self.health.add("alerts", dispatcher.check)
        self._started("alerts", dispatcher.stop)

    async def _start_tcp(self, store: Store) -> None:
        """The tcpx interface: it only needs the store. Started last, it is stopped first and
        drains within half the shutdown budget, so the parts stopped after it keep the rest."""
        if not self.settings.tcp.enabled:
            return
        from taskdash.tcp.server import TcpServer

        drain = self.settings.daemon.shutdown_timeout / 2
        server = TcpServer(store, self.settings.tcp, drain_timeout=drain)
        await server.start()
        if self.metrics is not None:
            self.metrics.watch_tcp(server)
        self.health.add("tcp", server.check)
        self._started("tcp", server.stop)

    async def start(self) -> None:
        """Start every part (web first, intake last); on failure the caller stops what started.

        Never the bounded stop here: once the budget is spent it cancels every task but its
        own, and inside the start task that would cancel :meth:`run`.
        """
        await self._start_web()
        self.store = await self._start_store()
        await self._start_first_admin(self.store)
        await self._start_ingestion(self.store)
        await self._start_fetcher(self.store)
        await self._start_window_judge(self.store)
        await self._start_alerts(self.store)
        await self._start_tcp(self.store)

    async def stop(self) -> None:
        """Stop the parts in reverse order, each at most once. Idempotent."""
        while self._components:
            component = self._stopping_now = self._components.pop()
            try:
                await component.stop()
            except Exception:
                log.exception("component_stop_failed", component=component.name)
            else:
                log.info("component_stopped", component=component.name)
            finally:
                self._stopping_now = None

    def _begin_stop(self) -> float:
        """The one deadline (loop clock) for the budget and the watchdog, from the first request.

        Taken at the stop signal (or when a failed start begins its stop), so nothing done
        before the bounded stop runs (a start being cancelled) can push the emergency steps
        past the watchdog.
        """
        if self._deadline is not None:
            return self._deadline
        budget = self.settings.daemon.shutdown_timeout
        self._deadline = asyncio.get_running_loop().time() + budget
        self._deadline_wall = round(time.time() + budget, 6)
        if self.hard_exit:
            self._watchdog = HardExit(
                budget + HARD_EXIT_AFTER, self._kill_children, rescue=self._rescues
            )
            self._watchdog.start()
        log.info(
            "shutdown_deadline",
            deadline=self._deadline_wall,
            budget=budget,
            watchdog_after=HARD_EXIT_AFTER if self.hard_exit else None,
        )
        return self._deadline

    def _remaining(self) -> float:
        """Seconds left of the budget (0 once spent); starts the budget if not started."""
        return max(self._begin_stop() - asyncio.get_running_loop().time(), 0.0)

    async def _bounded_stop(self, exit_code: int = 0) -> None:
        """:meth:`stop` within the budget; after it, rescue, abort, cancel (see module doc)."""
        stopping = asyncio.create_task(self.stop(), name="daemon_stop")
        done, _ = await asyncio.wait({stopping}, timeout=self._remaining())
        if stopping in done:
            return
        left = [c for c in (self._stopping_now, *reversed(self._components)) if c is not None]
        self._components.clear()  # the stop task ends with the component it is in
        log.error(
            "shutdown_timed_out",
            timeout=self.settings.daemon.shutdown_timeout,
            deadline=self._deadline_wall,
            left=[c.name for c in left],
        )
        stopping.cancel()
        run_rescue(self._rescues)  # synchronous: nothing can cancel the broker's save
        deadline = asyncio.get_running_loop().time() + ABORT_STEP
        for component in left:
            await self._abort(component, deadline)
        self._kill_children()
        await self._cancel_the_rest(exit_code)

    async def _cancel_the_rest(self, exit_code: int) -> None:
        """Cancel every other task; exit at once if some will not end (they were given up)."""
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        for task in rest:
            task.cancel()
        if rest:
            await asyncio.wait(rest, timeout=CANCEL_WAIT)
        stuck = [t for t in rest if not t.done()]
        if not stuck:
            return
        log.warning(
            "tasks_abandoned",
            count=len(stuck),
            tasks=sorted({t.get_name() for t in stuck})[:10],
        )
        if self.hard_exit:
            log.info("daemon_stopped", forced=True, exit_code=exit_code)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(exit_code)

    async def _abort(self, component: Component, deadline: float) -> None:
        """The component's emergency step, if any; all of them share one short deadline."""
        if component.abort is None:
            return
        task = asyncio.create_task(component.abort(), name=f"abort:{component.name}")
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.05)
        done, _ = await asyncio.wait({task}, timeout=remaining)
        if task not in done:
            task.cancel()
            log.error("component_abort_timed_out", component=component.name)
        elif task.exception() is not None:
            error = str(task.exception())
            log.error("component_abort_failed", component=component.name, error=error)
        else:
            log.info("component_aborted", component=component.name)

    def _kill_children(self) -> None:
        """SIGKILL every child process still there (safe from the watchdog thread)."""
        for child in self._children:
            try:
                child.kill()
            except Exception as exc:  # a last resort must not stop at the first problem
                log.error("child_kill_failed", error=str(exc))

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        # always handled: SIGHUP's default action would end the daemon (status 129)
        loop.add_signal_handler(signal.SIGHUP, on_reload_signal, self.log_file)

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        log.info("stop_requested", signal=sig.name)
        # from the signal on, whatever happens (even during the start): budget + 1 s
        self._begin_stop()
        self.stop_requested.set()

    async def _start_watchdog_pings(self) -> None:
        """``WATCHDOG=1`` from the loop, before anything else starts and stopped last."""
        pings = WatchdogPings(self.notifier)
        if pings.enabled:
            await pings.start()
            self._started("systemd_watchdog", pings.stop)

    async def _run_start(self) -> bool:
        """Start, unless a stop request comes first; False if the start failed or was cut short."""
        starting = asyncio.create_task(self.start(), name="daemon_start")
        stop = asyncio.create_task(self.stop_requested.wait())
        await asyncio.wait({starting, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not starting.done():
            starting.cancel()  # what started is stopped by the shutdown that follows
            # within the budget, which runs from the signal
            await asyncio.wait({starting}, timeout=min(CANCEL_WAIT, self._remaining()))
            return False
        exc = starting.exception()
        if isinstance(exc, TaskDashError | OSError):
            log.error("start_failed", error=str(exc))
            return False
        if exc is not None:
            raise exc
        return True

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit code.

        Every stop, a failed start's included, is bounded here in this task: the emergency
        path cancels all other tasks, and this one must live to return the exit code.
        """
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        await self._start_watchdog_pings()
        try:
            started = await self._run_start()
        except Exception:
            await self._bounded_stop(exit_code=1)  # a bug: stop what started, then show it
            raise
        if started:
            self.health.set_phase("running")
            self.notifier.ready()
            log.info("daemon_ready", node_id=self.node_id, web_port=self.web_port)
            await self.stop_requested.wait()
        elif not self.stop_requested.is_set():
            await self._bounded_stop(exit_code=1)  # start_failed is logged: stop what started
            return 1
        self.health.set_phase("stopping")
        self.notifier.stopping()
        await self._bounded_stop()
        log.info("daemon_stopped")
        return 0
