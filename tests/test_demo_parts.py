"""The demo's parts one by one: its clock, its config, the simulated services' behaviours (on a
real broker and a real HTTP client), the TCP tasks' windows, the worker's outcomes."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest
import tornado.httpclient
from ingest_helpers import running_broker

from taskdash import windows
from taskdash.demo import config
from taskdash.demo.processes import ending
from taskdash.demo.services import Behaviour, SimulatedService, cycling_tasks, simulated
from taskdash.demo.tcp_tasks import tcp_tasks
from taskdash.demo.timing import Timings
from taskdash.demo.worker import FAIL_EVERY, Worker, WorkerError, outcome
from taskdash.fetcher.errors import Refused
from taskdash.fetcher.rules import Rules
from taskdash.settings import NsqSettings, PeriodicSettings, Settings
from taskdash.testing import Subscriber


def test_speed_divides_every_duration_but_the_schedule_keeps_its_floor() -> None:
    base, fast = Timings.at_speed(1), Timings.at_speed(8)
    assert base == Timings()
    assert fast.stale_after == base.stale_after / 8
    assert fast.doomed_after == base.doomed_after / 8
    assert fast.schedule_every == 1.0  # 4 / 8 would be under the periodic service's 1 s


@pytest.mark.parametrize("speed", [0.5, 0, 11, float("nan")])
def test_a_speed_out_of_bounds_is_refused(speed: float) -> None:
    with pytest.raises(ValueError, match="speed must be from 1 to 10"):
        Timings.at_speed(speed)


def test_the_scenario_shows_stale_then_back_and_offline() -> None:
    """What the demo promises holds at every speed: the flaky service's silence is long enough
    to go stale, too short to go offline; the dead one goes offline; the slow one's stall
    passes the fetch timeout while its usual delay does not."""
    for speed in (1, 3, 10):
        t = Timings.at_speed(speed)
        assert t.stale_after < t.flaky_down < t.offline_after
        assert t.beat_every < t.stale_after / 2
        assert t.slow_delay < t.request_timeout < t.slow_stall


@pytest.mark.parametrize("speed", [1, 10])
def test_the_written_config_loads_and_allows_only_loopback_to_the_fetcher(
    tmp_path: Path, speed: float
) -> None:
    ports = config.Ports.pick()
    path, settings = config.write(tmp_path, ports, Timings.at_speed(speed), speed)
    assert path == tmp_path / "demo.toml"
    assert '\nallowed_cidrs = ["127.0.0.1/32"]\n' in path.read_text()
    assert settings.web.port == ports.web and settings.tcp.port == ports.tcp
    assert settings.nsq.nsqd_http_address == f"http://127.0.0.1:{ports.nsqd_http}"
    assert settings.mongodb.uri == f"mongodb://127.0.0.1:{ports.mongodb}/?directConnection=true"
    assert settings.checker.stale_after == Timings.at_speed(speed).stale_after
    assert not settings.checker.self_preservation
    rules = Rules.from_settings(settings.fetcher)
    rules.check_url("http://127.0.0.1:8000/tasks")
    with pytest.raises(Refused, match="not in allowed_cidrs"):
        rules.check_url("http://10.1.2.3/tasks")


def test_ports_are_distinct_and_a_chosen_web_port_is_kept() -> None:
    ports = config.Ports.pick(web=18080)
    values = list(vars(ports).values())
    assert ports.web == 18080 and len(set(values)) == len(values)


def test_behaviours() -> None:
    flaky = Behaviour(flaps=(10.0, 5.0))
    assert [flaky.silent(s) for s in (0, 9.9, 10, 14.9, 15, 25)] == [
        False, False, True, True, False, True,
    ]  # fmt: skip
    slow = Behaviour(delays=(1.0, 1.0, 9.0))
    assert [slow.delay(n) for n in range(6)] == [1.0, 1.0, 9.0, 1.0, 1.0, 9.0]
    doomed = Behaviour(dies_after=60.0)
    assert not doomed.dead(59.9) and doomed.dead(60.0)
    steady = Behaviour()
    assert not steady.silent(1e6) and steady.delay(7) == 0 and not steady.dead(1e6)


def test_listed_tasks_change_status_and_a_batch_is_replaced() -> None:
    listing = cycling_tasks("demo-x", ("a", "b"), every=10.0)
    first, later = listing(0.0), listing(10.0)
    assert [t["status"] for t in first[:2]] == ["pending", "running"]
    assert [t["status"] for t in later[:2]] == ["running", "finish"]
    assert first[2]["id"] == "demo-x-batch-0" and listing(50.0)[2]["id"] == "demo-x-batch-1"


def test_four_simulated_services_each_with_its_behaviour() -> None:
    t = Timings()
    services = {s.id: s for s in simulated(NsqSettings(), t)}
    assert set(services) == {"demo-steady", "demo-flaky", "demo-slow", "demo-doomed"}
    assert services["demo-flaky"].behaviour.flaps == (t.flaky_up, t.flaky_down)
    assert services["demo-slow"].behaviour.delay(2) == t.slow_stall
    assert services["demo-doomed"].behaviour.dies_after == t.doomed_after


async def test_a_simulated_service_registers_beats_and_answers_its_url(tmp_path: Path) -> None:
    async with running_broker(tmp_path) as broker:
        nsq = NsqSettings(nsqd_http_address=f"http://127.0.0.1:{broker.http_port}")
        service = SimulatedService(
            id="demo-t",
            kind="slow",
            description="d",
            listing=cycling_tasks("demo-t", ("a",), every=60.0),
            nsq=nsq,
            beat_every=0.05,
            behaviour=Behaviour(delays=(0.0, 0.2)),
        )
        registrations = await Subscriber.open(broker.tcp_port, nsq.service_topic, "t")
        beats = await Subscriber.open(broker.tcp_port, nsq.heartbeat_topic, "t")
        await service.start()
        try:
            [registration] = await registrations.take_json(1)
            assert registration["id"] == "demo-t" and registration["url"] == service.url
            assert await beats.take_json(2) == [{"id": "demo-t", "reserved": ""}] * 2
            client = tornado.httpclient.AsyncHTTPClient()
            for _ in range(2):  # the second one after its delay
                answer = await client.fetch(service.url)
                assert [t["id"] for t in json.loads(answer.body)] == ["demo-t-a", "demo-t-batch-0"]
            assert service.request_count == 2
        finally:
            await service.stop()
            await registrations.close()
            await beats.close()


def test_tcp_tasks_one_inside_its_window_one_running_outside() -> None:
    now = datetime(2026, 11, 26, 23, 30, tzinfo=UTC)  # windows crossing midnight too
    sync, backup = tcp_tasks(now)
    ms = int(now.timestamp() * 1000)
    assert (sync["start_time"], sync["stop_time"]) == ("22:30", "01:30")
    for task, verdict in ((sync, windows.OK), (backup, windows.RUNNING_OUTSIDE)):
        got = windows.check(task["start_time"], task["stop_time"], task["status"], ms, UTC)
        assert got == verdict
    idle = windows.check(sync["start_time"], sync["stop_time"], "finish", ms, UTC)
    assert idle == windows.IDLE_INSIDE  # what the status flip shows


def test_every_fifth_task_fails() -> None:
    assert [outcome(n) for n in range(2 * FAIL_EVERY)].count(False) == 2
    assert not outcome(FAIL_EVERY - 1)


async def test_a_worker_with_no_periodic_service_fails_in_one_line(tmp_path: Path) -> None:
    free = config.Ports.pick()
    settings = Settings(
        periodic=PeriodicSettings(grpc_port=free.periodic_grpc, http_port=free.periodic_http),
        nsq=NsqSettings(nsqd_http_address=f"http://127.0.0.1:{free.nsqd_http}"),
    )
    worker = Worker(settings, Timings(), tmp_path)
    try:
        with pytest.raises(WorkerError, match=r"^periodic service: UNAVAILABLE: "):
            await worker.start()
    finally:
        await worker.stop()
    assert not (tmp_path / "demo-worker.secret").exists()


def test_how_a_child_ended() -> None:
    assert ending(0) == "exited with code 0"
    assert ending(2) == "exited with code 2"
    assert ending(-signal.SIGKILL) == "was killed by SIGKILL"
    assert ending(-200) == "was killed by signal 200"
