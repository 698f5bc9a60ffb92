"""Tasks as callers see them: ``task_list`` items, listing entries, times as ISO-8601 text."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from taskdash.store.periodic import LEASED


def iso(ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC text, e.g. ``2026-11-26T10:30:00.123Z``."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


ITEM_OVERHEAD = 128  # bytes of a task_list item besides task_type and task_data (115 at most)


def item_size(task_type: str, task_data: str, schedule_id: str | None = None) -> int:
    """Bytes the task adds to a ``task_list`` at most (stored at creation as ``size``); a
    scheduled task also carries its :func:`schedule_fields`."""
    size = len(task_data.encode()) + len(msgspec.json.encode(task_type)) + ITEM_OVERHEAD
    if schedule_id is not None:
        size += len(msgspec.json.encode(schedule_fields(schedule_id, 0)))
    return size


def schedule_fields(schedule_id: str, scheduled_for: int) -> dict[str, str]:
    """What a task created by a schedule carries besides an ordinary task's: the schedule and
    the run's due time."""
    return {"schedule_id": schedule_id, "scheduled_for": iso(scheduled_for)}


def lease_item(doc: dict[str, Any]) -> dict[str, Any]:
    """One element of ``task_list``; ``task_data`` is embedded as the JSON it holds."""
    item = {
        "task_id": doc["_id"],
        "task_type": doc["task_type"],
        "task_data": msgspec.Raw(doc["task_data"].encode()),
        "attempts": doc["attempts"],
        "created_at": iso(doc["created_at"]),
    }
    if "schedule_id" in doc:
        item.update(schedule_fields(doc["schedule_id"], doc["scheduled_for"]))
    return item


def task_view(doc: dict[str, Any], now: int) -> dict[str, Any]:
    """A task as the HTTP listing shows it: the lease item plus its state."""
    view = lease_item(doc)
    view["state"] = doc["state"]
    view["updated_at"] = iso(doc["updated_at"])
    if doc["state"] == LEASED:
        view["lease_until"] = iso(doc["lease_until"])
        view["lease_expired"] = doc["lease_until"] <= now
    return view


def encode(value: Any) -> str:
    """JSON text of ``value`` (``msgspec.Raw`` values are spliced in as they are)."""
    return msgspec.json.encode(value).decode()
