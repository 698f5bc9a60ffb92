"""Task-page reads: sent to the store, or shared with an identical one on its way."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, Metric

if TYPE_CHECKING:
    from taskdash.metrics.registry import Metrics
    from taskdash.store.flights import Flights


class SharedReads:
    """Reads :class:`~taskdash.store.flights.Flights`' counters at scrape time."""

    def __init__(self, flights: Flights) -> None:
        self.flights = flights

    def collect(self) -> Iterator[Metric]:
        reads = CounterMetricFamily(
            "taskdash_task_reads",
            "Task-page reads (pages and filter counts): sent to MongoDB, or joined (answered "
            "by an identical read already on its way; [web] share_reads).",
            labels=["how"],
        )
        reads.add_metric(["sent"], self.flights.flown)
        reads.add_metric(["joined"], self.flights.joined)
        yield reads


def watch_reads(metrics: Metrics, flights: Flights) -> None:
    """Show how many task-page reads were sent and how many were shared."""
    metrics.add(SharedReads(flights))
