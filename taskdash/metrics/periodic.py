"""The periodic service: leases, completions, dead tasks, schedule runs, queue depths."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, Metric

from taskdash.store.periodic import DEAD, FAILED, LEASED, PENDING

if TYPE_CHECKING:
    from taskdash.metrics.registry import Metrics
    from taskdash.periodic.firing import Firer
    from taskdash.periodic.leasing import Leasing
    from taskdash.store.periodic import PeriodicStore

#: the states a queue's depth is shown in (``done`` tasks are history, not depth)
DEPTH_STATES = (PENDING, LEASED, FAILED, DEAD)
#: queues whose depths are shown; more would be a label set without bound (counts per scrape)
MAX_QUEUES = 100
COMPLETIONS = ("done", "failed", "dead")

Depths = dict[tuple[str, str, str], int]


class LeasingCollector:
    """Reads :attr:`Leasing.counts` at scrape time: this node's leases and completions."""

    def __init__(self, leasing: Leasing) -> None:
        self.leasing = leasing

    def collect(self) -> Iterator[Metric]:
        counts = self.leasing.counts
        granted = CounterMetricFamily(
            "taskdash_periodic_leases_granted", "Tasks leased to workers by this node."
        )
        granted.add_metric([], counts["leased"])
        expired = CounterMetricFamily(
            "taskdash_periodic_leases_expired",
            "Leases that ran out before CompleteTask, noticed when the task was leased again "
            "or buried.",
        )
        expired.add_metric([], counts["lease_expired"] + counts["buried"])
        completed = CounterMetricFamily(
            "taskdash_periodic_tasks_completed",
            "CompleteTask calls by outcome: done, failed (handed out again), dead.",
            labels=["outcome"],
        )
        for outcome in COMPLETIONS:
            completed.add_metric([outcome], counts[outcome])
        dead = CounterMetricFamily(
            "taskdash_periodic_tasks_dead",
            "Tasks that went dead after max_attempts, by cause: failed (reported by the "
            "worker) or expired (the last lease ran out).",
            labels=["cause"],
        )
        dead.add_metric(["failed"], counts["dead"])
        dead.add_metric(["expired"], counts["buried"])
        yield from (granted, expired, completed, dead)


def watch_leasing(metrics: Metrics, leasing: Leasing, store: PeriodicStore) -> None:
    """This node's lease counters, and every queue's depth by state (shared MongoDB)."""
    metrics.add(LeasingCollector(leasing))

    async def read() -> Depths:
        queues = await store.some_queues(MAX_QUEUES)
        keys = [
            (q["service"], q["queue"], q["incarnation"], s) for q in queues for s in DEPTH_STATES
        ]
        found = await asyncio.gather(*(store.depth(inc, state) for _, _, inc, state in keys))
        return {
            (svc, queue, state): n for (svc, queue, _, state), n in zip(keys, found, strict=True)
        }

    metrics.store_gauge(
        "taskdash_periodic_queue_tasks",
        f"Tasks per queue and state (pending, leased, failed, dead); first {MAX_QUEUES} queues.",
        ["service", "queue", "state"],
        read,
        lambda depths: ((list(key), n) for key, n in sorted(depths.items())),
    )


class FirerCollector:
    """Schedule runs this node fired, skipped, or lost to another node."""

    def __init__(self, firer: Firer) -> None:
        self.firer = firer

    def collect(self) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            "taskdash_periodic_schedule_runs",
            "Schedule runs by outcome: fired (task created), skipped (overlap or catch-up "
            "policy), lost (another node fired it first).",
            labels=["outcome"],
        )
        runs.add_metric(["fired"], self.firer.fired)
        runs.add_metric(["skipped"], self.firer.skipped)
        runs.add_metric(["lost"], self.firer.lost)
        yield runs


def watch_firer(metrics: Metrics, firer: Firer) -> None:
    """Show the schedules' firing counters."""
    metrics.add(FirerCollector(firer))
