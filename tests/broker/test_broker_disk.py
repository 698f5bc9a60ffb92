"""The broker with disk-backed queues, in process: order, restarts, requeues, files' lifetime."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
from broker_helpers import (
    RawClient,
    channel_stats,
    connect,
    error_code,
    file_names,
    http,
    stats,
)
from broker_helpers import running as broker_running

from taskdash.nsq.broker import Broker


def running(
    data_dir: Path, mem: int
) -> AbstractAsyncContextManager[tuple[Broker, list[RawClient]]]:
    """A broker keeping ``mem`` messages per queue in memory, in small segment files."""
    return broker_running(data_dir, mem_queue_size=mem, max_bytes_per_file=4096)


async def take(consumer: RawClient, count: int, fin: bool = True) -> list[bytes]:
    """``count`` messages' bodies (RDY must allow them), FINished unless asked not to."""
    out = []
    for _ in range(count):
        msg = await consumer.message()
        out.append(msg.body)
        if fin:
            await consumer.command(b"FIN " + msg.id)
    return out


BODIES = [b"m%03d" % i for i in range(120)]


@pytest.mark.parametrize("mem", [0, 5, 10000])
async def test_order_is_kept_across_memory_and_disk(data_dir: Path, mem: int) -> None:
    async with running(data_dir, mem) as (broker, clients):
        consumer, producer = await connect(broker, clients), await connect(broker, clients)
        await consumer.subscribe("ordered", "ch", rdy=0)
        for body in BODIES:
            await producer.pub("ordered", body)
        ch = channel_stats(await stats(broker.http_port), "ordered", "ch")
        assert (ch["depth"], ch["backend_depth"]) == (120, max(0, 120 - mem))
        await consumer.command("RDY 1")  # one at a time: the delivery order is the queue's
        assert await take(consumer, 120) == BODIES
        ch = channel_stats(await stats(broker.http_port), "ordered", "ch")
        assert (ch["depth"], ch["backend_depth"], ch["message_count"]) == (0, 0, 120)


@pytest.mark.parametrize("mem", [0, 5])
async def test_a_topic_backlog_on_disk_goes_to_its_first_channel_in_order(
    data_dir: Path, mem: int
) -> None:
    async with running(data_dir, mem) as (broker, clients):
        producer = await connect(broker, clients)
        for body in BODIES:
            await producer.pub("late", body)
        doc = await stats(broker.http_port)
        [topic] = [t for t in doc["topics"] if t["topic_name"] == "late"]
        assert (topic["depth"], topic["backend_depth"]) == (120, 120 - mem)
        consumer = await connect(broker, clients)
        await consumer.subscribe("late", "first", rdy=1)
        assert await take(consumer, 120) == BODIES
        files = file_names(data_dir)
        # the files were handed over (renamed), and read; the topic has a fresh, empty queue
        assert "late.diskqueue.meta.json" in files
        assert not [n for n in files if n.startswith("late.diskqueue.") and n.endswith(".dat")]


@pytest.mark.parametrize("mem", [0, 5])
async def test_a_clean_restart_delivers_everything_once(data_dir: Path, mem: int) -> None:
    async with running(data_dir, mem) as (broker, clients):
        consumer, producer = await connect(broker, clients), await connect(broker, clients)
        await consumer.subscribe("kept", "ch", rdy=0)
        for body in BODIES:
            await producer.pub("kept", body)
        await consumer.command("RDY 3")
        done = await take(consumer, 2)  # two finished
        held = await take(consumer, 1, fin=False)  # one in flight through the stop
        await consumer.command("RDY 0")
        await producer.pub("orphan", b"no channel yet")
    async with running(data_dir, mem) as (broker, clients):
        consumer = await connect(broker, clients)
        await consumer.subscribe("kept", "ch", rdy=1)
        again = await take(consumer, 118)
        assert sorted(again) == sorted(set(BODIES) - set(done))  # once each: no duplicate
        assert held[0] in again
        await consumer.no_frame(0.2)
        other = await connect(broker, clients)
        await other.subscribe("orphan", "ch", rdy=1)
        assert await take(other, 1) == [b"no channel yet"]


async def test_in_flight_message_keeps_its_attempts_across_restart(data_dir: Path) -> None:
    async with running(data_dir, 0) as (broker, clients):
        consumer, producer = await connect(broker, clients), await connect(broker, clients)
        await consumer.subscribe("tries", "ch", rdy=1)
        await producer.pub("tries", b"x")
        first = await consumer.message()
        await consumer.command(b"REQ " + first.id + b" 0")
        second = await consumer.message()
        assert (second.id, second.attempts) == (first.id, 2)
    async with running(data_dir, 0) as (broker, clients):
        consumer = await connect(broker, clients)
        await consumer.subscribe("tries", "ch", rdy=1)
        third = await consumer.message()
        assert (third.id, third.body, third.attempts) == (first.id, b"x", 3)


async def test_requeue_with_delay_and_dpub_at_mem_0(data_dir: Path) -> None:
    async with running(data_dir, 0) as (broker, clients):
        consumer, producer = await connect(broker, clients), await connect(broker, clients)
        await consumer.subscribe("later", "ch", rdy=2)
        await producer.command("DPUB later 200", b"deferred")
        assert await producer.response() == b"OK"
        await producer.pub("later", b"now")
        assert (await consumer.message()).body == b"now"
        msg = await consumer.message()  # the DPUB, after its delay
        assert msg.body == b"deferred"
        await consumer.command(b"REQ " + msg.id + b" 100")
        again = await consumer.message()
        assert (again.body, again.attempts) == (b"deferred", 2)
        await consumer.command(b"FIN " + again.id)
        ch = channel_stats(await stats(broker.http_port), "later", "ch")
        assert (ch["depth"], ch["deferred_count"], ch["in_flight_count"]) == (0, 0, 1)


async def test_a_timed_out_message_comes_back_from_disk(data_dir: Path) -> None:
    async with running(data_dir, 0) as (broker, clients):
        consumer, producer = await connect(broker, clients), await connect(broker, clients)
        await consumer.subscribe("slow", "ch", rdy=1, msg_timeout=1000)
        await producer.pub("slow", b"x")
        first = await consumer.message()
        again = await consumer.message()  # not finished within its 1 s timeout
        assert (again.id, again.attempts) == (first.id, 2)
        await consumer.command(b"FIN " + again.id)
        await consumer.no_frame(0.2)


async def test_deleting_a_channel_or_topic_removes_its_files(data_dir: Path) -> None:
    async with running(data_dir, 0) as (broker, clients):
        consumer, producer = await connect(broker, clients), await connect(broker, clients)
        await consumer.subscribe("doomed", "ch", rdy=0)
        await producer.pub("doomed", b"x")
        assert any(p.startswith("doomed:ch.") for p in file_names(data_dir))
        reply = await http(broker.http_port, "/channel/delete?topic=doomed&channel=ch", "POST")
        assert reply.status == 200
        assert not any(p.startswith("doomed:ch.") for p in file_names(data_dir))
        reply = await http(broker.http_port, "/topic/delete?topic=doomed", "POST")
        assert reply.status == 200
        assert not any(p.startswith("doomed") for p in file_names(data_dir))
    async with running(data_dir, 0) as (broker, _):
        assert "doomed" not in broker.registry.topics


async def test_a_channel_created_before_a_crash_still_exists(data_dir: Path) -> None:
    broker = Broker(tcp_port=0, http_port=0, lookupd_http_port=None, data_dir=data_dir)
    await broker.start()
    consumer = await RawClient.connect(broker.tcp_port)
    await consumer.subscribe("made", "ch", rdy=0)
    await consumer.close()
    # no stop (as after a kill): the channel's metadata was written when it was created
    async with running(data_dir, 0) as (again, _):
        assert list(again.registry.topics["made"].channels) == ["ch"]
    await broker.stop()


async def test_a_disk_that_refuses_writes_fails_the_publish(data_dir: Path) -> None:
    async with running(data_dir, 0) as (broker, clients):
        producer = await connect(broker, clients)
        await producer.pub("full", b"first")
        segment = data_dir / "full.diskqueue.000001.dat"
        segment.symlink_to("/dev/full")  # the next segment: every write fails with ENOSPC
        broker.registry.topics["full"].backlog.disk._roll()  # type: ignore[union-attr]
        await producer.command("PUB full", b"second")
        err = await producer.error()
        assert error_code(err) == "E_PUB_FAILED"
        reply = await http(broker.http_port, "/pub?topic=full", "POST", body=b"third")
        assert (reply.status, reply.json()) == (503, {"message": "EXITING"})


async def test_ephemeral_channels_stay_in_memory_and_drop_overflow(data_dir: Path) -> None:
    async with running(data_dir, 2) as (broker, clients):
        consumer, producer = await connect(broker, clients), await connect(broker, clients)
        await consumer.subscribe("t", "live#ephemeral", rdy=0)
        for body in (b"a", b"b", b"c"):
            await producer.pub("t", body)
        ch = channel_stats(await stats(broker.http_port), "t", "live#ephemeral")
        assert (ch["depth"], ch["backend_depth"], ch["message_count"]) == (2, 0, 3)
        assert not [n for n in file_names(data_dir) if "#ephemeral" in n]
        await consumer.command("RDY 5")
        assert await take(consumer, 2) == [b"a", b"b"]
        await consumer.no_frame(0.2)
