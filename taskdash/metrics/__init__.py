"""Prometheus metrics of one TaskDash process (docs/metrics.md).

Each process owns one :class:`Metrics` (its own ``CollectorRegistry``, never the library's
global one: tests run several apps in one process). The parts keep counting what they
already count; collectors read those counters at scrape time, and only what has no counter
yet (latencies, per-reply outcomes) is fed through a hook.
"""

from taskdash.metrics.registry import Metrics

__all__ = ["Metrics"]
