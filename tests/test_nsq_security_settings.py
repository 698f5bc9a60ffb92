"""[nsq] options toward nsqd (TLS, AUTH, compression, timeouts): defaults, what pynsq is given,
and every impossible combination refused in one line naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from nsq_tls import Pki, make_pki

from taskdash.daemon import nsqd_http_address
from taskdash.errors import ConfigError
from taskdash.nsq.readers import connection_options
from taskdash.settings import NsqSettings, load

REAL = "nsqd_tcp_addresses = ['nsqd-1:4150']\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def nsq(tmp_path: Path, toml: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "taskdash.toml"
    path.write_text(f"[nsq]\n{toml}\n")
    return load(path, env=env or {}).nsq


def refused(tmp_path: Path, toml: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        nsq(tmp_path, toml, env)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_defaults_ask_nsqd_for_nothing_new() -> None:
    cfg = load(env={}).nsq
    assert (cfg.tls, cfg.tls_verify, cfg.compression, cfg.deflate_level) == (False, True, "none", 6)
    assert (cfg.msg_timeout, cfg.heartbeat_interval, cfg.user_agent) == (0.0, 30, "taskdash")
    assert connection_options(cfg) == {"heartbeat_interval": 30, "user_agent": "taskdash"}


def test_everything_reaches_pynsq(tmp_path: Path, pki: Pki) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-the-file\n")
    secret_file.chmod(0o600)
    cfg = nsq(
        tmp_path,
        REAL + f"tls = true\ntls_ca_file = '{pki.ca}'\ntls_cert_file = '{pki.client_cert}'\n"
        f"tls_key_file = '{pki.client_key}'\ncompression = 'deflate'\ndeflate_level = 3\n"
        f"msg_timeout = 120\nheartbeat_interval = 10\nuser_agent = 'td/1'\n"
        f"auth_secret_file = '{secret_file}'",
    )
    options = connection_options(cfg)
    context = options.pop("tls_context")
    assert context.check_hostname is True
    assert options == {
        "heartbeat_interval": 10,
        "user_agent": "td/1",
        "msg_timeout": 120.0,
        "tls_v1": True,
        "deflate": True,
        "deflate_level": 3,
        "auth_secret": "from-the-file",
    }


def test_the_secret_from_the_environment_is_never_shown(tmp_path: Path) -> None:
    cfg = nsq(tmp_path, REAL, {"TASKDASH_NSQ__AUTH_SECRET": "env-secret-42"})
    assert cfg.secret() == "env-secret-42"
    assert connection_options(cfg)["auth_secret"] == "env-secret-42"
    assert "env-secret-42" not in repr(cfg) and "env-secret-42" not in str(load(env={
        "TASKDASH_NSQ__AUTH_SECRET": "env-secret-42",
        "TASKDASH_NSQ__NSQD_TCP_ADDRESSES": "['h:1']",
    }))  # fmt: skip


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("tls = true", "nsq.tls: needs a real nsqd: the embedded broker has neither TLS nor AUTH"),
        ("auth_secret = 'x'", "nsq.auth_secret: needs a real nsqd"),
        (REAL + "tls = true\ntls_key_file = '/k.pem'", "nsq.tls_key_file: needs tls_cert_file"),
        (REAL + "tls_ca_file = '/ca.pem'", "nsq.tls_ca_file: has no use without TLS"),
        (
            REAL + "tls = true\ntls_ca_file = '/nonexistent/ca.pem'",
            "nsq.tls_ca_file: cannot be used",
        ),
        (REAL + "compression = 'lz4'", "nsq.compression: Expected one of none, deflate, snappy"),
        (REAL + "deflate_level = 10", "nsq.deflate_level: Expected `int` <= 9"),
        (REAL + "msg_timeout = 0.5", "nsq.msg_timeout: must be 0 (nsqd's default) or 1 to 900"),
        (REAL + "msg_timeout = 1000", "nsq.msg_timeout: Expected `float` <= 900"),
        (
            REAL + "msg_timeout = 2\nheartbeat_flush_interval = 1",
            "nsq.msg_timeout: must be more than twice heartbeat_flush_interval",
        ),
        (REAL + "heartbeat_interval = 61", "nsq.heartbeat_interval: Expected `int` <= 60"),
        (REAL + "user_agent = ''", "nsq.user_agent: Expected `str` of length >= 1"),
        (
            REAL + "auth_secret = 'a'\nauth_secret_file = '/s'",
            "nsq.auth_secret: must be empty when auth_secret_file is set",
        ),
        (REAL + "auth_secret_file = '/nonexistent'", "nsq.auth_secret_file: cannot be read"),
    ],
)
def test_impossible_combinations_are_one_line(tmp_path: Path, toml: str, expected: str) -> None:
    assert expected in refused(tmp_path, toml)


def test_a_key_that_does_not_match_its_certificate(tmp_path: Path, pki: Pki) -> None:
    toml = (
        REAL + f"tls = true\ntls_cert_file = '{pki.client_cert}'\ntls_key_file = '{pki.rogue_key}'"
    )
    assert "nsq.tls_cert_file: cannot be used with tls_key_file" in refused(tmp_path, toml)


def test_a_secret_file_others_can_read_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("visible-secret")
    path.chmod(0o644)
    message = refused(tmp_path, REAL + f"auth_secret_file = '{path}'")
    assert "readable by others (mode 644): chmod 600" in message
    assert "visible-secret" not in message
    path.chmod(0o600)
    path.write_text("\n")
    assert "is empty" in refused(tmp_path, REAL + f"auth_secret_file = '{path}'")


def test_https_publisher_alone_may_use_the_tls_files(tmp_path: Path, pki: Pki) -> None:
    cfg = nsq(
        tmp_path,
        REAL + f"nsqd_http_address = 'https://nsqd-1:4152'\ntls_ca_file = '{pki.ca}'",
    )
    assert cfg.tls is False and cfg.tls_ca_file == str(pki.ca)


def check_config(*pre: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``taskdash check-config`` in a fresh interpreter (``pre``: statements run first)."""
    code = ";".join(
        [*pre, "from taskdash.cli import main", "raise SystemExit(main(['check-config']))"]
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("TASKDASH_")}, **env},
    )


def test_check_config_refuses_snappy_without_its_library() -> None:
    env = {"TASKDASH_NSQ__COMPRESSION": "snappy"}
    # the library missing, as on an install without the `snappy` extra
    result = check_config("import sys", "sys.modules['snappy'] = None", **env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "taskdash: config error: nsq.compression: snappy needs python-snappy: "
        "pip install 'taskdash[snappy]' (in TASKDASH_NSQ__COMPRESSION)"
    )
    assert check_config(**env).returncode == 0  # installed (the test extra has it)


@pytest.mark.parametrize(
    ("nsq", "expected"),
    [
        ({"nsqd_tcp_addresses": ["nsqd-1:4150", "nsqd-2:4150"]}, "http://nsqd-1:4151"),
        ({"nsqd_tcp_addresses": ["nsqd-1:4150"], "tls": True}, "https://nsqd-1:4152"),
        (
            {
                "nsqd_tcp_addresses": ["nsqd-1:4150"],
                "tls": True,
                "nsqd_http_address": "https://n:9",
            },
            "https://n:9",
        ),
        ({"lookupd_http_addresses": ["http://lookupd:4161"]}, ""),
    ],
)
def test_the_status_publishers_nsqd_address(nsq: dict[str, object], expected: str) -> None:
    """Derived from the first nsqd; with TLS on its HTTPS port (nsqd refuses plain HTTP then)."""
    assert nsqd_http_address(NsqSettings(**nsq)) == expected  # type: ignore[arg-type]
