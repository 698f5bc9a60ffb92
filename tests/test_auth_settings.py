"""The [web] login settings: defaults, and each bad value as one line naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskdash.errors import ConfigError
from taskdash.settings import load


def test_defaults() -> None:
    web = load(env={}).web
    assert (web.cookie_secret, web.secure_cookies) == ("", False)
    assert (web.session_ttl, web.session_idle_timeout) == (43200.0, 3600.0)
    assert (web.login_user_delay_after, web.login_user_lock_after) == (3, 10)
    assert (web.login_address_delay_after, web.login_address_lock_after) == (10, 50)
    assert (web.login_delay_initial, web.login_delay_max, web.login_lock_time) == (1.0, 60.0, 900.0)
    assert (web.login_window, web.audit_ttl_days) == (900.0, 90.0)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("cookie_secret = 'short'", "web.cookie_secret: must be at least 32 characters"),
        (
            "session_ttl = 600\nsession_idle_timeout = 900",
            "web.session_idle_timeout: must be at most session_ttl",
        ),
        ("session_ttl = 0", "web.session_ttl: Expected `float` > 0.0"),
        ("session_ttl = 2592001", "web.session_ttl: Expected `float` <= 2592000.0"),
        (
            "login_delay_initial = 5\nlogin_delay_max = 2",
            "web.login_delay_max: must be >= login_delay_initial",
        ),
        (
            "login_user_delay_after = 5\nlogin_user_lock_after = 4",
            "web.login_user_lock_after: must be >= login_user_delay_after",
        ),
        (
            "login_address_delay_after = 60",
            "web.login_address_lock_after: must be >= login_address_delay_after",
        ),
        ("login_user_lock_after = 0", "web.login_user_lock_after: Expected `int` >= 1"),
        ("audit_ttl_days = 0", "web.audit_ttl_days: Expected `float` > 0.0"),
        ("secure_cookies = 'yes'", "web.secure_cookies: Expected `bool`, got `str`"),
        ("session_tll = 5", "web.session_tll: unknown key"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "taskdash.toml"
    path.write_text(f"[web]\n{toml}\n")
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert expected in str(info.value) and str(path) in str(info.value)


def test_check_config_names_the_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "taskdash", "check-config"],
        capture_output=True,
        text=True,
        check=False,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("TASKDASH_")},
            "TASKDASH_WEB__SESSION_IDLE_TIMEOUT": "86400",
        },
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "taskdash: config error: web.session_idle_timeout: must be at most session_ttl "
        "(in TASKDASH_WEB__SESSION_IDLE_TIMEOUT)"
    )
