"""What can go wrong with one fetch: every kind is a FetchError with a message fit for ops."""

from __future__ import annotations

from taskdash.errors import TaskDashError


class FetchError(TaskDashError):
    """One fetch failed; ``status`` is the HTTP status when the server answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Refused(FetchError):
    """The allow-rules refuse a URL or an address it resolves to (SSRF guard)."""


class ParseError(FetchError):
    """The response body is not a task listing at all (not JSON, wrong shape)."""
