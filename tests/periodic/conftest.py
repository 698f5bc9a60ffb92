"""Periodic service nodes for tests: real gRPC and HTTP servers on loopback over nx-27017."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import tornado.httpclient
import tornado.netutil

from taskdash.draining import DrainingHTTPServer
from taskdash.health import Health
from taskdash.periodic.firing import Firer
from taskdash.periodic.grpc import GrpcServer
from taskdash.periodic.http import make_app
from taskdash.periodic.leasing import Caller, Leasing, now_ms
from taskdash.periodic.proto import periodic_task_pb2 as pb
from taskdash.periodic.proto import periodic_task_pb2_grpc as pb_grpc
from taskdash.periodic.schedules import Schedules
from taskdash.periodic.schedules_http import routes
from taskdash.periodic.sharing import TAKEOVER_MS
from taskdash.settings import PeriodicSettings
from taskdash.store import Store
from taskdash.store.periodic import PeriodicStore
from taskdash.store.schedules import ScheduleStore


@dataclass
class Clock:
    """A clock the test moves by hand (epoch ms), so lease expiry needs no sleeping."""

    now: int = field(default_factory=now_ms)

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


@dataclass
class Node:
    """One periodic service node: its rules, its gRPC server and a client stub to it, its
    schedules and their firer (not running: tests fire with ``firer.fire_due()``)."""

    leasing: Leasing
    server: GrpcServer
    channel: grpc.aio.Channel
    stub: pb_grpc.PeriodicTaskStub
    schedules: Schedules
    firer: Firer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_node(store: Store, clock: Clock) -> AsyncIterator[NodeFactory]:
    """Start nodes sharing the test's database (each its own gRPC port); stopped afterwards."""
    nodes: list[Node] = []

    async def make(
        node_id: str = "node-a", takeover_ms: int = TAKEOVER_MS, **settings: Any
    ) -> Node:
        cfg = PeriodicSettings(grpc_port=0, http_port=0, **settings)
        leasing = Leasing(PeriodicStore(store), cfg, node_id=node_id, clock=clock)
        server = GrpcServer(leasing, host="127.0.0.1", port=0, max_message=cfg.max_body_size)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        schedule_store = ScheduleStore(store)
        firer = Firer(leasing, schedule_store, clock=clock, takeover_ms=takeover_ms)
        schedules = Schedules(leasing, schedule_store, clock=clock, changed=firer.poke)
        stub = pb_grpc.PeriodicTaskStub(channel)
        node = Node(leasing, server, channel, stub, schedules, firer)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.firer.stop()
        await node.channel.close()
        await node.server.stop(0)


@pytest.fixture
async def node(make_node: NodeFactory) -> Node:
    return await make_node()


@dataclass
class Registered:
    """A registered service with one created and started queue, on one node."""

    stub: pb_grpc.PeriodicTaskStub
    service: str
    secret: str
    queue: str = "q1"

    @property
    def caller(self) -> Caller:
        return Caller(self.service, self.secret)

    def auth(self, **extra: Any) -> dict[str, Any]:
        return {"service_name": self.service, "secret": self.secret, **extra}

    def q(self, **extra: Any) -> dict[str, Any]:
        return self.auth(queue_name=self.queue, **extra)

    async def create(self, count: int, task_type: str = "t") -> None:
        for i in range(count):
            await self.stub.CreateTask(
                pb.CreateTaskRequest(**self.q(task_type=task_type, task_data=f'{{"n": {i}}}'))
            )

    async def lease(self, limit: int = 0) -> list[dict[str, Any]]:
        reply = await self.stub.GetTaskList(pb.GetTaskListRequest(**self.q(limit=limit)))
        return json.loads(reply.task_list)

    async def complete(self, task_id: int, success: bool = True) -> Any:
        return await self.stub.CompleteTask(
            pb.CompleteTaskRequest(**self.q(task_id=task_id, success=success))
        )


async def register(
    stub: pb_grpc.PeriodicTaskStub, service: str = "svc", queue: str = "q1"
) -> Registered:
    """Register ``service``, create and start ``queue`` through ``stub``."""
    reply = await stub.ServiceRegistry(pb.ServiceRegistryRequest(service_name=service))
    who = Registered(stub, service, reply.secret, queue)
    await stub.CreatePeriodicTaskQueue(pb.CreatePeriodicTaskQueueRequest(**who.q()))
    await stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**who.q()))
    return who


@contextlib.asynccontextmanager
async def refused(code: grpc.StatusCode, *fragments: str) -> AsyncIterator[None]:
    """The block must fail with ``code`` and a message holding every fragment."""
    try:
        yield
    except grpc.aio.AioRpcError as err:
        assert err.code() == code, (err.code(), err.details())
        for fragment in fragments:
            assert fragment in (err.details() or ""), err.details()
    else:
        raise AssertionError(f"expected {code}")


@dataclass
class Api:
    """A real HTTP client against one node's HTTP server."""

    base: str
    node: Node
    client: tornado.httpclient.AsyncHTTPClient

    async def call(
        self, method: str, path: str, body: Any = None, token: str | None = None, raw: bytes = b""
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = raw or (json.dumps(body).encode() if body is not None else None)
        if data is None and method == "POST":
            data = b""
        resp = await self.client.fetch(
            self.base + path,
            method=method,
            body=data,
            headers=headers,
            raise_error=False,
            allow_nonstandard_methods=True,
        )
        return resp.code, json.loads(resp.body) if resp.body else None

    async def setup(self, service: str = "svc", queue: str = "q1") -> str:
        """Register, create and start a queue; returns the secret."""
        _, reg = await self.call("POST", "/v1/services", {"service_name": service})
        secret = reg["secret"]
        await self.call("POST", f"/v1/services/{service}/queues", {"queue_name": queue}, secret)
        await self.call("POST", f"/v1/services/{service}/queues/{queue}/start", token=secret)
        return secret


async def _serve(node: Node) -> tuple[DrainingHTTPServer, int]:
    settings = node.leasing.settings
    server = DrainingHTTPServer(
        make_app(node.leasing, settings, Health(), routes(node.schedules)),
        max_body_size=settings.max_body_size,
        limit_setting="[periodic] max_body_size",
    )
    [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets([sock])
    return server, sock.getsockname()[1]


@pytest.fixture
async def make_api(make_node: NodeFactory) -> AsyncIterator[Any]:
    servers = []

    async def make(**settings: Any) -> Api:
        node = await make_node(**settings)
        server, port = await _serve(node)
        servers.append(server)
        client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
        return Api(f"http://127.0.0.1:{port}", node, client)

    yield make
    for server in servers:
        server.stop()
        await server.close_all_connections()
