"""A real ``taskdash nsqd`` process: killed with SIGKILL mid-stream, and a large backlog's RSS."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

from broker_helpers import WAIT, RawClient, http
from broker_process import Nsqd, rss_kib
from support import free_port

from taskdash.nsq.broker.protocol import FRAME_RESPONSE, HEARTBEAT


def nsqd(tmp: Path, *flags: str) -> Nsqd:
    """A broker process whose own lookupd HTTP listener is on a free port."""
    return Nsqd(tmp, tmp / "nsq", *flags, TASKDASH_NSQ__EMBEDDED_LOOKUPD_PORT=free_port())


async def publish_until_killed(producer: RawClient, broker: Nsqd, kill_after: int) -> list[bytes]:
    """Pipelined PUBs; SIGKILL once ``kill_after`` were acknowledged; returns those acked."""
    sent: list[bytes] = []
    acked: list[bytes] = []
    window = asyncio.Semaphore(200)

    async def write() -> None:
        for i in range(10**9):
            await window.acquire()
            body = b"msg-%07d" % i
            sent.append(body)
            await producer.command("PUB crash", body)

    async def read() -> None:
        while True:
            size, kind = struct.unpack(">ii", await producer.reader.readexactly(8))
            data = await producer.reader.readexactly(size - 4)
            if (kind, data) == (FRAME_RESPONSE, HEARTBEAT):
                continue
            assert (kind, data) == (FRAME_RESPONSE, b"OK"), data
            acked.append(sent[len(acked)])  # answers come in the order of the commands
            window.release()
            if len(acked) == kill_after:
                broker.kill()  # the writer is still sending: the kill lands mid-stream

    tasks = [asyncio.create_task(write()), asyncio.create_task(read())]
    _, pending = await asyncio.wait(tasks, timeout=60, return_when=asyncio.FIRST_EXCEPTION)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert len(acked) >= kill_after, "the stream ended before the kill"
    assert len(sent) > len(acked), "nothing was in flight when the broker died"
    return acked


async def test_sigkill_at_mem_queue_size_0_loses_nothing_acknowledged(tmp_path: Path) -> None:
    broker = nsqd(tmp_path, "--mem-queue-size=0").start()
    consumer = await RawClient.connect(broker.tcp_port)
    await consumer.subscribe("crash", "ch", rdy=0)
    producer = await RawClient.connect(broker.tcp_port)
    early = [b"early-%d" % i for i in range(6)]
    for body in early:
        await producer.pub("crash", body)
    await consumer.command("RDY 6")
    finished: set[bytes] = set()
    for n in range(6):  # 3 finished, 3 held in flight through the kill
        msg = await consumer.message()
        if n % 2:
            await consumer.command(b"FIN " + msg.id)
            finished.add(msg.body)
    await consumer.command("RDY 0")
    await consumer.no_frame(0.2)  # the FINs arrived (a NOP has no answer): nothing else came
    acked = await publish_until_killed(producer, broker, kill_after=3000)
    await consumer.close()
    await producer.close()

    again = nsqd(tmp_path, "--mem-queue-size=0").start()
    try:
        expected = {*early, *acked} - finished
        got: set[bytes] = set()
        reader = await RawClient.connect(again.tcp_port)
        await reader.subscribe("crash", "ch", rdy=500)
        async with asyncio.timeout(WAIT * 3):
            while not expected <= got:
                msg = await reader.message()
                got.add(msg.body)
                await reader.command(b"FIN " + msg.id)
        assert expected <= got  # every acknowledged message, the ones in flight included
        await reader.close()
        events = [e["event"] for e in again.events()]
        assert "diskqueue_recovered_records" in events  # found past the stale metadata
    finally:
        again.stop()


async def test_a_large_backlog_stays_on_disk_in_bounded_memory(tmp_path: Path) -> None:
    broker = nsqd(tmp_path).start()  # mem_queue_size 10,000 (the default)
    try:
        producer = await RawClient.connect(broker.tcp_port)
        batch = 5000

        async def mpub(start: int) -> None:
            bodies = [b"%07d" % i for i in range(start, start + batch)]
            payload = struct.pack(">i", len(bodies)) + b"".join(
                struct.pack(">i", len(b)) + b for b in bodies
            )
            await producer.command("MPUB backlog", payload)
            assert await producer.response() == b"OK"

        for start in range(0, 20_000, batch):  # memory full, the disk started
            await mpub(start)
        before = rss_kib(broker.pid)
        total = 200_000  # scripts/bench_broker.py measures 1,000,000 (same bound)
        for start in range(20_000, total, batch):
            await mpub(start)
        grown_mib = (rss_kib(broker.pid) - before) / 1024
        # held in memory they would take ~45 MiB (~230 bytes each, measured); here < 1 MiB
        assert grown_mib < 15, grown_mib
        doc = (await http(broker.http_port, "/stats?format=json&topic=backlog")).json()
        [topic] = doc["topics"]
        assert (topic["depth"], topic["backend_depth"]) == (total, total - 10_000)
        # the first channel takes the backlog over, in order, memory part first
        consumer = await RawClient.connect(broker.tcp_port)
        await consumer.subscribe("backlog", "ch", rdy=1)
        for expected in (b"0000000", b"0000001"):
            msg = await consumer.message()
            assert msg.body == expected
            await consumer.command(b"FIN " + msg.id)
        await producer.close()
        await consumer.close()
    finally:
        broker.stop()


async def test_stats_count_messages_on_disk(tmp_path: Path) -> None:
    broker = nsqd(tmp_path, "--mem-queue-size=2").start()
    try:
        producer = await RawClient.connect(broker.tcp_port)
        for i in range(5):
            await producer.pub("counted", b"%d" % i)
        text = (await http(broker.http_port, "/stats")).body.decode()
        assert "[counted        ] depth: 5     be-depth: 3" in text
        await producer.close()
    finally:
        broker.stop()
