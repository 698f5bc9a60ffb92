"""The demo's supervisor: starts the parts in dependency order, stops them in reverse.

Store (nx-27017, and the admin account in it), then ``taskdash run`` (web, embedded broker,
readers, checker, fetcher, TCP), then ``taskdash periodic``, then the simulated services, the
worker and the TCP tasks; the banner once all of it runs. SIGINT and SIGTERM only set an
event; the stop then takes every part down in reverse, children reaped, and the exit code is 0.
A child that dies on its own ends the demo with exit code 1, naming its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
import tornado.httpclient

from taskdash.demo import config
from taskdash.demo.config import HOST, Ports
from taskdash.demo.processes import Child, ChildFailed
from taskdash.demo.services import SimulatedService, simulated
from taskdash.demo.tcp_tasks import TcpTasks
from taskdash.demo.timing import Timings
from taskdash.demo.worker import QUEUE, Worker
from taskdash.errors import TaskDashError
from taskdash.settings import Settings
from taskdash.store import Store, users
from taskdash.store.embedded import EmbeddedMongo

log = structlog.get_logger("taskdash.demo.runner")

ADMIN = users.FIRST_ADMIN
#: how long a child may take to answer /readyz after its start (a loaded machine is slow)
READY_TIMEOUT = 90.0
#: beyond the children's own shutdown budget before they are killed
STOP_MARGIN = 3.0


class DemoError(TaskDashError):
    """The demo cannot start (a port taken, a child that did not come up)."""


@dataclass(frozen=True)
class Options:
    """What ``taskdash demo``'s arguments ask for."""

    data_dir: Path | None = None  # None: a temporary directory, removed at the end
    web_port: int = 0  # 0: a free port
    speed: float = 1.0
    duration: float | None = None  # None: until a signal


Stop = Callable[[], Awaitable[object]]


def port_free(port: int) -> bool:
    """Whether ``port`` can be bound on :data:`HOST` right now."""
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


async def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 (no answer at all: False)."""
    client = tornado.httpclient.AsyncHTTPClient()
    try:
        response = await client.fetch(url, raise_error=False, request_timeout=5.0)
    except (OSError, tornado.httpclient.HTTPClientError):  # refused; no answer in time (599)
        return False
    return response.code == 200


async def ensure_admin(settings: Settings) -> str:
    """The admin account with a new random password (set anew on a reused data dir)."""
    password = secrets.token_urlsafe(12)
    store = Store(settings.mongodb.uri, settings.mongodb.database, server_selection_timeout=20)
    try:
        try:
            await users.add_user(store, ADMIN, password, role="admin")
        except users.UserExists:
            await users.set_password(store, ADMIN, password)
    finally:
        await store.close()
    return password


class Demo:
    """Everything the demo runs, and the order to stop it in."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.timings = Timings.at_speed(options.speed)
        self.stop_requested = asyncio.Event()
        self.data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="taskdash-demo-"))
        self.children: list[Child] = []
        self.services: list[SimulatedService] = []
        self.mongo: EmbeddedMongo | None = None
        self._stops: list[tuple[str, Stop]] = []

    def _started(self, name: str, stop: Stop) -> None:
        """Register ``stop`` before the part starts: a start cut short is still undone."""
        self._stops.append((name, stop))

    # --- start ---------------------------------------------------------------------------

    def _prepare(self) -> tuple[Path, Settings, Ports]:
        if self.options.web_port and not port_free(self.options.web_port):
            raise DemoError(f"--web-port {self.options.web_port} is already in use on {HOST}")
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        ports = Ports.pick(self.options.web_port)
        path, settings = config.write(self.data_dir, ports, self.timings, self.options.speed)
        return path, settings, ports

    async def _start_store(self, settings: Settings, ports: Ports) -> str:
        mongo = self.mongo = EmbeddedMongo(
            host=HOST, port=ports.mongodb, data_dir=self.data_dir / "mongodb"
        )
        self._started("nx-27017", mongo.stop)
        await mongo.start()
        return await ensure_admin(settings)

    async def _start_child(
        self, name: str, args: list[str], ready_url: str, settings: Settings
    ) -> Child:
        child = Child(name, args, self.data_dir / "logs" / f"{name}.log")
        self.children.append(child)

        async def stop() -> None:
            await child.stop(settings.daemon.shutdown_timeout + STOP_MARGIN)

        self._started(name, stop)
        await child.start()
        deadline = asyncio.get_running_loop().time() + READY_TIMEOUT
        while not await http_ok(ready_url):
            child.check_alive()
            if asyncio.get_running_loop().time() > deadline:
                raise DemoError(
                    f"{name} not ready within {READY_TIMEOUT:g} s (see {child.log_path})"
                )
            await asyncio.sleep(0.2)
        return child

    async def _start_services(self, settings: Settings) -> Worker:
        for service in simulated(settings.nsq, self.timings):
            self.services.append(service)
            self._started(service.id, service.stop)
            await service.start()
        worker = Worker(settings, self.timings, self.data_dir)
        self.services.append(worker.service)
        self._started("worker", worker.stop)
        await worker.start()
        return worker

    async def start(self) -> str:
        """Start everything; returns the banner to print."""
        path, settings, ports = self._prepare()
        password = await self._start_store(settings, ports)
        cfg = ["--config", str(path)]
        web = f"http://{HOST}:{ports.web}"
        await self._start_child("daemon", ["run", *cfg], f"{web}/readyz", settings)
        periodic = f"http://{HOST}:{ports.periodic_http}"
        await self._start_child("periodic", ["periodic", *cfg], f"{periodic}/readyz", settings)
        await self._start_services(settings)
        tcp = TcpTasks(ports.tcp, self.timings.tcp_update_every)
        self._started("tcp_tasks", tcp.stop)
        await tcp.start()
        return self._banner(web, password, ports, path)

    def _banner(self, web: str, password: str, ports: Ports, path: Path) -> str:
        kept = "kept" if self.options.data_dir else "removed at exit"
        pids = [f"{c.name} {c.pid}" for c in self.children]
        if self.mongo is not None and self.mongo.proc is not None:
            pids.insert(0, f"nx-27017 {self.mongo.proc.pid}")
        services = f"\n{'':16}".join(f"{s.id:<13} {s.description}" for s in self.services)
        return f"""
TaskDash demo is running; Ctrl-C stops all of it.

  Dashboard     {web}/
  Login         {ADMIN} / {password}

  Services      (each a real HTTP server and NSQ publisher on {HOST})
                {services}
  Periodic      gRPC {HOST}:{ports.periodic_grpc}, HTTP http://{HOST}:{ports.periodic_http}
                (queue {QUEUE}: a schedule every {self.timings.schedule_every:.3g} s)
  TCP           {HOST}:{ports.tcp} (tasks demo-tcp-sync, demo-tcp-backup, daily windows in UTC)
  NSQ           nsqd http://{HOST}:{ports.nsqd_http}
  Config        {path} (loopback allowed to the fetcher there)
  Data, logs    {self.data_dir} ({kept})
  Processes     {", ".join(pids)}
"""

    # --- run and stop --------------------------------------------------------------------

    async def _watch(self) -> None:
        """Until a stop request or the duration; ChildFailed if a child dies meanwhile."""
        loop = asyncio.get_running_loop()
        until = None if self.options.duration is None else loop.time() + self.options.duration
        while not self.stop_requested.is_set():
            for child in self.children:
                child.check_alive()
            if until is not None and loop.time() >= until:
                log.info("demo_duration_reached", duration=self.options.duration)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), 0.5)

    async def stop(self) -> None:
        """Stop every part in reverse order; each at most once. Idempotent."""
        while self._stops:
            name, stop = self._stops.pop()
            try:
                await stop()
            except Exception as exc:  # keep stopping the others
                log.error("demo_stop_failed", part=name, error=str(exc))
        if self.options.data_dir is None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    async def _run_start(self) -> str | None:
        """The banner, or None when a stop request came first."""
        starting = asyncio.create_task(self.start(), name="demo_start")
        waiting = asyncio.create_task(self.stop_requested.wait())
        await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if starting.done():
            return starting.result()
        starting.cancel()
        await asyncio.wait({starting})
        return None

    async def run(self) -> int:
        """Start, print the banner, run until a signal (or the duration), stop: the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop_requested.set)
        try:
            banner = await self._run_start()
            if banner is not None:
                print(banner, flush=True)
                log.info("demo_ready", data_dir=str(self.data_dir))
                await self._watch()
        except (TaskDashError, OSError) as exc:
            failed = isinstance(exc, ChildFailed) or not self.stop_requested.is_set()
            log.error("demo_failed", error=str(exc))
            print(f"taskdash: demo: {exc}", file=sys.stderr, flush=True)
            await self.stop()
            return 1 if failed else 0
        log.info("demo_stopping")
        await self.stop()
        log.info("demo_stopped")
        return 0
