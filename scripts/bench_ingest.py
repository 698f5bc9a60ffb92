#!/usr/bin/env python3
"""Ingestion benchmark: TaskDash's readers vs a no-op pynsq consumer vs a naive one.

Everything runs on loopback in this process and its children: our NSQ broker, an nx-27017
server, and three consumers reading the same messages from their own topics:

  (a) TaskDash's readers (decode, batch, coalesce, bulk write, then FIN)
  (b) a pynsq Reader that FINs at once: the client's ceiling
  (c) a naive pynsq Reader doing one ``update_one`` per message before FIN

Messages are published before each consumer starts, so only consumption is timed. The naive
consumer is timed on the first ``--naive-limit`` messages (its rate does not depend on volume;
running all 205,000 would take minutes). Then checker passes over ``--checker-services``
services (90 % online, 10 % long offline) are timed: steady passes that change nothing, and
one pass in which 1 % of them went quiet; and the stale-detection latency is measured.

The last line printed is one JSON object with every figure and ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nsq
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support import NxServer  # noqa: E402

from taskdash import logs  # noqa: E402
from taskdash.checker import Checker  # noqa: E402
from taskdash.models import TaskService  # noqa: E402
from taskdash.nsq.broker import Broker  # noqa: E402
from taskdash.nsq.readers import Ingestion  # noqa: E402
from taskdash.settings import CheckerSettings, LogSettings, NsqSettings  # noqa: E402
from taskdash.store import Store  # noqa: E402
from taskdash.store.services import record_heartbeats, register_services  # noqa: E402
from taskdash.store.times import to_ms  # noqa: E402

MAX_IN_FLIGHT = 2500


def messages(
    services: int, heartbeat_services: int, heartbeats: int
) -> tuple[list[bytes], list[bytes]]:
    """Registrations for every service, heartbeats round-robin over the first few."""
    regs = [
        json.dumps({"id": f"svc-{i}", "name": f"n{i}", "type": "bench", "url": f"http://127.0.0.1:9/{i}",
                    "description": "", "reserved": ""}).encode()
        for i in range(services)
    ]  # fmt: skip
    beats = [
        json.dumps({"id": f"svc-{i % heartbeat_services}", "reserved": ""}).encode()
        for i in range(heartbeats)
    ]
    return regs, beats


async def mpub(http: str, topic: str, bodies: list[bytes]) -> None:
    """Publish from a thread (the broker runs on this event loop), outside the timed region."""
    await asyncio.to_thread(_mpub, http, topic, bodies)


def _mpub(http: str, topic: str, bodies: list[bytes], chunk: int = 5000) -> None:
    """nsqd's HTTP /mpub, newline-separated, in chunks."""
    with requests.Session() as session:
        for start in range(0, len(bodies), chunk):
            data = b"\n".join(bodies[start : start + chunk])
            resp = session.post(f"{http}/mpub", params={"topic": topic}, data=data, timeout=60)
            resp.raise_for_status()


async def until(predicate: Any, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark stage did not finish")
        await asyncio.sleep(0.01)


async def run_taskdash(
    store: Store, tcp: str, http: str, regs: list[bytes], beats: list[bytes]
) -> dict[str, float]:
    settings = NsqSettings(
        service_topic="bench.a.service", heartbeat_topic="bench.a.heartbeat", channel="bench",
        max_in_flight=MAX_IN_FLIGHT, heartbeat_batch_size=5000, heartbeat_flush_interval=0.05,
    )  # fmt: skip
    await mpub(http, settings.service_topic, regs)
    await mpub(http, settings.heartbeat_topic, beats)
    ingestion = Ingestion(
        store, settings, node_id="bench", nsqd_tcp_addresses=[tcp], lookupd_http_addresses=[]
    )
    started = time.perf_counter()
    await ingestion.services.start()
    await until(lambda: ingestion.services.counters.stored >= len(regs))
    reg_seconds = time.perf_counter() - started
    await ingestion.heartbeats.start()
    await until(lambda: ingestion.heartbeats.counters.stored >= len(beats))
    total = time.perf_counter() - started
    for consumer in ingestion.consumers:
        await consumer.stop()
    applied = await store.services.count_documents({"heartbeats_total": {"$gte": 1}})
    assert ingestion.unknown_heartbeats == 0 and applied > 0
    return {
        "messages": len(regs) + len(beats),
        "seconds": total,
        "rate": (len(regs) + len(beats)) / total,
        "registration_rate": len(regs) / reg_seconds,
        "heartbeat_rate": len(beats) / (total - reg_seconds),
    }


async def run_pynsq(
    tcp: str, http: str, topic: str, bodies: list[bytes], handler_factory: Any
) -> dict[str, float]:
    await mpub(http, topic, bodies)
    done = 0

    def counted(result: bool) -> None:
        nonlocal done
        done += 1

    handler = handler_factory(counted)
    started = time.perf_counter()
    reader = nsq.Reader(
        topic=topic, channel="bench", message_handler=handler, nsqd_tcp_addresses=[tcp],
        max_in_flight=MAX_IN_FLIGHT, max_tries=0,
    )  # fmt: skip
    await until(lambda: done >= len(bodies))
    seconds = time.perf_counter() - started
    for conn in list(reader.conns.values()):
        conn.close()
    reader.redist_periodic.stop()
    return {"messages": len(bodies), "seconds": seconds, "rate": len(bodies) / seconds}


def noop_handler(counted: Any) -> Any:
    def handle(message: nsq.Message) -> bool:
        counted(True)
        return True

    return handle


def naive_handler(store: Store) -> Any:
    """One update_one per message, awaited before FIN: what a first attempt looks like."""

    def factory(counted: Any) -> Any:
        async def handle(message: nsq.Message) -> bool:
            doc = json.loads(message.body)
            now = datetime.now(UTC)
            if "name" in doc:
                await store.services.update_one(
                    {"_id": doc["id"]}, {"$set": {**doc, "updated_at": to_ms(now)}}, upsert=True
                )
            else:
                await store.services.update_one(
                    {"_id": doc["id"]}, {"$max": {"alive_at": to_ms(now)}, "$inc": {"beats": 1}}
                )
            counted(True)
            return True

        return handle

    return factory


async def seed_services(store: Store, services: int, now: datetime) -> None:
    """``services`` services as the readers leave them (registered, one beat), 10 % long gone.

    One service goes through the real registration and heartbeat writes; the rest are copies
    of it inserted in bulk (100,000 upserts one by one would take minutes to set up).
    """
    await register_services(store, [TaskService(id="template")], now)
    await record_heartbeats(store, {"template": (1, now)})
    template = await store.services.find_one({"_id": "template"})
    await store.services.delete_one({"_id": "template"})
    gone = to_ms(now - timedelta(days=1))
    for start in range(0, services, 10_000):
        docs = []
        for i in range(start, min(services, start + 10_000)):
            doc = {**template, "_id": f"c-{i}", "status": "online"}
            if i % 10 == 0:
                doc.update(status="offline", alive_at=gone, last_heartbeat_at=gone, beats=0)
            docs.append(doc)
        await store.services.insert_many(docs)


async def checker_figures(store: Store, latency_store: Store, services: int) -> dict[str, float]:
    """Checker passes over ``services`` services, and the stale-detection latency."""
    now = datetime.now(UTC)
    await seed_services(store, services, now)
    settings = CheckerSettings(stale_after=15, offline_after=60, check_interval=0.1)
    # steady passes run stale_after before the beat time: a steady state, no service changes
    clock = [now - timedelta(seconds=settings.stale_after)]
    checker = Checker(store, settings, node_id="bench", clock=lambda: clock[0])
    passes = []
    for _ in range(5):
        result = await checker.check_once()
        assert not result.changes
        passes.append(result.seconds)
    # then, at the beat time (the grace over: the checker has watched for stale_after), 1 % of
    # the online services are quiet while the rest are fresh: one pass flags them (and
    # measures the silence: three counts). Had the clock moved past the others' beats
    # instead, 100 % would be quiet or going quiet: a mass silence, rightly held.
    clock[0] = now
    quiet = [f"c-{i}" for i in range(1, services, 100)]
    await store.services.update_many(
        {"_id": {"$in": quiet}}, {"$set": {"alive_at": to_ms(now - timedelta(seconds=20))}}
    )
    flagged = await checker.check_once()
    assert len(flagged.changes) == len(quiet), (len(flagged.changes), len(quiet))
    # stale-detection latency: one service goes quiet; how long past stale_after until flagged
    store = latency_store
    fast = CheckerSettings(stale_after=1.0, offline_after=30, check_interval=0.1)
    await register_services(store, [TaskService(id="quiet")], datetime.now(UTC))
    beat_at = datetime.now(UTC)
    await record_heartbeats(store, {"quiet": (1, beat_at)})
    probe = Checker(store, fast, node_id="bench")
    await probe.start()
    try:
        while (await store.services.find_one({"_id": "quiet"}))["status"] != "stale":  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    finally:
        await probe.stop()
    latency = datetime.now(UTC) - beat_at - timedelta(seconds=fast.stale_after)
    return {
        "checker_services": services,
        "checker_pass_ms_median": sorted(passes)[len(passes) // 2] * 1000,
        "checker_pass_ms_max": max(passes) * 1000,
        "checker_changes": len(flagged.changes),
        "checker_pass_with_changes_ms": flagged.seconds * 1000,
        "stale_detection_latency_ms": latency.total_seconds() * 1000,
        "stale_detection_check_interval_ms": fast.check_interval * 1000,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    logs.configure(LogSettings(level="error"), "console")
    logging.disable(logging.WARNING)
    # closing a plain pynsq Reader's sockets makes pynsq log "failed to unpack size"
    logging.getLogger("nsq").setLevel(logging.CRITICAL)
    regs, beats = messages(args.services, args.heartbeat_services, args.heartbeats)
    with tempfile.TemporaryDirectory() as tmp:
        mongo = NxServer(Path(tmp) / "mongo")
        mongo.start()
        broker = Broker(
            host="127.0.0.1", tcp_port=0, http_port=0, lookupd_http_port=None, data_dir=None
        )
        await broker.start()
        tcp, http = f"127.0.0.1:{broker.tcp_port}", f"http://127.0.0.1:{broker.http_port}"
        names = ("bench_a", "bench_c", "bench_checker", "bench_latency")
        stores = [Store(mongo.uri, name) for name in names]
        try:
            for store in stores:
                await store.ensure_indexes()
            print("(a) TaskDash readers ...", flush=True)
            a = await run_taskdash(stores[0], tcp, http, regs, beats)
            print(f"    {a['rate']:,.0f} msg/s", flush=True)
            print("(b) no-op pynsq consumer ...", flush=True)
            b = await run_pynsq(tcp, http, "bench.b", regs + beats, noop_handler)
            print(f"    {b['rate']:,.0f} msg/s", flush=True)
            naive = (regs + beats)[: args.naive_limit]
            print(f"(c) naive update_one consumer on {len(naive):,} messages ...", flush=True)
            c = await run_pynsq(tcp, http, "bench.c", naive, naive_handler(stores[1]))
            print(f"    {c['rate']:,.0f} msg/s", flush=True)
            print(f"checker pass over {args.checker_services:,} services ...", flush=True)
            checker = await checker_figures(stores[2], stores[3], args.checker_services)
        finally:
            for store in stores:
                await store.close()
            await broker.stop()
            mongo.stop()
    return {
        "a_taskdash_msgs_per_s": round(a["rate"], 1),
        "a_registrations_per_s": round(a["registration_rate"], 1),
        "a_heartbeats_per_s": round(a["heartbeat_rate"], 1),
        "b_noop_pynsq_msgs_per_s": round(b["rate"], 1),
        "c_naive_msgs_per_s": round(c["rate"], 1),
        "ratio_a_b": round(a["rate"] / b["rate"], 3),
        "ratio_a_c": round(a["rate"] / c["rate"], 3),
        "messages": a["messages"],
        "naive_messages": c["messages"],
        **{k: round(v, 3) for k, v in checker.items()},
        "targets": {"ratio_a_b": 0.8, "ratio_a_c": 5, "checker_pass_ms": 200},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=5000, help="registrations")
    parser.add_argument("--heartbeat-services", type=int, default=2000)
    parser.add_argument("--heartbeats", type=int, default=200_000)
    parser.add_argument("--naive-limit", type=int, default=20_000)
    parser.add_argument("--checker-services", type=int, default=100_000)
    figures = asyncio.run(main(parser.parse_args()))
    print(json.dumps(figures))
