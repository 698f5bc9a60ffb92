"""MongoDB unreachable: gRPC answers UNAVAILABLE and HTTP 503, with a sentence, nothing crashes."""

from __future__ import annotations

import json

import grpc
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
from conftest import refused
from support import async_wait_for, free_port

from taskdash.health import Health
from taskdash.periodic.firing import Firer
from taskdash.periodic.grpc import GrpcServer
from taskdash.periodic.http import make_app
from taskdash.periodic.leasing import Leasing, now_ms
from taskdash.periodic.proto import periodic_task_pb2 as pb
from taskdash.periodic.proto import periodic_task_pb2_grpc as pb_grpc
from taskdash.settings import PeriodicSettings
from taskdash.store import Store
from taskdash.store.periodic import PeriodicStore
from taskdash.store.schedules import ScheduleStore


async def test_store_down_is_unavailable() -> None:
    nowhere = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    store = Store(nowhere, "down", server_selection_timeout=0.3)
    cfg = PeriodicSettings()
    leasing = Leasing(PeriodicStore(store), cfg, node_id="n")
    server = GrpcServer(leasing, host="127.0.0.1", port=0, max_message=cfg.max_body_size)
    await server.start()
    http = tornado.httpserver.HTTPServer(make_app(leasing, cfg, Health()))
    [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1")
    http.add_sockets([sock])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.PeriodicTaskStub(channel)
            async with refused(grpc.StatusCode.UNAVAILABLE, "unreachable"):
                await stub.ServiceRegistry(pb.ServiceRegistryRequest(service_name="s"))
        resp = await tornado.httpclient.AsyncHTTPClient(force_instance=True).fetch(
            f"http://127.0.0.1:{sock.getsockname()[1]}/v1/services",
            method="POST",
            body=json.dumps({"service_name": "s"}),
            raise_error=False,
        )
        assert resp.code == 503
        assert json.loads(resp.body)["error"] == "unavailable"
    finally:
        http.stop()
        await server.stop(0)
        await store.close()


async def test_the_firer_survives_a_store_outage() -> None:
    """The firer's loop reports the store's absence in /readyz, retries, and stops cleanly."""
    nowhere = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    store = Store(nowhere, "down", server_selection_timeout=0.3)
    leasing = Leasing(PeriodicStore(store), PeriodicSettings(), node_id="n")
    leasing.started.add(("s", "q", "some-queue"))
    firer = Firer(leasing, ScheduleStore(store), clock=now_ms)
    await firer.start()
    try:
        await async_wait_for(lambda: firer.last_error, timeout=30)
        ready, details = firer.check()
        assert ready and "unreachable" in details["last_error"] and details["queues"] == 1
    finally:
        await firer.stop()  # leaving the firers fails too: ignored
        await store.close()
    assert not firer.check()[0]
