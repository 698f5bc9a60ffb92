#!/usr/bin/env python3
"""Fetcher benchmark: one full sweep by TaskDash's fetcher vs a requests + threads baseline.

Everything runs on loopback, started and stopped by this script: an nx-27017 server, and a
child process serving ``--services`` simulated task services (``--tasks`` records each) on
127.0.0.1. Two sweeps are timed for each implementation, each against its own database:

  cold  every service fetched, every task new (the first sweep after a start)
  warm  the same services again; ``--change`` of the tasks changed status and one service in a
        hundred replaced a task (steady state: the fetcher runs every interval)

(a) TaskDash: ``Fetcher.sweep()`` with default settings (64 requests in flight).
(b) baseline: ``requests`` (one Session per thread) in a ``--threads`` thread pool doing the same
    work per service: GET, validate every record as TaskMetaData, one ``bulk_write`` of upserts
    (first_seen_at on insert, last_seen_at, owner kept: a duplicate key is a conflict), one
    ``update_many`` marking unlisted tasks gone, one ``update_one`` of the fetch result.

Both stores are compared afterwards (same tasks, same statuses, same gone flags). ``ratio`` is
the cold sweep's (baseline seconds / TaskDash seconds). At the defaults the whole run takes about
15 minutes on two cores, nearly all of it the baseline (``--phases cold`` halves that). The
baseline's per-service ``update_many`` and its 32 concurrent connections are what nx-27017 handles
worst, so expect a smaller ratio against a real MongoDB. The last line printed is one JSON object
with every figure and ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
import structlog
from pymongo import MongoClient, UpdateOne
from pymongo.errors import BulkWriteError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support import NxServer  # noqa: E402

from taskdash.errors import ValidationError  # noqa: E402
from taskdash.fetcher import Fetcher  # noqa: E402
from taskdash.models import TaskMetaData, TaskService, convert  # noqa: E402
from taskdash.settings import FetcherSettings  # noqa: E402
from taskdash.store import Store  # noqa: E402
from taskdash.store.services import register_services  # noqa: E402

HOST = "127.0.0.1"


# -- the simulated services (a child process) -------------------------------------------------


def listing(service: int, tasks: int, version: int, change: float) -> list[dict[str, str]]:
    """Service ``service``'s tasks; version 2 changes some statuses and replaces a few tasks."""
    step = max(1, round(1 / change)) if change > 0 else 0
    out = []
    for j in range(tasks):
        n = service * tasks + j
        status = "finish" if version == 2 and step and n % step == 0 else "running"
        task_id = f"s{service}-t{j}"
        if version == 2 and service % 100 == 0 and j == tasks - 1:
            task_id = f"s{service}-t{j}-v2"
        out.append({"id": task_id, "name": f"task {j} of service {service}",
                    "url": f"http://{HOST}/jobs/{n}", "description": "a benchmark task",
                    "status": status, "reserved": ""})  # fmt: skip
    return out


def serve(services: int, tasks: int, change: float) -> None:
    """Answer ``GET /svc/<i>`` from precomputed responses; ``GET /_version/2`` switches."""
    responses: dict[int, dict[bytes, bytes]] = {}
    for version in (1, 2):
        responses[version] = {}
        for i in range(services):
            body = json.dumps(listing(i, tasks, version, change)).encode()
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            responses[version][b"/svc/%d" % i] = head % len(body) + b"\r\n" + body
    state = {"version": 1}
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while b"\r\n\r\n" in self.buffer:
                head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path.startswith(b"/_version/"):
                    state["version"] = int(path.rsplit(b"/", 1)[1])
                    self.transport.write(ok)
                else:
                    self.transport.write(responses[state["version"]].get(path, missing))
                if b"connection: close" in head.lower():
                    self.transport.close()
                    return

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Protocol, HOST, 0, backlog=4096)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


class Services:
    """The child process serving the simulated services."""

    def __init__(self, args: argparse.Namespace) -> None:
        cmd = [sys.executable, __file__, "--serve", "--services", str(args.services),
               "--tasks", str(args.tasks), "--change", str(args.change)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def url(self, i: int) -> str:
        return f"http://{HOST}:{self.port}/svc/{i}"

    def version(self, version: int) -> None:
        with requests.Session() as session:
            session.trust_env = False
            session.get(f"http://{HOST}:{self.port}/_version/{version}", timeout=5)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# -- (b) the baseline ---------------------------------------------------------------------------


class Baseline:
    """requests in a thread pool, one service at a time per thread, synchronous PyMongo."""

    def __init__(self, uri: str, database: str, threads: int) -> None:
        self.client: MongoClient[dict[str, Any]] = MongoClient(uri, maxPoolSize=threads + 4)
        self.db = self.client[database]
        self.threads = threads
        self.local = threading.local()

    def session(self) -> requests.Session:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
            session.trust_env = False
        return session

    def one(self, sid: str, url: str) -> int:
        started, now = time.perf_counter(), int(time.time() * 1000)
        response = self.session().get(url, timeout=(5, 10))
        tasks = []
        for item in response.json():
            with contextlib.suppress(ValidationError):  # skipped, as the fetcher does
                tasks.append(convert(TaskMetaData, item))
        ops = [
            UpdateOne(
                {"_id": t.id, "service_id": sid},
                {"$set": {"name": t.name, "url": t.url, "description": t.description,
                          "status": t.status, "reserved": t.reserved, "last_seen_at": now,
                          "gone": False},
                 "$setOnInsert": {"first_seen_at": now}},
                upsert=True,
            )
            for t in tasks
        ]  # fmt: skip
        with contextlib.suppress(BulkWriteError):  # a duplicate key: another service owns it
            self.db.tasks.bulk_write(ops, ordered=False)
        self.db.tasks.update_many(
            {"service_id": sid, "gone": False, "_id": {"$nin": [t.id for t in tasks]}},
            {"$set": {"gone": True, "gone_at": now}},
        )
        self.db.fetch_results.update_one(
            {"_id": sid},
            {"$set": {"at": now, "http_status": response.status_code, "error": "",
                      "task_count": len(tasks),
                      "duration_ms": (time.perf_counter() - started) * 1000}},
            upsert=True,
        )  # fmt: skip
        return len(tasks)

    def sweep(self, services: list[tuple[str, str]]) -> int:
        with ThreadPoolExecutor(self.threads) as pool:
            return sum(pool.map(lambda s: self.one(*s), services))

    def close(self) -> None:
        self.client.close()


# -- the run ----------------------------------------------------------------------------------


class Clock:
    """Real time, moved on by two intervals between sweeps.

    A sweep off an interval boundary makes its services due at the first boundary a full
    interval later, so two intervals on every service is due again.
    """

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


async def snapshot(store: Store) -> dict[str, tuple[str, bool]]:
    """task id -> (status, gone), to compare the two implementations' results."""
    cursor = store.tasks.find({}, {"status": 1, "gone": 1})
    return {doc["_id"]: (doc["status"], bool(doc.get("gone"))) async for doc in cursor}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    figures: dict[str, Any] = {"services": args.services, "tasks_per_service": args.tasks}
    with tempfile.TemporaryDirectory() as tmp:
        mongo = NxServer(Path(tmp) / "mongo")
        mongo.start()
        services = Services(args)
        ours, theirs = Store(mongo.uri, "bench_taskdash"), Store(mongo.uri, "bench_baseline")
        baseline = Baseline(mongo.uri, "bench_baseline", args.threads)
        settings = FetcherSettings()
        clock = Clock()
        fetcher = Fetcher(ours, settings, node_id="bench", clock=clock)
        try:
            urls = [(f"svc-{i}", services.url(i)) for i in range(args.services)]
            for store in (ours, theirs):
                await store.ensure_indexes()
                for start in range(0, len(urls), 1000):
                    batch = [TaskService(id=s, url=u) for s, u in urls[start : start + 1000]]
                    await register_services(store, batch, datetime.now(UTC))
            for phase, version in [("cold", 1), ("warm", 2)][: len(args.phases.split(","))]:
                services.version(version)
                clock.offset += timedelta(seconds=2 * settings.fetch_interval)
                print(f"{phase}: (a) TaskDash fetcher sweep ...", flush=True)
                started = time.perf_counter()
                result = await fetcher.sweep()
                a = time.perf_counter() - started
                assert result.ok == args.services and result.failed == 0, result.summary()
                print(f"    {a:.2f} s  ({args.services / a:,.0f} services/s; "
                      f"{result.inserted} inserted, {result.changed} changed, "
                      f"{result.gone} gone)", flush=True)  # fmt: skip
                print(f"{phase}: (b) requests + {args.threads} threads baseline ...", flush=True)
                started = time.perf_counter()
                stored = await asyncio.to_thread(baseline.sweep, urls)
                b = time.perf_counter() - started
                assert stored == result.tasks
                print(f"    {b:.2f} s  ({args.services / b:,.0f} services/s)", flush=True)
                same = await snapshot(ours) == await snapshot(theirs)
                print(f"    ratio {b / a:.1f}x; stores identical: {same}", flush=True)
                assert same, "the two implementations stored different tasks"
                figures.update({
                    f"{phase}_taskdash_s": round(a, 3),
                    f"{phase}_baseline_s": round(b, 3),
                    f"{phase}_ratio": round(b / a, 2),
                    f"{phase}_taskdash_services_per_s": round(args.services / a, 1),
                    f"{phase}_baseline_services_per_s": round(args.services / b, 1),
                    f"{phase}_tasks": result.tasks,
                    f"{phase}_inserted": result.inserted,
                    f"{phase}_changed": result.changed,
                    f"{phase}_gone": result.gone,
                })  # fmt: skip
        finally:
            await fetcher.stop()
            baseline.close()
            for store in (ours, theirs):
                await store.close()
            services.stop()
            mongo.stop()
    figures.update(
        ratio=figures["cold_ratio"],
        threads=args.threads,
        concurrency=settings.concurrency,
        change=args.change,
        target_ratio=10,
    )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--tasks", type=int, default=10, help="tasks per service")
    parser.add_argument("--threads", type=int, default=32, help="baseline thread pool")
    parser.add_argument("--change", type=float, default=0.02, help="share of tasks changed (warm)")
    parser.add_argument(
        "--phases", choices=["cold", "cold,warm"], default="cold,warm", help="sweeps to time"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve:
        serve(arguments.services, arguments.tasks, arguments.change)
    else:
        print(json.dumps(asyncio.run(main(arguments))))
