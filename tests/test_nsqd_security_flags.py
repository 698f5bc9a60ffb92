"""``taskdash nsqd``'s TLS, compression and AUTH flags: nsqd's names, syntax and refusals."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest
from support import VENV_BIN, daemon_env

from taskdash.nsq.broker.flags import add_security_flags, go_duration, security_options
from taskdash.nsq.broker.options import SecurityOptions, TLSRequired


def parse(*argv: str) -> tuple[SecurityOptions, int | None]:
    parser = argparse.ArgumentParser()
    add_security_flags(parser)
    return security_options(parser.parse_args(argv))


def test_defaults_are_nsqd_defaults() -> None:
    options, https = parse()
    assert options == SecurityOptions()
    assert (options.deflate, options.snappy, options.max_deflate_level) == (True, None, 6)
    assert https is None


def test_go_flag_syntax() -> None:
    options, https = parse(
        "--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-required", "--snappy=false",
        "--deflate=0", "--max-deflate-level", "9", "--auth-http-address", "a:1",
        "--auth-http-address", "https://b/auth", "--http-client-connect-timeout", "1m30s",
        "--http-client-request-timeout=500ms", "--tls-min-version", "tls1.2",
    )  # fmt: skip
    assert options.tls_required is TLSRequired.REQUIRED
    assert (options.snappy, options.deflate, options.max_deflate_level) == (False, False, 9)
    assert options.auth_http_addresses == ("a:1", "https://b/auth")
    assert (options.http_client_connect_timeout, options.http_client_request_timeout) == (90, 0.5)
    assert https == 4152  # nsqd's default HTTPS port once it has a certificate
    assert parse("--tls-cert", "c", "--tls-key", "k", "--tls-required=tcp-https")[0].tls_required
    assert parse("--tls-required=false")[0].tls_required is TLSRequired.NOT_REQUIRED


def test_bad_durations() -> None:
    for text in ("", "5", "1x", "s"):
        with pytest.raises(argparse.ArgumentTypeError):
            go_duration(text)


def nsqd(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "taskdash"), "nsqd", *flags],
        env=daemon_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--tls-key", "k.pem"], "nsqd: --tls-key without --tls-cert: both are needed for TLS"),
        (
            ["--tls-required"],
            "nsqd: cannot require TLS client connections without TLS key and cert",
        ),
        (["--tls-client-auth-policy", "require"], "nsqd: cannot require TLS client connections"),
        (["--max-deflate-level", "12"], "nsqd: --max-deflate-level must be [1,9]"),
        (
            ["--tls-cert", "missing.pem", "--tls-key", "missing.key"],
            "nsqd: --tls-cert/--tls-key: cannot load missing.pem with missing.key: "
            "No such file or directory",
        ),
        (
            ["--https-address", "127.0.0.1:0"],
            "nsqd: --https-address needs --tls-cert and --tls-key",
        ),
    ],
)
def test_refusals_are_one_line_exit_2(tmp_path: Path, flags: list[str], line: str) -> None:
    result = nsqd(tmp_path, *flags)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"taskdash: {line}"), result.stderr
