"""A supervised nx-27017 child process: the MongoDB stand-in for single-machine runs and tests.

nx-27017 speaks the MongoDB wire protocol over SQLite, so the daemon uses the very same PyMongo
driver as in production. The child is restarted with backoff if it dies, and is told to die
with us (PR_SET_PDEATHSIG) so a killed daemon never leaves it behind. A stopped (SIGSTOP) child
ignores SIGTERM until it is continued, so every way out ends in SIGCONT and, if need be, SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from taskdash.background import Background
from taskdash.errors import EmbeddedServerError

log = structlog.get_logger("taskdash.store.embedded")

_PR_SET_PDEATHSIG = 1
#: first wait before restarting a child that died (doubles after each failed restart)
RESTART_DELAY = 0.5


def die_with_parent() -> None:
    """Runs in the child before exec: kill it when the daemon goes away, however it dies.

    SIGKILL, not SIGTERM: a frozen child would keep a SIGTERM pending forever and hold its
    port under PID 1. nx-27017 loses no acknowledged write to SIGKILL (SQLite's journal).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def nx_command() -> str:
    """The nx-27017 executable installed beside this interpreter (a venv), else on PATH."""
    found = shutil.which("nx-27017", path=str(Path(sys.executable).parent)) or shutil.which(
        "nx-27017"
    )
    if not found:
        raise EmbeddedServerError("nx-27017 is not installed (pip install nx-27017)")
    return found


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_in_use(host: str, port: int) -> EmbeddedServerError:
    """The one-line start error for a taken port, naming the setting to change."""
    return EmbeddedServerError(
        f"mongodb.embedded_port {host}:{port} already in use "
        "(set [mongodb] embedded_port, or [mongodb] uri for an external server)"
    )


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal a child that may have just exited (then there is nothing to do)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll (never a blocking wait in a thread, which would outlive a cancelled shutdown)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


class EmbeddedMongo:
    """Start, supervise and stop one nx-27017 server bound to ``host:port``."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        data_dir: Path,
        start_timeout: float = 20.0,
        on_died: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self.start_timeout = start_timeout
        #: told when the child dies under us (the store monitor: MongoDB is down now)
        self.on_died = on_died
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.restart_failures = 0
        self._stopping = False
        self._supervisor = Background("embedded_mongodb_supervisor", self._supervise)

    @property
    def uri(self) -> str:
        """How PyMongo reaches it."""
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            nx_command(),
            "--data-dir", str(self.data_dir),
            "--host", self.host,
            "-p", str(self.port),
            "--log-file", str(self.data_dir / "nx-27017.log"),
            "--pid-file", str(self.data_dir / "nx-27017.pid"),
        ]  # fmt: skip
        return subprocess.Popen(  # fixed argv, no shell
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,  # only prctl: safe before exec
        )

    async def _wait_listening(self, proc: subprocess.Popen[bytes]) -> None:
        """Until the child accepts connections; it must still be alive then (not a squatter)."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EmbeddedServerError(
                    f"nx-27017 exited with {proc.returncode} at start "
                    f"(is port {self.port} in use? see {self.data_dir / 'nx-27017.log'})"
                )
            if await asyncio.to_thread(port_open, self.host, self.port):
                await asyncio.sleep(0.1)
                if proc.poll() is None:
                    return
                continue
            await asyncio.sleep(0.1)
        raise EmbeddedServerError(f"nx-27017 did not listen on port {self.port} in time")

    async def _launch(self) -> None:
        """Spawn and wait until it listens; a child that does not get there is killed."""
        if await asyncio.to_thread(port_open, self.host, self.port):
            raise port_in_use(self.host, self.port)
        proc = self.proc = self._spawn()
        try:
            await self._wait_listening(proc)
        except BaseException:
            self.proc = None
            _signal(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1.0)  # reaped at once after SIGKILL; bounded all the same
            raise

    async def start(self) -> None:
        """Spawn the server, wait until it accepts connections, then supervise it."""
        await self._launch()
        assert self.proc is not None
        log.info("embedded_mongodb_started", pid=self.proc.pid, port=self.port)
        await self._supervisor.start()

    async def _supervise(self) -> None:
        """Restart the child when it dies under us."""
        while not self._stopping:
            await asyncio.sleep(0.2)
            proc = self.proc
            if proc is None or proc.poll() is None:
                continue
            self.proc = None
            log.error("embedded_mongodb_died", returncode=proc.returncode, retry_in=RESTART_DELAY)
            if self.on_died is not None:
                self.on_died(f"embedded nx-27017 exited with {proc.returncode}")
            await self._restart()

    async def _restart(self) -> None:
        """Respawn until it listens again, the delay doubling after each failure (to 30 s)."""
        delay = RESTART_DELAY
        while not self._stopping:
            await asyncio.sleep(delay)
            if self._stopping:
                break
            try:
                await self._launch()
            except EmbeddedServerError as exc:
                self.restart_failures += 1
                delay = min(delay * 2, 30.0)
                log.error(
                    "embedded_mongodb_restart_failed",
                    error=str(exc),
                    failures=self.restart_failures,
                    retry_in=delay,
                )
                continue
            self.restarts += 1
            assert self.proc is not None
            log.info("embedded_mongodb_restarted", pid=self.proc.pid, restarts=self.restarts)
            return

    def kill(self) -> None:
        """SIGKILL the child now, frozen or not (the shutdown budget ran out). Idempotent.

        Safe from another thread: it only sends signals; whoever stops later reaps the child.
        """
        self._stopping = True
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        _signal(proc, signal.SIGKILL)
        log.warning("embedded_mongodb_killed", pid=proc.pid)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop supervising, SIGTERM the child, SIGKILL it if it lingers. Idempotent.

        SIGCONT follows SIGTERM: a stopped (frozen) child only acts on SIGTERM once continued.
        """
        self._stopping = True
        await self._supervisor.stop()
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                _signal(proc, signal.SIGTERM)
                _signal(proc, signal.SIGCONT)
                if not await _wait_exit(proc, timeout):
                    self.kill()
                    await _wait_exit(proc, 5.0)
        finally:
            if proc.poll() is None:
                self.kill()
        self.proc = None
        log.info("embedded_mongodb_stopped", returncode=proc.returncode)
