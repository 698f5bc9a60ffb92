"""The tcpx server: connections and requests by type and errid, from its own counters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from taskdash.tcp.requests import REQUESTS, UNKNOWN, ErrId

if TYPE_CHECKING:
    from taskdash.metrics.registry import Metrics
    from taskdash.tcp.server import TcpServer

#: the server's ``counts`` keys, as the ``event`` label
EVENTS = ("refused_connections", "frame_errors", "slow_clients", "idle", "internal_errors")


class TcpCollector:
    """Reads :class:`~taskdash.tcp.server.TcpServer`'s counters at scrape time.

    Every (type, errid) pair is shown from the start, at 0 until it happens.
    """

    def __init__(self, server: TcpServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        open_now = GaugeMetricFamily("taskdash_tcp_connections", "Open tcpx connections.")
        open_now.add_metric([], len(server.connections))
        accepted = CounterMetricFamily(
            "taskdash_tcp_connections_accepted", "tcpx connections admitted."
        )
        accepted.add_metric([], server.accepted)
        events = CounterMetricFamily(
            "taskdash_tcp_connection_events",
            "tcpx connections refused (max_connections) or closed for a reason, by event.",
            labels=["event"],
        )
        for event in EVENTS:
            events.add_metric([event], server.counts.get(event, 0))
        requests = CounterMetricFamily(
            "taskdash_tcp_requests",
            "tcpx requests answered, by type (Register, Update, Find, Unknown) and errid.",
            labels=["type", "errid"],
        )
        replies = server.handler.replies
        for name in (*REQUESTS, UNKNOWN):
            for errid in ErrId:
                requests.add_metric([name, str(int(errid))], replies.get((name, int(errid)), 0))
        beats = CounterMetricFamily("taskdash_tcp_heartbeats", "tcpx heartbeat frames received.")
        beats.add_metric([], server.heartbeats)
        yield from (open_now, accepted, events, requests, beats)


def watch_tcp(metrics: Metrics, server: TcpServer) -> None:
    """Show the tcpx server's counters."""
    metrics.add(TcpCollector(server))
