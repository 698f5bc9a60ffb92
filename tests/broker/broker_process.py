"""``taskdash nsqd`` and ``taskdash nsqlookupd`` as real processes for the tests."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from support import VENV_BIN, DaemonProcess, free_port, wait_for

from taskdash.store.embedded import die_with_parent, port_open


def rss_kib(pid: int) -> int:
    """Resident set size of a process (VmRSS in /proc), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class Process(DaemonProcess):
    """One taskdash subcommand on loopback, output (JSON logs) to a file under ``tmp``; stop,
    logs and events as for ``taskdash run``."""

    def __init__(self, tmp: Path, command: str, args: list[str], env: dict[str, str]) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        super().__init__(tmp, env)
        self.command = command
        self.args = args

    def start(self) -> Process:
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "taskdash"), self.command, *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
                preexec_fn=die_with_parent,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_port(self, port: int, timeout: float = 30.0) -> None:
        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.logs()
            return port_open("127.0.0.1", port)

        wait_for(up, timeout=timeout, every=0.05)

    def kill(self) -> None:
        """SIGKILL: no handler, no save, no flush."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def clean_env(**overrides: str | int) -> dict[str, str]:
    """The environment without TASKDASH_* variables, JSON logs, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKDASH_")}
    env["TASKDASH_LOG__FORMAT"] = "json"
    env.update({k: str(v) for k, v in overrides.items()})
    return env


class Nsqd(Process):
    """``taskdash nsqd`` on free ports with its data under ``data``."""

    def __init__(self, tmp: Path, data: Path, *extra: str, **env: str | int) -> None:
        self.tcp_port = free_port()
        self.http_port = free_port()
        args = [
            f"--tcp-address=127.0.0.1:{self.tcp_port}",
            f"--http-address=127.0.0.1:{self.http_port}",
            f"--data-path={data}",
            *extra,
        ]
        super().__init__(tmp, "nsqd", args, clean_env(**env))

    def start(self) -> Nsqd:
        super().start()
        self.wait_port(self.tcp_port)
        self.wait_port(self.http_port)
        return self
