"""The cookie secret: configured, else generated once under the data dir with mode 0600."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from taskdash.cookie_secret import FILE_NAME, cookie_secret
from taskdash.errors import ConfigError
from taskdash.settings import Settings, load


def settings_for(data_dir: Path, **env: str) -> Settings:
    return load(env={"TASKDASH_DAEMON__DATA_DIR": str(data_dir), **env})


def test_configured_secret_wins_and_no_file_is_made(tmp_path: Path) -> None:
    secret = "s" * 40
    settings = settings_for(tmp_path, TASKDASH_WEB__COOKIE_SECRET=secret)
    assert cookie_secret(settings) == secret
    assert not (tmp_path / FILE_NAME).exists()


def test_generated_once_with_mode_0600_and_kept(tmp_path: Path) -> None:
    data = tmp_path / "new" / "var"  # a data dir that does not exist yet
    first = cookie_secret(settings_for(data))
    path = data / FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 64 and path.read_text().strip() == first
    assert cookie_secret(settings_for(data)) == first
    assert os.listdir(data) == [FILE_NAME], "no temporary file left behind"


def test_daemons_starting_together_agree_on_one(tmp_path: Path) -> None:
    found: list[str] = []
    start = threading.Barrier(8)

    def one() -> None:
        start.wait()
        found.append(cookie_secret(settings_for(tmp_path)))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(found) == 8 and len(set(found)) == 1
    assert os.listdir(tmp_path) == [FILE_NAME]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_a_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / FILE_NAME
    path.write_text("x" * 64)
    path.chmod(mode)
    with pytest.raises(ConfigError) as info:
        cookie_secret(settings_for(tmp_path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert f"mode {mode:04o}" in message and "chmod 600" in message


def test_an_empty_or_short_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.write_text("short\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="no usable cookie secret"):
        cookie_secret(settings_for(tmp_path))


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("y" * 64)
    target.chmod(0o600)
    (tmp_path / FILE_NAME).symlink_to(target)
    with pytest.raises(ConfigError, match="cannot read the cookie secret"):
        cookie_secret(settings_for(tmp_path))


def test_a_short_configured_secret_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"TASKDASH_WEB__COOKIE_SECRET": "short"})
    assert "web.cookie_secret: must be at least 32 characters" in str(info.value)
    assert "TASKDASH_WEB__COOKIE_SECRET" in str(info.value)
