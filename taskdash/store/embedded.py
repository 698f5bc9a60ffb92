"""A supervised nx-27017 child process: the MongoDB stand-in for single-machine runs and tests.

nx-27017 speaks the MongoDB wire protocol over SQLite, so the daemon uses the very same PyMongo
driver as in production. The child is restarted with backoff if it dies, and is told to die
with us (PR_SET_PDEATHSIG) so a killed daemon never leaves it behind.
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
from pathlib import Path

import structlog

from taskdash.background import Background
from taskdash.errors import EmbeddedServerError

log = structlog.get_logger("taskdash.store.embedded")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the daemon goes away, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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


class EmbeddedMongo:
    """Start, supervise and stop one nx-27017 server bound to ``host:port``."""

    def __init__(
        self, *, host: str, port: int, data_dir: Path, start_timeout: float = 20.0
    ) -> None:
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
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
            preexec_fn=_die_with_parent,  # only prctl: safe before exec
        )

    async def _wait_listening(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EmbeddedServerError(
                    f"nx-27017 exited with {proc.returncode} at start "
                    f"(is port {self.port} in use? see {self.data_dir / 'nx-27017.log'})"
                )
            if await asyncio.to_thread(port_open, self.host, self.port):
                return
            await asyncio.sleep(0.1)
        raise EmbeddedServerError(f"nx-27017 did not listen on port {self.port} in time")

    async def start(self) -> None:
        """Spawn the server, wait until it accepts connections, then supervise it."""
        if port_open(self.host, self.port):
            raise EmbeddedServerError(
                f"port {self.host}:{self.port} is already in use; set [mongodb] embedded_port "
                "or [mongodb] uri"
            )
        self.proc = self._spawn()
        await self._wait_listening(self.proc)
        log.info("embedded_mongodb_started", pid=self.proc.pid, port=self.port)
        await self._supervisor.start()

    async def _supervise(self) -> None:
        """Restart the child with backoff when it dies under us."""
        delay = 0.5
        while not self._stopping:
            await asyncio.sleep(0.2)
            proc = self.proc
            if proc is None or proc.poll() is None:
                continue
            log.error("embedded_mongodb_died", returncode=proc.returncode, retry_in=delay)
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                self.proc = self._spawn()
                await self._wait_listening(self.proc)
            except EmbeddedServerError as exc:
                log.error("embedded_mongodb_restart_failed", error=str(exc))
                delay = min(delay * 2, 30.0)
                continue
            self.restarts += 1
            delay = 0.5
            log.info("embedded_mongodb_restarted", pid=self.proc.pid, restarts=self.restarts)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop supervising, SIGTERM the child, SIGKILL it if it lingers. Idempotent."""
        self._stopping = True
        await self._supervisor.stop()
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        log.info("embedded_mongodb_stopped", returncode=proc.returncode)
