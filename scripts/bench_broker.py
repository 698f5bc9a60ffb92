#!/usr/bin/env python3
"""Broker benchmark: publish and consume rates through our nsqd, one row per mode.

Each mode starts a fresh broker on loopback in this process, then a pynsq Writer publishes
``--messages`` small JSON bodies (pipelined PUBs, every OK counted) while a pynsq Reader on
the same topic FINs each one; both use the mode's connection options. Timed: from the first
PUB to the last OK (publish) and to the last message received (consume). Everything shares one
event loop and one core, so the figures compare modes rather than measure a deployment.

Modes (a table: add a row to MODES to compare another broker or client setting):
  plain    no TLS, no compression
  tls      TLS (a throwaway CA made with openssl), both clients
  deflate  deflate level 6 negotiated by both clients
  snappy   framed snappy (needs the `snappy` extra)
  disk     plain, with mem_queue_size 0: every message on disk before its OK (plain: 10,000
           in memory per queue)

Ratios are each mode's rate over plain's. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import ssl
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

from nsq_tls import Pki, make_pki  # noqa: E402

from taskdash.nsq.broker import Broker  # noqa: E402
from taskdash.nsq.broker.options import SecurityOptions  # noqa: E402
from taskdash.nsq.reader import ClosableReader  # noqa: E402
from taskdash.nsq.tls import client_context  # noqa: E402


@dataclass(frozen=True)
class Mode:
    """One row: how the broker is built and what both clients ask for."""

    name: str
    broker: Callable[[Pki], dict[str, Any]] = lambda pki: {}
    reader: Callable[[Pki], dict[str, Any]] = lambda pki: {}
    writer: Callable[[Pki], dict[str, Any]] = lambda pki: {}
    notes: dict[str, Any] = field(default_factory=dict)


def _tls_broker(pki: Pki) -> dict[str, Any]:
    return {"security": SecurityOptions(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))}


MODES = [
    Mode("plain"),
    Mode(
        "tls",
        broker=_tls_broker,
        reader=lambda pki: {"tls_v1": True, "tls_context": client_context(ca_file=str(pki.ca))},
        writer=lambda pki: {
            "tls_v1": True,
            "tls_options": {"ssl_version": ssl.PROTOCOL_TLS_CLIENT, "ca_certs": str(pki.ca)},
        },
    ),
    Mode(
        "deflate",
        reader=lambda pki: {"deflate": True, "deflate_level": 6},
        writer=lambda pki: {"deflate": True, "deflate_level": 6},
    ),
    Mode("snappy", reader=lambda pki: {"snappy": True}, writer=lambda pki: {"snappy": True}),
    # plain keeps mem_queue_size at its default (10,000 in memory); here every message is
    # written to its segment file before the OK (docs/nsq-broker.md: what survives a crash)
    Mode("disk", broker=lambda pki: {"mem_queue_size": 0}),
]


def bodies(count: int) -> list[bytes]:
    """Heartbeat-like JSON bodies (~60 bytes)."""
    return [json.dumps({"id": f"svc-{i % 2000}", "reserved": ""}).encode() for i in range(count)]


async def run_mode(mode: Mode, pki: Pki, data: Path, messages: list[bytes]) -> dict[str, Any]:
    """Publish and consume ``messages`` through a fresh broker in ``mode``."""
    broker = Broker(
        tcp_port=0, http_port=0, lookupd_http_port=None, data_dir=data / mode.name,
        **mode.broker(pki),
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
        max_in_flight=2500, **mode.reader(pki),
    )  # fmt: skip
    writer = nsq.Writer(address, **mode.writer(pki))
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
        "publish_rate": count / (published - start),
        "consume_rate": count / (consumed - start),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    logging.disable(logging.CRITICAL)  # pynsq's per-connection lines would swamp the table
    from taskdash import logs
    from taskdash.settings import LogSettings

    logs.configure(LogSettings(level="error"), "console")
    messages = bodies(args.messages)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp) / "pki")
        for mode in MODES:
            if args.modes and mode.name not in args.modes:
                continue
            print(f"{mode.name} ...", flush=True)
            rows.append(await run_mode(mode, pki, Path(tmp), messages))
    base = next((r for r in rows if r["mode"] == "plain"), rows[0])
    print(f"\n{'mode':<10}{'publish msg/s':>15}{'consume msg/s':>15}{'publish':>10}{'consume':>10}")
    for row in rows:
        row["publish_ratio"] = row["publish_rate"] / base["publish_rate"]
        row["consume_ratio"] = row["consume_rate"] / base["consume_rate"]
        print(
            f"{row['mode']:<10}{row['publish_rate']:>15,.0f}{row['consume_rate']:>15,.0f}"
            f"{row['publish_ratio']:>9.2f}x{row['consume_ratio']:>9.2f}x"
        )
    return {
        "messages": args.messages,
        "modes": {r["mode"]: {k: round(v, 3) for k, v in r.items() if k != "mode"} for r in rows},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000, help="messages per mode")
    parser.add_argument("--modes", nargs="*", default=[], help="only these modes")
    figures = asyncio.run(main(parser.parse_args()))
    print(json.dumps(figures))
