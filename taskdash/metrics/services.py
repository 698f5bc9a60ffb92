"""Services by state (a MongoDB count, cached) and the checker's passes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from taskdash.store.status import OFFLINE, ONLINE, STALE, UNKNOWN, count

if TYPE_CHECKING:
    from taskdash.checker import Checker, PassResult
    from taskdash.metrics.registry import Metrics
    from taskdash.store import Store

STATES = (ONLINE, STALE, OFFLINE, UNKNOWN)
MODES = ("normal", "self_preservation")
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def watch_services(metrics: Metrics, store: Store) -> None:
    """Count services by state in MongoDB (the ``count`` command, on the status index)."""

    async def read() -> dict[str, int]:
        found = await asyncio.gather(*(count(store, state) for state in STATES))
        return dict(zip(STATES, found, strict=True))

    metrics.store_gauge(
        "taskdash_services",
        "Registered services by state (MongoDB).",
        ["state"],
        read,
        lambda counts: (([state], counts.get(state, 0)) for state in STATES),
    )


class CheckerMode:
    """The checker's mode (1 for the current one) and whether its last pass failed."""

    def __init__(self, checker: Checker) -> None:
        self.checker = checker

    def collect(self) -> Iterator[Metric]:
        current = MODES[1] if self.checker.self_preservation else MODES[0]
        mode = GaugeMetricFamily(
            "taskdash_checker_mode",
            "1 for the checker's current mode (normal or self_preservation), else 0.",
            labels=["mode"],
        )
        for name in MODES:
            mode.add_metric([name], 1 if name == current else 0)
        failing = GaugeMetricFamily(
            "taskdash_checker_failing", "1 while the checker's passes fail (MongoDB), else 0."
        )
        failing.add_metric([], 1 if self.checker.last_error else 0)
        yield from (mode, failing)


def watch_checker(metrics: Metrics, checker: Checker) -> None:
    """Time every pass and count the state changes it made; show the mode at scrape time."""
    metrics.add(CheckerMode(checker))
    duration = Histogram(
        "taskdash_checker_pass_duration_seconds",
        "Seconds one checker pass took (its _count is the passes completed).",
        buckets=PASS_BUCKETS,
        registry=metrics.registry,
    )
    changes = Counter(
        "taskdash_checker_transitions_total",
        "Service state changes the checker made, by old and new state.",
        ["from_state", "to_state"],
        registry=metrics.registry,
    )

    def on_pass(result: PassResult) -> None:
        duration.observe(result.seconds)
        for change in result.changes:
            old, new = change.get("from"), change.get("to")
            changes.labels(_state(old), _state(new)).inc()

    checker.on_pass = on_pass


def _state(value: object) -> str:
    """A state label from the store, bounded whatever a document holds."""
    return value if isinstance(value, str) and value in STATES else "other"
