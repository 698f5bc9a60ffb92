"""``taskdash run`` as a user runs it: the TCP interface next to the HTTP API, and the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from support import VENV_BIN, daemon_env, daemon_token, http_get, running_daemon
from tcp_helpers import OK, RECORD

from taskdash.tcp.client import TcpClient
from taskdash.tcp.protocol import FrameDecoder, pack


def tcp_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "taskdash"), "tcp", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def pipelined_then_stopped(port: int, daemon_stop: object) -> list[int]:
    """Registers written in one go; SIGTERM once the first is answered; every one is answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(pack(2, {"RequestID": "Register"}, {"id": f"s{i}"}) for i in range(10)))
    await writer.drain()
    data = await reader.read(65536)
    await asyncio.get_running_loop().run_in_executor(None, daemon_stop)  # type: ignore[arg-type]
    while chunk := await reader.read(65536):
        data += chunk
    writer.close()
    frames, error = FrameDecoder(1 << 20).feed(data)
    assert error is None
    return [json.loads(frame.body)["errid"] for frame in frames]


def test_tcp_registered_task_in_api_tasks_readyz_cli_and_clean_stop(tmp_path: Path) -> None:
    env = daemon_env(tmp_path, TASKDASH_DAEMON__SHUTDOWN_TIMEOUT=10)
    port = int(env["TASKDASH_TCP__PORT"])
    addr = f"127.0.0.1:{port}"
    with running_daemon(tmp_path, env) as daemon:
        _, ready = http_get(f"{daemon.web}/readyz")
        assert ready["components"]["tcp"]["ready"] is True
        assert ready["components"]["tcp"]["port"] == port

        async def register() -> dict[str, object]:
            async with TcpClient("127.0.0.1", port) as c:
                return await c.register(RECORD)

        assert asyncio.run(register()) == {"id": "1234567", **OK}
        status, body = http_get(f"{daemon.web}/api/v1/tasks", token=daemon_token(env))
        assert status == 200
        (task,) = body["tasks"]
        assert (task["id"], task["name"], task["service_id"], task["start_time"]) == (
            "1234567",
            "abc",
            None,
            "12:00",
        )
        assignment = task["assignment"]
        assert (assignment["user"], assignment["group_id"], assignment["source"]) == (
            "wsg",
            "mx",
            "tcp",
        )
        done = tcp_cli(env, "update", "--addr", addr, "--id", "1234567", "--status", "finish")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"id": "1234567", **OK}
        found = tcp_cli(env, "find", "--addr", addr, "--id", "1234567")
        assert json.loads(found.stdout)["status"] == "finish"
        missing = tcp_cli(env, "find", "--addr", addr, "--id", "nope")
        assert missing.returncode == 1 and "不存在该任务id" in missing.stdout
        assert tcp_cli(env, "find", "--addr", "nohostport", "--id", "x").returncode == 2
        errids = asyncio.run(pipelined_then_stopped(port, daemon.stop))
        assert errids == [0] * 10, "requests already read are answered before the stop"
    events = [e["event"] for e in daemon.events()]
    assert "tcp_stopped" in events
    unreachable = tcp_cli(env, "find", "--addr", addr, "--id", "x")
    assert unreachable.returncode == 1 and "cannot connect" in unreachable.stderr


def test_tcp_help_is_written_for_users() -> None:
    for command in (["tcp"], ["tcp", "register"], ["tcp", "update"], ["tcp", "find"]):
        result = subprocess.run(
            [str(VENV_BIN / "taskdash"), *command, "--help"], capture_output=True, text=True
        )
        assert result.returncode == 0 and result.stderr == ""
        assert f"taskdash {' '.join(command)}" in result.stdout.split("Examples:")[1]
