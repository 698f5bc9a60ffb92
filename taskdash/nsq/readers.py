"""The two ingestion readers: ``taskdash.service`` registrations and ``taskdash.heartbeat``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import nsq
import structlog

from taskdash.logs import RateLimitedLog, log_each_or_summary
from taskdash.models import HeartBeat, TaskService
from taskdash.nsq.consumer import Consumer, Received
from taskdash.nsq.tls import client_context
from taskdash.settings import NsqSettings
from taskdash.store import Store
from taskdash.store.deadletters import add_dead_letter
from taskdash.store.services import (
    add_heartbeat_counts,
    record_heartbeats,
    register_services,
)
from taskdash.store.times import to_ms

log = structlog.get_logger("taskdash.nsq.readers")


def connection_options(settings: NsqSettings) -> dict[str, Any]:
    """pynsq's connection options from ``[nsq]``: TLS, AUTH, compression, timeouts.

    The secret is read here (from the setting or its file), once per start.
    """
    options: dict[str, Any] = {
        "heartbeat_interval": settings.heartbeat_interval,
        "user_agent": settings.user_agent,
    }
    if settings.msg_timeout:
        options["msg_timeout"] = settings.msg_timeout
    if settings.tls:
        options["tls_v1"] = True
        options["tls_context"] = client_context(**settings.tls_files())
    if settings.compression == "deflate":
        options["deflate"] = True
        options["deflate_level"] = settings.deflate_level
    elif settings.compression == "snappy":
        options["snappy"] = True
    secret = settings.secret()
    if secret:
        options["auth_secret"] = secret
    return options


class Ingestion:
    """Builds the consumers and holds the behaviour behind them (what a batch writes)."""

    def __init__(
        self,
        store: Store,
        settings: NsqSettings,
        *,
        node_id: str,
        nsqd_tcp_addresses: list[str],
        lookupd_http_addresses: list[str],
        log_summary_threshold: int = 20,
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.unknown_heartbeats = 0
        self.absorbed_heartbeats = 0
        self._resolution_ms = int(settings.heartbeat_resolution * 1000)
        self._dead_letter_days = settings.dead_letter_ttl_days
        self._stored: dict[str, int] = {}  # service id -> receipt time (ms) of its last stored beat
        # beats covered by a stored one: count and last receipt (ms), joined to the next write
        self._absorbed: dict[str, tuple[int, int]] = {}
        self._unknown_log = RateLimitedLog(log, "heartbeat_from_unknown_service")
        self._summary_threshold = log_summary_threshold
        common: dict[str, Any] = {
            "channel": settings.channel,
            "dead_letter": self._dead_letter,
            "nsqd_tcp_addresses": nsqd_tcp_addresses,
            "lookupd_http_addresses": lookupd_http_addresses,
            "max_in_flight": settings.max_in_flight,
            "max_message_size": settings.max_message_size,
            "requeue_delay": settings.requeue_delay,
            "requeue_delay_max": settings.requeue_delay_max,
            "flush_interval": settings.heartbeat_flush_interval,
            "batch_size": settings.heartbeat_batch_size,
            "max_attempts": settings.max_attempts,
            "stall_after": settings.stall_after,
            "lookupd_poll_interval": settings.lookupd_poll_interval,
            "connection": connection_options(settings),
        }
        self.services: Consumer[TaskService] = Consumer(
            topic=settings.service_topic, model=TaskService, apply=self._register, **common
        )
        self.heartbeats: Consumer[HeartBeat] = Consumer(
            topic=settings.heartbeat_topic,
            model=HeartBeat,
            apply=self._beat,
            drain=self._write_absorbed,
            **common,
        )

    @property
    def consumers(self) -> tuple[Consumer[TaskService], Consumer[HeartBeat]]:
        """Both consumers, in start order."""
        return (self.services, self.heartbeats)

    async def _register(self, batch: list[Received[TaskService]]) -> None:
        now = datetime.now(UTC)
        await register_services(self.store, [r.item for r in batch], now)
        registered = [{"service_id": r.item.id, "url": r.item.url} for r in batch]
        # 10,000 registrations at once stay a few summary lines; ``services`` has them all
        log_each_or_summary(
            log, "service_registered", registered, threshold=self._summary_threshold
        )

    async def _beat(self, batch: list[Received[HeartBeat]]) -> None:
        """Coalesce per service (many beats -> one write), then apply.

        A beat that arrives within ``heartbeat_resolution`` of this service's last stored beat
        is already reflected by that durable write, so it is finished without another one. It
        is still counted: ``heartbeats_total`` gets it with the service's next write (or at
        the reader's stop), and ``beats`` (consecutive beats, for recovery) only if it came
        just before that write. That keeps a backlog replay after an outage from costing a
        write per beat; the stored time lags a service's newest beat by at most the
        resolution (1 s by default, against a 15 s stale threshold).
        """
        beats: dict[str, tuple[int, datetime]] = {}
        absorbed: dict[str, tuple[int, int]] = {}  # this batch's: count, last receipt (ms)
        earlier: dict[str, int] = {}  # absorbed before, too old to count as consecutive
        for received in batch:
            sid, at = received.item.id, to_ms(received.at)
            if sid in beats:
                beats[sid] = (beats[sid][0] + 1, received.at)
                continue
            stored = self._stored.get(sid)
            if stored is not None and 0 <= at - stored < self._resolution_ms:
                absorbed[sid] = (absorbed.get(sid, (0, 0))[0] + 1, at)
                continue
            recent, old = self._pending_absorbed(sid, at)
            beats[sid] = (1 + absorbed.pop(sid, (0, 0))[0] + recent, received.at)
            if old:
                earlier[sid] = old
        unknown = set(
            await record_heartbeats(self.store, beats, known=self._stored.keys(), absorbed=earlier)
        )
        # only now, with the batch durable: a requeued batch must not count its beats twice
        self._keep_absorbed(absorbed)
        for sid, (_, at) in beats.items():
            self._absorbed.pop(sid, None)
            if sid not in unknown:
                self._stored[sid] = to_ms(at)
        if unknown:
            self.unknown_heartbeats += sum(beats[sid][0] for sid in unknown)
            self.heartbeats.counters.extra["unknown_heartbeats"] = self.unknown_heartbeats
            self._unknown_log(service_ids=sorted(unknown)[:10], count=len(unknown))

    def _keep_absorbed(self, absorbed: dict[str, tuple[int, int]]) -> None:
        """Hold a durable batch's absorbed beats until they join a write."""
        for sid, (count, at) in absorbed.items():
            self._absorbed[sid] = (self._absorbed.get(sid, (0, 0))[0] + count, at)
            self.absorbed_heartbeats += count
        self.heartbeats.counters.extra["absorbed_heartbeats"] = self.absorbed_heartbeats

    async def _write_absorbed(self) -> None:
        """At the reader's stop: add beats absorbed since each service's last write to its total."""
        counts = {sid: count for sid, (count, _) in self._absorbed.items()}
        await add_heartbeat_counts(self.store, counts)
        self._absorbed.clear()

    def _pending_absorbed(self, sid: str, at: int) -> tuple[int, int]:
        """Beats absorbed before ``at``: (those just before it, the older ones).

        Only the first join its consecutive beats: a beat absorbed before a long silence must
        not count toward the beats that bring a service back online. Both count in its total.
        """
        count, last = self._absorbed.get(sid, (0, 0))
        if 0 <= at - last <= self._resolution_ms:
            return count, 0
        return 0, count

    async def _dead_letter(
        self, topic: str, message: nsq.Message, reason: str, field: str | None
    ) -> None:
        msg_id = message.id.decode() if isinstance(message.id, bytes) else str(message.id)
        await add_dead_letter(
            self.store,
            topic=topic,
            msg_id=msg_id,
            body=message.body,
            reason=reason,
            field=field,
            attempts=message.attempts,
            node=self.node_id,
            now=datetime.now(UTC),
            keep_days=self._dead_letter_days,
        )
