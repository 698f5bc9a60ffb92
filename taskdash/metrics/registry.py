"""One process's metrics: its registry, the scrape token, and what each part adds to them."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from taskdash import __version__
from taskdash.metrics import alerts, fetch, nsq, periodic, reads, services, tcp
from taskdash.metrics.cached import Rows, StoreGauge, StoreValue
from taskdash.metrics.grpc import GrpcMetrics
from taskdash.metrics.http import HttpMetrics
from taskdash.settings import MetricsSettings

if TYPE_CHECKING:
    from taskdash.alerts.dispatcher import Dispatcher
    from taskdash.checker import Checker
    from taskdash.fetcher import Fetcher
    from taskdash.nsq.consumer import Consumer
    from taskdash.periodic.firing import Firer
    from taskdash.periodic.leasing import Leasing
    from taskdash.store import Store
    from taskdash.store.periodic import PeriodicStore
    from taskdash.tcp.server import TcpServer

T = TypeVar("T")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Metrics:
    """The ``CollectorRegistry`` of one daemon or periodic service, and its ``/metrics`` rules.

    Built by the daemon and passed to the parts that feed it (``watch_*``), never global.
    The token is kept as its SHA-256 only and compared in constant time.
    """

    def __init__(self, settings: MetricsSettings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        token = settings.bearer()
        self._token = _digest(token) if token else None
        self._store_values: list[StoreValue[Any]] = []
        ProcessCollector(registry=self.registry)
        build = Gauge(
            "taskdash_build_info", "Always 1; the TaskDash version running.", ["version"],
            registry=self.registry,
        )  # fmt: skip
        build.labels(__version__).set(1)
        self.http = HttpMetrics(self.registry)

    # -- scraping --------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        """Whether ``/metrics`` answers without a token."""
        return self._token is None

    def authorized(self, authorization: str) -> bool:
        """Whether an ``Authorization`` header carries the token (always, when open)."""
        if self._token is None:
            return True
        scheme, _, given = authorization.partition(" ")
        ok_scheme = scheme.lower() == "bearer"
        return hmac.compare_digest(_digest(given.strip()), self._token) and ok_scheme

    async def refresh(self) -> None:
        """Bring the MongoDB counts up to date (each at most once per its ttl)."""
        await asyncio.gather(*(value.refresh() for value in self._store_values))

    def expose(self, accept: str) -> tuple[bytes, str]:
        """(body, content type): OpenMetrics when ``accept`` asks for it, else Prometheus text."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def add(self, collector: Collector) -> None:
        """A collector that reads a part's own counters at scrape time."""
        self.registry.register(collector)

    def store_gauge(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        read: Callable[[], Awaitable[T]],
        rows: Rows[T],
    ) -> None:
        """A gauge counted in MongoDB before a scrape, reused for ``store_counts_ttl``."""
        value = StoreValue(name, read, ttl=self.settings.store_counts_ttl)
        self._store_values.append(value)
        self.add(StoreGauge(value, documentation, labels, rows))

    # -- the daemon's parts ----------------------------------------------------------------

    def watch_readers(self, consumers: Sequence[Consumer[Any]]) -> None:
        """NSQ messages by topic and outcome, and their processing latency."""
        nsq.watch_readers(self, consumers)

    def watch_services(self, store: Store) -> None:
        """Services by state (counted in MongoDB)."""
        services.watch_services(self, store)

    def watch_reads(self, store: Store) -> None:
        """Task-page reads sent to MongoDB or shared (store/flights.py)."""
        reads.watch_reads(self, store.flights)

    def watch_checker(self, checker: Checker) -> None:
        """Checker passes: duration, mode, state changes."""
        services.watch_checker(self, checker)

    def watch_fetcher(self, fetcher: Fetcher) -> None:
        """Metadata fetches: results and durations; sweeps and share."""
        fetch.watch_fetcher(self, fetcher)

    def watch_tcp(self, server: TcpServer) -> None:
        """tcpx connections and requests by type and errid."""
        tcp.watch_tcp(self, server)

    def watch_alerts(self, dispatcher: Dispatcher, store: Store) -> None:
        """Webhook attempts by outcome and duration; pending deliveries (counted in MongoDB)."""
        alerts.watch_alerts(self, dispatcher, store)

    # -- the periodic service's ------------------------------------------------------------

    def watch_leasing(self, leasing: Leasing, store: PeriodicStore) -> None:
        """Leases, completions, dead tasks, and the queues' depths by state."""
        periodic.watch_leasing(self, leasing, store)

    def watch_firer(self, firer: Firer) -> None:
        """Schedule runs fired, skipped or lost to another node."""
        periodic.watch_firer(self, firer)

    def grpc(self) -> GrpcMetrics:
        """The gRPC server interceptor counting calls by method and status code."""
        return GrpcMetrics(self.registry)
