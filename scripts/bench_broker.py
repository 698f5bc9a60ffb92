#!/usr/bin/env python3
"""Broker benchmark: publish and consume rates through our nsqd, one row per mode.

Each mode starts a fresh broker on loopback in this process, then a pynsq Writer publishes
``--messages`` small JSON bodies (pipelined PUBs, every OK counted) while a pynsq Reader on
the same topic FINs each one; both use the mode's connection options. Timed: from the first
PUB to the last OK (publish) and to the last message received (consume). Everything shares one
event loop and one core, so the figures compare modes rather than measure a deployment.

Modes (a table: add a row to MODES to compare another broker or client setting):
  plain       mem_queue_size 10,000 (the default): messages stay in memory while consumed
  mem0        mem_queue_size 0: every message written to its segment file before its OK
  mem0_sync1  mem_queue_size 0 and sync_every 1: fsyncs per message (power-cut safe; 500
              messages only, it is slow)

Ratios are each mode's rate over plain's. Then ``--backlog`` messages are published to a topic
nobody reads, through a ``taskdash nsqd`` process: its RSS before and after (bounded: the
backlog is on disk) and the publish rate. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nsq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "broker"))

from broker_helpers import RawClient  # noqa: E402
from broker_process import Nsqd, rss_kib  # noqa: E402
from support import free_port  # noqa: E402

from taskdash.nsq.broker import Broker  # noqa: E402
from taskdash.nsq.reader import ClosableReader  # noqa: E402


@dataclass(frozen=True)
class Mode:
    """One row: how the broker is built and what both clients ask for."""

    name: str
    broker: Callable[[Any], dict[str, Any]] = lambda _: {}
    reader: Callable[[Any], dict[str, Any]] = lambda _: {}
    writer: Callable[[Any], dict[str, Any]] = lambda _: {}
    notes: dict[str, Any] = field(default_factory=dict)


MODES = [
    Mode("plain"),
    Mode("mem0", broker=lambda _: {"mem_queue_size": 0}),
    # ~4 fsyncs per message (segment and metadata, on write and on read): fewer messages
    Mode(
        "mem0_sync1",
        broker=lambda _: {"mem_queue_size": 0, "sync_every": 1},
        notes={"messages": 500},
    ),
]


def bodies(count: int) -> list[bytes]:
    """Heartbeat-like JSON bodies (~30 bytes)."""
    return [json.dumps({"id": f"svc-{i % 2000}", "reserved": ""}).encode() for i in range(count)]


async def run_mode(mode: Mode, data: Path, messages: list[bytes]) -> dict[str, Any]:
    """Publish and consume ``messages`` through a fresh broker in ``mode``."""
    broker = Broker(
        tcp_port=0, http_port=0, lookupd_http_port=None, data_dir=data / mode.name,
        **mode.broker(None),
    )  # fmt: skip
    await broker.start()
    address = [f"127.0.0.1:{broker.tcp_port}"]
    received = 0
    acked = 0
    done_consume = asyncio.get_running_loop().create_future()
    done_publish = asyncio.get_running_loop().create_future()

    def handle(message: nsq.Message) -> bool:
        nonlocal received
        received += 1
        if received == len(messages) and not done_consume.done():
            done_consume.set_result(time.perf_counter())
        return True

    def answered(conn: Any, result: Any) -> None:
        nonlocal acked
        if result != b"OK":
            raise SystemExit(f"{mode.name}: publish failed: {result!r}")
        acked += 1
        if acked == len(messages) and not done_publish.done():
            done_publish.set_result(time.perf_counter())

    reader = ClosableReader(
        topic="bench", channel="bench", message_handler=handle, nsqd_tcp_addresses=address,
        max_in_flight=2500, **mode.reader(None),
    )  # fmt: skip
    writer = nsq.Writer(address, **mode.writer(None))
    try:
        while not (writer.conns and reader.conns):  # noqa: ASYNC110 - pynsq has no event
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the reader's RDY is up
        start = time.perf_counter()
        for index, body in enumerate(messages):
            writer.pub("bench", body, callback=answered)
            if index % 500 == 499:
                await asyncio.sleep(0)  # let the broker and the reader run
        published = await asyncio.wait_for(done_publish, 300)
        consumed = await asyncio.wait_for(done_consume, 300)
    finally:
        reader.shut()
        for conn in list(writer.conns.values()):
            conn.close()
        await broker.stop()
    count = len(messages)
    return {
        "mode": mode.name,
        "messages": count,
        "publish_rate": count / (published - start),
        "consume_rate": count / (consumed - start),
    }


async def backlog(total: int, tmp: Path) -> dict[str, Any]:
    """``total`` small messages into a topic nobody reads, through a ``taskdash nsqd``."""
    broker = Nsqd(
        tmp,
        tmp / "nsq",
        TASKDASH_NSQ__EMBEDDED_LOOKUPD_PORT=free_port(),
        TASKDASH_LOG__LEVEL="warning",
    ).start()
    try:
        producer = await RawClient.connect(broker.tcp_port)
        batch = 5000

        async def mpub(first: int) -> None:
            payload = struct.pack(">i", batch) + b"".join(
                struct.pack(">i", 7) + b"%07d" % i for i in range(first, first + batch)
            )
            await producer.command("MPUB backlog", payload)
            assert await producer.response() == b"OK"

        for first in range(0, 20_000, batch):  # memory part full
            await mpub(first)
        before = rss_kib(broker.pid)
        start = time.perf_counter()
        for first in range(20_000, total, batch):
            await mpub(first)
        elapsed = time.perf_counter() - start
        after = rss_kib(broker.pid)
        await producer.close()
        on_disk = sum(p.stat().st_size for p in (tmp / "nsq").iterdir())
    finally:
        broker.stop()
    return {
        "messages": total,
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "rss_growth_mib": round((after - before) / 1024, 1),
        "publish_rate": round((total - 20_000) / elapsed),
        "disk_mib": round(on_disk / 2**20, 1),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    logging.disable(logging.CRITICAL)  # pynsq's per-connection lines would swamp the table
    from taskdash import logs
    from taskdash.settings import LogSettings

    logs.configure(LogSettings(level="error"), "console")
    messages = bodies(args.messages)
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"messages": args.messages}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            if args.modes and mode.name not in args.modes:
                continue
            print(f"{mode.name} ...", flush=True)
            count = mode.notes.get("messages", len(messages))
            rows.append(await run_mode(mode, Path(tmp), messages[:count]))
        if args.backlog:
            print(f"backlog of {args.backlog:,} ...", flush=True)
            result["backlog"] = await backlog(args.backlog, Path(tmp) / "backlog")
    base = next((r for r in rows if r["mode"] == "plain"), rows[0])
    print(f"\n{'mode':<12}{'publish msg/s':>15}{'consume msg/s':>15}{'publish':>10}{'consume':>10}")
    for row in rows:
        row["publish_ratio"] = row["publish_rate"] / base["publish_rate"]  # rates: comparable
        row["consume_ratio"] = row["consume_rate"] / base["consume_rate"]
        print(
            f"{row['mode']:<12}{row['publish_rate']:>15,.0f}{row['consume_rate']:>15,.0f}"
            f"{row['publish_ratio']:>9.2f}x{row['consume_ratio']:>9.2f}x"
        )
    if "backlog" in result:
        b = result["backlog"]
        print(
            f"\nbacklog {b['messages']:,} messages, nobody reading: RSS {b['rss_before_mib']} -> "
            f"{b['rss_after_mib']} MiB (+{b['rss_growth_mib']}), {b['disk_mib']} MiB on disk, "
            f"{b['publish_rate']:,} msg/s"
        )
    result["modes"] = {
        r["mode"]: {k: round(v, 3) for k, v in r.items() if k != "mode"} for r in rows
    }
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000, help="messages per mode")
    parser.add_argument("--modes", nargs="*", default=[], help="only these modes")
    parser.add_argument(
        "--backlog", type=int, default=1_000_000, help="backlog size to measure (0 = skip)"
    )
    figures = asyncio.run(main(parser.parse_args()))
    print(json.dumps(figures))
