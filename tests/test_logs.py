"""The structlog pipeline: stable JSON keys, console text, redaction, reopening on SIGHUP."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import structlog

from taskdash import logs
from taskdash.logs import log_each_or_summary
from taskdash.settings import LogSettings


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_have_stable_keys_first() -> None:
    out = io.StringIO()
    logs.configure(LogSettings(), "json", out)
    structlog.get_logger("taskdash.reader").info("message_stored", service_id="s1", topic="t")
    (line,) = lines(out)
    assert list(line)[:4] == ["ts", "level", "logger", "event"]
    assert line["level"] == "info" and line["event"] == "message_stored"
    assert line["logger"] == "taskdash.reader" and line["service_id"] == "s1"
    assert datetime.fromisoformat(str(line["ts"])).utcoffset().total_seconds() == 0


def test_auto_is_json_when_not_a_terminal_and_console_forced() -> None:
    out = io.StringIO()
    logs.configure(LogSettings(format="auto"), None, out)
    structlog.get_logger("x").warning("hello", topic="t")
    assert lines(out)[0]["level"] == "warning"
    out = io.StringIO()
    logs.configure(LogSettings(format="json"), "console", out)
    structlog.get_logger("x").warning("hello", topic="t")
    text = out.getvalue()
    assert "hello" in text and "topic=t" in text and not text.startswith("{")


def test_stdlib_loggers_of_dependencies_use_the_same_pipeline() -> None:
    out = io.StringIO()
    logs.configure(LogSettings(), "json", out)
    logging.getLogger("tornado.access").warning("slow %s", "request")
    (line,) = lines(out)
    assert line["event"] == "slow request" and line["logger"] == "tornado.access"
    assert line["level"] == "warning" and "ts" in line


def test_level_filters() -> None:
    out = io.StringIO()
    logs.configure(LogSettings(level="warning"), "json", out)
    structlog.get_logger("x").info("dropped")
    structlog.get_logger("x").error("kept")
    assert [line["event"] for line in lines(out)] == ["kept"]


def test_secrets_never_appear() -> None:
    out = io.StringIO()
    logs.configure(LogSettings(), "json", out)
    log = structlog.get_logger("x")
    log.info("login", user="alice", password="hunter2", api_key="k-123", session_token="t0k")
    log.info("connect", uri="mongodb://admin:s3cr3t@db1:27017/?replicaSet=rs0")
    logging.getLogger("pymongo").info("x", extra={"password": "hunter3"})
    text = out.getvalue()
    for secret in ("hunter2", "k-123", "t0k", "s3cr3t"):
        assert secret not in text
    assert "mongodb://admin:***@db1:27017" in text and '"user": "alice"' in text


def test_exceptions_are_one_json_line() -> None:
    out = io.StringIO()
    logs.configure(LogSettings(), "json", out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger("x").exception("failed", msg_id="m1")
    (line,) = lines(out)
    assert "RuntimeError: boom" in str(line["exception"]) and line["msg_id"] == "m1"


def test_log_file_is_reopened_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "taskdash.log"
    handler = logs.configure(LogSettings(file=str(path)), "json", io.StringIO())
    assert handler is not None
    structlog.get_logger("x").info("before")
    path.rename(tmp_path / "taskdash.log.1")  # what logrotate does
    handler.reopen()  # what SIGHUP triggers
    structlog.get_logger("x").info("after")
    assert json.loads((tmp_path / "taskdash.log.1").read_text())["event"] == "before"
    assert json.loads(path.read_text())["event"] == "after"


def test_log_each_or_summary_switches_to_one_line_above_the_threshold() -> None:
    with structlog.testing.capture_logs() as few:
        log_each_or_summary(
            structlog.get_logger(), "changed", [{"service_id": "a", "to": "stale"}], threshold=1
        )
    assert few == [{"event": "changed", "log_level": "info", "service_id": "a", "to": "stale"}]
    items = [{"service_id": f"s{i}", "to": "stale" if i % 3 else "offline"} for i in range(9)]
    with structlog.testing.capture_logs() as many:
        log_each_or_summary(
            structlog.get_logger(), "changed", items, threshold=8, group_by="to", examples=2
        )
    assert many == [
        {
            "event": "changed_summary",
            "log_level": "info",
            "count": 9,
            "by_to": {"offline": 3, "stale": 6},
            "examples": ["s0", "s1"],
        }
    ]


def test_tracebacks_never_carry_local_variables() -> None:
    """A traceback's locals may hold a request with its secret: they are never written."""
    out = io.StringIO()
    logs.configure(LogSettings(), "json", out)

    def handler(secret_value: str) -> None:
        raise ValueError("boom")

    secret = "-".join(["hunter2", "top", "secret"])  # in a local only, never in the source
    for logger in (logging.getLogger("grpc.aio"), structlog.get_logger("taskdash.x")):
        try:
            handler(secret)
        except ValueError:
            logger.exception("failed")
    text = out.getvalue()
    assert len(lines(out)) == 2 and text.count("boom") >= 2, "both tracebacks are there"
    assert secret not in text
