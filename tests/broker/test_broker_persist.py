"""Unfinished messages survive stop/start with the same data_dir; the file is safe to trust."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from broker_helpers import RawClient, channel_stats, connect, file_names, running, stats

from taskdash.nsq.broker import Broker, persist
from taskdash.nsq.broker.persist import FILENAME

Connect = Callable[..., Awaitable[RawClient]]


def read_file(path: Path) -> str:
    """Whole text file."""
    return path.read_text()


def write_file(path: Path, text: str) -> None:
    """Whole text file, parents created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


async def test_unfinished_messages_survive_restart(data_dir: Path) -> None:
    async with running(data_dir) as (broker, clients):
        consumer, producer = await connect(broker, clients), await connect(broker, clients)
        await consumer.subscribe("durable", "ch", rdy=1)
        await producer.pub("durable", b"done")
        done = await consumer.message()
        await consumer.command(b"FIN " + done.id)
        for body in (b"in flight", b"queued 1", b"queued 2"):
            await producer.pub("durable", body)
        held = await consumer.message()  # stays in flight through the stop
        assert (held.body, held.attempts) == (b"in flight", 1)
        await producer.command("DPUB durable 3600000", b"deferred")
        assert await producer.response() == b"OK"
        await producer.pub("nochannel", b"backlog")
        await broker.stop()
        await broker.stop()  # idempotent

    async with running(data_dir) as (broker, clients):
        doc = await stats(broker.http_port)
        ch = channel_stats(doc, "durable", "ch")
        assert (ch["depth"], ch["in_flight_count"], ch["deferred_count"]) == (3, 0, 1)
        backlog = next(t for t in doc["topics"] if t["topic_name"] == "nochannel")
        assert backlog["depth"] == 1
        consumer = await connect(broker, clients)
        await consumer.subscribe("durable", "ch", rdy=10)
        got = [await consumer.message() for _ in range(3)]
        assert sorted((m.body, m.attempts) for m in got) == [
            (b"in flight", 2),  # attempts preserved: one before the restart, one now
            (b"queued 1", 1),
            (b"queued 2", 1),
        ]
        assert next(m for m in got if m.body == b"in flight").id == held.id
        await consumer.no_frame()  # neither the FINished nor the deferred message comes
        other = await connect(broker, clients)
        await other.subscribe("nochannel", "first", rdy=1)
        assert (await other.message()).body == b"backlog"


async def test_channels_survive_restart_and_keep_collecting(data_dir: Path) -> None:
    async with running(data_dir) as (broker, clients):
        consumer = await connect(broker, clients)
        await consumer.subscribe("meta", "kept")
    async with running(data_dir) as (broker, clients):
        producer = await connect(broker, clients)
        await producer.pub("meta", b"for kept")
        assert channel_stats(await stats(broker.http_port), "meta", "kept")["depth"] == 1


async def test_ephemeral_state_is_not_persisted(data_dir: Path) -> None:
    async with running(data_dir) as (broker, clients):
        producer = await connect(broker, clients)
        await producer.pub("gone#ephemeral", b"x")
    async with running(data_dir) as (broker, _):
        assert "gone#ephemeral" not in broker.registry.topics


async def test_file_is_json_lines_with_base64_bodies(data_dir: Path) -> None:
    async with running(data_dir) as (broker, clients):
        producer = await connect(broker, clients)
        await producer.pub("format", b"\x00binary\xff")
    path = data_dir / FILENAME
    lines = [json.loads(line) for line in read_file(path).splitlines()]
    assert lines[0]["format"] == "taskdash-nsq-broker"
    [message] = [line for line in lines if line["type"] == "message"]
    assert base64.b64decode(message["body"]) == b"\x00binary\xff"
    assert message["topic"] == "format" and message["channel"] is None
    assert FILENAME in file_names(data_dir)
    assert not [name for name in file_names(data_dir) if name.startswith(".")]  # no temp file


async def test_damaged_lines_are_skipped_and_file_kept_aside(data_dir: Path) -> None:
    async with running(data_dir) as (broker, clients):
        producer = await connect(broker, clients)
        await producer.pub("damaged", b"one")
        await producer.pub("damaged", b"two")
    path = data_dir / FILENAME
    lines = read_file(path).splitlines()
    lines[-1] = lines[-1][:20]  # truncate the last message
    write_file(path, "\n".join(lines) + "\n")
    async with running(data_dir) as (broker, _):
        topic = broker.registry.topics["damaged"]
        assert [m.body for m in topic.backlog.memory_messages()] == [b"one"]
    assert any(name.startswith(f"{FILENAME}.damaged-") for name in file_names(data_dir))


async def test_unreadable_file_starts_empty(data_dir: Path) -> None:
    write_file(data_dir / FILENAME, "not our format\n")
    async with running(data_dir) as (broker, _):
        assert broker.registry.topics == {}


async def test_memory_only_broker_and_restart_rules(tmp_path: Path) -> None:
    broker = Broker(tcp_port=0, http_port=0, lookupd_http_port=None)
    await broker.stop()  # before start: nothing to do
    await broker.start()
    assert broker.tcp_port and broker.http_port and broker.lookupd_http_port is None
    with pytest.raises(RuntimeError):
        await broker.start()
    await broker.stop()
    assert file_names(tmp_path) == []


async def unfinished_three(broker: Broker, clients: list[RawClient]) -> None:
    """One message in flight to a connected consumer, two queued behind it."""
    consumer, producer = await connect(broker, clients), await connect(broker, clients)
    await consumer.subscribe("kept", "ch", rdy=1)
    for body in (b"one", b"two", b"three"):
        await producer.pub("kept", body)
    assert (await consumer.message()).body == b"one"  # in flight, the client still connected


def saved_bodies(data_dir: Path) -> list[bytes]:
    """The message bodies in the saved file, sorted."""
    return sorted(m.body for m in persist.load(data_dir).messages)


async def cut_short_then_saved(data_dir: Path, turns: int) -> bool:
    """Stop with unfinished messages, cancel the stop after ``turns`` loop turns, save.

    Returns whether the stop had already finished by then (the file is checked either way).
    """
    broker = Broker(tcp_port=0, http_port=0, lookupd_http_port=None, data_dir=data_dir)
    await broker.start()
    clients: list[RawClient] = []
    await unfinished_three(broker, clients)
    stopping = asyncio.create_task(broker.stop())
    for _ in range(turns):
        await asyncio.sleep(0)
    finished = stopping.done()
    stopping.cancel()
    saved = broker.save_now()  # the emergency step: no awaits, whatever the phase
    assert saved == (None if finished else 3), (turns, saved)
    assert saved_bodies(data_dir) == [b"one", b"three", b"two"], turns
    assert broker.save_now() is None, "saved once: a later call changes nothing"
    await asyncio.gather(stopping, return_exceptions=True)
    for client in clients:
        await client.close()
    await broker.stop()
    assert saved_bodies(data_dir) == [b"one", b"three", b"two"], turns
    return finished


async def test_a_stop_cut_short_at_any_point_still_saves_everything(tmp_path: Path) -> None:
    # the shutdown budget can run out at any await of a stop: cut it after 0, 1, 2... loop
    # turns until a stop finishes on its own; every time, every unfinished message is saved
    turns = 0
    while not await cut_short_then_saved(tmp_path / f"nsq-{turns}", turns):
        turns += 1
        assert turns < 500, "a stop that never finishes"
    assert turns > 1, "the stop was cut at several points"


async def test_after_the_emergency_save_nothing_more_is_accepted(data_dir: Path) -> None:
    # a message accepted after the save would be answered OK and then lost with the process
    async with running(data_dir) as (broker, clients):
        await unfinished_three(broker, clients)
        late = await connect(broker, clients)
        assert broker.save_now() == 3
        await late.command("PUB kept", b"late")
        assert await late.closed(), "the emergency save closes every connection"
    assert saved_bodies(data_dir) == [b"one", b"three", b"two"]


async def test_a_save_from_another_thread_while_the_loop_runs_keeps_every_message(
    data_dir: Path,
) -> None:
    # the watchdog's case when the loop is slow rather than stuck: a consumer keeps
    # requeueing (messages move between queue, in flight and deferred) while another thread
    # saves; every message is in the file, none missing
    async with running(data_dir) as (broker, clients):
        producer, consumer = await connect(broker, clients), await connect(broker, clients)
        bodies = [f"m-{i}".encode() for i in range(200)]
        for body in bodies:
            await producer.pub("busy", body)  # before the SUB: waiting in the topic
        await consumer.subscribe("busy", "ch", rdy=50)

        async def churn() -> None:
            while True:
                msg = await consumer.message()
                delay = 0 if msg.attempts % 2 else 1  # back to the queue, or deferred
                await consumer.command(f"REQ {msg.id.decode()} {delay}")

        churning = asyncio.create_task(churn())
        await consumer.message()  # the churn is under way (one message stays in flight)
        saved = await asyncio.to_thread(broker.save_now)
        churning.cancel()
        await asyncio.gather(churning, return_exceptions=True)
        assert saved == len(bodies)
    assert saved_bodies(data_dir) == sorted(bodies)
