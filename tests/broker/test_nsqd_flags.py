"""`taskdash nsqd` / `taskdash nsqlookupd` take nsqd's and nsqlookupd's own flags; bad ones fail."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest
from broker_process import clean_env
from support import VENV_BIN

from taskdash.nsq.broker.nsqd_flags import (
    FlagError,
    add_arguments,
    broker_overrides,
    go_duration,
    host_port,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("60s", 60.0), ("15m0s", 900.0), ("1h", 3600.0), ("1m30s", 90.0),
     ("500ms", 0.5), ("1.5s", 1.5), ("250us", 0.00025), ("+2s", 2.0)],
)  # fmt: skip
def test_go_durations(text: str, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "1d", "s", "1m-1s", "-1s", "1 s", "ms"])
def test_not_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        go_duration(text)


def test_host_port() -> None:
    assert host_port("127.0.0.1:4150") == ("127.0.0.1", 4150)
    assert host_port(":4150") == ("0.0.0.0", 4150)
    assert host_port("[::1]:4150") == ("::1", 4150)
    for bad in ("4150", "host:", "host:port", "h:70000"):
        with pytest.raises(ValueError):
            host_port(bad)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_override_the_settings(tmp_path: Path) -> None:
    defaults = {"host": "127.0.0.1", "tcp_port": 4150, "http_port": 4151, "lookupd_http_port": 4161,
                "data_dir": tmp_path, "broadcast_address": "127.0.0.1"}  # fmt: skip
    args = parse(
        "--tcp-address=10.0.0.5:5150",
        "-http-address",
        "10.0.0.5:5151",
        "--data-path=d",
        "--mem-queue-size=0",
        "--sync-timeout=500ms",
        "--msg-timeout=90s",
        "--max-msg-timeout=30m",
        "--max-req-timeout=2h",
        "--max-rdy-count=100",
        "--max-msg-size=2048",
        "--max-body-size=4096",
        "--lookupd-tcp-address=l1:4160",
        "--lookupd-tcp-address=l2:4160",
    )
    got = broker_overrides(args, defaults)
    assert got == defaults | {
        "host": "10.0.0.5",
        "tcp_port": 5150,
        "http_port": 5151,
        "broadcast_address": "10.0.0.5",
        "data_dir": Path("d").absolute(),
        "mem_queue_size": 0,
        "sync_timeout_ms": 500,
        "msg_timeout_ms": 90000,
        "max_msg_timeout_ms": 1800000,
        "max_req_timeout_ms": 7200000,
        "max_rdy_count": 100,
        "max_msg_size": 2048,
        "max_body_size": 4096,
        "lookupd_tcp_addresses": ["l1:4160", "l2:4160"],
        "lookupd_http_port": None,  # a real nsqlookupd answers: no lookupd HTTP of our own
    }
    assert broker_overrides(parse(), defaults) == defaults
    with pytest.raises(FlagError, match="same host"):
        broker_overrides(parse("--tcp-address=a:1", "--http-address=b:2"), defaults)


def taskdash(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "taskdash"), *args],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["nsqd", "--statsd-address=x:1"], "nsqd: nsqd flag --statsd-address is not supported"),
        (["nsqd", "-node-id", "3"], "nsqd: nsqd flag --node-id is not supported"),
        (["nsqd", "--mem-queue=3"], "nsqd: unknown nsqd flag --mem-queue"),
        (["nsqd", "stray"], "nsqd: unexpected argument 'stray'"),
        (["nsqd", "--tcp-address=a:1", "--http-address=b:2"], "must use the same host"),
        (["nsqlookupd", "--log-level=debug"], "nsqlookupd flag --log-level is not supported"),
        (["nsqlookupd", "--bogus"], "nsqlookupd: unknown nsqlookupd flag --bogus"),
    ],
)
def test_refused_flags_are_one_line(args: list[str], line: str) -> None:
    result = taskdash(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and line in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["nsqd", "--mem-queue-size=-1"], "--mem-queue-size"),
        (["nsqd", "--msg-timeout=60"], "--msg-timeout"),
        (["nsqd", "--tcp-address=4150"], "--tcp-address"),
        (["nsqlookupd", "--inactive-producer-timeout=0s"], "--inactive-producer-timeout"),
    ],
)
def test_bad_values_name_the_flag(args: list[str], flag: str) -> None:
    result = taskdash(*args)
    assert result.returncode == 2
    assert f"error: argument {flag}" in result.stderr and "invalid value" in result.stderr
