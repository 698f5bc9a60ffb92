#!/usr/bin/env python3
"""Periodic task service benchmark: TaskDash's queue over gRPC vs RQ 2.x on Redis.

Everything runs on loopback, started and stopped by this script:

(a) TaskDash: ``taskdash periodic`` as a child process (with its own embedded nx-27017). The
    script creates ``--tasks`` tasks through gRPC (``--create-concurrency`` calls in flight),
    then ``--workers`` concurrent workers (one gRPC channel each) loop GetTaskList
    (``--limit``) and CompleteTask every task they got, until all are done.
(b) baseline: Debian's ``redis-server`` on a free port and RQ 2.x: the same number of no-op
    jobs enqueued one by one, then ``--workers`` ``rq worker --burst`` processes (RQ's default
    worker class, which forks per job; ``--rq-worker-class`` to change) until all have run.

Both figures are tasks per second end to end (create/enqueue + process); ``ratio`` is (a)/(b)
(target >= 1). Then leasing at scale: ``--queued`` tasks (default 100,000) are put straight
into one queue's collection and GetTaskList(limit) is timed while they stay queued, against the
same on a queue of ``--small`` tasks: the ratio shows whether leasing depends on queue length.

Needs ``redis-server`` (``apt-get install -y redis-server``) and ``pip install -e '.[bench]'``.
The last line printed is one JSON object with every figure and ratio.

``--schedules N`` runs another benchmark instead: two ``taskdash periodic`` nodes on one
nx-27017 serve one queue; N interval schedules (``--interval``, 10 s) are created through the
HTTP API, and once each has fired, the tasks whose run was due in the next ``--seconds`` (60)
are counted: runs fired, duplicates (two tasks for one run; must be 0), runs missed, and the
lateness of each fire (the task's creation time minus its run's due time), p50/p99/max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from pymongo import MongoClient
from tornado.httpclient import AsyncHTTPClient

from taskdash.periodic.proto import periodic_task_pb2 as pb
from taskdash.periodic.proto import periodic_task_pb2_grpc as pb_grpc

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port} within {timeout} s")


# -- (a) TaskDash's periodic service ----------------------------------------------------------


class Periodic:
    """``taskdash periodic`` on free ports with its own embedded nx-27017 under ``tmp``, or
    on the store at ``mongo_uri`` (another node's)."""

    def __init__(self, tmp: Path, mongo_uri: str = "", name: str = "periodic") -> None:
        self.grpc_port, self.http_port, self.mongo_port = free_port(), free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKDASH_")}
        env.update(
            TASKDASH_DAEMON__DATA_DIR=str(tmp / "var"),
            TASKDASH_MONGODB__EMBEDDED_PORT=str(self.mongo_port),
            TASKDASH_PERIODIC__GRPC_PORT=str(self.grpc_port),
            TASKDASH_PERIODIC__HTTP_PORT=str(self.http_port),
            TASKDASH_PERIODIC__NODE_ID=name,
            TASKDASH_LOG__FORMAT="json",
            TASKDASH_LOG__LEVEL="warning",
        )
        if mongo_uri:
            env["TASKDASH_MONGODB__URI"] = mongo_uri
        self.log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(BIN / "taskdash"), "periodic"], env=env, stdout=self.log, stderr=self.log
        )
        wait_port(self.grpc_port, self.proc, "taskdash periodic")
        wait_port(self.http_port, self.proc, "taskdash periodic")
        self.target = f"{HOST}:{self.grpc_port}"
        self.http = f"http://{HOST}:{self.http_port}"
        self.mongo_uri = mongo_uri or f"mongodb://{HOST}:{self.mongo_port}/?directConnection=true"

    def cpu_s(self, children: bool = False) -> float:
        """CPU seconds (user + system) this node (or its embedded nx-27017) has used so far
        (Linux /proc)."""
        pid = self.proc.pid
        if children:
            pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def readiness(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.http}/readyz", timeout=10) as resp:
            return dict(json.loads(resp.read())["components"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


class Client:
    """One registered service with a started queue, over one channel per caller."""

    def __init__(self, target: str, service: str, secret: str, queue: str) -> None:
        self.target = target
        self.auth = {"service_name": service, "secret": secret, "queue_name": queue}

    @classmethod
    async def setup(cls, target: str, service: str, queue: str) -> Client:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.PeriodicTaskStub(channel)
            reply = await stub.ServiceRegistry(pb.ServiceRegistryRequest(service_name=service))
            auth = {"service_name": service, "secret": reply.secret, "queue_name": queue}
            await stub.CreatePeriodicTaskQueue(pb.CreatePeriodicTaskQueueRequest(**auth))
            await stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**auth))
        return cls(target, service, reply.secret, queue)

    async def create(self, count: int, concurrency: int) -> None:
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = pb_grpc.PeriodicTaskStub(channel)

            async def creator(share: range) -> None:
                for i in share:
                    data = json.dumps({"n": i})
                    await stub.CreateTask(pb.CreateTaskRequest(**self.auth, task_data=data))

            await asyncio.gather(
                *(creator(range(k, count, concurrency)) for k in range(concurrency))
            )

    async def work(self, limit: int, done: list[int], total: int) -> None:
        """Lease and complete until ``total`` tasks are done (by every worker together)."""
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = pb_grpc.PeriodicTaskStub(channel)
            while done[0] < total:
                reply = await stub.GetTaskList(pb.GetTaskListRequest(**self.auth, limit=limit))
                tasks = json.loads(reply.task_list)
                if not tasks:
                    await asyncio.sleep(0.01)
                    continue
                for task in tasks:
                    request = pb.CompleteTaskRequest(
                        **self.auth, task_id=task["task_id"], success=True
                    )
                    await stub.CompleteTask(request)
                    done[0] += 1

    async def lease_ms(self, limit: int, rounds: int) -> list[float]:
        """Milliseconds per GetTaskList(limit), tasks left leased (the queue stays long)."""
        times = []
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = pb_grpc.PeriodicTaskStub(channel)
            for _ in range(rounds):
                started = time.perf_counter()
                reply = await stub.GetTaskList(pb.GetTaskListRequest(**self.auth, limit=limit))
                times.append((time.perf_counter() - started) * 1000)
                assert len(json.loads(reply.task_list)) == limit, "queue ran dry"
        return times


async def bench_ours(target: str, args: argparse.Namespace) -> dict[str, float]:
    client = await Client.setup(target, "bench", "throughput")
    started = time.perf_counter()
    await client.create(args.tasks, args.create_concurrency)
    created = time.perf_counter()
    done = [0]
    await asyncio.gather(*(client.work(args.limit, done, args.tasks) for _ in range(args.workers)))
    finished = time.perf_counter()
    return {
        "create_s": created - started,
        "process_s": finished - created,
        "total_s": finished - started,
        "tasks_per_s": args.tasks / (finished - started),
    }


def fill(mongo_uri: str, service: str, queue: str, count: int) -> None:
    """Put ``count`` pending tasks straight into the queue (as CreateTask would store them)."""
    with MongoClient(mongo_uri) as mongo:
        db = mongo["taskdash"]
        last = db.periodic_counters.find_one_and_update(
            {"_id": "periodic_task_id"}, {"$inc": {"value": count}}, upsert=True, new=True
        )["value"]
        now = int(time.time() * 1000)
        # tasks are found by their queue's incarnation (see taskdash/store/periodic.py)
        owner = db.periodic_queues.find_one({"service": service, "queue": queue})
        docs = [
            {"_id": last - count + 1 + i, "seq": last - count + 1 + i,
             "service": service, "queue": queue,
             "service_inc": owner["service_inc"], "queue_inc": owner["incarnation"],
             "task_type": "", "task_data": "{}", "size": 130, "state": "pending",
             "attempts": 0, "created_at": now, "updated_at": now, "due": now}
            for i in range(count)
        ]  # fmt: skip
        for k in range(0, count, 5000):
            db.periodic_tasks.insert_many(docs[k : k + 5000], ordered=False)


async def bench_scale(periodic: Periodic, args: argparse.Namespace) -> dict[str, float]:
    figures: dict[str, float] = {}
    for name, count in (("small", args.small), ("queued", args.queued)):
        client = await Client.setup(periodic.target, f"scale-{name}", "q")
        fill(periodic.mongo_uri, f"scale-{name}", "q", count)
        times = await client.lease_ms(args.limit, args.lease_rounds)
        figures[f"lease_{name}_tasks"] = count
        figures[f"lease_ms_median_{name}"] = statistics.median(times)
        figures[f"lease_ms_max_{name}"] = max(times)
    figures["lease_ratio_queued_vs_small"] = (
        figures["lease_ms_median_queued"] / figures["lease_ms_median_small"]
    )
    return figures


# -- schedules: --schedules N over two nodes --------------------------------------------------


async def create_schedules(node: Periodic, auth: dict[str, str], args: argparse.Namespace) -> None:
    """``--schedules`` interval schedules through node A's HTTP API, 32 requests in flight."""
    client = AsyncHTTPClient(force_instance=True, max_clients=32)
    url = f"{node.http}/v1/services/{auth['service_name']}/queues/{auth['queue_name']}/schedules"
    headers = {"Authorization": f"Bearer {auth['secret']}"}

    async def create(share: range) -> None:
        for i in share:
            body = {"schedule_id": f"b{i:06d}", "interval": args.interval, "task_data": {"n": i}}
            await client.fetch(url, method="POST", body=json.dumps(body), headers=headers)

    await asyncio.gather(*(create(range(k, args.schedules, 32)) for k in range(32)))
    client.close()


def expected_runs(schedules: list[dict[str, Any]], start: int, end: int) -> int:
    """Runs of these interval schedules due in [start, end) (ms)."""
    total = 0
    for doc in schedules:
        anchor, every = doc["anchor_ms"], doc["interval_ms"]
        first = max(1, -(-(start - anchor) // every))
        last = -(-(end - anchor) // every) - 1
        total += max(0, last - first + 1)
    return total


def percentile(values: list[int], share: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(share * len(ordered)))]) if ordered else 0.0


async def bench_schedules(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``--schedules`` schedules every ``--interval`` s, fired by two nodes for ``--seconds``."""
    a = Periodic(tmp, name="node-a")
    b = Periodic(tmp, mongo_uri=a.mongo_uri, name="node-b")
    try:
        client = await Client.setup(a.target, "bench", "scheduled")
        async with grpc.aio.insecure_channel(b.target) as channel:
            stub = pb_grpc.PeriodicTaskStub(channel)
            await stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**client.auth))
        started = time.time()
        await create_schedules(a, client.auth, args)
        created = time.time()
        print(f"created {args.schedules} schedules in {created - started:.1f} s", flush=True)
        # every schedule has fired once before the window opens: steady state
        window_start = int((created + args.interval) * 1000)
        window_end = window_start + int(args.seconds * 1000)
        await asyncio.sleep(max(0.0, window_start / 1000 - time.time()))
        cpu_start = [a.cpu_s(), b.cpu_s(), a.cpu_s(children=True)]
        load_start = os.getloadavg()[0]
        await asyncio.sleep(max(0.0, window_end / 1000 - time.time()))
        cpu = [a.cpu_s(), b.cpu_s(), a.cpu_s(children=True)]
        cpu = [end - start for end, start in zip(cpu, cpu_start, strict=True)]
        load = (load_start + os.getloadavg()[0]) / 2
        await asyncio.sleep(args.settle)  # fires of the window's last runs are stored
        firers = [node.readiness()["schedules"] for node in (a, b)]
    finally:
        b.stop()
        with MongoClient(a.mongo_uri) as mongo:
            db = mongo["taskdash"]
            schedules = list(db.periodic_schedules.find({}, {"anchor_ms": 1, "interval_ms": 1}))
            query = {"scheduled_for": {"$gte": window_start, "$lt": window_end}}
            tasks = list(db.periodic_tasks.find(query, {"schedule_inc": 1, "scheduled_for": 1,
                                                         "created_at": 1, "_id": 0}))  # fmt: skip
        a.stop()
    runs = Counter((t["schedule_inc"], t["scheduled_for"]) for t in tasks)
    lateness = [t["created_at"] - t["scheduled_for"] for t in tasks]
    expected = expected_runs(schedules, window_start, window_end)
    return {
        "schedules": args.schedules,
        "interval_s": args.interval,
        "window_s": args.seconds,
        "create_s": created - started,
        "expected_runs": expected,
        "fired_runs": len(runs),
        "tasks": len(tasks),
        "duplicates": sum(n - 1 for n in runs.values()),
        "missed": expected - len(runs),
        "fires_per_s": len(runs) / args.seconds,
        "lateness_ms_p50": percentile(lateness, 0.50),
        "lateness_ms_p99": percentile(lateness, 0.99),
        "lateness_ms_max": float(max(lateness, default=0)),
        "cpu_s_node_a": cpu[0],
        "cpu_s_node_b": cpu[1],
        "cpu_s_nx27017": cpu[2],
        "load_average": load,
        "fired_node_a": firers[0]["fired"],
        "fired_node_b": firers[1]["fired"],
        "lost_races": firers[0]["lost"] + firers[1]["lost"],
    }


# -- (b) RQ on Redis --------------------------------------------------------------------------


def bench_rq(tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    from redis import Redis
    from rq import Queue

    server = shutil.which("redis-server")
    if not server:
        raise SystemExit("redis-server not found: apt-get install -y redis-server")
    port = free_port()
    redis_proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, redis_proc, "redis-server")
        (tmp / "rq_noop.py").write_text("def noop():\n    return None\n")
        url = f"redis://{HOST}:{port}/0"
        queue = Queue("bench", connection=Redis.from_url(url))
        started = time.perf_counter()
        for _ in range(args.tasks):
            queue.enqueue("rq_noop.noop")
        enqueued = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(tmp)}
        command = [str(BIN / "rq"), "worker", "--burst", "--quiet", "--url", url]
        if args.rq_worker_class:
            command += ["--worker-class", args.rq_worker_class]
        workers = [
            subprocess.Popen([*command, "bench"], env=env, cwd=tmp, stdout=subprocess.DEVNULL)
            for _ in range(args.workers)
        ]
        for worker in workers:
            worker.wait()
        finished = time.perf_counter()
        ran = queue.finished_job_registry.count
        failed = queue.failed_job_registry.count
        if ran != args.tasks or failed:
            raise SystemExit(f"RQ ran {ran} of {args.tasks} jobs ({failed} failed)")
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
    return {
        "enqueue_s": enqueued - started,
        "process_s": finished - enqueued,
        "total_s": finished - started,
        "tasks_per_s": args.tasks / (finished - started),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--create-concurrency", type=int, default=16)
    parser.add_argument("--queued", type=int, default=100000)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--lease-rounds", type=int, default=15)
    parser.add_argument("--rq-worker-class", default="", help="e.g. rq.worker.SimpleWorker")
    parser.add_argument("--skip-rq", action="store_true")
    parser.add_argument(
        "--schedules", type=int, default=0, help="instead: N schedules fired by two nodes"
    )
    parser.add_argument("--interval", type=float, default=10.0, help="each schedule's (s)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window (s)")
    parser.add_argument("--settle", type=float, default=5.0, help="wait after the window (s)")
    args = parser.parse_args()
    if args.schedules:
        with tempfile.TemporaryDirectory(prefix="bench_schedules_") as name:
            found = asyncio.run(bench_schedules(Path(name), args))
        print(
            f"{found['schedules']} schedules every {args.interval:g} s, two nodes, "
            f"{args.seconds:g} s: fired {found['fired_runs']} of {found['expected_runs']} runs, "
            f"duplicates {found['duplicates']}, missed {found['missed']}, lateness "
            f"p50 {found['lateness_ms_p50']:.0f} ms p99 {found['lateness_ms_p99']:.0f} ms "
            f"(target p99 <= 1000)"
        )
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in found.items()}))
        return
    figures: dict[str, Any] = {"tasks": args.tasks, "workers": args.workers, "limit": args.limit}
    with tempfile.TemporaryDirectory(prefix="bench_periodic_") as name:
        tmp = Path(name)
        periodic = Periodic(tmp)
        try:
            ours = asyncio.run(bench_ours(periodic.target, args))
            print(
                f"TaskDash periodic (gRPC): {ours['tasks_per_s']:.0f} tasks/s "
                f"(create {ours['create_s']:.2f} s, lease+complete {ours['process_s']:.2f} s)"
            )
            scale = asyncio.run(bench_scale(periodic, args))
            print(
                f"GetTaskList(limit={args.limit}): median {scale['lease_ms_median_queued']:.1f} ms "
                f"with {args.queued} queued, {scale['lease_ms_median_small']:.1f} ms with "
                f"{args.small} ({scale['lease_ratio_queued_vs_small']:.2f}x)"
            )
        finally:
            periodic.stop()
        figures.update({f"taskdash_{k}": v for k, v in ours.items()})
        figures.update(scale)
        if not args.skip_rq:
            base = bench_rq(tmp, args)
            print(
                f"RQ + Redis ({args.workers} workers): {base['tasks_per_s']:.0f} tasks/s "
                f"(enqueue {base['enqueue_s']:.2f} s, process {base['process_s']:.2f} s)"
            )
            figures.update({f"rq_{k}": v for k, v in base.items()})
            figures["ratio"] = ours["tasks_per_s"] / base["tasks_per_s"]
            print(f"ratio TaskDash / RQ: {figures['ratio']:.2f} (target >= 1)")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
