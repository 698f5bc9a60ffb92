"""The shipped systemd units are valid for the systemd on this machine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from support import VENV_BIN

CONFIG = Path(__file__).resolve().parent.parent / "config"
UNIT = CONFIG / "taskdash.service"
PERIODIC_UNIT = CONFIG / "taskdash-periodic.service"


@pytest.mark.parametrize(("path", "command"), [(UNIT, "run"), (PERIODIC_UNIT, "periodic")])
def test_unit_verifies_cleanly(tmp_path: Path, path: Path, command: str) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is required (.ci/run installs the systemd package)"
    text = path.read_text().replace("/opt/taskdash/.venv/bin/taskdash", str(VENV_BIN / "taskdash"))
    assert f" {command} --config " in text and "\nType=notify\n" in text
    unit = tmp_path / path.name
    unit.write_text(text)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    # systemd-analyze exits 0 even on unknown keys: any output at all is a finding
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result


def test_unit_is_a_notify_service_with_reload() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "KillMode=mixed"):
        assert f"\n{line}\n" in text
