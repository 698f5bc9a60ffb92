"""One pynsq Reader on one topic: decode, batch, apply, then FIN or REQ.

Every message gets exactly one answer (:meth:`Consumer._answer`), decided by these rules:

* stored durably                          -> FIN
* the store is unavailable                -> REQ with exponential backoff, without limit
  (StoreUnavailable: down, unreachable, timed out)
* can never succeed: too big, or decoding -> dead letter + FIN (whatever the decoder raised:
  raised anything                            invalid UTF-8, deep nesting, wrong types...)
* anything else went wrong (a bug, or a   -> REQ with backoff; dead letter + FIN once nsqd has
  write the store refuses)                   delivered it ``max_attempts`` times

No exception ever leaves our handler for pynsq's: its catch-all requeues with reader-wide
backoff and a traceback, forever, so one poison message would block its topic. A batch whose
apply fails unexpectedly is applied again one message at a time, so only the culprit is
retried and dead-lettered, never the good messages that shared its batch.

Messages are handled asynchronously (``enable_async``) so that many can be written in one bulk
operation; pynsq's ``max_tries`` is off (0) because a store outage must never drop a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import nsq
import structlog

from taskdash.background import Background
from taskdash.errors import StoreError, StoreUnavailable, ValidationError
from taskdash.logs import RateLimitedLog
from taskdash.models import Model, decode
from taskdash.nsq.reader import ClosableReader, Progress

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
Decode = Callable[[type[M], bytes], M]
Drain = Callable[[], Awaitable[None]]


@dataclass
class Counters:
    """What a consumer did, for ``/readyz`` details and the logs."""

    received: int = 0
    stored: int = 0
    requeued: int = 0
    dead_lettered: int = 0
    batches: int = 0
    #: messages applied one by one after their batch failed unexpectedly
    isolated: int = 0
    extra: dict[str, int] = field(default_factory=dict)


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
        max_attempts: int = 5,
        stall_after: float = 30.0,
        lookupd_poll_interval: int = 15,  # whole seconds: pynsq takes nothing else
        decode: Decode[M] = decode,
        drain: Drain | None = None,
        connection: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.channel = channel
        self.model = model
        self.apply = apply
        self.dead_letter = dead_letter
        self.decode = decode
        self.drain = drain
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_message_size = max_message_size
        self.requeue_delay = requeue_delay
        self.requeue_delay_max = requeue_delay_max
        self.max_attempts = max_attempts
        self.stall_after = stall_after
        self.lookupd_poll_interval = lookupd_poll_interval
        self.counters = Counters()
        self.progress = Progress()
        #: told each settled delivery's seconds from receipt to FIN/REQ (the metrics' histogram)
        self.on_settled: Callable[[float], None] | None = None
        self._addresses = (nsqd_tcp_addresses, lookupd_http_addresses)
        self._max_in_flight = max_in_flight
        # pynsq's connection options (TLS, AUTH, compression, timeouts): readers.connection_options
        self._connection = {"user_agent": "taskdash", **(connection or {})}
        self._pending: list[Received[M]] = []
        self._flush_lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flusher = Background(f"flush:{topic}", self._flush_loop)
        self._reader: ClosableReader | None = None
        self._store_down_since: float | None = None
        self.log = log.bind(topic=topic, channel=channel)
        # a misbehaving publisher can send poison at any rate: every one is stored, few logged
        self._dead_letter_log = RateLimitedLog(self.log, "message_dead_lettered")
        # likewise for failures it may trigger in our code: each with its traceback, but few
        self._apply_failed_log = RateLimitedLog(self.log, "message_apply_failed")
        self._handler_failed_log = RateLimitedLog(self.log, "message_handler_failed")
        self._dead_letter_failed_log = RateLimitedLog(self.log, "dead_letter_failed")

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (pynsq retries on its own) and start the batch flusher."""
        nsqd, lookupd = self._addresses
        self._reader = ClosableReader(
            topic=self.topic,
            channel=self.channel,
            message_handler=self._on_message,
            nsqd_tcp_addresses=nsqd or None,
            lookupd_http_addresses=lookupd or None,
            max_in_flight=self._max_in_flight,
            max_tries=0,
            lookupd_poll_interval=self.lookupd_poll_interval,
            max_backoff_duration=max(1.0, self.requeue_delay_max),
            **self._connection,
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
            await self._drain()
            reader.shut()

    async def _drain(self) -> None:
        """The owner's last write at a stop (e.g. counts held in memory); never raises."""
        if self.drain is None:
            return
        try:
            await self.drain()
        except StoreError as exc:  # an outage at the stop: no traceback, it is not a bug
            self.log.warning("drain_failed", error=str(exc))
        except Exception:
            self.log.exception("drain_failed")

    def check(self) -> tuple[bool, dict[str, Any]]:
        """Readiness: not ready while stalled or cut off from a configured nsqd, with the reason."""
        reason = self._not_ready_reason(time.monotonic())
        details = self._details()
        if reason is not None:
            details["reason"] = reason
        return reason is None, details

    def _details(self) -> dict[str, Any]:
        c, settled_at = self.counters, self.progress.last_settled_at
        return {
            "connections": len(self._reader.conns) if self._reader else 0,
            "in_flight": self.progress.in_flight,
            "last_settled_at": settled_at.isoformat() if settled_at else None,
            "received": c.received,
            "stored": c.stored,
            "requeued": c.requeued,
            "dead_lettered": c.dead_lettered,
            "isolated": c.isolated,
            **c.extra,
            # per nsqd: TLS, compression and AUTH identity as negotiated
            "negotiated": self._reader.negotiation.report() if self._reader else {},
        }

    def _not_ready_reason(self, now: float) -> str | None:
        """Why the reader is not ready, or None: messages stuck, or an nsqd unreachable."""
        if self._reader is None:
            return "not running"
        stalled = self.progress.stalled_for(now)
        if stalled >= self.stall_after:
            return (
                f"stalled: {self.progress.in_flight} messages in flight and none settled"
                f" for {stalled:.1f} s (stall_after {self.stall_after:g} s)"
            )
        missing = self._reader.missing_for(self._addresses[0], now)
        late = sorted(address for address, gone in missing.items() if gone >= self.stall_after)
        if late:
            return f"no connection to nsqd {', '.join(late)} for {self.stall_after:g} s or more"
        return None

    # -- intake --------------------------------------------------------------------------------

    def _on_message(self, message: nsq.Message) -> None:
        """pynsq's handler. Nothing escapes it: pynsq's catch-all would requeue forever."""
        try:
            self._take(message)
        except Exception as exc:
            try:
                self._handler_failed(message, exc)
            except Exception:  # the last resort: unanswered, nsqd redelivers it after its timeout
                # no longer ours: held in flight, it would show the reader stalled once idle
                self.progress.let_go(message)
                self.log.exception("message_left_to_broker_timeout")

    def _take(self, message: nsq.Message) -> None:
        """Decide now for messages that can never succeed, else queue for the next batch."""
        message.enable_async()
        self.counters.received += 1
        self.progress.received(message)
        body: bytes = message.body
        if len(body) > self.max_message_size:
            reason = f"message is {len(body)} bytes, over the limit of {self.max_message_size}"
            self._spawn(self._reject(message, reason, None))
            return
        try:
            item = self.decode(self.model, body)
        except ValidationError as exc:
            self._spawn(self._reject(message, str(exc), exc.field))
            return
        except Exception as exc:  # never only what was foreseen: invalid UTF-8, recursion...
            reason = f"{self.model.__name__}: cannot be decoded: {_describe(exc)}"
            self._spawn(self._reject(message, reason, None))
            return
        self._queue(message, item, datetime.now(UTC))

    def _queue(self, message: nsq.Message, item: M, at: datetime) -> None:
        self._pending.append(Received(message, item, at))
        if len(self._pending) >= self.batch_size or (self._reader and self._reader.is_starved()):
            self._kick.set()

    def _handler_failed(self, message: nsq.Message, exc: Exception) -> None:
        """A bug of ours while taking a message: it still gets an answer (retry or dead letter)."""
        self._handler_failed_log(msg_id=_msg_id(message), error=_describe(exc), exc_info=exc)
        if message.has_responded() or any(r.message is message for r in self._pending):
            return  # answered already, or queued: its batch answers it
        if not message.is_async():
            message.enable_async()
        self._spawn(self._retry_or_dead_letter(message, exc))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reject(self, message: nsq.Message, reason: str, field: str | None) -> None:
        """Dead-letter a message that can never succeed; requeue if even that cannot be stored."""
        try:
            await self.dead_letter(self.topic, message, reason, field)
        except StoreError as exc:
            self._store_failed(exc, 1)
            self._requeue([message])
            return
        except Exception as exc:
            self._dead_letter_failed_log(reason=reason, error=_describe(exc), exc_info=exc)
            self._requeue([message])
            return
        self._store_ok()
        self.counters.dead_lettered += 1
        self._dead_letter_log(
            msg_id=_msg_id(message), reason=reason, field=field, attempts=message.attempts
        )
        self._answer(message, requeue=False)

    async def _retry_or_dead_letter(self, message: nsq.Message, exc: Exception) -> None:
        """An unexpected failure: retried until nsqd has delivered it ``max_attempts`` times."""
        if message.attempts >= self.max_attempts:
            reason = f"failed on each of {message.attempts} attempts, last: {_describe(exc)}"
            await self._reject(message, reason, None)
            return
        self._apply_failed_log(
            msg_id=_msg_id(message), attempts=message.attempts, error=_describe(exc), exc_info=exc
        )
        self._requeue([message])

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
        error = await self._apply(batch)
        if error is None:
            self._stored(batch)
        elif isinstance(error, StoreUnavailable):
            self._store_failed(error, len(batch))
            self._requeue([r.message for r in batch])
        elif len(batch) == 1:
            await self._retry_or_dead_letter(batch[0].message, error)
        else:
            await self._one_by_one(batch)

    async def _apply(self, batch: list[Received[M]]) -> Exception | None:
        """``apply``'s outcome as a value: None when the batch is durable."""
        try:
            await self.apply(batch)
        except Exception as exc:
            return exc
        return None

    async def _one_by_one(self, batch: list[Received[M]]) -> None:
        """After an unexpected batch failure: only the culprit is retried, the others stored."""
        self.counters.isolated += len(batch)
        for index, received in enumerate(batch):
            error = await self._apply([received])
            if error is None:
                self._stored([received])
            elif isinstance(error, StoreUnavailable):
                rest = batch[index:]
                self._store_failed(error, len(rest))
                self._requeue([r.message for r in rest])
                return
            else:
                await self._retry_or_dead_letter(received.message, error)

    def _stored(self, batch: list[Received[M]]) -> None:
        self._store_ok()
        for received in batch:
            self._answer(received.message, requeue=False)
        self.counters.stored += len(batch)

    # -- answers and the store's state ----------------------------------------------------------

    def _answer(self, message: nsq.Message, *, requeue: bool) -> None:
        """FIN or REQ, exactly once per delivery."""
        if message.has_responded():
            self.log.error("message_answered_twice", msg_id=_msg_id(message))
            return
        if requeue:
            # backoff=False: pynsq's reader-wide backoff would throttle intake to one message
            # per pause long after the store is back; the per-message delay spaces retries.
            message.requeue(time_ms=self._delay_ms(message), backoff=False)
        else:
            message.finish()
        waited = self.progress.settled(message)
        if waited is not None and self.on_settled is not None:
            self.on_settled(waited)

    def _requeue(self, messages: list[nsq.Message]) -> None:
        for message in messages:
            self._answer(message, requeue=True)
        self.counters.requeued += len(messages)

    def _delay_ms(self, message: nsq.Message) -> int:
        """Doubling from ``requeue_delay`` with each attempt, up to ``requeue_delay_max``."""
        exponent = min(max(message.attempts - 1, 0), 30)
        return int(min(self.requeue_delay * 2**exponent, self.requeue_delay_max) * 1000)

    def _store_failed(self, exc: StoreError, count: int) -> None:
        """Logged once per outage (and its end in :meth:`_store_ok`), not once per batch."""
        if self._store_down_since is None:
            self._store_down_since = time.monotonic()
            self.log.error("store_write_failed", error=str(exc), requeued=count)

    def _store_ok(self) -> None:
        if self._store_down_since is not None:
            down_for = round(time.monotonic() - self._store_down_since, 3)
            self.log.info("store_writes_resumed", down_for=down_for)
            self._store_down_since = None


def _msg_id(message: nsq.Message) -> str:
    return message.id.decode() if isinstance(message.id, bytes) else str(message.id)


def _describe(exc: BaseException) -> str:
    """An exception as ``Type: text``, the form dead letters and logs give the reason in."""
    return f"{type(exc).__name__}: {exc}"
