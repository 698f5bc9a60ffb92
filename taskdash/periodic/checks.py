"""What every request field must be: each check raises INVALID_ARGUMENT with a sentence."""

from __future__ import annotations

import json
import re

from taskdash.periodic.errors import Kind, PeriodicError

UINT64_MAX = 2**64 - 1
# ids come from an int64 counter (BSON has no uint64): a larger id names no task, and the
# store cannot even be asked about it (encoding it raises OverflowError)
INT64_MAX = 2**63 - 1
_NAME = re.compile(r"^[^\x00-\x1f\x7f\s]([^\x00-\x1f\x7f]{0,126}[^\x00-\x1f\x7f\s])?$")
_TYPE = re.compile(r"^[^\x00-\x1f\x7f]{0,256}$")


def _encodable(value: str) -> bool:
    """Whether ``value`` can be stored: JSON text over HTTP may carry lone surrogates
    (``"\\ud800"``) that no UTF-8 (so no BSON, no gRPC) string can hold."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_name(field: str, value: str) -> str:
    """A service or queue name: 1-128 characters, no control characters, no outer spaces."""
    if not _NAME.match(value) or not _encodable(value):
        raise PeriodicError(
            Kind.INVALID_ARGUMENT,
            f"{field} must be 1-128 characters without control characters or leading/trailing "
            f"spaces, got {value[:140]!r}",
        )
    return value


def check_task_data(text: str, max_size: int) -> str:
    """``task_data`` must be one valid JSON value (the parse error is the message).

    Any failure to decode is the client's (a RecursionError for deep nesting, a
    UnicodeEncodeError for a lone surrogate), so all of them are INVALID_ARGUMENT.
    """
    if not _encodable(text):
        raise PeriodicError(
            Kind.INVALID_ARGUMENT,
            "task_data is not valid Unicode text (it holds a lone surrogate such as \\ud800)",
        )
    size = len(text.encode())
    if size > max_size:
        raise PeriodicError(
            Kind.INVALID_ARGUMENT,
            f"task_data is {size} bytes, more than the {max_size} allowed "
            "([periodic] max_task_data_size)",
        )

    def refuse_constant(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    try:
        json.loads(text, parse_constant=refuse_constant)
    except RecursionError:
        raise PeriodicError(
            Kind.INVALID_ARGUMENT, "task_data is nested too deeply to be decoded"
        ) from None
    except Exception as exc:  # any decoding failure is the input's, never ours
        raise PeriodicError(Kind.INVALID_ARGUMENT, f"task_data is not valid JSON: {exc}") from None
    return text


def check_task_id(task_id: int) -> int:
    """Task ids are uint64 from 1 (0 is what a client that forgot the field sends)."""
    if not 1 <= task_id <= UINT64_MAX:
        raise PeriodicError(
            Kind.INVALID_ARGUMENT, f"task_id must be a positive uint64, got {task_id}"
        )
    return task_id


def check_task_type(task_type: str) -> str:
    """``task_type``: free text up to 256 characters, no control characters (may be empty)."""
    if not _TYPE.match(task_type) or not _encodable(task_type):
        raise PeriodicError(
            Kind.INVALID_ARGUMENT,
            "task_type must be at most 256 characters of Unicode text without control characters",
        )
    return task_type
