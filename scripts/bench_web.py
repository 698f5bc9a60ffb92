#!/usr/bin/env python3
"""Web API benchmark: task pages at 100,000 tasks over 1,000 services, against a bare ceiling.

Everything runs on loopback, against an nx-27017 child holding 100,000 tasks over 1,000
services, stored as the fetcher stores them (bulk writes of whole listings, each service
listed at its own moment), then 30 % of them assigned to 50 users and 5 % marked gone, in bulk.
Each server runs alone in a child process (so the load generator does not share its loop):

  * TaskDash: the real application (``taskdash.web.app.make_app``: auth, store gate, API),
    as configured by default;
  * TaskDash with ``[web] share_reads = false`` ("unshared"): every request reads on its own,
    none joins an identical read on its way (store/flights.py) — what sharing is worth;
  * ceiling: a bare Tornado handler answering every request with one constant JSON page
    (a real first page of tasks, captured once): what HTTP and Tornado cost on this machine.

``--clients`` keep-alive connections (a small asyncio HTTP/1.1 client), each with the same
bearer token, request in a loop for ``--seconds``: filtered and sorted first pages, the next
page of one (a keyset cursor), and a search (``q``: id or name prefix). The three servers
are measured in turn, ``--rounds`` times. Latency is per request, from write to last byte.

Beside the latencies, what each request costs: the store commands the TaskDash child sent
per request (its driver's own count, read from a bench-only ``/bench/commands`` route), the
share of page reads a request found already on its way and joined (store/flights.py), and
the CPU milliseconds per request of nx-27017, TaskDash and the load generator. On a machine
shared with other work those ratios hold where requests per second and p95 do not
(docs/web-performance.md). Both rounds repeat the same requests, so the second finds the
filters' sizes remembered (the first round's figures are the cold ones). The last line
printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import socket
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
from pymongo import monitoring

from taskdash import logs
from taskdash.health import Health
from taskdash.models import TaskMetaData, TaskService
from taskdash.settings import LogSettings, load
from taskdash.store import Store, tokens, users
from taskdash.store.embedded import EmbeddedMongo
from taskdash.store.monitor import StoreMonitor
from taskdash.store.services import register_services
from taskdash.store.tasks import CHUNK, ServiceListing, apply_listings
from taskdash.web.app import make_app
from taskdash.web.base import StoreGate
from taskdash.web.context import WebContext

DATABASE = "bench_web"
WORDS = ("alpha", "backup", "crawl", "daily", "export", "import", "index", "mail", "report",
         "sync", "billing", "cleanup")  # fmt: skip
STATUSES = ("running",) * 4 + ("finish",) * 3 + ("new",) * 2 + ("failed",)
TARGET_P95_MS = 100.0
#: the applications measured after the ceiling in each round (child kinds, names in the output)
APPS = ("taskdash", "unshared")
#: the listing whose later pages the ``next_page`` requests ask for (with a real cursor)
PAGED = "/api/v1/tasks?status=running&sort=name&order=desc"


# -- the data ---------------------------------------------------------------------------------


def listing(service: int, per_service: int, rng: random.Random) -> list[TaskMetaData]:
    """One service's tasks, as its URL would list them."""
    return [
        TaskMetaData(
            id=f"task-{service * per_service + j:07d}",
            name=f"{rng.choice(WORDS)} {rng.choice(WORDS)} {j}",
            url=f"http://svc-{service:04d}.example/tasks/{j}",
            description=f"{rng.choice(WORDS)} job number {j} of service {service}",
            status=rng.choice(STATUSES),
        )
        for j in range(per_service)
    ]


async def fill(store: Store, services: int, per_service: int) -> dict[str, float]:
    """Services and tasks stored in bulk; returns how long each part took."""
    rng = random.Random(7)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    now = datetime.now(UTC)
    await register_services(
        store, [TaskService(id=f"svc-{s:04d}", name=f"service {s}") for s in range(services)], now
    )
    batch = max(1, CHUNK // per_service)  # one bulk write of about CHUNK tasks at a time
    base_ms = int(now.timestamp() * 1000)
    for first in range(0, services, batch):
        listings = [
            ServiceListing(f"svc-{s:04d}", listing(s, per_service, rng), {})
            for s in range(first, min(services, first + batch))
        ]
        await apply_listings(store, listings, base_ms + first * 10)
    timings["insert_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    total = services * per_service
    ids = [f"task-{i:07d}" for i in range(total)]
    rng.shuffle(ids)
    assigned, gone = ids[: total * 30 // 100], ids[total * 30 // 100 : total * 35 // 100]
    for u in range(50):
        mine = assigned[u::50]
        for start in range(0, len(mine), CHUNK):
            await store.tasks.update_many(
                {"_id": {"$in": mine[start : start + CHUNK]}},
                {
                    "$set": {
                        "assignee": f"u{u}",
                        "assignment": {"group_id": "g", "reserved": "", "source": "tcp",
                                       "by": "bench", "at": base_ms, "version": 1},
                    }
                },
            )  # fmt: skip
    for start in range(0, len(gone), CHUNK):
        await store.tasks.update_many(
            {"_id": {"$in": gone[start : start + CHUNK]}},
            {"$set": {"gone": True, "gone_at": base_ms}},
        )
    timings["assign_and_gone_s"] = round(time.perf_counter() - started, 1)
    return timings


async def new_token(store: Store) -> str:
    await users.add_user(store, "bench", "bench-password-0123456789", role="user")
    secret, _ = await tokens.create(store, "bench", "bench", now=datetime.now(UTC))
    return secret


# -- the servers (child processes) ------------------------------------------------------------


class Commands(monitoring.CommandListener):
    """Every command TaskDash's store client sends, by ``name collection`` (one per round trip)."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("ping", "hello", "ismaster", "isMaster"):
            return  # the store monitor's probes, not the requests'
        name = f"{event.command_name} {event.command.get(event.command_name)}"
        self.sent[name] = self.sent.get(name, 0) + 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


class SentSoFar(tornado.web.RequestHandler):
    """``/bench/commands`` (the bench's child only): the commands sent so far, and the reads
    requests shared (store/flights.py: ``flown`` sent, ``joined`` answered by one on its way)."""

    def initialize(self, commands: Commands, store: Store) -> None:
        self.commands, self.store = commands, store

    def get(self) -> None:
        flights = {"flown": self.store.flights.flown, "joined": self.store.flights.joined}
        self.finish({"commands": self.commands.sent, "flights": flights})


class Constant(tornado.web.RequestHandler):
    """The ceiling: the same JSON page for every request."""

    def initialize(self, page: bytes) -> None:
        self.page = page

    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(self.page)


async def _serve(kind: str, uri: str, page: bytes, ports: Any) -> None:
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    if kind == "bare":
        app = tornado.web.Application([(r"/.*", Constant, {"page": page})])
    else:
        commands = Commands()
        monitoring.register(commands)  # for the client made next
        settings = load(env={"TASKDASH_WEB__SHARE_READS": "false"} if kind == "unshared" else {})
        store = Store(uri, DATABASE, share_reads=settings.web.share_reads)
        monitor = StoreMonitor(store, interval=5, retry_initial=0.5, retry_max=2)
        await monitor.probe()
        gate = StoreGate(request_timeout=10)
        gate.attach(store, monitor)
        app = make_app(WebContext(settings=settings, health=Health(), gate=gate))
        bench = {"commands": commands, "store": store}
        app.add_handlers(r".*", [("/bench/commands", SentSoFar, bench)])
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    ports.put(sockets[0].getsockname()[1])
    await asyncio.Event().wait()


def serve(kind: str, uri: str, page: bytes, ports: Any) -> None:
    """Child process body: run one server until terminated (warnings only in the log)."""
    logs.configure(LogSettings(level="warning"), "console")
    asyncio.run(_serve(kind, uri, page, ports))


class Child:
    """A server in a spawned process; ``port`` once it listens."""

    def __init__(self, kind: str, uri: str = "", page: bytes = b"") -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ports = ctx.Queue()
        self.proc = ctx.Process(target=serve, args=(kind, uri, page, self.ports), daemon=True)

    def __enter__(self) -> int:
        self.proc.start()
        return int(self.ports.get(timeout=120))

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.join(10)


# -- the load ---------------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection: GET a path, read status and body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def get(self, path: str, token: str) -> tuple[int, bytes]:
        auth = f"Authorization: Bearer {token}"
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length:")
        )
        return int(lines[0].split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def queries(rng: random.Random, services: int) -> list[tuple[str, str]]:
    """(kind, path) of the requests, in the order the clients take them."""
    out: list[tuple[str, str]] = []
    for _ in range(400):
        s, u = rng.randrange(services), rng.randrange(50)
        word = rng.choice(WORDS)
        out += [
            ("recent", "/api/v1/tasks?sort=last_seen&order=desc"),
            ("status_by_name", f"/api/v1/tasks?status={rng.choice(STATUSES)}&sort=name"),
            ("service_recent", f"/api/v1/tasks?service_id=svc-{s:04d}&sort=last_seen&order=desc"),
            ("unassigned_by_id", "/api/v1/tasks?unassigned=true&sort=id"),
            ("assignee_by_status", f"/api/v1/tasks?assignee=u{u}&sort=status"),
            ("search", f"/api/v1/tasks?q={word[: rng.randint(3, 6)]}&sort=name"),
            ("next_page", PAGED),
        ]
    return out


async def client_loop(
    port: int,
    token: str,
    work: list[tuple[str, str]],
    until: float,
    latencies: dict[str, list[float]],
    cursors: list[str],
) -> int:
    conn = await Connection.open(port)
    done = 0
    clock = time.perf_counter
    try:
        while clock() < until:
            kind, path = work[done % len(work)]
            if kind == "next_page":  # a cursor a former page of that listing gave
                path += f"&after={cursors[done % len(cursors)]}"
            started = clock()
            status, body = await conn.get(path, token)
            latencies.setdefault(kind, []).append(clock() - started)
            if status != 200:
                raise SystemExit(f"{path}: {status} {body[:300]!r}")
            done += 1
    finally:
        conn.close()
    return done


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(samples: list[float], seconds: float) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100)
    return {
        "requests": len(samples),
        "per_second": round(len(samples) / seconds, 1),
        "p50_ms": round(cuts[49] * 1000, 2),
        "p95_ms": round(cuts[94] * 1000, 2),
    }


async def sent_so_far(port: int) -> dict[str, int]:
    """The store commands the TaskDash child has sent so far, by ``name collection``, and
    its shared reads (``flights flown`` / ``flights joined``)."""
    conn = await Connection.open(port)
    try:
        status, body = await conn.get("/bench/commands", "")
    finally:
        conn.close()
    if status != 200:
        raise SystemExit(f"/bench/commands: {status} {body[:300]!r}")
    sent = json.loads(body)
    flights = {f"flights {k}": int(v) for k, v in sent["flights"].items()}
    return {**{k: int(v) for k, v in sent["commands"].items()}, **flights}


async def measure(
    port: int,
    token: str,
    work: list[tuple[str, str]],
    cursors: list[str],
    args: argparse.Namespace,
    pids: dict[str, int],
    *,
    counted: bool = False,
) -> dict[str, Any]:
    """One run of every client for ``--seconds``; with the CPU each process in ``pids`` used
    (per second of the run: 1.0 is one core busy all the time, and per request), and when
    ``counted`` the store commands sent per request (the TaskDash child's own count).

    The per-request figures hold under a noisy machine where the latencies do not: they are
    what each request costs, not how long it waited for a core."""
    latencies: dict[str, list[float]] = {}
    before = await sent_so_far(port) if counted else {}
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    until = time.perf_counter() + args.seconds
    started = time.perf_counter()
    await asyncio.gather(
        *(
            client_loop(port, token, work[i :: args.clients] or work, until, latencies, cursors)
            for i in range(args.clients)
        )
    )
    elapsed = time.perf_counter() - started
    used = {name: cpu_seconds(pid) - cpu[name] for name, pid in pids.items()}
    pooled = [x for samples in latencies.values() for x in samples]
    result = summary(pooled, elapsed)
    requests = len(pooled)
    result["cpu_cores"] = {name: round(t / elapsed, 2) for name, t in used.items()}
    result["cpu_ms_per_request"] = {name: round(t * 1000 / requests, 2) for name, t in used.items()}
    if counted:
        after = await sent_so_far(port)
        delta = {k: n - before.get(k, 0) for k, n in after.items()}
        flown, joined = delta.pop("flights flown"), delta.pop("flights joined")
        result["shared_reads"] = round(joined / max(1, flown + joined), 3)
        by_command = {k: round(n / requests, 3) for k, n in sorted(delta.items()) if n}
        result["store_commands_per_request"] = round(sum(by_command.values()), 3)
        result["store_commands_by_kind"] = by_command
    result["by_kind"] = {kind: summary(s, elapsed) for kind, s in sorted(latencies.items())}
    return result


async def cursors_of(port: int, token: str, count: int) -> list[str]:
    """Cursors of the listing the ``next_page`` requests follow (real ones, pages 1..count)."""
    conn = await Connection.open(port)
    found: list[str] = []
    try:
        while len(found) < count:
            status, body = await conn.get(PAGED + (f"&after={found[-1]}" if found else ""), token)
            if status != 200:
                raise SystemExit(f"{PAGED}: {status} {body[:300]!r}")
            cursor = json.loads(body)["next"]
            if cursor is None:
                break
            found.append(cursor)
    finally:
        conn.close()
    return found


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(11)
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        mongo = EmbeddedMongo(host="127.0.0.1", port=args.mongo_port, data_dir=Path(tmp))
        await mongo.start()
        try:
            store = Store(mongo.uri, DATABASE, server_selection_timeout=30)
            await store.ensure_indexes()
            await store.ensure_account_indexes()  # as the daemon does (TTLs on tokens included)
            filled = await fill(store, args.services, args.tasks // args.services)
            token = await new_token(store)
            await store.close()
            print(f"stored {args.tasks} tasks over {args.services} services: {filled}", flush=True)
            work = queries(rng, args.services)
            with contextlib.ExitStack() as running:
                children = {kind: Child(kind, mongo.uri) for kind in APPS}
                ports = {kind: running.enter_context(child) for kind, child in children.items()}
                cursors = await cursors_of(ports["taskdash"], token, 20)
                conn = await Connection.open(ports["taskdash"])
                page = (await conn.get(work[0][1], token))[1]
                conn.close()
                children["bare"] = Child("bare", page=page)
                ports["bare"] = running.enter_context(children["bare"])
                assert mongo.proc is not None
                nx, rounds = mongo.proc.pid, []
                for number in range(1, args.rounds + 1):
                    measured = {}
                    for kind in ("bare", *APPS):
                        name, pid = "ceiling" if kind == "bare" else kind, children[kind].pid
                        app = {"nx_27017": nx, "taskdash": pid}
                        pids = {"bare": pid} if kind == "bare" else app
                        pids["bench"] = os.getpid()
                        got = await measure(
                            ports[kind], token, work, cursors, args, pids, counted=kind != "bare"
                        )
                        flat = {k: v for k, v in got.items() if k not in ("by_kind", "rounds")}
                        print(f"round {number}: {name} {flat}", flush=True)
                        measured[name] = got
                    rounds.append(measured)
        finally:
            await mongo.stop()
    best = min(rounds, key=lambda r: r["taskdash"]["p95_ms"])  # the least disturbed round
    app, ceiling, unshared = best["taskdash"], best["ceiling"], best["unshared"]
    for kind, got in app["by_kind"].items():
        print(f"  {kind:20s} p50 {got['p50_ms']:7.2f} ms  p95 {got['p95_ms']:7.2f} ms")
    print(
        f"TaskDash {app['per_second']}/s p50 {app['p50_ms']} ms p95 {app['p95_ms']} ms "
        f"(CPU cores busy: {app['cpu_cores']}); "
        f"ceiling {ceiling['per_second']}/s p95 {ceiling['p95_ms']} ms "
        f"(target p95 <= {TARGET_P95_MS} ms)"
    )
    print(
        f"per request: {app['store_commands_per_request']} store commands "
        f"({app['shared_reads']:.1%} of page reads shared) "
        f"{app['store_commands_by_kind']}; CPU ms {app['cpu_ms_per_request']}"
    )
    print(
        f"same round, share_reads = false: {unshared['per_second']}/s p50 {unshared['p50_ms']} ms "
        f"p95 {unshared['p95_ms']} ms, {unshared['store_commands_per_request']} store commands "
        f"per request; CPU ms {unshared['cpu_ms_per_request']}"
    )
    return {
        "tasks": args.tasks,
        "services": args.services,
        "clients": args.clients,
        "seconds": args.seconds,
        "page_size": 50,
        **filled,
        "per_second": app["per_second"],
        "p50_ms": app["p50_ms"],
        "p95_ms": app["p95_ms"],
        "ceiling_per_second": ceiling["per_second"],
        "ceiling_p50_ms": ceiling["p50_ms"],
        "ceiling_p95_ms": ceiling["p95_ms"],
        "over_ceiling": round(app["per_second"] / ceiling["per_second"], 3),
        "cpu_cores": app["cpu_cores"],
        "store_commands_per_request": app["store_commands_per_request"],
        "shared_reads": app["shared_reads"],
        "store_commands_by_kind": app["store_commands_by_kind"],
        "cpu_ms_per_request": app["cpu_ms_per_request"],
        "nx_27017_cpu_ms_per_request": app["cpu_ms_per_request"]["nx_27017"],
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "target_p95_ms": TARGET_P95_MS,
        "by_kind": app["by_kind"],
        "unshared": {k: v for k, v in unshared.items() if k != "shared_reads"},
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2, help="ceiling/TaskDash measured in turn")
    parser.add_argument("--mongo-port", type=int, default=0, help="0 = a free port")
    args = parser.parse_args()
    if not args.mongo_port:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            args.mongo_port = sock.getsockname()[1]
    logs.configure(LogSettings(level="warning"), "console")
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
