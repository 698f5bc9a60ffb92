"""A value read from MongoDB at scrape time, reused for a few seconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric

from taskdash.errors import StoreError
from taskdash.logs import RateLimitedLog

log = structlog.get_logger("taskdash.metrics")

T = TypeVar("T")

#: the longest a scrape waits for one count; a store slower than that shows no value
TIMEOUT = 5.0


class StoreValue(Generic[T]):
    """``read()`` at most once per ``ttl`` seconds, however many scrapers ask.

    Concurrent scrapes share one read (a lock). A failed or slow read leaves no value (None):
    an old count shown as current would mislead more than a gap in the graph.
    """

    def __init__(
        self,
        name: str,
        read: Callable[[], Awaitable[T]],
        *,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = TIMEOUT,
    ) -> None:
        self.name = name
        self.read = read
        self.ttl = ttl
        self.clock = clock
        self.timeout = timeout
        self.value: T | None = None
        self._read_at: float | None = None
        self._lock = asyncio.Lock()
        self._failed_log = RateLimitedLog(log, "metrics_store_read_failed")

    async def refresh(self) -> None:
        """Read again unless the last read is younger than ``ttl``."""
        async with self._lock:
            now = self.clock()
            if self._read_at is not None and now - self._read_at < self.ttl:
                return
            try:
                self.value = await asyncio.wait_for(self.read(), self.timeout)
            except (StoreError, TimeoutError) as exc:
                self.value = None
                self._failed_log(metric=self.name, error=str(exc) or type(exc).__name__)
            self._read_at = now


Rows = Callable[[T], Iterable[tuple[Sequence[str], float]]]


class StoreGauge(Generic[T]):
    """A gauge family drawn from a :class:`StoreValue` (``rows``: label values and number);
    left out of the page while the value is missing."""

    def __init__(
        self, value: StoreValue[T], documentation: str, labels: Sequence[str], rows: Rows[T]
    ) -> None:
        self.value = value
        self.documentation = documentation
        self.labels = labels
        self.rows = rows

    def collect(self) -> Iterator[Metric]:
        current = self.value.value
        if current is None:
            return
        family = GaugeMetricFamily(self.value.name, self.documentation, labels=self.labels)
        for labels, number in self.rows(current):
            family.add_metric(labels, number)
        yield family
