"""Consumer behaviour that mutation testing (``make mutation``) showed no test held.

Each test pins something a one-token change of ``taskdash/nsq/consumer.py`` broke while the
rest of the suite stayed green: what the log lines an admin reads carry (events, message ids,
reasons, the outage's start and end), the order of a stop (intake first, then what is being
written), how batches are formed and isolated, the retry delay, and the handler's last
resorts. All run through the real broker and pynsq, except the retry-delay rule and the
double-answer guard, which are checked on the Consumer itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import nsq
import pytest
import structlog.testing
from ingest_helpers import (
    CHANNEL,
    broker_fixture,
    channel_stats,
    fast_nsq,
    heartbeat_consumer,
    ingestion_fixture,
    mpub_binary,
    nsq_log_failures,
    own_mongodb,
    stop_ingestion,
    store_dead_letter,
)
from nsq import event as nsq_event
from support import async_wait_for, free_port

from taskdash.errors import ConfigError, StoreUnavailable
from taskdash.models import HeartBeat
from taskdash.nsq.broker import Broker
from taskdash.nsq.consumer import Consumer, Received
from taskdash.nsq.readers import Ingestion
from taskdash.settings import NsqSettings, load
from taskdash.store import Store

pytestmark = pytest.mark.timeout(90)

NSQ = fast_nsq(max_attempts=3)
TOPIC = NSQ.heartbeat_topic

#: how long to wait for what must happen: generous, as mutmut's tracing and a loaded machine
#: slow everything down (what must not happen is held off far longer: flush intervals of 3600)
WAIT = 60.0

broker = broker_fixture()
ingestion = ingestion_fixture(NSQ)


async def never_dead_letter(*args: object) -> None:
    raise AssertionError("nothing here is poison")


def recorder() -> tuple[list[str], Callable[[list[Received[HeartBeat]]], Awaitable[None]]]:
    """An apply that records the ids it stores."""
    applied: list[str] = []

    async def apply(batch: list[Received[HeartBeat]]) -> None:
        applied.extend(r.item.id for r in batch)

    return applied, apply


def bodies(*ids: str) -> list[bytes]:
    return [json.dumps({"id": i}).encode() for i in ids]


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def connected(consumer: Consumer[Any]) -> None:
    await async_wait_for(lambda: consumer.check()[1]["connections"] == 1, timeout=WAIT)


# -- the log lines an admin reads --------------------------------------------------------------


async def test_a_dead_letter_is_logged_with_its_message_reason_field_and_reader(
    store: Store, broker: Broker, ingestion: Ingestion
) -> None:
    """The line names the message as ``/api/dead-letters`` does, so an admin can find it."""
    with structlog.testing.capture_logs() as logs:
        await mpub_binary(broker, NSQ.service_topic, [b'{"id": 5}'])
        letter = await async_wait_for(lambda: store.dead_letters.find_one({}), timeout=WAIT)
        await async_wait_for(lambda: events(logs, "message_dead_lettered"), timeout=WAIT)
    (line,) = events(logs, "message_dead_lettered")
    assert letter["field"] == "id" and "Expected `str`, got `int`" in letter["reason"]
    assert line["msg_id"] == letter["msg_id"] and len(letter["msg_id"]) == 16
    assert (line["reason"], line["field"], line["attempts"]) == (letter["reason"], "id", 1)
    assert (line["topic"], line["channel"]) == (NSQ.service_topic, CHANNEL)
    assert line["log_level"] == "warning" and line["suppressed"] == 0


async def test_an_apply_failure_is_logged_with_the_message_and_the_error_and_isolates_the_batch(
    broker: Broker,
) -> None:
    """A batch that fails unexpectedly is applied one by one; the culprit's line names it and
    the error (with its traceback), and ``isolated`` in ``/readyz`` counts every such message.
    """
    applied: list[str] = []
    culprits: dict[str, str] = {}
    failure = RuntimeError("cannot apply bad")

    async def apply(batch: list[Received[HeartBeat]]) -> None:
        for r in batch:
            if r.item.id.startswith("bad"):
                culprits[r.item.id] = r.message.id.decode()
                raise failure
        applied.extend(r.item.id for r in batch)

    # batches of exactly 3 (a flush interval longer than the test); a retry comes back only
    # after 30 s, so each round's batch is the three messages published together
    consumer = heartbeat_consumer(
        broker, apply, never_dead_letter, batch_size=3, flush_interval=3600, max_attempts=5,
        requeue_delay=30.0, requeue_delay_max=30.0,
    )  # fmt: skip
    await consumer.start()
    try:
        await connected(consumer)
        with structlog.testing.capture_logs() as logs:
            await mpub_binary(broker, TOPIC, bodies("g0", "bad1", "g2"))
            await async_wait_for(lambda: consumer.counters.requeued == 1, timeout=WAIT)
        (line,) = events(logs, "message_apply_failed")
        assert line["msg_id"] == culprits["bad1"] and line["attempts"] == 1
        assert line["error"] == "RuntimeError: cannot apply bad" and line["exc_info"] is failure
        assert (line["topic"], line["log_level"]) == (TOPIC, "warning")
        await mpub_binary(broker, TOPIC, bodies("g3", "bad2", "g5"))
        await async_wait_for(lambda: consumer.counters.requeued == 2, timeout=WAIT)
        ready, details = consumer.check()
        assert ready and sorted(applied) == ["g0", "g2", "g3", "g5"]
        assert (details["isolated"], details["stored"], details["requeued"]) == (6, 4, 2)
    finally:
        await consumer.stop()


class FailsBeforeQueueing(Consumer[HeartBeat]):
    """A bug of ours in the handler, after decoding, before the message joins a batch."""

    failure = KeyError("a bug in the handler")

    def _queue(self, message: Any, item: HeartBeat, at: datetime) -> None:
        if item.id == "bad":
            raise self.failure
        super()._queue(message, item, at)


async def test_a_bug_in_the_handler_is_logged_with_the_message_and_its_traceback(
    store: Store, broker: Broker
) -> None:
    _, apply = recorder()
    consumer = heartbeat_consumer(
        broker, apply, store_dead_letter(store), cls=FailsBeforeQueueing, max_attempts=2
    )
    await consumer.start()
    try:
        await connected(consumer)
        with structlog.testing.capture_logs() as logs:
            await mpub_binary(broker, TOPIC, bodies("bad"))
            letter = await async_wait_for(lambda: store.dead_letters.find_one({}), timeout=WAIT)
    finally:
        await consumer.stop()
    line = events(logs, "message_handler_failed")[0]
    assert line["msg_id"] == letter["msg_id"] and line["exc_info"] is FailsBeforeQueueing.failure
    assert line["error"] == "KeyError: 'a bug in the handler'" and line["topic"] == TOPIC


async def dead_letter_failing_once(
    store: Store, broker: Broker, failure: Exception
) -> tuple[Consumer[Any], list[dict[str, Any]], dict[str, Any]]:
    """A poison message whose first dead-letter write raises ``failure``: (the stopped
    consumer, the log lines, the dead letter stored in the end)."""
    write = store_dead_letter(store)
    tries: list[int] = []

    async def dead_letter(*args: Any) -> None:
        tries.append(1)
        if len(tries) == 1:
            raise failure
        await write(*args)

    _, apply = recorder()
    consumer = heartbeat_consumer(broker, apply, dead_letter)
    await consumer.start()
    try:
        await connected(consumer)
        with structlog.testing.capture_logs() as logs:
            await mpub_binary(broker, TOPIC, [b"not json"])
            letter = await async_wait_for(lambda: store.dead_letters.find_one({}), timeout=WAIT)
    finally:
        await consumer.stop()
    return consumer, logs, letter


async def test_a_dead_letter_write_that_fails_unexpectedly_is_logged_and_the_message_kept(
    store: Store, broker: Broker
) -> None:
    """Not a store outage but a bug while dead-lettering: logged with the reason and the error,
    the message requeued (never lost), and dead-lettered once the write works."""
    failure = RuntimeError("a bug in the dead-letter write")
    consumer, logs, letter = await dead_letter_failing_once(store, broker, failure)
    (line,) = events(logs, "dead_letter_failed")
    assert line["reason"] == letter["reason"] and "not valid JSON" in line["reason"]
    assert line["error"] == "RuntimeError: a bug in the dead-letter write"
    assert line["exc_info"] is failure and line["topic"] == TOPIC
    assert letter["attempts"] == 2 and consumer.counters.requeued == 1
    assert consumer.counters.dead_lettered == 1


async def test_a_store_outage_is_logged_once_with_its_first_batch_and_its_length(
    broker: Broker,
) -> None:
    """One ``store_write_failed`` per outage (not per retried batch), one ``store_writes_resumed``
    with how long it lasted."""
    calls: list[tuple[float, float]] = []  # (start, end) of each apply

    async def apply(batch: list[Received[HeartBeat]]) -> None:
        start = time.monotonic()
        try:
            if len(calls) < 2:
                raise StoreUnavailable("record_heartbeats: MongoDB unreachable")
        finally:
            calls.append((start, time.monotonic()))

    # the three always come back together (same delay) and make exactly one batch
    consumer = heartbeat_consumer(
        broker, apply, never_dead_letter, batch_size=3, flush_interval=3600
    )
    await consumer.start()
    try:
        await connected(consumer)
        with structlog.testing.capture_logs() as logs:
            await mpub_binary(broker, TOPIC, bodies("s1", "s2", "s3"))
            await async_wait_for(lambda: consumer.counters.stored == 3, timeout=WAIT)
            observed = time.monotonic()
    finally:
        await consumer.stop()
    assert len(calls) == 3 and consumer.counters.requeued == 6
    (failed,) = events(logs, "store_write_failed")
    assert failed["error"] == "record_heartbeats: MongoDB unreachable"
    assert failed["requeued"] == 3 and failed["topic"] == TOPIC
    assert failed["log_level"] == "error"
    (resumed,) = events(logs, "store_writes_resumed")
    # the outage began after the first apply returned and before the second one started; it
    # ended after the third returned and before the test saw the batch stored
    low, high = calls[2][1] - calls[1][0], observed - calls[0][1]
    assert low - 0.001 <= resumed["down_for"] <= high + 0.001, (low, resumed, high)
    assert resumed["topic"] == TOPIC and resumed["log_level"] == "info"


async def test_a_dead_letter_the_store_cannot_take_is_logged_as_an_outage_and_requeued(
    store: Store, broker: Broker
) -> None:
    outage = StoreUnavailable("add_dead_letter: MongoDB unreachable")
    _, logs, letter = await dead_letter_failing_once(store, broker, outage)
    (failed,) = events(logs, "store_write_failed")
    assert (failed["error"], failed["requeued"]) == ("add_dead_letter: MongoDB unreachable", 1)
    assert len(events(logs, "store_writes_resumed")) == 1
    assert letter["attempts"] == 2 and events(logs, "dead_letter_failed") == []


async def test_a_store_outage_at_the_stop_is_one_warning_and_the_stop_completes(
    tmp_path: Path, broker: Broker
) -> None:
    """The heartbeat reader's last write (beats absorbed since the last stored one) meets a
    stopped MongoDB: a warning with the error, no traceback (an outage is not a bug)."""
    settings = NsqSettings(
        heartbeat_flush_interval=0.02, requeue_delay=0.05, requeue_delay_max=0.2,
        heartbeat_resolution=30.0,
    )  # fmt: skip
    async with own_mongodb(tmp_path, broker, settings) as own:
        ingestion = own.ingestion
        await mpub_binary(broker, settings.service_topic, [b'{"id":"svc-1"}'])
        await async_wait_for(lambda: ingestion.services.counters.stored == 1, timeout=WAIT)
        await mpub_binary(broker, settings.heartbeat_topic, [b'{"id":"svc-1"}'])
        await async_wait_for(lambda: ingestion.heartbeats.counters.stored == 1, timeout=WAIT)
        await mpub_binary(broker, settings.heartbeat_topic, [b'{"id":"svc-1"}'])
        await async_wait_for(lambda: ingestion.absorbed_heartbeats == 1, timeout=WAIT)
        own.server.stop()
        with structlog.testing.capture_logs() as logs:
            await stop_ingestion(ingestion)
        (line,) = events(logs, "drain_failed")
        assert line["log_level"] == "warning" and "exc_info" not in line
        assert line["error"].startswith("add_heartbeat_counts") and line["topic"] == TOPIC
        stats = await channel_stats(broker, settings.heartbeat_topic)
        assert stats["clients"] == [], "the reader closed its connection all the same"


async def test_a_bug_in_the_last_write_is_logged_with_its_traceback_and_the_stop_completes(
    broker: Broker,
) -> None:
    async def drain() -> None:
        raise RuntimeError("a bug in the last write")

    _, apply = recorder()
    consumer = heartbeat_consumer(broker, apply, never_dead_letter, drain=drain)
    await consumer.start()
    await connected(consumer)
    with structlog.testing.capture_logs() as logs:
        await consumer.stop()
    (line,) = events(logs, "drain_failed")
    assert line["log_level"] == "error" and line["exc_info"] is True
    assert (await channel_stats(broker, TOPIC))["clients"] == []


# -- stop ------------------------------------------------------------------------------------


async def test_a_stop_takes_no_new_message_once_it_has_begun(broker: Broker) -> None:
    """Intake stops first (RDY 0): what is published during a stop waits in nsqd for the next
    start instead of being received and written under the shutdown budget."""
    started, release = asyncio.Event(), asyncio.Event()
    applied: list[str] = []

    async def apply(batch: list[Received[HeartBeat]]) -> None:
        started.set()
        await release.wait()
        applied.extend(r.item.id for r in batch)

    async def drain() -> None:  # the owner's last write: time for a stray delivery to arrive
        await asyncio.sleep(0.5)

    consumer = heartbeat_consumer(broker, apply, never_dead_letter, drain=drain, max_in_flight=10)
    await consumer.start()
    await connected(consumer)
    await mpub_binary(broker, TOPIC, bodies("first"))
    await asyncio.wait_for(started.wait(), WAIT)
    stopping = asyncio.ensure_future(consumer.stop())

    async def rdy_zero() -> bool:
        (client,) = (await channel_stats(broker, TOPIC))["clients"]
        return client["ready_count"] == 0

    try:
        await async_wait_for(rdy_zero, timeout=WAIT)
        await mpub_binary(broker, TOPIC, bodies("a", "b", "c"))
    finally:
        release.set()
        await stopping
    assert applied == ["first"] and consumer.counters.received == 1
    stats = await channel_stats(broker, TOPIC)
    assert (stats["depth"], stats["in_flight_count"]) == (3, 0), stats


async def test_a_stop_lets_a_dead_letter_being_written_finish(store: Store, broker: Broker) -> None:
    """Answered (FIN) before the connection closes, not redelivered and dead-lettered twice."""
    writing = asyncio.Event()
    write = store_dead_letter(store)

    async def slow_dead_letter(*args: Any) -> None:
        writing.set()
        await asyncio.sleep(0.3)
        await write(*args)

    _, apply = recorder()
    consumer = heartbeat_consumer(broker, apply, slow_dead_letter)
    await consumer.start()
    await connected(consumer)
    await mpub_binary(broker, TOPIC, [b"not json"])
    await asyncio.wait_for(writing.wait(), WAIT)
    await consumer.stop()
    assert consumer.counters.dead_lettered == 1
    assert await store.dead_letters.count_documents({}) == 1
    stats = await channel_stats(broker, TOPIC)
    assert (stats["depth"], stats["in_flight_count"], stats["requeue_count"]) == (0, 0, 0)
    assert stats["message_count"] == 1 and stats["deferred_count"] == 0


async def test_readiness_shows_what_each_nsqd_connection_negotiated(broker: Broker) -> None:
    _, apply = recorder()
    consumer = heartbeat_consumer(broker, apply, never_dead_letter)
    await consumer.start()
    try:
        await connected(consumer)
        negotiated = consumer.check()[1]["negotiated"]
    finally:
        await consumer.stop()
    ((address, conn),) = negotiated.items()
    assert address.endswith(f":{broker.tcp_port}")
    assert (conn["tls"], conn["compression"], conn["auth_required"]) == (False, "none", False)


async def test_a_consumer_never_started_is_not_ready_and_stops_quietly() -> None:
    _, apply = recorder()
    consumer = heartbeat_consumer(None, apply, never_dead_letter)
    ready, details = consumer.check()
    assert not ready and details["reason"] == "not running" and details["connections"] == 0
    await consumer.stop()  # e.g. the daemon stopping after a later component failed to start
    assert consumer.check()[1]["connections"] == 0


# -- batches -----------------------------------------------------------------------------------


async def test_a_full_batch_is_written_at_once_not_at_the_flush_interval(broker: Broker) -> None:
    applied, apply = recorder()
    consumer = heartbeat_consumer(
        broker, apply, never_dead_letter, batch_size=3, flush_interval=3600, max_in_flight=50
    )
    await consumer.start()
    try:
        await connected(consumer)
        await mpub_binary(broker, TOPIC, bodies("s1", "s2", "s3"))
        await async_wait_for(lambda: len(applied) == 3, timeout=WAIT)
        await mpub_binary(broker, TOPIC, bodies("s4", "s5", "s6"))
        await async_wait_for(lambda: len(applied) == 6, timeout=WAIT)
    finally:
        await consumer.stop()
    assert consumer.counters.batches == 2, "each full batch counted (/readyz, the metrics)"


async def test_a_message_of_exactly_max_message_size_is_accepted(
    store: Store, broker: Broker
) -> None:
    exact = b'{"id":"svc-exact"}'
    over = b'{"id":"svc-over!"} '
    applied, apply = recorder()
    consumer = heartbeat_consumer(
        broker, apply, store_dead_letter(store), max_message_size=len(exact)
    )
    await consumer.start()
    try:
        await mpub_binary(broker, TOPIC, [exact, over])
        await async_wait_for(lambda: consumer.counters.received == 2 and applied, timeout=WAIT)
        letter = await async_wait_for(lambda: store.dead_letters.find_one({}), timeout=WAIT)
    finally:
        await consumer.stop()
    assert applied == ["svc-exact"]
    assert letter["reason"] == f"message is {len(over)} bytes, over the limit of {len(exact)}"


async def test_a_batch_of_two_with_one_culprit_stores_the_other(
    store: Store, broker: Broker
) -> None:
    async def apply(batch: list[Received[HeartBeat]]) -> None:
        if any(r.item.id == "bad" for r in batch):
            raise RuntimeError("cannot apply bad")
        applied.extend(r.item.id for r in batch)

    applied: list[str] = []
    consumer = heartbeat_consumer(
        broker, apply, store_dead_letter(store), batch_size=2, flush_interval=3600, max_attempts=1
    )
    await consumer.start()
    try:
        await connected(consumer)
        await mpub_binary(broker, TOPIC, bodies("good", "bad"))
        letter = await async_wait_for(lambda: store.dead_letters.find_one({}), timeout=WAIT)
        await async_wait_for(lambda: applied == ["good"], timeout=WAIT)
    finally:
        await consumer.stop()
    assert "RuntimeError: cannot apply bad" in letter["reason"]
    assert (consumer.counters.stored, consumer.counters.isolated) == (1, 2)


async def test_a_lone_message_that_fails_is_applied_once_per_delivery(
    store: Store, broker: Broker
) -> None:
    """Only a batch of several is isolated: a lone culprit is not applied a second time."""
    deliveries: list[int] = []

    async def apply(batch: list[Received[HeartBeat]]) -> None:
        deliveries.extend(r.message.attempts for r in batch)
        raise RuntimeError("cannot apply bad")

    consumer = heartbeat_consumer(broker, apply, store_dead_letter(store), max_attempts=3)
    await consumer.start()
    try:
        await mpub_binary(broker, TOPIC, bodies("bad"))
        letter = await async_wait_for(lambda: store.dead_letters.find_one({}), timeout=WAIT)
    finally:
        await consumer.stop()
    assert deliveries == [1, 2, 3] and letter["attempts"] == 3
    assert consumer.check()[1]["isolated"] == 0


async def test_a_store_outage_while_isolating_requeues_the_rest_of_the_batch(
    broker: Broker,
) -> None:
    """Isolation applies one message at a time; when the store goes away midway, the messages
    not yet applied are requeued as in any outage (the culprit already got its retry)."""
    calls: list[list[str]] = []

    async def apply(batch: list[Received[HeartBeat]]) -> None:
        ids = [r.item.id for r in batch]
        calls.append(ids)
        if "bad" in ids:
            raise RuntimeError("cannot apply bad")
        if ids == ["g2"]:
            raise StoreUnavailable("record_heartbeats: MongoDB unreachable")

    consumer = heartbeat_consumer(
        broker, apply, never_dead_letter, batch_size=4, flush_interval=3600, max_attempts=5,
        requeue_delay=30.0, requeue_delay_max=30.0,
    )  # fmt: skip
    await consumer.start()
    try:
        await connected(consumer)
        with structlog.testing.capture_logs() as logs:
            await mpub_binary(broker, TOPIC, bodies("g0", "bad", "g2", "g3"))
            await async_wait_for(lambda: consumer.counters.requeued == 3, timeout=WAIT)
            await asyncio.sleep(0.1)
        assert calls == [["g0", "bad", "g2", "g3"], ["g0"], ["bad"], ["g2"]]
        assert consumer.counters.stored == 1 and consumer.check()[1]["in_flight"] == 0
        (failed,) = events(logs, "store_write_failed")
        assert failed["error"] == "record_heartbeats: MongoDB unreachable"
        assert failed["requeued"] == 2, "g2 and g3, not the culprit already requeued"
        stats = await channel_stats(broker, TOPIC)
        assert (stats["deferred_count"], stats["in_flight_count"]) == (3, 0)
    finally:
        await consumer.stop()


# -- the handler's last resorts ------------------------------------------------------------------


class FailsAfterQueueing(Consumer[HeartBeat]):
    """A bug of ours after the message joined a batch: the batch answers it, nothing else."""

    def _queue(self, message: Any, item: HeartBeat, at: datetime) -> None:
        super()._queue(message, item, at)
        if item.id == "late-bug":
            raise KeyError("a bug after queueing")


async def test_a_bug_after_a_message_was_queued_leaves_its_answer_to_the_batch(
    broker: Broker,
) -> None:
    applied, apply = recorder()
    consumer = heartbeat_consumer(broker, apply, never_dead_letter, cls=FailsAfterQueueing)
    await consumer.start()
    try:
        with structlog.testing.capture_logs() as logs:
            await mpub_binary(broker, TOPIC, bodies("late-bug"))
            await async_wait_for(lambda: applied == ["late-bug"], timeout=WAIT)
            await asyncio.sleep(0.3)  # a second answer, if any, would come now
    finally:
        await consumer.stop()
    assert len(events(logs, "message_handler_failed")) == 1
    assert events(logs, "message_answered_twice") == []
    assert (consumer.counters.stored, consumer.counters.requeued) == (1, 0)
    stats = await channel_stats(broker, TOPIC)
    assert (stats["requeue_count"], stats["deferred_count"], stats["in_flight_count"]) == (0, 0, 0)


async def test_a_handler_bug_is_answered_while_other_messages_wait_in_the_batch(
    store: Store, broker: Broker
) -> None:
    """The good message waits for its batch (a long flush interval); the culprit is not left
    to nsqd's timeout because a batch is pending: retried, then dead-lettered, meanwhile."""
    applied, apply = recorder()
    consumer = heartbeat_consumer(
        broker, apply, store_dead_letter(store), cls=FailsBeforeQueueing, max_attempts=2,
        flush_interval=3600,
    )  # fmt: skip
    await consumer.start()
    try:
        await connected(consumer)
        await mpub_binary(broker, TOPIC, bodies("good"))
        await async_wait_for(lambda: consumer.counters.received == 1, timeout=WAIT)
        await mpub_binary(broker, TOPIC, bodies("bad"))
        letter = await async_wait_for(lambda: store.dead_letters.find_one({}), timeout=WAIT)
        assert "KeyError" in letter["reason"] and letter["attempts"] == 2
        assert applied == [], "the good one still waits for its batch"
    finally:
        await consumer.stop()
    assert applied == ["good"]


class FailsFirstThing(Consumer[HeartBeat]):
    """A bug of ours at the very start of the handler, before the message is taken."""

    def _take(self, message: nsq.Message) -> None:
        if message.body == b"boom":
            raise KeyError("a bug before anything")
        super()._take(message)


async def test_a_handler_bug_before_anything_is_answered_by_us_not_by_pynsq(
    store: Store, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """pynsq answers a synchronous message itself (with its reader-wide backoff) unless the
    handler made it asynchronous: the failure path does, so the answer stays ours."""
    applied, apply = recorder()
    consumer = heartbeat_consumer(
        broker, apply, store_dead_letter(store), cls=FailsFirstThing, max_attempts=2
    )
    await consumer.start()
    try:
        with structlog.testing.capture_logs() as logs:
            await mpub_binary(broker, TOPIC, [b"boom", *bodies("good")])
            letter = await async_wait_for(lambda: store.dead_letters.find_one({}), timeout=WAIT)
            await async_wait_for(lambda: applied == ["good"], timeout=WAIT)
    finally:
        await consumer.stop()
    assert "KeyError" in letter["reason"] and letter["attempts"] == 2
    assert events(logs, "message_answered_twice") == []
    assert nsq_log_failures(caplog) == []
    assert consumer.counters.requeued == 1


async def test_settled_poison_leaves_nothing_behind(
    store: Store, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """A flood of poison must not grow the daemon: each dead-letter task is let go when done."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    _, apply = recorder()
    consumer = heartbeat_consumer(broker, apply, store_dead_letter(store))
    await consumer.start()
    try:
        await mpub_binary(broker, TOPIC, [b"not json %d" % i for i in range(20)])
        await async_wait_for(lambda: consumer.counters.dead_lettered == 20, timeout=WAIT)
        await async_wait_for(lambda: not consumer._tasks, timeout=WAIT)
    finally:
        await consumer.stop()
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


# -- connection and readiness --------------------------------------------------------------------


async def test_the_reader_introduces_itself_to_nsqd_as_taskdash(broker: Broker) -> None:
    """What nsqadmin and nsqd's ``/stats`` show an admin for each client."""
    _, apply = recorder()
    consumer = heartbeat_consumer(broker, apply, never_dead_letter)
    await consumer.start()
    try:
        await connected(consumer)
        (client,) = (await channel_stats(broker, TOPIC))["clients"]
        assert client["user_agent"] == "taskdash"
    finally:
        await consumer.stop()


def lookupd_consumer(broker: Broker, apply: Any, **options: Any) -> Consumer[HeartBeat]:
    """A heartbeat reader that finds nsqd through the broker's lookupd alone."""
    return Consumer(
        topic=TOPIC, channel=CHANNEL, model=HeartBeat, apply=apply,
        dead_letter=never_dead_letter, nsqd_tcp_addresses=[],
        lookupd_http_addresses=[f"http://127.0.0.1:{broker.lookupd_http_port}"],
        max_in_flight=10, batch_size=10, flush_interval=0.02, max_message_size=4096,
        requeue_delay=0.05, requeue_delay_max=0.2, **options,
    )  # fmt: skip


async def test_a_reader_finds_nsqd_through_lookupd_alone(broker: Broker) -> None:
    await mpub_binary(broker, TOPIC, bodies("svc-1"))  # the topic exists: lookupd knows it
    applied, apply = recorder()
    consumer = lookupd_consumer(broker, apply)
    await consumer.start()
    try:
        await async_wait_for(lambda: applied == ["svc-1"], timeout=WAIT)
        assert consumer.check()[0]
    finally:
        await consumer.stop()


async def test_a_reader_polls_lookupd_at_its_configured_interval(broker: Broker) -> None:
    """The topic appears after the reader started: the next poll of nsqlookupd finds its
    nsqd within ``lookupd_poll_interval`` (1 s here, plus pynsq's jitter of up to 30 %), not
    the 15 s default."""
    applied, apply = recorder()
    consumer = lookupd_consumer(broker, apply, lookupd_poll_interval=1)
    await consumer.start()
    try:
        await asyncio.sleep(0.3)  # its first poll found no producer: the topic is not there
        assert consumer.check()[1]["connections"] == 0
        await mpub_binary(broker, TOPIC, bodies("svc-1"))
        await async_wait_for(lambda: applied == ["svc-1"], timeout=8)
    finally:
        await consumer.stop()


async def test_a_reader_without_several_nsqds_names_each() -> None:
    first, second = sorted(f"127.0.0.1:{free_port()}" for _ in range(2))
    _, apply = recorder()
    consumer: Consumer[HeartBeat] = Consumer(
        topic=TOPIC, channel=CHANNEL, model=HeartBeat, apply=apply,
        dead_letter=never_dead_letter, nsqd_tcp_addresses=[second, first],
        lookupd_http_addresses=[], max_in_flight=10, batch_size=10, flush_interval=0.02,
        max_message_size=4096, requeue_delay=0.05, requeue_delay_max=0.2, stall_after=0.3,
    )  # fmt: skip
    await consumer.start()
    try:

        def reason() -> str | None:
            ready, details = consumer.check()
            return None if ready else details["reason"]

        text = await async_wait_for(reason, timeout=WAIT)
    finally:
        await consumer.stop()
    assert text == f"no connection to nsqd {first}, {second} for 0.3 s or more"


# -- the rules, on the Consumer itself -------------------------------------------------------------


def message(attempts: int = 1) -> nsq.Message:
    return nsq.Message(b"0123456789abcdef", b'{"id":"svc-1"}', time.time_ns(), attempts)


@pytest.mark.parametrize(
    ("attempts", "delay_ms"),
    [(1, 500), (2, 1000), (3, 2000), (4, 4000), (5, 8000), (6, 10_000), (65535, 10_000)],
)
def test_the_retry_delay_doubles_from_requeue_delay_up_to_its_max(
    attempts: int, delay_ms: int
) -> None:
    consumer = heartbeat_consumer(
        None, recorder()[1], never_dead_letter, requeue_delay=0.5, requeue_delay_max=10.0
    )
    assert consumer._delay_ms(message(attempts)) == delay_ms


def test_a_second_answer_is_logged_as_a_bug_not_sent() -> None:
    consumer = heartbeat_consumer(None, recorder()[1], never_dead_letter)
    sent: list[str] = []
    msg = message()
    msg.on(nsq_event.FINISH, lambda **kw: sent.append("FIN"))
    msg.on(nsq_event.REQUEUE, lambda **kw: sent.append("REQ"))
    consumer._answer(msg, requeue=False)
    with structlog.testing.capture_logs() as logs:
        consumer._answer(msg, requeue=True)
    assert sent == ["FIN"]
    assert logs == [
        {"event": "message_answered_twice", "msg_id": "0123456789abcdef", "topic": TOPIC,
         "channel": CHANNEL, "log_level": "error"}
    ]  # fmt: skip


# -- what pynsq must not do on its own ----------------------------------------------------------


async def test_a_store_outage_longer_than_pynsqs_own_try_limit_loses_nothing(
    broker: Broker,
) -> None:
    """Only store unavailability retries without limit: pynsq's default would give up (FIN the
    message, ``giving_up``) after 5 tries, so the reader must turn that limit off."""
    tries = 0
    applied: list[str] = []
    received_at: list[datetime] = []

    async def apply(batch: list[Received[HeartBeat]]) -> None:
        nonlocal tries
        tries += 1
        if tries <= 8:
            raise StoreUnavailable("the store is down")
        applied.extend(r.item.id for r in batch)
        received_at.extend(r.at for r in batch)

    consumer = heartbeat_consumer(broker, apply, never_dead_letter, max_attempts=2)
    settled: list[float] = []
    consumer.on_settled = settled.append
    await consumer.start()
    try:
        await connected(consumer)
        await mpub_binary(broker, TOPIC, bodies("through-the-outage"))
        await async_wait_for(lambda: applied == ["through-the-outage"], timeout=WAIT)
        await async_wait_for(lambda: len(settled) == 9, timeout=WAIT)
    finally:
        await consumer.stop()
    assert tries == 9 and consumer.counters.dead_lettered == 0
    assert received_at[0].tzinfo is not None, "receipt times are aware (UTC), never local"
    assert all(wait >= 0 for wait in settled), "each answer reports its message's wait"


async def test_the_lookupd_poll_interval_reaches_both_readers(store: Store) -> None:
    settings = load(env={"TASKDASH_NSQ__LOOKUPD_POLL_INTERVAL": "40"}).nsq
    ingestion = Ingestion(
        store,
        settings,
        node_id="n1",
        nsqd_tcp_addresses=[],
        lookupd_http_addresses=["http://127.0.0.1:4161"],
    )
    assert [c.lookupd_poll_interval for c in ingestion.consumers] == [40, 40]
    assert load(env={}).nsq.lookupd_poll_interval == 15
    for bad in ("0", "3601", "1.5"):
        with pytest.raises(ConfigError, match="lookupd_poll_interval"):
            load(env={"TASKDASH_NSQ__LOOKUPD_POLL_INTERVAL": bad})
