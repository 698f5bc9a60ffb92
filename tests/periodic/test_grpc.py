"""The seed's gRPC service through generated stubs, on loopback, over nx-27017."""

from __future__ import annotations

import json

import grpc
from conftest import Clock, Node, NodeFactory, refused, register
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from taskdash.periodic.proto import periodic_task_pb2 as pb

Code = grpc.StatusCode


async def test_the_seed_flow(node: Node) -> None:
    reply = await node.stub.ServiceRegistry(pb.ServiceRegistryRequest(service_name="mailer"))
    assert len(reply.secret) >= 22  # >= 128 bits of URL-safe base64
    auth = {"service_name": "mailer", "secret": reply.secret, "queue_name": "daily"}
    created = await node.stub.CreatePeriodicTaskQueue(pb.CreatePeriodicTaskQueueRequest(**auth))
    started = await node.stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**auth))
    assert created.success and started.success
    for n in range(3):
        data = json.dumps({"to": f"user{n}@example.com", "n": n})
        ok = await node.stub.CreateTask(
            pb.CreateTaskRequest(**auth, task_type="send", task_data=data)
        )
        assert ok.success
    listed = await node.stub.GetTaskList(pb.GetTaskListRequest(**auth, limit=0))
    tasks = json.loads(listed.task_list)
    assert [t["task_data"]["n"] for t in tasks] == [0, 1, 2]  # oldest first, data as JSON
    assert {tuple(sorted(t)) for t in tasks} == {
        ("attempts", "created_at", "task_data", "task_id", "task_type")
    }
    assert all(t["attempts"] == 1 and t["task_type"] == "send" for t in tasks)
    assert len({t["task_id"] for t in tasks}) == 3
    first, second, third = (t["task_id"] for t in tasks)
    done = await node.stub.CompleteTask(pb.CompleteTaskRequest(**auth, task_id=first, success=True))
    failed = await node.stub.CompleteTask(
        pb.CompleteTaskRequest(**auth, task_id=second, success=False)
    )
    assert done.success and failed.success
    again = json.loads((await node.stub.GetTaskList(pb.GetTaskListRequest(**auth))).task_list)
    # the failed task comes back; the done one and the one still leased (third) do not
    assert [(t["task_id"], t["attempts"]) for t in again] == [(second, 2)]
    assert third not in {t["task_id"] for t in again}


async def test_limit_zero_means_ten_and_limit_is_respected(node: Node) -> None:
    who = await register(node.stub)
    await who.create(15)
    assert len(await who.lease(0)) == 10
    assert len(await who.lease(3)) == 3
    assert len(await who.lease(0)) == 2
    assert await who.lease(0) == []


async def test_registration_errors(node: Node) -> None:
    await node.stub.ServiceRegistry(pb.ServiceRegistryRequest(service_name="svc"))
    async with refused(Code.ALREADY_EXISTS, "already registered", "handed out"):
        await node.stub.ServiceRegistry(pb.ServiceRegistryRequest(service_name="svc"))
    for bad in ("", " svc", "a\nb", "x" * 129):
        async with refused(Code.INVALID_ARGUMENT, "service_name"):
            await node.stub.ServiceRegistry(pb.ServiceRegistryRequest(service_name=bad))


async def test_wrong_or_missing_secret_is_unauthenticated(node: Node) -> None:
    who = await register(node.stub)
    for name, secret in (("svc", "wrong"), ("svc", ""), ("nobody", who.secret)):
        req = {"service_name": name, "secret": secret, "queue_name": "q1"}
        async with refused(Code.UNAUTHENTICATED, "wrong secret"):
            await node.stub.CreatePeriodicTaskQueue(pb.CreatePeriodicTaskQueueRequest(**req))
        async with refused(Code.UNAUTHENTICATED):
            await node.stub.GetTaskList(pb.GetTaskListRequest(**req))
        async with refused(Code.UNAUTHENTICATED):
            await node.stub.CompleteTask(pb.CompleteTaskRequest(**req, task_id=1))


async def test_queue_errors(node: Node) -> None:
    who = await register(node.stub)
    async with refused(Code.ALREADY_EXISTS, "already has a queue 'q1'"):
        await node.stub.CreatePeriodicTaskQueue(pb.CreatePeriodicTaskQueueRequest(**who.q()))
    missing = who.auth(queue_name="nope")
    async with refused(Code.NOT_FOUND, "no queue 'nope'"):
        await node.stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**missing))
    async with refused(Code.NOT_FOUND, "no queue 'nope'"):
        await node.stub.CreateTask(pb.CreateTaskRequest(**missing, task_data="{}"))
    async with refused(Code.INVALID_ARGUMENT, "queue_name"):
        await node.stub.CreatePeriodicTaskQueue(
            pb.CreatePeriodicTaskQueueRequest(**who.auth(queue_name=""))
        )


async def test_task_data_must_be_json_and_fit(make_node: NodeFactory) -> None:
    node = await make_node(max_task_data_size=64)
    who = await register(node.stub)
    for bad, fragment in (
        ("", "Expecting value"),
        ("{'a': 1}", "Expecting property name"),
        ('{"a": NaN}', "NaN is not JSON"),
        ("[1, 2", "line 1"),
    ):
        async with refused(Code.INVALID_ARGUMENT, "task_data is not valid JSON", fragment):
            await node.stub.CreateTask(pb.CreateTaskRequest(**who.q(task_data=bad)))
    async with refused(Code.INVALID_ARGUMENT, "max_task_data_size"):
        await node.stub.CreateTask(pb.CreateTaskRequest(**who.q(task_data=json.dumps("x" * 80))))
    assert await who.lease() == []  # nothing refused was stored


async def test_get_task_list_errors(node: Node) -> None:
    who = await register(node.stub)
    async with refused(Code.INVALID_ARGUMENT, "limit", "max_limit"):
        await node.stub.GetTaskList(pb.GetTaskListRequest(**who.q(limit=1001)))
    await node.stub.CreatePeriodicTaskQueue(
        pb.CreatePeriodicTaskQueueRequest(**who.auth(queue_name="idle"))
    )
    async with refused(Code.FAILED_PRECONDITION, "not started on this node", "node-a"):
        await node.stub.GetTaskList(pb.GetTaskListRequest(**who.auth(queue_name="idle")))


async def test_complete_errors(node: Node) -> None:
    who = await register(node.stub)
    await who.create(2)
    async with refused(Code.NOT_FOUND, "no task 999"):
        await who.complete(999)
    async with refused(Code.INVALID_ARGUMENT, "task_id"):
        await who.complete(0)
    leased = await who.lease(1)
    task_id = leased[0]["task_id"]
    async with refused(Code.FAILED_PRECONDITION, "not leased (it is pending)"):
        await who.complete(task_id + 1)
    await who.complete(task_id)
    async with refused(Code.FAILED_PRECONDITION, "not leased (it is done)"):
        await who.complete(task_id)
    # a task of another queue of the same service is not found in this one
    other = who.auth(queue_name="other")
    await node.stub.CreatePeriodicTaskQueue(pb.CreatePeriodicTaskQueueRequest(**other))
    async with refused(Code.NOT_FOUND):
        await node.stub.CompleteTask(pb.CompleteTaskRequest(**other, task_id=task_id))


async def test_an_expired_lease_is_handed_out_again(node: Node, clock: Clock) -> None:
    who = await register(node.stub)
    await who.create(1)
    [first] = await who.lease()
    clock.advance(299)
    assert await who.lease() == []  # still leased: nobody else gets it
    clock.advance(2)
    [again] = await who.lease()
    assert again["task_id"] == first["task_id"] and again["attempts"] == 2
    clock.advance(1)
    await who.complete(again["task_id"])


async def test_completing_after_the_lease_expired_is_refused(node: Node, clock: Clock) -> None:
    who = await register(node.stub)
    await who.create(1)
    [task] = await who.lease()
    clock.advance(301)
    async with refused(Code.FAILED_PRECONDITION, "expired"):
        await who.complete(task["task_id"])
    [again] = await who.lease()
    assert again["attempts"] == 2


async def test_dead_after_max_attempts_by_failure_and_by_expiry(
    make_node: NodeFactory, clock: Clock
) -> None:
    node = await make_node(max_attempts=2)
    who = await register(node.stub)
    await who.create(2)
    for _attempt in range(2):
        tasks = await who.lease()
        assert len(tasks) == 2
        failing, _expiring = tasks
        await who.complete(failing["task_id"], success=False)
        clock.advance(301)  # the other one's lease expires
    # the failed one went dead at its second failure; the expired one is buried when due again
    assert await who.lease() == []
    listed = await node.leasing.list_tasks(who.caller, who.queue, state=None, after=0, limit=10)
    assert [t["state"] for t in listed] == ["dead", "dead"]
    assert await node.leasing.redrive(who.caller, who.queue, None) == 2
    again = await who.lease()
    assert [t["attempts"] for t in again] == [1, 1]


async def test_node_local_start(make_node: NodeFactory) -> None:
    a, b = await make_node("node-a"), await make_node("node-b")
    who = await register(a.stub)
    await who.create(3)
    on_b = type(who)(b.stub, who.service, who.secret, who.queue)
    async with refused(Code.FAILED_PRECONDITION, "not started on this node (node-b)"):
        await on_b.lease()
    await b.stub.StartPeriodicTaskQueue(pb.StartPeriodicTaskQueueRequest(**who.q()))
    assert len(await on_b.lease(2)) == 2
    assert len(await who.lease()) == 1  # a still serves it too; they share the tasks


async def test_health_and_reflection(node: Node) -> None:
    health = health_pb2_grpc.HealthStub(node.channel)
    for service in ("", "PeriodicTask"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(node.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    names = set()
    async for answer in reflect.ServerReflectionInfo(iter([request])):
        names |= {s.name for s in answer.list_services_response.service}
    assert "PeriodicTask" in names and "grpc.health.v1.Health" in names
