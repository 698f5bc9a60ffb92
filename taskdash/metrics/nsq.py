"""NSQ readers: messages by topic and outcome, read from each consumer's own counters."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from taskdash.metrics.registry import Metrics
    from taskdash.nsq.consumer import Consumer

#: how each answered message ended; they add up to the messages answered
OUTCOMES = ("stored", "absorbed", "dead_lettered", "requeued")
#: receipt to FIN/REQ: a batch waits up to its flush interval, a store outage far longer
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class ReaderCollector:
    """Reads :class:`~taskdash.nsq.consumer.Counters` at scrape time (no increments added).

    ``stored`` counts the messages whose batch was written; the heartbeats among them that
    the resolution absorbed (finished without a write of their own, see nsq/readers.py) are
    ``absorbed`` instead, so the four outcomes never count a message twice.
    """

    def __init__(self, consumers: Sequence[Consumer[Any]]) -> None:
        self.consumers = consumers

    def collect(self) -> Iterator[Metric]:
        received = CounterMetricFamily(
            "taskdash_nsq_messages_received",
            "NSQ deliveries handed to the reader (a requeued message counts again).",
            labels=["topic"],
        )
        answered = CounterMetricFamily(
            "taskdash_nsq_messages",
            "NSQ deliveries answered, by outcome: stored, absorbed, dead_lettered, requeued.",
            labels=["topic", "outcome"],
        )
        unknown = CounterMetricFamily(
            "taskdash_nsq_heartbeats_unknown",
            "Heartbeats from services never registered (finished, not stored).",
            labels=["topic"],
        )
        in_flight = GaugeMetricFamily(
            "taskdash_nsq_messages_in_flight",
            "Deliveries received and not answered yet.",
            labels=["topic"],
        )
        for consumer in self.consumers:
            counts, topic = consumer.counters, consumer.topic
            absorbed = counts.extra.get("absorbed_heartbeats", 0)
            values = (counts.stored - absorbed, absorbed, counts.dead_lettered, counts.requeued)
            received.add_metric([topic], counts.received)
            for outcome, value in zip(OUTCOMES, values, strict=True):
                answered.add_metric([topic, outcome], value)
            unknown.add_metric([topic], counts.extra.get("unknown_heartbeats", 0))
            in_flight.add_metric([topic], consumer.progress.in_flight)
        yield from (received, answered, unknown, in_flight)


def watch_readers(metrics: Metrics, consumers: Sequence[Consumer[Any]]) -> None:
    """Count the readers' messages; time each delivery from receipt to its answer."""
    metrics.add(ReaderCollector(consumers))
    latency = Histogram(
        "taskdash_nsq_processing_seconds",
        "Seconds from a delivery's receipt to its FIN or REQ, by topic.",
        ["topic"],
        buckets=LATENCY_BUCKETS,
        registry=metrics.registry,
    )
    for consumer in consumers:
        consumer.on_settled = latency.labels(consumer.topic).observe
