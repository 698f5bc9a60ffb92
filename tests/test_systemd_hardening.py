"""The units' account, watchdog and hardening: read from the files, and tried where possible.

``MemoryDenyWriteExecute=`` is the one setting that can break a Python process (a library
mapping memory both writable and executable), so both commands are run under the kernel's
own equivalent (``prctl(PR_SET_MDWE)``, inherited across exec) and must serve and stop cleanly.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import VENV_BIN, daemon_env, http_get, periodic_env, wait_for

from taskdash.settings import Settings

CONFIG = Path(__file__).resolve().parent.parent / "config"
UNITS = {name: CONFIG / f"{name}.service" for name in ("taskdash", "taskdash-periodic")}
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections → keys → every value given (systemd allows a key several times)."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def service(name: str) -> dict[str, list[str]]:
    return parse_unit(UNITS[name].read_text())["Service"]


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
}


@pytest.mark.parametrize("name", UNITS)
def test_hardening_keys_are_set(name: str) -> None:
    unit = service(name)
    missing = {k: v for k, v in HARDENING.items() if v not in unit.get(k, [])}
    assert not missing, f"{name}: not hardened: {missing}"


@pytest.mark.parametrize("name", UNITS)
def test_a_dedicated_user_with_its_own_state_and_log_directories(name: str) -> None:
    unit = service(name)
    assert unit["User"] == ["taskdash"] and unit["Group"] == ["taskdash"]
    assert "DynamicUser" not in unit, "the installer's fixed user, see docs/operations.md"
    assert unit["StateDirectory"] == [name] and unit["LogsDirectory"] == [name]
    assert unit["WorkingDirectory"] == [f"/var/lib/{name}"]
    assert unit["UMask"] == ["0027"]


@pytest.mark.parametrize("name", UNITS)
def test_notify_watchdog_restart_and_a_stop_timeout_above_the_budget(name: str) -> None:
    unit = service(name)
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["30s"] and unit["Restart"] == ["on-failure"]
    # the process is gone within shutdown_timeout + 1 s (docs/operations.md, Shutdown)
    budget = Settings().daemon.shutdown_timeout
    assert int(unit["TimeoutStopSec"][0]) >= budget + 3
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def refuse_write_execute() -> None:
    """In the child, before exec: what MemoryDenyWriteExecute=yes imposes."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


def start_under_mdwe(tmp: Path, command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(tmp / f"{command}.log", "wb") as out:
        return subprocess.Popen(
            [str(VENV_BIN / "taskdash"), command],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            preexec_fn=refuse_write_execute,
        )


def stopped_cleanly(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.terminate()
    assert proc.wait(30) == 0, log.read_text()
    assert '"event": "daemon_stopped"' in log.read_text().splitlines()[-1]


def test_the_daemon_runs_without_writable_executable_memory(tmp_path: Path) -> None:
    env = daemon_env(tmp_path)
    web = f"http://127.0.0.1:{env['TASKDASH_WEB__PORT']}"
    proc = start_under_mdwe(tmp_path, "run", env)
    try:
        wait_for(lambda: proc.poll() is None and http_get(f"{web}/readyz")[0] == 200, 60)
        published = subprocess.run(
            [str(VENV_BIN / "taskdash"), "publish", "heartbeat", "--id", "svc-mdwe"],
            env=env, capture_output=True, timeout=60,
        )  # fmt: skip
        assert published.returncode == 0, published.stderr
    finally:
        stopped_cleanly(proc, tmp_path / "run.log")
    # the first admin's password was hashed (argon2, through cffi) under the same rule
    assert '"initial_admin_created"' in (tmp_path / "run.log").read_text()


def test_the_periodic_service_runs_without_writable_executable_memory(
    tmp_path: Path, mongo_uri: str
) -> None:
    env = periodic_env(mongo_uri)
    grpc_port, http_port = (int(env[f"TASKDASH_PERIODIC__{k}_PORT"]) for k in ("GRPC", "HTTP"))
    proc = start_under_mdwe(tmp_path, "periodic", env)
    try:
        ready = f"http://127.0.0.1:{http_port}/readyz"
        wait_for(lambda: proc.poll() is None and http_get(ready)[0] == 200, 60)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        stopped_cleanly(proc, tmp_path / "periodic.log")
