"""The metadata fetcher: each fetch's result and duration; sweeps and this node's share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from taskdash.fetcher import Fetcher
    from taskdash.fetcher.outcome import Outcome
    from taskdash.metrics.registry import Metrics

#: FetchError reasons kept as labels (an HTTP status becomes its class: http_5xx)
REASONS = (
    "dns", "connection", "timeout", "tls", "redirect", "too_large", "refused", "bad_listing",
    "internal", "error",
)  # fmt: skip
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def result_label(outcome: Outcome) -> str:
    """``ok``, ``not_modified``, ``http_4xx``... or a failure reason; a bounded set."""
    if outcome.error is None:
        response = outcome.response
        return "not_modified" if response is not None and response.status == 304 else "ok"
    reason = outcome.error.reason
    status = reason.removeprefix("http_")
    if status != reason:
        return f"http_{status[0]}xx" if len(status) == 3 and status.isdigit() else "http_other"
    return reason if reason in REASONS else "other"


class FetcherCollector:
    """Sweeps, this node's share and the live nodes, from the fetcher's own fields."""

    def __init__(self, fetcher: Fetcher) -> None:
        self.fetcher = fetcher

    def collect(self) -> Iterator[Metric]:
        sweeps = CounterMetricFamily("taskdash_fetch_sweeps", "Fetch sweeps completed.")
        sweeps.add_metric([], self.fetcher.sweeps)
        share = GaugeMetricFamily(
            "taskdash_fetch_share_services", "Services this daemon fetches (its share)."
        )
        share.add_metric([], self.fetcher.my_share)
        live = GaugeMetricFamily("taskdash_fetch_live_nodes", "Daemons sharing the fetching.")
        live.add_metric([], len(self.fetcher.live))
        yield from (sweeps, share, live)


def watch_fetcher(metrics: Metrics, fetcher: Fetcher) -> None:
    """Count every fetch by result and time it."""
    metrics.add(FetcherCollector(fetcher))
    results = Counter(
        "taskdash_fetch_requests_total",
        "Metadata fetches by result: ok, not_modified, http_4xx/5xx, or the failure reason.",
        ["result"],
        registry=metrics.registry,
    )
    duration = Histogram(
        "taskdash_fetch_duration_seconds",
        "Seconds one metadata fetch took (request and parse), by outcome: ok, not_modified, "
        "failed.",
        ["outcome"],
        buckets=DURATION_BUCKETS,
        registry=metrics.registry,
    )
    for name in ("ok", "not_modified"):
        results.labels(name)
    for name in ("ok", "not_modified", "failed"):
        duration.labels(name)

    def on_fetch(outcome: Outcome) -> None:
        result = result_label(outcome)
        results.labels(result).inc()
        kind = result if result in ("ok", "not_modified") else "failed"
        duration.labels(kind).observe(outcome.duration_ms / 1000)

    fetcher.on_fetch = on_fetch
