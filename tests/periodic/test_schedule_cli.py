"""``taskdash periodic schedule ...`` against a real periodic HTTP API on loopback."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from support import free_port

from taskdash.cli import main


async def cli(*argv: str) -> int:
    """Run the command line in a thread (the server answers on this test's event loop)."""
    return await asyncio.to_thread(main, ["periodic", *argv])


@pytest.fixture
async def target(make_api: Any, tmp_path: Path) -> tuple[Any, list[str], str]:
    """A node's HTTP API with a started queue, the arguments that reach it, the secret."""
    api = await make_api()
    secret = await api.setup()
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret + "\n")
    common = ["--service", "svc", "--queue", "q1", "--secret-file", str(secret_file)]
    return api, [*common, "--url", api.base], secret


def last_json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


async def test_create_list_show_pause_resume_delete(
    target: tuple[Any, list[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, args, _ = target
    code = await cli(
        "schedule", "create", *args, "--id", "nightly", "--cron", "30 2 * * *",
        "--timezone", "Europe/Paris", "--task-type", "report", "--task-data", '{"n": 1}',
        "--misfire", "skip", "--misfire-grace", "30", "--jitter", "5",
    )  # fmt: skip
    assert code == 0
    created = last_json(capsys)
    assert (created["schedule_id"], created["cron"], created["timezone"]) == (
        "nightly",
        "30 2 * * *",
        "Europe/Paris",
    )
    assert (created["task_data"], created["misfire"], created["jitter"]) == ({"n": 1}, "skip", 5)
    assert await cli("schedule", "create", *args, "--interval", "10", "--paused") == 0
    generated = last_json(capsys)
    assert generated["state"] == "paused" and generated["task_data"] == {}

    assert await cli("schedule", "list", *args, "--limit", "1") == 0
    assert [s["schedule_id"] for s in last_json(capsys)["schedules"]] == ["nightly"]
    assert await cli("schedule", "show", "nightly", *args) == 0
    assert last_json(capsys)["last_run"] is None
    assert await cli("schedule", "runs", "nightly", *args, "--limit", "5") == 0
    assert last_json(capsys) == {"runs": [], "next_before": None}
    assert await cli("schedule", "runs", "nightly", *args, "--before", "1") == 0
    assert last_json(capsys)["runs"] == []
    assert await cli("schedule", "pause", "nightly", *args) == 0
    assert last_json(capsys)["state"] == "paused"
    assert await cli("schedule", "resume", "nightly", *args) == 0
    assert last_json(capsys)["state"] == "active"
    assert await cli("schedule", "delete", "nightly", *args) == 0
    assert last_json(capsys) == {"success": True}
    assert await cli("schedule", "show", "nightly", *args) == 1
    assert "not_found: queue 'q1' of service 'svc' has no schedule" in capsys.readouterr().err


async def test_refusals_and_bad_arguments(
    target: tuple[Any, list[str], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, args, _ = target
    assert await cli("schedule", "create", *args, "--cron", "61 * * * *") == 1
    assert "invalid_argument: cron '61 * * * *' is not valid" in capsys.readouterr().err
    assert await cli("schedule", "create", *args, "--interval", "5", "--task-data", "{x") == 2
    assert "--task-data is not JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # argparse: one of --interval, --cron
        await cli("schedule", "create", *args, "--interval", "5", "--cron", "* * * * *")
    assert exited.value.code == 2
    wrong = [a if a != args[5] else str(tmp_path / "none") for a in args]
    assert await cli("schedule", "list", *wrong) == 2
    assert "cannot read the secret" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert await cli("schedule", "list", *[a if a != args[5] else str(empty) for a in args]) == 2
    assert "no secret in" in capsys.readouterr().err
    other = tmp_path / "other"
    other.write_text("not-the-secret")
    assert await cli("schedule", "list", *[a if a != args[5] else str(other) for a in args]) == 1
    assert "unauthenticated: unknown service 'svc' or wrong secret" in capsys.readouterr().err


async def test_unreachable_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "s"
    secret.write_text("x")
    url = f"http://127.0.0.1:{free_port()}"
    argv = ["--service", "s", "--queue", "q", "--secret-file", str(secret), "--url", url]
    assert await cli("schedule", "list", *argv) == 1
    assert "cannot reach the periodic service" in capsys.readouterr().err


async def test_config_and_secret_on_stdin(
    target: tuple[Any, list[str], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The address comes from [periodic] of --config, given before or after ``schedule``."""
    api, _, secret = target
    port = api.base.rsplit(":", 1)[1]
    config = tmp_path / "taskdash.toml"
    config.write_text(f'[periodic]\nhttp_host = "0.0.0.0"\nhttp_port = {port}\n')
    stdin_args = ["--service", "svc", "--queue", "q1", "--secret-file", "-"]
    monkeypatch.setattr("sys.stdin", io.StringIO(secret))
    assert await cli("--config", str(config), "schedule", "list", *stdin_args) == 0
    assert last_json(capsys) == {"schedules": [], "next_after": None}
    monkeypatch.setattr("sys.stdin", io.StringIO(secret))
    assert await cli("schedule", "list", *stdin_args, "-c", str(config)) == 0
