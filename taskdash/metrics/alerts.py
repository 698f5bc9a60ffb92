"""Webhook alerts: attempts by webhook and outcome, how long they took, what is still pending."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

from taskdash.alerts.sender import DELIVERED, FAILED, REFUSED, RETRY
from taskdash.store import alerts as outbox

if TYPE_CHECKING:
    from taskdash.alerts.dispatcher import Dispatcher
    from taskdash.alerts.sender import Result
    from taskdash.metrics.registry import Metrics
    from taskdash.store import Store

OUTCOMES = (DELIVERED, RETRY, FAILED, REFUSED)
ATTEMPT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def watch_alerts(metrics: Metrics, dispatcher: Dispatcher, store: Store) -> None:
    """Count and time every attempt; count the deliveries still pending (MongoDB).

    Labels are the configured webhooks only (a bounded set), each present from the start.
    """
    hooks = list(dispatcher.hooks)
    attempts = Counter(
        "taskdash_alert_attempts_total",
        "Webhook attempts this daemon made, by webhook and outcome: delivered, retry (another "
        "attempt follows unless retries ran out), failed (for good), refused (the SSRF rules).",
        ["webhook", "outcome"],
        registry=metrics.registry,
    )
    duration = Histogram(
        "taskdash_alert_attempt_duration_seconds",
        "Seconds one webhook attempt took (connect, request, answer).",
        ["webhook"],
        buckets=ATTEMPT_BUCKETS,
        registry=metrics.registry,
    )
    for name in hooks:
        duration.labels(name)
        for outcome in OUTCOMES:
            attempts.labels(name, outcome)

    def on_attempt(webhook: str, result: Result) -> None:
        attempts.labels(webhook, result.outcome).inc()
        duration.labels(webhook).observe(result.seconds)

    dispatcher.on_attempt = on_attempt

    async def read() -> dict[str, int]:
        found = await asyncio.gather(*(outbox.pending_deliveries(store, h) for h in hooks))
        return dict(zip(hooks, found, strict=True))

    metrics.store_gauge(
        "taskdash_alert_deliveries_pending",
        "Webhook deliveries not settled yet (waiting, backing off or being attempted), by "
        "webhook (MongoDB: every daemon shows the same figures).",
        ["webhook"],
        read,
        lambda counts: (([name], counts[name]) for name in hooks),
    )
