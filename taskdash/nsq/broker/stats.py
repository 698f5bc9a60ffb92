"""nsqd's /stats document (JSON shape and text form) built from the registry."""

from __future__ import annotations

import time
from typing import Any

from taskdash.nsq.broker.channel import Channel
from taskdash.nsq.broker.options import VERSION
from taskdash.nsq.broker.registry import Registry
from taskdash.nsq.broker.topic import Topic

# nsqd reports Go heap figures; a Python process has no equivalent, so the keys carry zeros.
_MEMORY_KEYS = (
    "heap_objects",
    "heap_idle_bytes",
    "heap_in_use_bytes",
    "heap_released_bytes",
    "gc_pause_usec_100",
    "gc_pause_usec_99",
    "gc_pause_usec_95",
    "next_gc_bytes",
    "gc_total_runs",
)
_NO_LATENCY: dict[str, Any] = {"count": 0, "percentiles": None}


def build_stats(
    registry: Registry,
    start_time: float,
    *,
    topic: str = "",
    channel: str = "",
    include_clients: bool = True,
    include_mem: bool = True,
) -> dict[str, Any]:
    """The ``/stats?format=json`` body; unknown topic filter gives ``topics: null`` like nsqd."""
    topics: list[dict[str, Any]] | None
    producers: list[dict[str, Any]] | None = None
    if topic and topic not in registry.topics:
        topics = None
    else:
        chosen = [registry.topics[topic]] if topic else list(registry.topics.values())
        topics = []
        for entry in sorted(chosen, key=lambda t: t.name):
            if channel and channel not in entry.channels:
                continue
            topics.append(_topic_stats(entry, channel, topic, include_clients))
        if include_clients:
            found = [c.stats(topic) for c in registry.connections.values() if c.is_producer]
            producers = found or None  # Go marshals an empty nil slice as null
    doc: dict[str, Any] = {
        "version": VERSION,
        "health": "OK",
        "start_time": int(start_time),
        "topics": topics,
    }
    if include_mem:
        doc["memory"] = dict.fromkeys(_MEMORY_KEYS, 0)
    doc["producers"] = producers
    return doc


def _topic_stats(
    topic: Topic, channel_filter: str, topic_filter: str, include_clients: bool
) -> dict[str, Any]:
    """One topic entry; channels sorted by name as nsqd sorts them."""
    names = [channel_filter] if channel_filter else sorted(topic.channels)
    return {
        "topic_name": topic.name,
        "channels": [
            _channel_stats(topic.channels[name], topic_filter, include_clients) for name in names
        ],
        "depth": topic.depth,
        "backend_depth": topic.backend_depth,
        "message_count": topic.message_count,
        "message_bytes": topic.message_bytes,
        "paused": False,
        "e2e_processing_latency": dict(_NO_LATENCY),
    }


def _channel_stats(channel: Channel, topic_filter: str, include_clients: bool) -> dict[str, Any]:
    """One channel entry: depth is queued messages only."""
    clients: list[dict[str, Any]] | None = None
    if include_clients:
        clients = [client.stats(topic_filter) for client in channel.clients.values()]
    return {
        "channel_name": channel.name,
        "depth": channel.depth,
        "backend_depth": channel.backend_depth,
        "in_flight_count": len(channel.in_flight),
        "deferred_count": len(channel.deferred),
        "message_count": channel.message_count,
        "requeue_count": channel.requeue_count,
        "timeout_count": channel.timeout_count,
        "client_count": len(channel.clients),
        "clients": clients,
        "paused": False,
        "e2e_processing_latency": dict(_NO_LATENCY),
    }


def render_text(doc: dict[str, Any], start_time: float) -> str:
    """The plain-text /stats, close to nsqd's layout."""
    uptime = int(time.time() - start_time)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start_time))
    lines = [f"nsqd v{VERSION} (taskdash)", f"start_time {started}", f"uptime {uptime}s", ""]
    lines.append(f"Health: {doc['health']}")
    topics = doc["topics"] or []
    lines.append("" if topics else "\nTopics: None")
    if topics:
        lines.append("Topics:")
    for topic in topics:
        lines.append(
            f"   [{topic['topic_name']:<15}] depth: {topic['depth']:<5} "
            f"be-depth: {topic['backend_depth']:<5} "
            f"msgs: {topic['message_count']:<8} e2e%: "
        )
        for ch in topic["channels"]:
            lines.append(
                f"      [{ch['channel_name']:<25}] depth: {ch['depth']:<5} "
                f"be-depth: {ch['backend_depth']:<5} "
                f"inflt: {ch['in_flight_count']:<4} def: {ch['deferred_count']:<4} "
                f"re-q: {ch['requeue_count']:<5} timeout: {ch['timeout_count']:<5} "
                f"msgs: {ch['message_count']:<8} e2e%: "
            )
            for client in ch["clients"] or []:
                lines.append(
                    f"        [V2 {client['hostname']} {client['user_agent']}] "
                    f"state: {client['state']} inflt: {client['in_flight_count']:<4} "
                    f"rdy: {client['ready_count']:<4} fin: {client['finish_count']:<8} "
                    f"re-q: {client['requeue_count']:<8} msgs: {client['message_count']:<8}"
                )
    producers = doc.get("producers") or []
    lines.append("\nProducers: None" if not producers else "\nProducers:")
    for client in producers:
        lines.append(f"   [V2 {client['hostname']} {client['user_agent']}]")
    return "\n".join(lines) + "\n"
