"""The periodic service's one error: a kind shared by gRPC and HTTP, and a sentence for people."""

from __future__ import annotations

import enum

from taskdash.errors import TaskDashError


class Kind(enum.Enum):
    """What went wrong, named as gRPC status codes (HTTP maps each to a status too)."""

    INVALID_ARGUMENT = "invalid_argument"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    FAILED_PRECONDITION = "failed_precondition"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class PeriodicError(TaskDashError):
    """A request the service refuses; ``str()`` is the message shown to the caller."""

    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
