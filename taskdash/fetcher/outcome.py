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

    ``retry_ms`` is when a failed service may be fetched again (its backoff).
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
        return {**fields, **_failure(o, o.error, failures + 1, retry_ms)}
    fields.update(error=o.store_error, failures=0)
    if failures:
        log.info("fetch_recovered", service_id=o.service_id, url=o.url, failures=failures)
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


def _failure(o: Outcome, error: FetchError, failures: int, retry_ms: int) -> Doc:
    log.warning(
        "fetch_failed",
        service_id=o.service_id,
        url=o.url,
        http_status=error.status,
        error=str(error),
        failures=failures,
        retry_in_s=round((retry_ms - o.at_ms) / 1000, 1),
    )
    return {
        "http_status": error.status,
        "error": str(error),
        "not_modified": False,
        "failures": failures,
        "due_at": retry_ms,
    }


@dataclass
class SweepResult:
    """What one sweep did (counts are services unless named otherwise)."""

    started_at: datetime
    seconds: float = 0.0
    live_nodes: int = 0
    share: int = 0
    no_url: int = 0
    claimed: int = 0
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
