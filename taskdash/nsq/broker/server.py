"""The Broker: nsqd TCP + nsqd HTTP + nsqlookupd HTTP on the running loop, with persistence."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ssl
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import structlog
import tornado.httpserver
import tornado.netutil
import tornado.web

from taskdash.nsq.broker import persist
from taskdash.nsq.broker.http import HttpContext, nsqd_app
from taskdash.nsq.broker.lookupd import lookupd_app
from taskdash.nsq.broker.lookupd_peer import LookupdPeers
from taskdash.nsq.broker.options import Options, SecurityOptions
from taskdash.nsq.broker.registry import Registry
from taskdash.nsq.broker.security import Security
from taskdash.nsq.broker.tcp import TcpServer

log = structlog.get_logger("taskdash.nsq.broker")

#: how long an emergency save waits for one being written by the other thread (the loop's,
#: from the watchdog): longer than any normal save, since giving up loses what it holds
SAVE_LOCK_WAIT = 2.0


class _Phase(enum.Enum):
    """A broker runs once: new → running → stopped."""

    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class Broker:
    """A protocol-faithful stand-in for nsqd v1.3.0 (and nsqlookupd's read API)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        tcp_port: int = 4150,
        http_port: int = 4151,
        lookupd_http_port: int | None = 4161,
        data_dir: Path | None = None,
        broadcast_address: str = "127.0.0.1",
        max_msg_size: int = 1048576,
        max_body_size: int = 5242880,
        msg_timeout_ms: int = 60000,
        max_msg_timeout_ms: int = 900000,
        max_rdy_count: int = 2500,
        max_heartbeat_interval_ms: int = 60000,
        heartbeat_interval_ms: int = 30000,
        max_req_timeout_ms: int = 3600000,
        # --- disk-backed queues (used with a data_dir) ---
        mem_queue_size: int = 10000,
        max_bytes_per_file: int = 104857600,
        sync_every: int = 2500,
        sync_timeout_ms: int = 2000,
        # --- nsqlookupd registration (nsqd's --lookupd-tcp-address) ---
        lookupd_tcp_addresses: Sequence[str] = (),
        # TLS, compression, AUTH (nsqd's --tls-*, --deflate, --snappy, --auth-http-address)
        # and the HTTPS listener (--https-address); None = off
        security: SecurityOptions | None = None,
        https_port: int | None = None,
    ) -> None:
        self.host = host
        self.tcp_port = tcp_port
        self.http_port = http_port
        self.lookupd_http_port = lookupd_http_port
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.broadcast_address = broadcast_address
        self.options = Options(
            max_msg_size=max_msg_size,
            max_body_size=max_body_size,
            msg_timeout_ms=msg_timeout_ms,
            max_msg_timeout_ms=max_msg_timeout_ms,
            max_rdy_count=max_rdy_count,
            max_heartbeat_interval_ms=max_heartbeat_interval_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            max_req_timeout_ms=max_req_timeout_ms,
            mem_queue_size=mem_queue_size,
            max_bytes_per_file=max_bytes_per_file,
            sync_every=sync_every,
            sync_timeout_ms=sync_timeout_ms,
            max_deflate_level=(security or SecurityOptions()).max_deflate_level,
        )
        self.security = Security(security)
        self.https_port = https_port
        if https_port is not None and self.security.tls_context is None:
            raise ValueError("--https-address needs --tls-cert and --tls-key")
        self.registry = Registry(self.options, self.data_dir)
        self.lookupd_tcp_addresses = list(lookupd_tcp_addresses)
        self._lookupd_peers: LookupdPeers | None = None
        self._phase = _Phase.NEW
        self._tcp = TcpServer(self.registry, self.security)
        self._http_servers: list[tornado.httpserver.HTTPServer] = []
        # the save can come from the loop (stop, emergency step) or the watchdog thread
        self._save_lock = threading.Lock()
        self._can_save = False  # from a successful start until the first save
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        """True between a successful start and stop."""
        return self._phase is _Phase.RUNNING

    async def start(self) -> None:
        """Load persisted messages, then listen on all ports; afterwards the ports are real."""
        if self._phase is not _Phase.NEW:
            raise RuntimeError("a Broker starts once; build a new one to restart")
        self._phase = _Phase.RUNNING
        self._loop = asyncio.get_running_loop()
        try:
            self._load()
            await self._listen()
        except BaseException:
            await self._shutdown(persist_state=False)
            raise
        self._can_save = self.data_dir is not None
        self._register_with_lookupd()
        log.info(
            "broker_started",
            host=self.host,
            tcp_port=self.tcp_port,
            http_port=self.http_port,
            lookupd_http_port=self.lookupd_http_port,
            data_dir=str(self.data_dir) if self.data_dir else None,
        )

    async def stop(self) -> None:
        """Stop intake, close clients, persist every unfinished message; safe to call again."""
        if self._phase is not _Phase.RUNNING:
            return
        await self._shutdown(persist_state=True)
        log.info("broker_stopped", tcp_port=self.tcp_port)

    def save_now(self, lock_wait: float = SAVE_LOCK_WAIT) -> int | None:
        """Freeze the broker and save its unfinished messages at once; the emergency step.

        No awaits, whatever the phase (even a stop cut short half-way), so a spent shutdown
        budget cannot cancel it. Freezing first matters: a message accepted after the save
        would be answered OK and lost with the process. Returns the count saved, or None if
        there was nothing to do (memory only, never started, already saved).

        Thread-safe, for the watchdog thread while the loop is stuck: the lock keeps the
        loop's save and the watchdog's from writing one file at once, and the second finds
        the work done. Off the loop only flags are set (no asyncio calls) and the snapshot
        takes two passes (see :meth:`Registry.snapshot`).
        """
        if not self._save_lock.acquire(timeout=lock_wait):
            log.error("messages_save_skipped", why=f"another save still running after {lock_wait}s")
            return None
        try:
            if not self._can_save or self.data_dir is None or self._loop is None:
                return None
            on_loop = self._on_loop()
            if on_loop:
                self._freeze_on_loop()
            else:
                self.registry.freeze()
            snap = self.registry.snapshot(self._loop.time(), passes=1 if on_loop else 2)
            path = persist.save(self.data_dir, snap)
            self._can_save = False
            log.info("messages_persisted", count=len(snap.messages), path=str(path))
            self.registry.close_queues()  # after the snapshot: what the disk holds is synced
            return len(snap.messages)
        finally:
            self._save_lock.release()

    def _on_loop(self) -> bool:
        """True on the broker's own event loop thread."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _freeze_on_loop(self) -> None:
        """Intake refused, timers off, listeners closed, clients dropped; nothing awaited.

        The phase stays: a later :meth:`stop` still waits for the connections to end.
        """
        self.registry.close()
        for server in self._http_servers:
            server.stop()
        self._tcp.close_now()

    def _load(self) -> None:
        """The disk queues (topics and channels with their records), then the messages that
        were in memory at the last clean stop (attempts preserved)."""
        if self.data_dir is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        queues = self.registry.load_queues()
        count = self.registry.restore(persist.load(self.data_dir))
        log.info("messages_loaded", count=count, queues=queues, data_dir=str(self.data_dir))

    async def _listen(self) -> None:
        """TCP first (its port goes into lookupd answers), then the HTTP listeners."""
        await self._tcp.start(self.host, self.tcp_port)
        self.tcp_port = self._tcp.port
        ctx = HttpContext(
            registry=self.registry,
            start_time=time.time(),
            broadcast_address=self.broadcast_address,
            host=self.host,
            tcp_port=self.tcp_port,
            http_tls_required=self.security.http_tls_required,
        )
        if self.https_port is not None:
            self.https_port = self._serve_http(
                nsqd_app(ctx), self.https_port, tls=self.security.tls_context
            )
            ctx.https_port = self.https_port
        self.http_port = self._serve_http(nsqd_app(ctx), self.http_port)
        ctx.http_port = self.http_port
        if self.lookupd_http_port is not None:
            self.lookupd_http_port = self._serve_http(lookupd_app(ctx), self.lookupd_http_port)

    def _serve_http(
        self, app: tornado.web.Application, port: int, tls: ssl.SSLContext | None = None
    ) -> int:
        """Bind one tornado HTTP(S) server; bodies above 4x max_body_size are cut off unread."""
        server = tornado.httpserver.HTTPServer(
            app,
            max_body_size=4 * max(self.options.max_body_size, self.options.max_msg_size),
            ssl_options=tls,
        )
        sockets = tornado.netutil.bind_sockets(port, address=self.host)
        server.add_sockets(sockets)
        self._http_servers.append(server)
        return int(sockets[0].getsockname()[1])

    # --- nsqlookupd registration ---

    def _register_with_lookupd(self) -> None:
        """nsqd's lookup loop toward every --lookupd-tcp-address (none: nothing to do)."""
        if not self.lookupd_tcp_addresses:
            return
        self._lookupd_peers = LookupdPeers(
            self.lookupd_tcp_addresses,
            self.registry,
            broadcast_address=self.broadcast_address,
            tcp_port=self.tcp_port,
            http_port=self.http_port,
        )
        self._lookupd_peers.start()

    async def _shutdown(self, *, persist_state: bool) -> None:
        """Lookupd first (no one is sent here any more), listeners, then clients, then
        timers, then the snapshot to disk."""
        self._phase = _Phase.STOPPED
        if self._lookupd_peers is not None:
            await self._lookupd_peers.stop()
        self.registry.closing = True
        for server in self._http_servers:
            server.stop()
        await self._tcp.stop()
        for server in self._http_servers:
            with contextlib.suppress(Exception):
                await server.close_all_connections()
        self._http_servers.clear()
        self.registry.close()
        if persist_state:
            self.save_now()
        else:
            self.registry.close_queues()
