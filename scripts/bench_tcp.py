#!/usr/bin/env python3
"""TCP interface benchmark: TaskDash's Find against the framing ceiling, then Register.

Everything runs on loopback. Each server runs alone in a child process (so the load
generator in this process does not share its event loop), against an nx-27017 child:

  * ceiling: a bare asyncio server that cuts frames by their length field and answers each
    with one constant reply frame: what framing costs on this machine, nothing else;
  * TaskDash: the real :class:`~taskdash.tcp.server.TcpServer` on a real store.

The same client (``--connections`` connections, each sending a Find and reading its reply in
a loop for ``--seconds``) measures both, in turn, ``--rounds`` times (the median ratio is the
figure: on a shared machine, load changes between rounds). Registers (``--tasks`` distinct
ids, written first, then found) are store-bound. The last line printed is one JSON object
with every figure.
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


async def _serve(kind: str, uri: str, ports: Any) -> None:
    loop = asyncio.get_running_loop()
    if kind == "bare":
        server = await loop.create_server(Bare, "127.0.0.1", 0)
        ports.put(server.sockets[0].getsockname()[1])
    else:
        store = Store(uri, "bench_tcp")
        await store.ensure_indexes()
        tcp = TcpServer(store, TcpSettings(port=0))
        await tcp.start()
        ports.put(tcp.port)
    await asyncio.Event().wait()


def serve(kind: str, uri: str, ports: Any) -> None:
    """Child process body: run one server until terminated (warnings only in the log)."""
    logs.configure(LogSettings(level="warning"), "console")
    asyncio.run(_serve(kind, uri, ports))


class Child:
    """A server in a spawned process; ``port`` once it listens."""

    def __init__(self, kind: str, uri: str = "") -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ports = ctx.Queue()
        self.proc = ctx.Process(target=serve, args=(kind, uri, self.ports), daemon=True)

    def __enter__(self) -> int:
        self.proc.start()
        return int(self.ports.get(timeout=60))

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


async def alternate(bare: int, taskdash: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Ceiling and Find measured in turn, ``--rounds`` times: a shared machine's load hits both."""
    frames = find_frames(args.tasks)
    rounds = []
    for number in range(1, args.rounds + 1):
        ceiling = await measure(bare, frames, args.connections, args.seconds)
        find = await measure(taskdash, frames, args.connections, args.seconds)
        ratio = round(find["per_second"] / ceiling["per_second"], 3)
        print(f"round {number}: ceiling {ceiling}", flush=True)
        print(f"round {number}: TaskDash Find {find}  Find/ceiling = {ratio}", flush=True)
        rounds.append({"ceiling": ceiling, "find": find, "find_over_ceiling": ratio})
    return rounds


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-tcp-") as tmp:
        mongo = EmbeddedMongo(host="127.0.0.1", port=args.mongo_port, data_dir=Path(tmp))
        await mongo.start()
        try:
            with Child("bare") as bare, Child("taskdash", mongo.uri) as taskdash:
                register = await register_all(taskdash, args.tasks, args.connections)
                print(f"TaskDash Register: {register}", flush=True)
                rounds = await alternate(bare, taskdash, args)
        finally:
            await mongo.stop()
    ratio = statistics.median(r["find_over_ceiling"] for r in rounds)
    find = statistics.median(r["find"]["per_second"] for r in rounds)
    ceiling = statistics.median(r["ceiling"]["per_second"] for r in rounds)
    print(f"median: Find {find}/s, ceiling {ceiling}/s, Find/ceiling = {ratio} (target >= 0.5)")
    return {
        "connections": args.connections,
        "seconds": args.seconds,
        "tasks": args.tasks,
        "register_per_second": register["per_second"],
        "find_per_second": find,
        "ceiling_per_second": ceiling,
        "find_over_ceiling": ratio,
        "target_find_over_ceiling": 0.5,
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3, help="ceiling/Find measured in turn")
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
