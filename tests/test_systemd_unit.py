"""The shipped systemd unit is valid for the systemd on this machine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from support import VENV_BIN

UNIT = Path(__file__).resolve().parent.parent / "config" / "taskdash.service"


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is required (.ci/run installs the systemd package)"
    text = UNIT.read_text().replace("/opt/taskdash/.venv/bin/taskdash", str(VENV_BIN / "taskdash"))
    unit = tmp_path / "taskdash.service"
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
