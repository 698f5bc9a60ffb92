"""What one fetch produced, what it means for ``fetch_results``, and what a sweep adds up to.

Kept apart from the loop in :mod:`.fetcher`: these are plain values and decisions (backoff,
which fields a 200, a 304 or a failure writes), logged with the service's context.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import structlog

from taskdash.fetcher.client import Response
from taskdash.fetcher.errors import FetchError
from taskdash.fetcher.parse import Listing
from taskdash.logs import log_each_or_summary
from taskdash.settings import FetcherSettings
from taskdash.store.mongo import Doc
from taskdash.store.tasks import ApplyResult

log = structlog.get_logger("taskdash.fetcher")


@dataclass
class Outcome:
    """One service's fetch, on its way to the writer."""

    service_id: str
    url: str
    state: Doc
    """The service's ``fetch_results`` document as claimed (validators, failures, cache token)."""
    at_ms: int
    duration_ms: float = 0.0
    response: Response | None = None
    listing: Listing | None = None
    error: FetchError | None = None
    store_error: str = ""


def backoff_ms(settings: FetcherSettings, failures: int, rng: random.Random) -> int:
    """Exponential backoff with "equal jitter": between half and all of the delay."""
    delay = min(settings.backoff_max, settings.backoff_initial * 2 ** min(failures - 1, 32))
    return int(delay * (0.5 + 0.5 * rng.random()) * 1000)


def result_fields(
    o: Outcome, *, node_id: str, conflicts: int, token: str, now_ms: int, retry_ms: int
) -> Doc:
    """The ``fetch_results`` fields for one outcome; a 304 writes only the fetch itself.

    ``retry_ms`` is when the service is due again: its next interval, or after a failure its
    backoff. It replaces the claim's hold, which covered the longest possible fetch.
    """
    response = o.response
    fields: Doc = {
        "url": o.url,
        "node": node_id,
        "at": o.at_ms,
        "duration_ms": round(o.duration_ms, 3),
        "http_status": response.status if response else None,
        "not_modified": bool(response and response.status == 304 and not o.error),
    }
    failures = int(o.state.get("failures") or 0)
    if o.error is not None:
        return {**fields, **_failure(o.error, failures + 1, retry_ms)}
    fields.update(error=o.store_error, failures=0, due_at=retry_ms)
    if response is not None and response.etag:
        fields["etag"] = response.etag
    if response is not None and response.status == 304:
        return fields
    assert o.listing is not None and response is not None
    if o.listing.bad:
        log.warning(
            "fetch_bad_records",
            service_id=o.service_id,
            url=o.url,
            bad=o.listing.bad,
            first_error=o.listing.errors[0],
        )
    fields.update(
        task_count=len(o.listing.tasks),
        bad_count=o.listing.bad,
        bad_errors=o.listing.errors,
        conflict_count=conflicts,
    )
    if not o.store_error:  # validators only once the listing they describe is stored
        fields.update(
            listing=token,
            listed_at=now_ms,
            etag=response.etag,
            last_modified=response.last_modified,
            validator_url=o.url,
        )
    return fields


def _failure(error: FetchError, failures: int, retry_ms: int) -> Doc:
    return {
        "http_status": error.status,
        "error": str(error),
        "not_modified": False,
        "failures": failures,
        "due_at": retry_ms,
    }


@dataclass
class SweepLog:
    """A sweep's per-service events, logged when it ends: one line each, or one summary.

    200 unreachable services must not mean 200 lines a sweep: up to ``[log]
    summary_threshold`` events each keep their line, above it one summary line counts them by
    reason with a few example ids. ``fetch_results`` keeps every service's error either way.
    """

    failed: list[dict[str, Any]] = field(default_factory=list)
    recovered: list[dict[str, Any]] = field(default_factory=list)

    def add(self, o: Outcome, retry_ms: int) -> None:
        """Note what one fetch means for the log (a failure, or the end of a failure streak)."""
        failures = int(o.state.get("failures") or 0)
        if o.error is not None:
            self.failed.append(
                {
                    "service_id": o.service_id,
                    "url": o.url,
                    "reason": o.error.reason,
                    "http_status": o.error.status,
                    "error": str(o.error),
                    "failures": failures + 1,
                    "retry_in_s": round((retry_ms - o.at_ms) / 1000, 1),
                }
            )
        elif failures:
            self.recovered.append({"service_id": o.service_id, "url": o.url, "failures": failures})

    def emit(self, threshold: int) -> None:
        """Log what was collected; called once per sweep."""
        log_each_or_summary(
            log, "fetch_failed", self.failed, threshold=threshold, level="warning",
            group_by="reason",
        )  # fmt: skip
        log_each_or_summary(log, "fetch_recovered", self.recovered, threshold=threshold)
        self.failed, self.recovered = [], []


@dataclass
class SweepResult:
    """What one sweep did (counts are services unless named otherwise)."""

    started_at: datetime
    seconds: float = 0.0
    live_nodes: int = 0
    share: int = 0
    no_url: int = 0
    claimed: int = 0
    in_flight: int = 0
    """Due services skipped because their previous fetch has not ended yet."""
    fetched: int = 0
    ok: int = 0
    not_modified: int = 0
    failed: int = 0
    tasks: int = 0
    inserted: int = 0
    changed: int = 0
    gone: int = 0
    bad: int = 0
    conflicts: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    error: str = ""
    """A store failure while writing this sweep's results (the services' own errors are above)."""

    def add(self, batch: list[Outcome], applied: ApplyResult) -> None:
        """Count a stored batch."""
        for o in batch:
            self.fetched += 1
            if o.error is not None or o.store_error:
                self.failed += 1
                self.errors[o.service_id] = str(o.error) if o.error else o.store_error
            elif o.listing is None:
                self.not_modified += 1
            else:
                self.ok += 1
                self.tasks += len(o.listing.tasks)
                self.bad += o.listing.bad
        self.inserted += applied.inserted
        self.changed += applied.changed
        self.gone += applied.gone
        self.conflicts += len(applied.conflicts)

    def summary(self, max_errors: int = 5) -> dict[str, Any]:
        """A JSON-friendly digest (for /readyz and logs)."""
        out = asdict(self)
        out["started_at"] = self.started_at.isoformat()
        out["seconds"] = round(self.seconds, 3)
        out["errors"] = dict(list(self.errors.items())[:max_errors])
        return out
