"""What can go wrong with one fetch: every kind is a FetchError with a message fit for ops."""

from __future__ import annotations

from taskdash.errors import TaskDashError


class FetchError(TaskDashError):
    """One fetch failed; ``status`` is the HTTP status when the server answered.

    ``reason`` is a short stable word for the kind of failure (``timeout``, ``connection``,
    ``http_503``...): a mass failure is logged as counts by reason, not one line per service.
    """

    kind = "error"

    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self._reason = reason

    @property
    def reason(self) -> str:
        """The kind of failure; an HTTP status when the server answered and nothing more precise."""
        if self._reason or self.kind != FetchError.kind:
            return self._reason or self.kind
        return f"http_{self.status}" if self.status is not None else self.kind


class Refused(FetchError):
    """The allow-rules refuse a URL or an address it resolves to (SSRF guard)."""

    kind = "refused"


class ParseError(FetchError):
    """The response body is not a task listing at all (not JSON, wrong shape)."""

    kind = "bad_listing"
