"""Helpers shared by the tests: free ports, real servers started on loopback, polling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from taskdash.models import TaskMetaData
from taskdash.store import Store, tokens
from taskdash.store.embedded import die_with_parent, nx_command, port_open
from taskdash.store.tasks import ApplyResult, ServiceListing, apply_listings, load_known
from taskdash.store.users import UserExists, add_user

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free a moment ago on 127.0.0.1.

    All are bound at once before any is released: ports taken one by one (free_port() in a
    row) can repeat, and a daemon given one port for two listeners refuses to start.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, every: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(every)


async def async_wait_for(
    predicate: Callable[[], Any], timeout: float = 15.0, every: float = 0.05
) -> Any:
    """Like :func:`wait_for` for async predicates (coroutine functions allowed)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        await asyncio.sleep(every)


def http_get(url: str, timeout: float = 5.0, token: str | None = None) -> tuple[int, Any]:
    """GET a JSON endpoint with a real HTTP client; (status, parsed body or text).

    ``token``: sent as ``Authorization: Bearer`` (the API needs a login or a token: see
    :func:`daemon_token`).
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        ) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except OSError:
        return 0, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


async def new_daemon_token(env: dict[str, str], name: str = "tester") -> str:
    """A bearer token for the API of a ``taskdash run`` started with ``env`` (its MongoDB up):
    a user ``name`` (created unless it exists) and a new token of it, written to its store."""
    port = env.get("TASKDASH_MONGODB__EMBEDDED_PORT", "27017")
    uri = env.get("TASKDASH_MONGODB__URI") or f"mongodb://127.0.0.1:{port}/?directConnection=true"
    store = Store(
        uri, env.get("TASKDASH_MONGODB__DATABASE", "taskdash"), server_selection_timeout=20
    )
    try:
        with contextlib.suppress(UserExists):
            await add_user(store, name, f"pw-{name}-0123456789")
        secret, _ = await tokens.create(store, name, "tests", now=datetime.now(UTC))
        return secret
    finally:
        await store.close()


def daemon_token(env: dict[str, str], name: str = "tester") -> str:
    """:func:`new_daemon_token` for a test without an event loop of its own."""
    return asyncio.run(new_daemon_token(env, name))


def http_head(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """HEAD a URL; (status, body bytes received: a HEAD answer must have none)."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return 0, b""


def nsqd_channel_stats(http_address: str, topic: str, channel: str) -> dict[str, Any]:
    """One channel's counters from nsqd's ``/stats?format=json`` ({} until it exists)."""
    status, stats = http_get(f"{http_address}/stats?format=json&topic={topic}")
    if status != 200:
        return {}
    for entry in stats.get("topics") or []:
        for found in entry.get("channels", []):
            if entry["topic_name"] == topic and found["channel_name"] == channel:
                return dict(found)
    return {}


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a stopped process counts as alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(") ", 1)[1][:1] != "Z"


class NxServer:
    """One nx-27017 process on a free port, with its own data file, log and pid file."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                nx_command(),
                "--data-dir",
                str(self.directory),
                "-p",
                str(self.port),
                "--log-file",
                str(self.directory / "nx.log"),
                "--pid-file",
                str(self.directory / "nx.pid"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # a test run killed midway (Ctrl-C twice, a timeout) must not leave servers behind
            preexec_fn=die_with_parent,
        )
        wait_for(lambda: port_open("127.0.0.1", self.port), timeout=20)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextmanager
def nx_server(directory: Path) -> Iterator[NxServer]:
    """Run an nx-27017 server for the duration of the block."""
    server = NxServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def daemon_env(tmp: Path, **overrides: str | int) -> dict[str, str]:
    """Environment for a ``taskdash run`` subprocess on free ports, data under ``tmp``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKDASH_")}
    web, tcp, mongodb, nsqd_tcp, nsqd_http, lookupd = free_ports(6)
    env.update(
        TASKDASH_DAEMON__DATA_DIR=str(tmp / "var"),
        TASKDASH_WEB__PORT=str(web),
        TASKDASH_TCP__PORT=str(tcp),
        TASKDASH_MONGODB__EMBEDDED_PORT=str(mongodb),
        TASKDASH_NSQ__EMBEDDED_TCP_PORT=str(nsqd_tcp),
        TASKDASH_NSQ__EMBEDDED_HTTP_PORT=str(nsqd_http),
        TASKDASH_NSQ__EMBEDDED_LOOKUPD_PORT=str(lookupd),
        TASKDASH_LOG__FORMAT="json",
    )
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def pids_with_arg(fragment: str) -> list[int]:
    """Processes whose command line contains ``fragment`` (e.g. a test's own data path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split(") ", 1)[1][:1]
        except OSError:
            continue
        if fragment in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


class DaemonProcess:
    """``taskdash run`` as a user runs it: a subprocess with its own env, output to a file."""

    def __init__(
        self,
        tmp: Path,
        env: dict[str, str],
        config: Path | None = None,
        *,
        stderr_apart: bool = False,
    ) -> None:
        self.tmp = tmp
        self.env = env
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = tmp / f"daemon-{time.monotonic_ns()}.log"
        #: with ``stderr_apart``, stderr (the console, not the log) goes here instead
        self.stderr = self.output.with_suffix(".stderr") if stderr_apart else None

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.env['TASKDASH_WEB__PORT']}"

    def start(self) -> DaemonProcess:
        args = [str(VENV_BIN / "taskdash"), "run"]
        if self.config:
            args += ["--config", str(self.config)]
        with open(self.output, "wb") as out, open(self.stderr or os.devnull, "wb") as err:
            self.proc = subprocess.Popen(
                args,
                env=self.env,
                stdout=out,
                stderr=err if self.stderr else subprocess.STDOUT,
                cwd=self.tmp,
            )
        return self

    def console(self) -> str:
        """What went to stderr (with ``stderr_apart``)."""
        assert self.stderr is not None
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        def ready() -> Any:
            assert self.proc is not None and self.proc.poll() is None, self.logs()
            status, body = http_get(f"{self.web}/readyz")
            return body if status == 200 else None

        return wait_for(ready, timeout=timeout, every=0.1)

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not stop within {timeout}s\n{self.logs()}") from None

    def sighup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def event_names(self) -> list[str]:
        return [e.get("event", "") for e in self.events()]

    def logs(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


@contextmanager
def running_daemon(
    tmp: Path, env: dict[str, str], ready: bool = True, config: Path | None = None
) -> Iterator[DaemonProcess]:
    """A started daemon (ready unless told otherwise), always stopped afterwards."""
    daemon = DaemonProcess(tmp, env, config=config).start()
    try:
        if ready:
            daemon.wait_ready()
        yield daemon
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.stop()


async def harvest(store: Store, service_id: str, *tasks: TaskMetaData, now_ms: int) -> ApplyResult:
    """Store a service's listing exactly as the fetcher does (on a cold cache)."""
    known = (await load_known(store, [service_id]))[service_id]
    return await apply_listings(store, [ServiceListing(service_id, list(tasks), known)], now_ms)


def periodic_env(mongo_uri: str, **overrides: str) -> dict[str, str]:
    """Environment for a ``taskdash periodic`` on free ports and a database of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKDASH_")}
    grpc_port, http_port = free_ports(2)
    env.update(
        TASKDASH_MONGODB__URI=mongo_uri,
        TASKDASH_MONGODB__DATABASE=f"p_{uuid.uuid4().hex[:12]}",
        TASKDASH_PERIODIC__GRPC_PORT=str(grpc_port),
        TASKDASH_PERIODIC__HTTP_PORT=str(http_port),
        TASKDASH_PERIODIC__NODE_ID="node-p",
        TASKDASH_LOG__FORMAT="json",
    )
    env.update(overrides)
    return env
