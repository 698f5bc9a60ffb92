"""``taskdash demo`` as a newcomer runs it: a subprocess whose printed URL and login work, whose
dashboard shows every part moving, and which Ctrl-C stops with no process left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from support import VENV_BIN, pid_alive, pids_with_arg, wait_for

from taskdash.cli import main

DEMO_SERVICES = {"demo-steady", "demo-flaky", "demo-slow", "demo-doomed", "demo-worker"}


class DemoProcess:
    """``taskdash demo --speed 3 [args]``, its stdout read line by line as it comes."""

    def __init__(self, tmp: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKDASH_")}
        self.stderr = tmp / f"demo-{time.monotonic_ns()}.stderr"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "taskdash"), "demo", "--speed", "3", *args],
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                cwd=tmp,
            )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def banner(self, name: str) -> str:
        """The value after ``name`` on its banner line, once printed."""

        def found() -> str | None:
            assert self.proc.poll() is None, self.output()
            for line in list(self.lines):
                match = re.match(rf"\s+{re.escape(name)}\s+(.+)$", line)
                if match:
                    return match.group(1)
            return None

        return str(wait_for(found, timeout=90, every=0.2))

    def logged(self, event: str, **fields: Any) -> bool:
        """Whether the demo logged ``event`` (JSON lines on stdout) with ``fields``."""
        for line in list(self.lines):
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry.get("event") == event and fields.items() <= entry.items():
                return True
        return False

    def output(self) -> str:
        return "\n".join(self.lines) + "\n" + self.stderr.read_text(errors="replace")


def login(web: str, name: str, password: str) -> requests.Session:
    """The login form's JSON twin, as a browser session: XSRF cookie first."""
    session = requests.Session()
    assert session.get(f"{web}login", timeout=10).status_code == 200
    answer = session.post(
        f"{web}api/v1/login",
        json={"name": name, "password": password},
        headers={"X-XSRFToken": session.cookies["_xsrf"]},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return session


def api(session: requests.Session, url: str) -> Any:
    answer = session.get(url, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.slow
def test_demo_shows_every_part_moving_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    demo = DemoProcess(tmp_path)
    try:
        web = demo.banner("Dashboard")
        name, password = demo.banner("Login").split(" / ")
        data_dir = Path(demo.banner("Data, logs").split(" (")[0])
        printed = dict(re.findall(r"([\w-]+) (\d+)", demo.banner("Processes")))
        assert printed.keys() == {"nx-27017", "daemon", "periodic"}
        children = set(pids_with_arg(str(data_dir)))
        assert {int(pid) for pid in printed.values()} == children
        session = login(web, name, password)
        v1 = f"{web}api/v1"

        def services() -> dict[str, str]:
            found = api(session, f"{v1}/services?limit=100")["services"]
            return {s["id"]: s["status"] for s in found}

        # the five simulated services listed, and one of them gone stale or offline
        wait_for(lambda: services().keys() >= DEMO_SERVICES, timeout=30, every=0.5)
        wait_for(
            lambda: {"stale", "offline"} & {services()[s] for s in DEMO_SERVICES},
            timeout=45,
            every=0.3,
        )

        def listed(**query: str) -> list[dict[str, Any]]:
            answer = session.get(f"{v1}/tasks", params={"limit": "200", **query}, timeout=10)
            assert answer.status_code == 200, answer.text
            return list(answer.json()["tasks"])

        # periodic tasks the worker completed, as the periodic service lists them
        wait_for(lambda: listed(service_id="taskdash-periodic", status="finish"), timeout=30)
        # tasks the fetcher got from a simulated service's URL
        wait_for(lambda: listed(service_id="demo-steady"), timeout=30)
        # and a task registered over TCP, with its daily window
        tcp = api(session, f"{v1}/tasks/demo-tcp-sync")["task"]
        assert tcp["service_id"] is None
        assert re.fullmatch(r"\d\d:\d\d", tcp["start_time"])
        # the one running outside its window is flagged (judged in the demo's UTC zone); the
        # other flips between running and not inside its window, so it comes and goes
        wait_for(
            lambda: "demo-tcp-backup" in [t["id"] for t in listed(out_of_window="true")],
            timeout=30,
        )
    except BaseException:
        demo.proc.kill()
        print(demo.output())
        raise
    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.wait(timeout=30) == 0, demo.output()
    for child in ("periodic", "daemon"):  # each stopped by its own clean shutdown
        assert demo.logged("demo_child_stopped", child=child, exit_code=0), demo.output()
    assert demo.logged("embedded_mongodb_stopped", returncode=0)
    wait_for(lambda: not any(pid_alive(p) for p in children), timeout=5)
    assert pids_with_arg(str(data_dir)) == []
    assert not data_dir.exists()  # a temporary data directory is removed


def test_bad_arguments_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, message in (
        (["--speed", "0"], "--speed: must be from 1 to 10, got 0"),
        (["--web-port", "70000"], "--web-port: must be from 0 to 65535"),
        (["--config", "x.toml"], "unrecognized arguments: --config x.toml"),
    ):
        with pytest.raises(SystemExit) as stopped:
            main(["demo", *argv])
        assert stopped.value.code == 2
        assert message in capsys.readouterr().err
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert main(["demo", "--data-dir", str(a_file)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"taskdash: demo: --data-dir {a_file} exists and is not a directory"
    )


def test_a_taken_web_port_fails_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data_dir = tmp_path / "data"
        code = main(["demo", "--web-port", str(port), "--data-dir", str(data_dir)])
    assert code == 1
    assert f"--web-port {port} is already in use on 127.0.0.1" in capsys.readouterr().err
    assert pids_with_arg(str(data_dir)) == []


def test_sigterm_during_the_start_stops_what_started(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    demo = DemoProcess(tmp_path, "--data-dir", str(data_dir))
    wait_for(lambda: demo.logged("demo_child_started", child="daemon"), timeout=60, every=0.1)
    assert pids_with_arg(str(data_dir))
    demo.proc.send_signal(signal.SIGTERM)
    assert demo.proc.wait(timeout=30) == 0, demo.output()
    assert pids_with_arg(str(data_dir)) == []
    assert (data_dir / "demo.toml").exists()  # a --data-dir is kept


def test_a_reused_data_dir_runs_again_and_a_dead_child_ends_the_demo(tmp_path: Path) -> None:
    """--duration ends a first run by itself; a second run on its data (the admin, the worker's
    registration, queue and schedule exist) gets a new password; when a child dies, the demo
    says which and where its log is, stops the rest and exits 1."""
    data_dir = tmp_path / "data"
    first = DemoProcess(tmp_path, "--data-dir", str(data_dir), "--duration", "2")
    first.banner("Dashboard")
    assert first.proc.wait(timeout=30) == 0, first.output()
    assert first.logged("demo_duration_reached")
    again = DemoProcess(tmp_path, "--data-dir", str(data_dir))
    try:
        name, password = again.banner("Login").split(" / ")
        login(again.banner("Dashboard"), name, password)
        wait_for(lambda: again.logged("demo_worker_completed"), timeout=30)
        daemon = int(re.findall(r"daemon (\d+)", again.banner("Processes"))[0])
    except BaseException:
        again.proc.kill()
        raise
    os.kill(daemon, signal.SIGKILL)
    assert again.proc.wait(timeout=30) == 1, again.output()
    log = data_dir / "logs" / "daemon.log"
    assert f"taskdash: demo: daemon was killed by SIGKILL (see {log})" in again.output()
    assert pids_with_arg(str(data_dir)) == []
