"""Unfinished messages on disk between runs: JSON lines, base64 bodies, replaced atomically."""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from taskdash.nsq.broker.protocol import is_valid_name

log = structlog.get_logger("taskdash.nsq.broker")

FILENAME = "nsq-broker.jsonl"
FORMAT = "taskdash-nsq-broker"
FORMAT_VERSION = 1


@dataclass(slots=True)
class StoredMessage:
    """One unfinished message: in a channel, or (channel None) waiting in a topic's backlog."""

    topic: str
    channel: str | None
    id: bytes
    body: bytes
    timestamp: int
    attempts: int
    defer_ms: int = 0  # backlog only: DPUB delay not yet started
    due_ns: int | None = None  # channel only: wall-clock release time of a deferred message


@dataclass(slots=True)
class Snapshot:
    """Durable topics with their durable channels, and every unfinished message."""

    topics: dict[str, list[str]] = field(default_factory=dict)
    messages: list[StoredMessage] = field(default_factory=list)


def save(data_dir: Path, snap: Snapshot) -> Path:
    """Write to a temp file, fsync, rename over the old file: a crash leaves old or new, whole."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / FILENAME
    tmp = data_dir / f".{FILENAME}.{os.getpid()}.tmp"
    with tmp.open("w", encoding="utf-8") as out:
        header = {
            "type": "header",
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "saved_at": time.time_ns(),
        }
        out.write(json.dumps(header) + "\n")
        for topic, channels in sorted(snap.topics.items()):
            out.write(json.dumps({"type": "topic", "topic": topic, "channels": channels}) + "\n")
        for msg in snap.messages:
            out.write(json.dumps(_encode(msg)) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_dir(data_dir)
    return path


def load(data_dir: Path) -> Snapshot:
    """Read the last saved state; unreadable parts are skipped, logged, and the file kept aside."""
    path = data_dir / FILENAME
    snap = Snapshot()
    if not path.exists():
        return snap
    bad = 0
    with path.open("r", encoding="utf-8", errors="replace") as src:
        lines = iter(src)
        if not _valid_header(next(lines, "")):
            log.error("persist_bad_header", path=str(path))
            _keep_aside(path)
            return snap
        for number, line in enumerate(lines, start=2):
            try:
                _decode_into(snap, json.loads(line))
            except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                bad += 1
                log.warning("persist_bad_line", path=str(path), line=number, error=str(exc))
    if bad:
        _keep_aside(path)
    return snap


def _encode(msg: StoredMessage) -> dict[str, Any]:
    """A message line; ids are ASCII hex, bodies base64."""
    record: dict[str, Any] = {
        "type": "message",
        "topic": msg.topic,
        "channel": msg.channel,
        "id": msg.id.decode("ascii", "replace"),
        "timestamp": msg.timestamp,
        "attempts": msg.attempts,
        "body": base64.b64encode(msg.body).decode("ascii"),
    }
    if msg.defer_ms:
        record["defer_ms"] = msg.defer_ms
    if msg.due_ns is not None:
        record["due_ns"] = msg.due_ns
    return record


def _decode_into(snap: Snapshot, record: dict[str, Any]) -> None:
    """Add one line's content to the snapshot; raises on anything malformed."""
    kind = record["type"]
    if kind == "topic":
        snap.topics[_name(record["topic"])] = [_name(name) for name in record["channels"]]
        return
    if kind != "message":
        raise ValueError(f"unknown record type {kind!r}")
    msg_id = record["id"].encode("ascii")
    if len(msg_id) != 16:
        raise ValueError("message id must be 16 characters")
    channel = record["channel"]
    snap.messages.append(
        StoredMessage(
            topic=_name(record["topic"]),
            channel=None if channel is None else _name(channel),
            id=msg_id,
            body=base64.b64decode(record["body"], validate=True),
            timestamp=int(record["timestamp"]),
            attempts=int(record["attempts"]),
            defer_ms=int(record.get("defer_ms", 0)),
            due_ns=None if record.get("due_ns") is None else int(record["due_ns"]),
        )
    )


def _name(value: Any) -> str:
    """Topic/channel names must still be valid (the file may have been edited)."""
    if not isinstance(value, str) or not is_valid_name(value):
        raise ValueError(f"invalid topic/channel name {value!r}")
    return value


def _valid_header(line: str) -> bool:
    """First line names our format and a version we can read."""
    try:
        header = json.loads(line)
    except ValueError:
        return False
    return (
        isinstance(header, dict)
        and header.get("format") == FORMAT
        and header.get("version") == FORMAT_VERSION
    )


def _keep_aside(path: Path) -> None:
    """Copy a damaged file before the next stop overwrites it, so nothing is silently lost."""
    aside = path.with_name(f"{path.name}.damaged-{time.time_ns()}")
    shutil.copy2(path, aside)
    log.error("persist_file_kept_aside", path=str(aside))


def fsync_dir(directory: Path) -> None:
    """Make file creations and renames in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
