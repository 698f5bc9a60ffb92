"""Alert metrics move with real attempts at real receivers (nx-27017, loopback webhooks)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from fetcher_site import T0
from test_alerts import Clock, alerts, dispatcher, hook, started_receivers
from test_metrics_store import page

from taskdash.alerts import enqueue
from taskdash.metrics import Metrics
from taskdash.settings import MetricsSettings, WebhookSettings
from taskdash.store import Store
from taskdash.store.times import to_ms

OUTCOMES = ("delivered", "retry", "failed", "refused")


@pytest.fixture
async def receivers() -> AsyncIterator[Any]:
    async with started_receivers() as start:
        yield start


async def test_attempts_durations_and_pending_deliveries(store: Store, receivers: Any) -> None:
    clock = Clock()
    flaky = await receivers(500)
    # 127.0.0.2 is outside the rules' 127.0.0.1/32: refused, never contacted
    walled = WebhookSettings(name="walled", url="http://127.0.0.2:9/hook")
    sender = dispatcher(store, alerts(hook(flaky), walled, retries=3), clock, node_id="d1")
    metrics = Metrics(MetricsSettings(store_counts_ttl=0))
    metrics.watch_alerts(sender, store)

    found = await page(metrics)
    for name in ("ops", "walled"):  # every pair shown from the start
        for outcome in OUTCOMES:
            assert found.value("taskdash_alert_attempts_total", webhook=name, outcome=outcome) == 0
        assert found.value("taskdash_alert_deliveries_pending", webhook=name) == 0
    assert found.value("taskdash_alert_attempt_duration_seconds_count", webhook="ops") == 0

    await enqueue(store, kind="service.offline", subject="s", details={}, key="k", at=to_ms(T0))
    await sender.once()  # ops: 500, retried later; walled: refused for good
    found = await page(metrics)
    assert found.value("taskdash_alert_attempts_total", webhook="ops", outcome="retry") == 1
    assert found.value("taskdash_alert_attempts_total", webhook="walled", outcome="refused") == 1
    assert found.sum("taskdash_alert_attempts_total") == 2
    assert found.value("taskdash_alert_deliveries_pending", webhook="ops") == 1
    assert found.value("taskdash_alert_deliveries_pending", webhook="walled") == 0
    assert found.value("taskdash_alert_attempt_duration_seconds_count", webhook="ops") == 1
    assert found.value("taskdash_alert_attempt_duration_seconds_sum", webhook="ops") > 0

    clock.advance(10)
    await sender.once()  # ops: 200
    found = await page(metrics)
    assert found.value("taskdash_alert_attempts_total", webhook="ops", outcome="delivered") == 1
    assert found.sum("taskdash_alert_attempts_total") == 3
    assert found.value("taskdash_alert_deliveries_pending", webhook="ops") == 0
    assert found.value("taskdash_alert_attempt_duration_seconds_count", webhook="ops") == 2
    assert len(flaky.requests) == 2
