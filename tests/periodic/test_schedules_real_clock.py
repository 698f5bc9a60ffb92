"""Schedules on the real clock: the firer's own loop, the store's clock, a whole process."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from conftest import Node, register
from support import VENV_BIN, async_wait_for, http_get, wait_for
from test_process import PeriodicProcess, periodic_env, register_and_start

from taskdash.periodic.firing import MAX_IDLE, TICK, Firer, StoreClock
from taskdash.periodic.leasing import now_ms
from taskdash.periodic.proto import periodic_task_pb2 as pb
from taskdash.periodic.proto import periodic_task_pb2_grpc as pb_grpc
from taskdash.periodic.schedules import Schedules
from taskdash.store import Store
from taskdash.store.schedules import ScheduleStore

HOUR = 3_600_000


async def test_store_clock_corrects_a_wrong_node_clock(store: Store) -> None:
    """A node whose clock is an hour ahead reads the store's time instead."""
    clock = StoreClock(ScheduleStore(store).server_time, local=lambda: now_ms() + HOUR)
    assert clock() - now_ms() > HOUR - 60_000  # before its first reading: its own clock
    await clock.sync()
    assert abs(clock() - now_ms()) < 60_000  # nx-27017 runs on this machine's clock
    assert abs(clock.offset + HOUR) < 60_000


async def test_the_firer_loop_fires_on_the_real_clock(node: Node, store: Store) -> None:
    """The loop sleeps until the next run; a node whose own clock is an hour ahead still fires
    each run when it is due, on the store's clock."""
    who = await register(node.stub)
    schedule_store = ScheduleStore(store)
    clock = StoreClock(schedule_store.server_time, local=lambda: now_ms() + HOUR)
    await clock.sync()
    firer = Firer(node.leasing, schedule_store, clock=clock, sync=clock.sync)
    schedules = Schedules(node.leasing, schedule_store, clock=clock, changed=firer.poke)
    created = await schedules.create(who.caller, who.queue, {"interval": 1, "task_data": 1})
    await firer.start()
    try:
        assert firer.check()[0]

        async def two_runs() -> bool:
            shown = await schedules.get(who.caller, who.queue, created["schedule_id"])
            return bool(shown["fired"] >= 2)

        await async_wait_for(two_runs, timeout=30)
    finally:
        await firer.stop()
    assert not firer.check()[0]
    docs = [d async for d in store["periodic_tasks"].find({})]
    assert len(docs) >= 2
    # the runs were due on the store's clock (this machine's), not the node's hour ahead
    assert all(abs(d["scheduled_for"] - now_ms()) < 60_000 for d in docs)
    assert len({d["scheduled_for"] for d in docs}) == len(docs)
    assert firer.check()[1]["fired"] == len(docs)


def test_a_process_fires_schedules_created_from_the_command_line(
    mongo_uri: str, tmp_path: Path
) -> None:
    service = PeriodicProcess(tmp_path, periodic_env(mongo_uri))
    try:
        service.wait_ready()
        with grpc.insecure_channel(service.grpc_target) as channel:
            stub = pb_grpc.PeriodicTaskStub(channel)
            auth = register_and_start(stub)
            secret = auth["secret"]
            secret_file = tmp_path / "secret"
            secret_file.write_text(secret)
            created = subprocess.run(
                [str(VENV_BIN / "taskdash"), "periodic", "schedule", "create", "--service", "s",
                 "--queue", "q", "--secret-file", str(secret_file), "--url", service.http,
                 "--id", "tick", "--interval", "1", "--task-data", '{"n": 1}'],
                capture_output=True, text=True, check=False, timeout=60,
            )  # fmt: skip
            assert created.returncode == 0, created.stderr
            assert json.loads(created.stdout)["schedule_id"] == "tick"

            def leased() -> list[dict[str, Any]]:
                reply = stub.GetTaskList(pb.GetTaskListRequest(**auth))
                return list(json.loads(reply.task_list))

            [task] = wait_for(leased, timeout=30)
        assert task["schedule_id"] == "tick" and task["task_data"] == {"n": 1}
        status, ready = http_get(f"{service.http}/readyz")
        assert status == 200 and ready["components"]["schedules"]["fired"] >= 1
        request = urllib.request.Request(
            f"{service.http}/v1/services/s/queues/q/schedules/tick/runs",
            headers={"Authorization": f"Bearer {secret}"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            shown = json.loads(resp.read())
        assert task["task_id"] in [run["task_id"] for run in shown["runs"]]
    finally:
        assert service.stop() == 0, service.logs()
    assert "daemon_stopped" in service.events()


def test_how_long_the_loop_sleeps(node: Node) -> None:
    wait = node.firer._wait
    assert (wait(-5), wait(0)) == (0.0, 0.0)  # behind: at once
    assert wait(30) == TICK  # soon: together with what comes due meanwhile
    assert wait(400) == 0.4
    assert wait(60_000) == MAX_IDLE  # schedules created on other nodes are seen within 1 s
