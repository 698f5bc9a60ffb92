#!/usr/bin/env python3
"""TCP interface benchmark: TaskDash's Find against the framing ceiling, then Register.

Everything runs on loopback. Each server runs alone in a child process (so the load
generator in this process does not share its event loop), against an nx-27017 child:

  * ceiling: a bare asyncio server that cuts frames by their length field and answers each
    with one constant reply frame: what framing costs on this machine, nothing else;
  * TaskDash: the real :class:`~taskdash.tcp.server.TcpServer` on a real store, with its Find
    cache as configured (``--find-cache-ttl``, default the setting's default); the output says
    whether the cache was on and its hit ratio over the measured rounds;
  * TaskDash without the cache (``find_cache_ttl = 0``, the same store), measured in
    ``--uncached-rounds`` extra rounds: every Find reads the store.

The same client (``--connections`` connections, each sending a Find and reading its reply in
a loop for ``--seconds``) measures the ceiling and TaskDash, in turn, ``--rounds`` times (the
median ratio is the figure: on a shared machine, load changes between rounds). Registers
(``--tasks`` distinct ids, written first, then found) are store-bound. The last line printed
is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from taskdash import logs
from taskdash.settings import LogSettings, TcpSettings
from taskdash.store import Store
from taskdash.store.embedded import EmbeddedMongo
from taskdash.tcp.protocol import pack
from taskdash.tcp.server import TcpServer

CONSTANT = pack(2, {"RequestID": "RespFind"}, {"id": "x", "errid": 0, "errmsg": "正确"})


class Bare(asyncio.Protocol):
    """Cut frames by their length field, answer each with the same bytes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 4:
            end = 4 + int.from_bytes(self.buffer[:4], "big")
            if len(self.buffer) < end:
                return
            del self.buffer[:end]
            self.transport.write(CONSTANT)


async def _serve(kind: str, uri: str, ttl: float, inbox: Any, outbox: Any) -> None:
    loop = asyncio.get_running_loop()
    if kind == "bare":
        server = await loop.create_server(Bare, "127.0.0.1", 0)
        outbox.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()
    store = Store(uri, "bench_tcp")
    await store.ensure_indexes()
    tcp = TcpServer(store, TcpSettings(port=0, find_cache_ttl=ttl))
    await tcp.start()
    outbox.put(tcp.port)
    while True:  # each message asks for the Find cache's counters
        await loop.run_in_executor(None, inbox.get)
        outbox.put(tcp.find_stats())


def serve(kind: str, uri: str, ttl: float, inbox: Any, outbox: Any) -> None:
    """Child process body: run one server until terminated (warnings only in the log)."""
    logs.configure(LogSettings(level="warning"), "console")
    asyncio.run(_serve(kind, uri, ttl, inbox, outbox))


class Child:
    """A server in a spawned process; ``port`` once it listens."""

    def __init__(self, kind: str, uri: str = "", ttl: float = 0.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.inbox, self.outbox = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(
            target=serve, args=(kind, uri, ttl, self.inbox, self.outbox), daemon=True
        )

    def __enter__(self) -> Child:
        self.proc.start()
        self.port = int(self.outbox.get(timeout=60))
        return self

    def stats(self) -> dict[str, Any]:
        """The TaskDash child's Find cache counters (``TcpServer.find_stats``)."""
        self.inbox.put("stats")
        return dict(self.outbox.get(timeout=60))

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.join(10)


async def _loop(port: int, frames: list[bytes], until: float, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    clock = time.perf_counter
    while clock() < until:
        started = clock()
        writer.write(frames[done % len(frames)])
        size = int.from_bytes(await reader.readexactly(4), "big")
        await reader.readexactly(size)
        latencies.append(clock() - started)
        done += 1
    writer.close()
    return done


async def measure(
    port: int, frames: list[bytes], connections: int, seconds: float
) -> dict[str, float]:
    """Requests per second with ``connections`` clients in lockstep, and latency percentiles."""
    latencies: list[float] = []
    until = time.perf_counter() + seconds
    started = time.perf_counter()
    counts = await asyncio.gather(
        *(
            _loop(port, frames[i::connections] or frames, until, latencies)
            for i in range(connections)
        )
    )
    elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "requests": sum(counts),
        "per_second": round(sum(counts) / elapsed, 1),
        "p50_ms": round(cuts[49] * 1000, 2),
        "p99_ms": round(cuts[98] * 1000, 2),
    }


async def register_all(port: int, tasks: int, connections: int) -> dict[str, float]:
    """Every task registered once (distinct ids, a user each), spread over the connections."""

    async def one(share: range) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in share:
            record = {"id": f"task-{i}", "name": f"n{i}", "user": f"u{i % 40}", "status": "running",
                      "start_time": "12:00", "stop_time": "18:00"}  # fmt: skip
            writer.write(pack(2, {"RequestID": "Register"}, record))
            size = int.from_bytes(await reader.readexactly(4), "big")
            body = (await reader.readexactly(size))[12:]
            if b'"errid":0' not in body:
                raise SystemExit(f"register failed: {body!r}")
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(range(c, tasks, connections)) for c in range(connections)))
    elapsed = time.perf_counter() - started
    return {"requests": tasks, "per_second": round(tasks / elapsed, 1)}


def find_frames(tasks: int, count: int = 5000) -> list[bytes]:
    rng = random.Random(9)
    ids = [f"task-{rng.randrange(tasks)}" for _ in range(count)]
    return [pack(2, {"RequestID": "Find"}, {"id": task_id}) for task_id in ids]


async def alternate(
    bare: int, taskdash: int, rounds: int, label: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Ceiling and Find measured in turn, ``rounds`` times: a shared machine's load hits both."""
    frames = find_frames(args.tasks)
    results = []
    for number in range(1, rounds + 1):
        ceiling = await measure(bare, frames, args.connections, args.seconds)
        find = await measure(taskdash, frames, args.connections, args.seconds)
        ratio = round(find["per_second"] / ceiling["per_second"], 3)
        print(f"{label} round {number}: ceiling {ceiling}", flush=True)
        print(f"{label} round {number}: Find {find}  Find/ceiling = {ratio}", flush=True)
        results.append({"ceiling": ceiling, "find": find, "find_over_ceiling": ratio})
    return results


def hit_ratio(before: dict[str, Any], after: dict[str, Any]) -> float:
    """Hits over Finds between two snapshots of the counters."""
    hits = after["hits"] - before["hits"]
    asked = hits + after["misses"] - before["misses"]
    return round(hits / asked, 4) if asked else 0.0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-tcp-") as tmp:
        mongo = EmbeddedMongo(host="127.0.0.1", port=args.mongo_port, data_dir=Path(tmp))
        await mongo.start()
        try:
            with (
                Child("bare") as bare,
                Child("taskdash", mongo.uri, args.find_cache_ttl) as taskdash,
                Child("taskdash", mongo.uri, 0.0) as uncached,
            ):
                register = await register_all(taskdash.port, args.tasks, args.connections)
                print(f"TaskDash Register: {register}", flush=True)
                cache = "on" if args.find_cache_ttl > 0 else "off"
                label = f"cache {cache} (find_cache_ttl {args.find_cache_ttl})"
                before = taskdash.stats()
                rounds = await alternate(bare.port, taskdash.port, args.rounds, label, args)
                after = taskdash.stats()
                plain = await alternate(
                    bare.port, uncached.port, args.uncached_rounds, "cache off (ttl 0)", args
                )
                plain_stats = uncached.stats()
        finally:
            await mongo.stop()
    ratio = statistics.median(r["find_over_ceiling"] for r in rounds)
    find = statistics.median(r["find"]["per_second"] for r in rounds)
    ceiling = statistics.median(r["ceiling"]["per_second"] for r in rounds)
    hits = hit_ratio(before, after)
    print(
        f"median: Find {find}/s, ceiling {ceiling}/s, Find/ceiling = {ratio} (target >= 0.5); "
        f"Find cache {cache}, ttl {args.find_cache_ttl} s, hit ratio {hits} over those rounds, "
        f"{after['queries'] - before['queries']} store queries"
    )
    plain_ratio = statistics.median(r["find_over_ceiling"] for r in plain) if plain else None
    if plain:
        print(f"without the cache (ttl 0): Find/ceiling = {plain_ratio}, "
              f"{plain_stats['queries']} store queries")  # fmt: skip
    return {
        "connections": args.connections,
        "seconds": args.seconds,
        "tasks": args.tasks,
        "register_per_second": register["per_second"],
        "find_per_second": find,
        "ceiling_per_second": ceiling,
        "find_over_ceiling": ratio,
        "target_find_over_ceiling": 0.5,
        "find_cache": cache,
        "find_cache_ttl": args.find_cache_ttl,
        "find_cache_hit_ratio": hits,
        "find_cache_stats": after,
        "rounds": rounds,
        "uncached_find_per_second": (
            statistics.median(r["find"]["per_second"] for r in plain) if plain else None
        ),
        "uncached_find_over_ceiling": plain_ratio,
        "uncached_rounds": plain,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5, help="ceiling/Find measured in turn")
    parser.add_argument(
        "--find-cache-ttl",
        type=float,
        default=TcpSettings().find_cache_ttl,
        help="[tcp] find_cache_ttl of the measured server (0 = no cache)",
    )
    parser.add_argument(
        "--uncached-rounds", type=int, default=1, help="extra rounds against a ttl-0 server"
    )
    parser.add_argument("--mongo-port", type=int, default=0, help="0 = a free port")
    args = parser.parse_args()
    if not args.mongo_port:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            args.mongo_port = sock.getsockname()[1]
    logs.configure(LogSettings(level="warning"), "console")
    result = asyncio.run(run(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
