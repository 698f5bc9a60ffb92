"""MongoDB unreachable: gRPC answers UNAVAILABLE and HTTP 503, with a sentence, nothing crashes."""

from __future__ import annotations

import json

import grpc
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
from conftest import refused
from support import free_port

from taskdash.health import Health
from taskdash.periodic.grpc import GrpcServer
from taskdash.periodic.http import make_app
from taskdash.periodic.leasing import Leasing
from taskdash.periodic.proto import periodic_task_pb2 as pb
from taskdash.periodic.proto import periodic_task_pb2_grpc as pb_grpc
from taskdash.settings import PeriodicSettings
from taskdash.store import Store
from taskdash.store.periodic import PeriodicStore


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
