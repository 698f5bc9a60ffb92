"""A service's response body -> validated TaskMetaData records. Pure: bytes in, values out.

Accepted shapes: a JSON array of records, or an object holding that array under ``tasks`` (or,
failing that, ``data``). A body of another shape is a :class:`ParseError` and nothing is stored.
Bad records are skipped and counted; when a bad record still carries a readable ``id`` that id
is reported as *still listed*, so a malformed entry never makes its stored task look gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from taskdash.errors import ValidationError
from taskdash.fetcher.errors import ParseError
from taskdash.models import TaskMetaData, decode

#: How many bad-record messages a listing keeps for the fetch result.
MAX_ERRORS = 3

_outer = msgspec.json.Decoder(list[msgspec.Raw] | dict[str, msgspec.Raw])
_items = msgspec.json.Decoder(list[msgspec.Raw])
_loose = msgspec.json.Decoder(Any)


@dataclass
class Listing:
    """What one body listed."""

    tasks: list[TaskMetaData] = field(default_factory=list)
    bad: int = 0
    errors: list[str] = field(default_factory=list)
    still_listed: set[str] = field(default_factory=set)

    def reject(self, index: int, reason: str, task_id: str | None) -> None:
        """Count a bad record; keep its id (if any) out of gone-marking."""
        self.bad += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(f"record {index}: {reason}")
        if task_id is not None:
            self.still_listed.add(task_id)


def _records(body: bytes) -> list[msgspec.Raw]:
    """The raw records of a body, or ParseError saying why the body is not a listing."""
    if not body.strip():
        raise ParseError("response body is empty")
    body = body.removeprefix(b"\xef\xbb\xbf")
    try:
        outer = _outer.decode(body)
    except msgspec.ValidationError as exc:
        raise ParseError(f"not a JSON array of tasks nor an object holding one: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ParseError(f"response body is not valid JSON: {exc}") from None
    if isinstance(outer, list):
        return outer
    key = "tasks" if "tasks" in outer else "data" if "data" in outer else None
    if key is None:
        keys = ", ".join(sorted(outer)[:10]) or "none"
        raise ParseError(f"JSON object has no 'tasks' or 'data' array (keys: {keys})")
    try:
        return _items.decode(outer[key])
    except msgspec.ValidationError as exc:
        raise ParseError(f"'{key}' is not an array of tasks: {exc}") from None


def _readable_id(raw: msgspec.Raw) -> str | None:
    """The ``id`` of a record that failed validation, if it has a usable one."""
    try:
        value = _loose.decode(raw)
    except msgspec.DecodeError:
        return None
    if isinstance(value, dict):
        task_id = value.get("id")
        if isinstance(task_id, str) and task_id.strip():
            return task_id
    return None


def parse_listing(body: bytes) -> Listing:
    """Validate every record of ``body``; duplicates of an id already seen count as bad."""
    listing = Listing()
    seen: set[str] = set()
    for index, raw in enumerate(_records(body)):
        try:
            task = decode(TaskMetaData, raw)
        except ValidationError as exc:
            listing.reject(index, str(exc), _readable_id(raw))
            continue
        if task.id in seen:
            listing.reject(index, f"duplicate id {task.id!r}", None)
            continue
        seen.add(task.id)
        listing.tasks.append(task)
    return listing
