"""A ``taskdash`` child process of the demo: started with its output in a file, stopped with
SIGTERM (then SIGKILL after a bounded wait), always reaped.

Each child runs in a session of its own, so a Ctrl-C at the terminal reaches only the demo,
which then stops the children in order; and each is told to die with the demo
(PR_SET_PDEATHSIG), so even a demo killed with SIGKILL leaves no orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import structlog

from taskdash.errors import TaskDashError
from taskdash.store.embedded import die_with_parent

log = structlog.get_logger("taskdash.demo.processes")


class ChildFailed(TaskDashError):
    """A child exited while the demo needed it."""


def ending(code: int) -> str:
    """How a child ended, from its return code (negative: the signal that killed it)."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def taskdash_command() -> list[str]:
    """This very ``taskdash``: the interpreter running the demo, so a venv is kept."""
    return [sys.executable, "-m", "taskdash"]


def child_env() -> dict[str, str]:
    """The demo's environment without ``TASKDASH_*``: the children read only ``demo.toml``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TASKDASH_")}


class Child:
    """One ``taskdash <args>`` child, its stdout and stderr appended to ``log_path``."""

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def exited(self) -> int | None:
        """The exit code once it has ended, else None."""
        return self.proc.returncode if self.proc is not None else None

    async def start(self) -> None:
        """Spawn it (returns at once; readiness is the caller's to wait for)."""
        out = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *taskdash_command(),
                *self.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=child_env(),
                start_new_session=True,
                preexec_fn=die_with_parent,  # only prctl: safe before exec
            )
        finally:
            os.close(out)
        log.info("demo_child_started", child=self.name, pid=self.proc.pid, log=str(self.log_path))

    def check_alive(self) -> None:
        """ChildFailed if it has exited."""
        code = self.exited
        if code is None:
            return
        raise ChildFailed(f"{self.name} {ending(code)} (see {self.log_path})")

    async def stop(self, timeout: float) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; reaped either way. Idempotent."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                log.warning("demo_child_killed", child=self.name, pid=proc.pid, after=timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        log.info("demo_child_stopped", child=self.name, pid=proc.pid, exit_code=proc.returncode)
        return proc.returncode
