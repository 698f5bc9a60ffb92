"""The command line as a user runs it: real subprocesses, a real broker on free loopback ports.

Every bad input must end in one clear line on stderr and the README's exit code (0 ok,
1 runtime failure, 2 bad configuration or usage), never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nsq
import pytest
from support import (
    VENV_BIN,
    async_wait_for,
    daemon_env,
    free_port,
    free_ports,
    http_get,
    running_daemon,
    wait_for,
)

TASKDASH = str(VENV_BIN / "taskdash")
COMMANDS = [
    ["run"],
    ["check-config"],
    ["nsqd"],
    ["publish", "service", "--id", "svc-1"],
    ["publish", "heartbeat", "--id", "svc-1"],
]


def clean_env(**overrides: str) -> dict[str, str]:
    """The caller's environment without any TASKDASH_ variable, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKDASH_")}
    env.update(overrides)
    return env


def taskdash(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the console script to completion (bounded, in case a bug makes it run on)."""
    return subprocess.run(
        [TASKDASH, *args],
        env=env if env is not None else clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line(stderr: str) -> str:
    """The single line an error must be; fails on a traceback or anything more."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    return lines[0]


class Nsqd:
    """``taskdash nsqd`` as a subprocess on free ports, its data under ``tmp``."""

    def __init__(self, tmp: Path, **env: str) -> None:
        self.tmp = tmp
        self.http_port, self.tcp_port, lookupd_port = free_ports(3)
        self.env = clean_env(
            TASKDASH_DAEMON__DATA_DIR=str(tmp / "var"),
            TASKDASH_NSQ__EMBEDDED_TCP_PORT=str(self.tcp_port),
            TASKDASH_NSQ__EMBEDDED_HTTP_PORT=str(self.http_port),
            TASKDASH_NSQ__EMBEDDED_LOOKUPD_PORT=str(lookupd_port),
            TASKDASH_LOG__FORMAT="json",
        )
        self.env.update(env)
        self.output = tmp / f"nsqd-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> Nsqd:
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                [TASKDASH, "nsqd"], env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp
            )
        wait_for(self._ready)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.logs()
        return http_get(f"{self.url}/ping")[0] == 200

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit code (kill and fail if it never comes)."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"nsqd did not stop\n{self.logs()}") from None

    def logs(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.logs().splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    def topic(self, name: str) -> dict[str, Any] | None:
        """The topic's entry in ``/stats`` (None before its first message)."""
        status, doc = http_get(f"{self.url}/stats?format=json&topic={name}")
        assert status == 200, doc
        return (doc["topics"] or [None])[0]


@contextmanager
def running_nsqd(tmp: Path, **env: str) -> Iterator[Nsqd]:
    broker = Nsqd(tmp, **env).start()
    try:
        yield broker
    finally:
        if broker.proc is not None and broker.proc.poll() is None:
            broker.proc.kill()
            broker.proc.wait()


def pub(url: str, topic: str, body: bytes) -> None:
    """Publish as any HTTP client would (curl --data-binary)."""
    request = urllib.request.Request(f"{url}/pub?topic={topic}", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


# --- help -----------------------------------------------------------------------------------


HELP = [
    [],
    ["run"],
    ["check-config"],
    ["nsqd"],
    ["publish"],
    *[["publish", k] for k in ("service", "heartbeat")],
]


@pytest.mark.parametrize("command", HELP, ids=lambda c: " ".join(c) or "taskdash")
def test_help_is_written_for_users(command: list[str]) -> None:
    result = taskdash(*command, "--help")
    assert result.returncode == 0 and result.stderr == ""
    text = result.stdout
    assert "arguments -> settings" not in text  # the module's docstring is for developers
    assert "Examples:" in text
    assert f"taskdash {' '.join(command)}".strip() in text.split("Examples:")[1]


def test_top_level_help_lists_every_command_and_the_exit_codes() -> None:
    text = taskdash("--help").stdout
    for name in ("run", "check-config", "nsqd", "publish", "user"):
        assert f"\n    {name}" in text
    assert "Exit codes: 0" in " ".join(text.split())


# --- configuration errors and warnings --------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_missing_config_file_is_one_line_exit_2(tmp_path: Path, command: list[str]) -> None:
    result = taskdash(*command, "--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line == f"taskdash: config error: config file not found: {tmp_path / 'absent.toml'}"


def test_unreadable_config_is_one_line_exit_2(tmp_path: Path) -> None:
    """A directory (root reads any file, so a directory stands for 'cannot be read')."""
    result = taskdash("run", "--config", str(tmp_path))
    assert result.returncode == 2
    assert one_line(result.stderr).startswith("taskdash: config error: cannot read config file")


@pytest.mark.parametrize("uri", ["mongodb://", "mongodb://host:notaport"])
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_malformed_mongodb_uri_is_exit_2_before_anything_starts(
    tmp_path: Path, command: str, uri: str
) -> None:
    web, nsqd_tcp, nsqd_http, lookupd = free_ports(4)
    env = clean_env(
        TASKDASH_MONGODB__URI=uri,
        TASKDASH_DAEMON__DATA_DIR=str(tmp_path / "var"),
        TASKDASH_WEB__PORT=str(web),
        TASKDASH_NSQ__EMBEDDED_TCP_PORT=str(nsqd_tcp),
        TASKDASH_NSQ__EMBEDDED_HTTP_PORT=str(nsqd_http),
        TASKDASH_NSQ__EMBEDDED_LOOKUPD_PORT=str(lookupd),
    )
    result = taskdash(command, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("taskdash: config error: mongodb.uri: not a valid MongoDB URI: ")
    assert line.endswith("(in TASKDASH_MONGODB__URI)")
    assert result.stdout == ""


def test_check_config_prints_env_warnings_and_still_passes() -> None:
    result = taskdash("check-config", env=clean_env(TASKDASH_WEB_PORT="9090"))
    assert result.returncode == 0 and "config OK" in result.stdout
    assert one_line(result.stderr) == (
        "taskdash: warning: TASKDASH_WEB_PORT is not a setting and is ignored; "
        "did you mean TASKDASH_WEB__PORT?"
    )


def test_long_running_commands_log_env_warnings(tmp_path: Path) -> None:
    """``nsqd`` (and ``run``, same code) log the warning once logging is set up."""
    with running_nsqd(tmp_path, TASKDASH_NSQ_CHANNEL="x") as broker:
        assert broker.stop() == 0
    warned = [e for e in broker.events() if e.get("event") == "env_variable_ignored"]
    assert len(warned) == 1, broker.logs()
    assert warned[0]["variable"] == "TASKDASH_NSQ_CHANNEL"
    assert warned[0]["level"] == "warning"
    assert warned[0]["did_you_mean"] == "TASKDASH_NSQ__CHANNEL"


def test_run_logs_env_warnings_at_start(tmp_path: Path) -> None:
    env = daemon_env(tmp_path, TASKDASH_WEB_PORT="9999")
    with running_daemon(tmp_path, env) as daemon:
        pass
    assert daemon.proc is not None and daemon.proc.returncode == 0, daemon.logs()
    warned = [e for e in daemon.events() if e.get("event") == "env_variable_ignored"]
    assert [(e["variable"], e["did_you_mean"]) for e in warned] == [
        ("TASKDASH_WEB_PORT", "TASKDASH_WEB__PORT")
    ]


# --- publish ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["foo", "nsqd:4151", "ftp://127.0.0.1:4151", "http://", "http://h:x"]
)
@pytest.mark.parametrize("kind", ["service", "heartbeat"])
def test_publish_bad_nsqd_http_is_a_usage_error(kind: str, url: str) -> None:
    result = taskdash("publish", kind, "--id", "svc-1", "--nsqd-http", url)
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"taskdash: --nsqd-http: {url!r} is not an http(s)://host[:port] URL"
    )


@pytest.mark.parametrize("kind", ["service", "heartbeat"])
def test_publish_to_unreachable_nsqd_is_one_short_line_exit_1(kind: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = taskdash("publish", kind, "--id", "svc-1", "--nsqd-http", url)
    assert result.returncode == 1
    assert one_line(result.stderr) == f"taskdash: cannot reach nsqd at {url}: connection refused"


@pytest.mark.parametrize(
    ("option", "value"),
    [("--every", "-1"), ("--count", "-2"), ("--every", "soon"), ("--every", "nan")],
)
def test_publish_heartbeat_refuses_negative_or_bad_numbers(option: str, value: str) -> None:
    result = taskdash("publish", "heartbeat", "--id", "svc-1", option, value)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"argument {option}:" in result.stderr.splitlines()[-1]


def test_publish_invalid_record_is_exit_2(tmp_path: Path) -> None:
    result = taskdash("publish", "heartbeat", "--id", "", "--nsqd-http", "http://127.0.0.1:1")
    assert result.returncode == 2
    assert one_line(result.stderr).startswith("taskdash: invalid heartbeat: ")


def beating(service_id: str, *options: str) -> list[str]:
    """The command line of ``publish heartbeat`` for one service."""
    return [TASKDASH, "publish", "heartbeat", "--id", service_id, *options]


@pytest.mark.parametrize(("sig", "name"), [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_publish_heartbeat_ctrl_c_says_how_many_were_sent(
    tmp_path: Path, sig: signal.Signals, name: str
) -> None:
    """An endless ``--every`` ends with Ctrl-C: its exact count, exit 0, and no traceback."""
    with running_nsqd(tmp_path) as broker:
        proc = subprocess.Popen(
            beating("svc-1", "--every", "0.05", "--nsqd-http", broker.url),
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: (broker.topic("taskdash.heartbeat") or {}).get("message_count", 0) > 2)
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stored = broker.topic("taskdash.heartbeat")
        assert stored is not None
    assert proc.returncode == 0, err
    assert err == ""
    count = stored["message_count"]
    assert out.strip() == (
        f"published {count} heartbeat(s) for svc-1 to taskdash.heartbeat (stopped by {name})"
    )


def test_publish_heartbeat_ctrl_c_before_count_is_reached_exits_130(tmp_path: Path) -> None:
    """With ``--count``, an interruption leaves the requested work undone: exit 130."""
    with running_nsqd(tmp_path) as broker:
        proc = subprocess.Popen(
            beating("svc-2", "--every", "0.05", "--count", "1000000", "--nsqd-http", broker.url),
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: (broker.topic("taskdash.heartbeat") or {}).get("message_count", 0) > 0)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        count = broker.topic("taskdash.heartbeat")["message_count"]  # type: ignore[index]
    assert proc.returncode == 130 and err == ""
    assert out.strip() == (
        f"published {count} of 1000000 heartbeat(s) for svc-2 to taskdash.heartbeat "
        "(stopped by Ctrl-C)"
    )


# --- taskdash nsqd ----------------------------------------------------------------------------


def close_reader(reader: nsq.Reader) -> None:
    """Close a pynsq Reader for good (0.9.1 would reconnect after a plain close())."""
    reader.connect_to_nsqd = lambda *args, **kwargs: None
    if reader.query_periodic is not None:
        reader.query_periodic.start = lambda: None
    if reader.redist_periodic is not None:
        reader.close()


async def read_with_pynsq(tcp_port: int, topic: str, expected: int) -> list[bytes]:
    """Consume ``expected`` messages as the daemon's readers would, FINning each."""
    bodies: list[bytes] = []

    def handle(message: nsq.Message) -> bool:
        bodies.append(message.body)
        return True

    reader = nsq.Reader(
        topic=topic,
        channel="cli-test",
        message_handler=handle,
        nsqd_tcp_addresses=[f"127.0.0.1:{tcp_port}"],
        max_in_flight=10,
    )
    try:
        await async_wait_for(lambda: len(bodies) >= expected)
    finally:
        close_reader(reader)
    return bodies


def test_nsqd_command_serves_persists_and_stops_on_sigterm(tmp_path: Path) -> None:
    """``taskdash nsqd``: /pub, /stats, CLI publisher; SIGTERM saves, the next start restores."""
    with running_nsqd(tmp_path) as broker:
        for n in range(3):
            pub(broker.url, "cli.test", f"m{n}".encode())
        sent = taskdash("publish", "heartbeat", "--id", "svc-1", "--nsqd-http", broker.url)
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.strip() == "published 1 heartbeat(s) for svc-1 to taskdash.heartbeat"
        topic = broker.topic("cli.test")
        assert topic is not None and (topic["depth"], topic["message_count"]) == (3, 3)
        assert broker.stop(signal.SIGTERM) == 0
    events = broker.events()
    names = [e.get("event") for e in events]
    assert "nsqd_ready" in names and "broker_stopped" in names
    persisted = [e for e in events if e.get("event") == "messages_persisted"]
    assert [e["count"] for e in persisted] == [4], broker.logs()
    assert Path(persisted[0]["path"]).is_file()

    with running_nsqd(tmp_path) as again:
        assert (again.topic("cli.test") or {}).get("depth") == 3
        bodies = asyncio.run(read_with_pynsq(again.tcp_port, "cli.test", 3))
        assert sorted(bodies) == [b"m0", b"m1", b"m2"]
        beats = asyncio.run(read_with_pynsq(again.tcp_port, "taskdash.heartbeat", 1))
        assert json.loads(beats[0]) == {"id": "svc-1", "reserved": ""}
        wait_for(lambda: (again.topic("cli.test") or {}).get("depth") == 0)
        assert again.stop(signal.SIGINT) == 0
    loaded = [e for e in again.events() if e.get("event") == "messages_loaded"]
    assert [e["count"] for e in loaded] == [4]


def test_nsqd_port_in_use_is_one_error_naming_address_and_setting(tmp_path: Path) -> None:
    with running_nsqd(tmp_path) as first:
        second = Nsqd(tmp_path / "second")
        (tmp_path / "second").mkdir()
        second.env["TASKDASH_NSQ__EMBEDDED_HTTP_PORT"] = str(first.http_port)
        result = taskdash("nsqd", env=second.env, cwd=tmp_path / "second")
    assert result.returncode == 1
    errors = [json.loads(line) for line in result.stdout.splitlines() if '"error"' in line]
    assert len(errors) == 1 and "Traceback" not in result.stdout + result.stderr
    assert errors[0]["event"] == "start_failed"
    assert errors[0]["address"] == f"127.0.0.1:{first.http_port}"
    assert errors[0]["setting"] == "nsq.embedded_http_port"


@pytest.mark.parametrize("command", ["run", "nsqd"])
def test_log_file_that_cannot_be_opened_is_one_line_exit_2(tmp_path: Path, command: str) -> None:
    target = tmp_path / "no-such-dir" / "taskdash.log"
    env = Nsqd(tmp_path, TASKDASH_LOG__FILE=str(target), TASKDASH_WEB__PORT=str(free_port())).env
    result = taskdash(command, env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"taskdash: config error: log.file: cannot open {target}: No such file or directory "
        "(in TASKDASH_LOG__FILE)"
    )


def test_nsqd_data_dir_that_is_a_file_fails_at_start_naming_the_setting(tmp_path: Path) -> None:
    """Found at start, not at the stop that would have to save the queues there."""
    (tmp_path / "var").write_text("not a directory")
    result = taskdash("nsqd", env=Nsqd(tmp_path).env, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    errors = [json.loads(line) for line in result.stdout.splitlines() if '"error"' in line]
    assert len(errors) == 1, result.stdout
    assert errors[0]["event"] == "start_failed"
    assert errors[0]["setting"] == "daemon.data_dir"
    assert errors[0]["path"] == str(tmp_path / "var" / "nsq")


def test_publish_to_something_that_is_not_nsqd_is_one_line_exit_1(tmp_path: Path) -> None:
    """A URL that answers, but not as nsqd (here: the broker's nsqlookupd port)."""
    lookupd = free_port()
    with running_nsqd(tmp_path, TASKDASH_NSQ__EMBEDDED_LOOKUPD_PORT=str(lookupd)):
        url = f"http://127.0.0.1:{lookupd}"
        result = taskdash("publish", "heartbeat", "--id", "svc-1", "--nsqd-http", url)
    assert result.returncode == 1
    assert one_line(result.stderr).startswith(f"taskdash: nsqd at {url} answered 404")


def test_nsqd_sighup_reopens_the_log_file_and_keeps_running(tmp_path: Path) -> None:
    """logrotate moves the file away and sends SIGHUP: a new file, and no 'killed by SIGHUP'."""
    log_path = tmp_path / "nsqd.log"
    with running_nsqd(tmp_path, TASKDASH_LOG__FILE=str(log_path)) as broker:
        wait_for(lambda: "nsqd_ready" in log_path.read_text())
        log_path.rename(tmp_path / "nsqd.log.1")
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: log_path.exists() and "reload_requested" in log_path.read_text())
        assert http_get(f"{broker.url}/ping")[0] == 200
        assert broker.stop() == 0
    assert "broker_stopped" in log_path.read_text()
    assert "nsqd_ready" not in log_path.read_text()


def test_check_config_finds_the_log_file_run_could_not_open(tmp_path: Path) -> None:
    """check-config agrees with run: the same line, exit 2, and nothing created."""
    target = tmp_path / "no-such-dir" / "taskdash.log"
    env = clean_env(TASKDASH_LOG__FILE=str(target))
    checked = taskdash("check-config", env=env)
    assert checked.returncode == 2
    assert one_line(checked.stderr) == (
        f"taskdash: config error: log.file: cannot open {target}: No such file or directory "
        "(in TASKDASH_LOG__FILE)"
    )
    fine = tmp_path / "taskdash.log"
    assert taskdash("check-config", env=clean_env(TASKDASH_LOG__FILE=str(fine))).returncode == 0
    assert not fine.exists()


def test_publish_heartbeat_count_without_every_sends_that_many(tmp_path: Path) -> None:
    with running_nsqd(tmp_path) as broker:
        result = taskdash(
            "publish", "heartbeat", "--id", "svc-3", "--count", "3", "--nsqd-http", broker.url
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "published 3 heartbeat(s) for svc-3 to taskdash.heartbeat"
        assert broker.topic("taskdash.heartbeat")["message_count"] == 3  # type: ignore[index]
