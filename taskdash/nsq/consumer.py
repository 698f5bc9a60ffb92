"""One pynsq Reader on one topic: decode, batch, apply, then FIN or REQ.

The outcome of every message is decided in one place (:meth:`Consumer._settle`):

* stored durably             -> FIN
* the store failed           -> REQ with exponential backoff (nothing is lost)
* can never succeed          -> dead letter + FIN (bad JSON, wrong types, too big)

Messages are handled asynchronously (``enable_async``) so that many can be written in one bulk
operation; pynsq's ``max_tries`` is off (0) because a store outage must never drop a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import nsq
import structlog

from taskdash.background import Background
from taskdash.errors import StoreError, ValidationError
from taskdash.logs import RateLimitedLog
from taskdash.models import Model, decode

log = structlog.get_logger("taskdash.nsq.consumer")

M = TypeVar("M", bound=Model)


@dataclass
class Received(Generic[M]):
    """A decoded message waiting in a batch."""

    message: nsq.Message
    item: M
    at: datetime


Apply = Callable[[list[Received[M]]], Awaitable[None]]
DeadLetter = Callable[[str, nsq.Message, str, str | None], Awaitable[None]]


@dataclass
class Counters:
    """What a consumer did, for ``/readyz`` details and the logs."""

    received: int = 0
    stored: int = 0
    requeued: int = 0
    dead_lettered: int = 0
    batches: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class _Reader(nsq.Reader):  # type: ignore[misc]
    """pynsq's Reader, made closable: no reconnects or lookups once closing (pynsq #196, #261)."""

    closing = False

    def _run(self) -> None:
        if not self.closing:
            super()._run()

    def connect_to_nsqd(self, host: str, port: int) -> None:
        if not self.closing:
            super().connect_to_nsqd(host, port)

    def query_lookupd(self) -> Any:
        if not self.closing:
            return super().query_lookupd()
        return None

    def _on_connection_error(self, conn: Any, error: Exception, **kwargs: Any) -> None:
        # Closing our own socket makes pynsq report "failed to unpack size" at ERROR level:
        # not an error on a clean stop.
        if not self.closing:
            super()._on_connection_error(conn, error, **kwargs)

    def _on_connection_close(self, conn: Any, **kwargs: Any) -> None:
        # pynsq warns "connection closed" and plans a reconnect; on a clean stop neither applies.
        if not self.closing:
            super()._on_connection_close(conn, **kwargs)
            return
        self.conns.pop(conn.id, None)
        self.total_rdy = max(self.total_rdy - conn.rdy, 0)
        if conn.rdy_timeout:
            self.io_loop.remove_timeout(conn.rdy_timeout)
            conn.rdy_timeout = None

    def shut(self) -> None:
        """Close every connection and periodic callback; safe before the reader has started."""
        self.closing = True
        for conn in list(self.conns.values()):
            conn.close()
        for periodic in (self.redist_periodic, self.query_periodic):
            if periodic is not None:
                periodic.stop()


class Consumer(Generic[M]):
    """Reads ``topic`` on ``channel`` and hands batches of decoded ``model`` items to ``apply``."""

    def __init__(
        self,
        *,
        topic: str,
        channel: str,
        model: type[M],
        apply: Apply[M],
        dead_letter: DeadLetter,
        nsqd_tcp_addresses: list[str],
        lookupd_http_addresses: list[str],
        max_in_flight: int,
        batch_size: int,
        flush_interval: float,
        max_message_size: int,
        requeue_delay: float,
        requeue_delay_max: float,
    ) -> None:
        self.topic = topic
        self.channel = channel
        self.model = model
        self.apply = apply
        self.dead_letter = dead_letter
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_message_size = max_message_size
        self.requeue_delay = requeue_delay
        self.requeue_delay_max = requeue_delay_max
        self.counters = Counters()
        self._addresses = (nsqd_tcp_addresses, lookupd_http_addresses)
        self._max_in_flight = max_in_flight
        self._pending: list[Received[M]] = []
        self._flush_lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flusher = Background(f"flush:{topic}", self._flush_loop)
        self._reader: _Reader | None = None
        self._store_down_since: float | None = None
        self.log = log.bind(topic=topic, channel=channel)
        # a misbehaving publisher can send poison at any rate: every one is stored, few logged
        self._dead_letter_log = RateLimitedLog(self.log, "message_dead_lettered")

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (pynsq retries on its own) and start the batch flusher."""
        nsqd, lookupd = self._addresses
        self._reader = _Reader(
            topic=self.topic,
            channel=self.channel,
            message_handler=self._on_message,
            nsqd_tcp_addresses=nsqd or None,
            lookupd_http_addresses=lookupd or None,
            max_in_flight=self._max_in_flight,
            max_tries=0,
            lookupd_poll_interval=15,
            max_backoff_duration=max(1.0, self.requeue_delay_max),
            user_agent="taskdash",
        )
        await self._flusher.start()

    async def stop(self) -> None:
        """Stop intake (RDY 0), settle what is batched, then close. Idempotent.

        Messages in flight but not yet batched are left to the broker's timeout: they are
        redelivered, never lost.
        """
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.set_max_in_flight(0)
        # a batch being written is let finish (FIN or REQ), not cut off mid-write: the flusher
        # is cancelled only while it waits, never while it holds the lock
        async with self._flush_lock:
            await self._flusher.stop()
        await self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if reader is not None:
            reader.shut()

    def check(self) -> tuple[bool, dict[str, Any]]:
        """Readiness details: connections and counters."""
        conns = len(self._reader.conns) if self._reader else 0
        c = self.counters
        details = {
            "connections": conns,
            "received": c.received,
            "stored": c.stored,
            "requeued": c.requeued,
            "dead_lettered": c.dead_lettered,
            **c.extra,
        }
        return self._reader is not None, details

    # -- intake --------------------------------------------------------------------------------

    def _on_message(self, message: nsq.Message) -> None:
        """pynsq's handler: decide now for bad messages, else queue for the next batch."""
        message.enable_async()
        self.counters.received += 1
        now = datetime.now(UTC)
        body: bytes = message.body
        if len(body) > self.max_message_size:
            reason = f"message is {len(body)} bytes, over the limit of {self.max_message_size}"
            self._spawn(self._reject(message, reason, None))
            return
        try:
            item = decode(self.model, body)
        except ValidationError as exc:
            self._spawn(self._reject(message, str(exc), exc.field))
            return
        self._pending.append(Received(message, item, now))
        if len(self._pending) >= self.batch_size or (self._reader and self._reader.is_starved()):
            self._kick.set()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reject(self, message: nsq.Message, reason: str, field: str | None) -> None:
        """Dead-letter a message that can never succeed; requeue if even that cannot be stored."""
        try:
            await self.dead_letter(self.topic, message, reason, field)
        except StoreError as exc:
            self._requeue([message], exc)
            return
        except Exception:
            self.log.exception("dead_letter_failed", reason=reason)
            self._requeue([message], None)
            return
        self.counters.dead_lettered += 1
        self._dead_letter_log(
            msg_id=message.id.decode() if isinstance(message.id, bytes) else message.id,
            reason=reason,
            field=field,
            attempts=message.attempts,
        )
        message.finish()

    # -- batches ------------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.flush_interval)
            self._kick.clear()
            await self._flush()

    async def _flush(self) -> None:
        async with self._flush_lock:
            while self._pending:
                batch = self._pending[: self.batch_size]
                del self._pending[: self.batch_size]
                await self._settle(batch)

    async def _settle(self, batch: list[Received[M]]) -> None:
        """Apply one batch and answer every message in it: the one place outcomes are decided."""
        self.counters.batches += 1
        try:
            await self.apply(batch)
        except StoreError as exc:
            self._requeue([r.message for r in batch], exc)
            return
        except Exception:
            self.log.exception("batch_apply_failed", size=len(batch))
            self._requeue([r.message for r in batch], None)
            return
        if self._store_down_since is not None:
            self.log.info(
                "store_writes_resumed", down_for=round(time.monotonic() - self._store_down_since, 3)
            )
            self._store_down_since = None
        for received in batch:
            received.message.finish()
        self.counters.stored += len(batch)

    def _requeue(self, messages: list[nsq.Message], exc: Exception | None) -> None:
        if self._store_down_since is None:
            self._store_down_since = time.monotonic()
            self.log.error("store_write_failed", error=str(exc), requeued=len(messages))
        for message in messages:
            exponent = min(max(message.attempts - 1, 0), 30)
            delay = min(self.requeue_delay * 2**exponent, self.requeue_delay_max)
            # backoff=False: pynsq's reader-wide backoff would throttle intake to one message
            # per pause long after the store is back; the per-message delay spaces retries.
            message.requeue(time_ms=int(delay * 1000), backoff=False)
        self.counters.requeued += len(messages)
