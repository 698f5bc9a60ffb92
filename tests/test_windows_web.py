"""Daily windows from the outside: [tasks] settings, the TCP interface refusing a bad time,
the API's window field and filter, the tasks pages' badge and filter link (real HTTP)."""

from __future__ import annotations

import asyncio
import html
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from support import DaemonProcess, daemon_env, daemon_token, http_get, wait_for
from web_client import Served, client_of, make_user, serve

from taskdash.errors import ConfigError
from taskdash.settings import TcpSettings, load
from taskdash.store import Store
from taskdash.store.tasks import write_registered
from taskdash.tcp.client import TcpClient
from taskdash.tcp.server import TcpServer
from taskdash.windows import RUNNING_OUTSIDE, Rules

PARIS = ZoneInfo("Europe/Paris")
EVENING = int(datetime(2026, 1, 15, 19, 0, tzinfo=PARIS).timestamp() * 1000)
DAY = {"start_time": "12:00", "stop_time": "18:00"}


# -- settings ---------------------------------------------------------------------------------


def test_window_settings_defaults_and_values(tmp_path: Path) -> None:
    rules = load(env={}).tasks.window_rules()
    assert rules.running == frozenset({"running"}) and rules.zone is not None
    path = tmp_path / "t.toml"
    path.write_text(
        '[tasks]\nwindow_timezone = "Asia/Tokyo"\nrunning_statuses = [" Busy ", "RUNNING"]\n'
    )
    rules = load(path, env={}).tasks.window_rules()
    assert rules.zone == ZoneInfo("Asia/Tokyo")
    assert rules.running == frozenset({"busy", "running"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TASKDASH_TASKS__WINDOW_TIMEZONE": "Mars/Base"},
         "tasks.window_timezone: timezone 'Mars/Base' is not an IANA time zone name"),
        ({"TASKDASH_TASKS__WINDOW_TIMEZONE": "localtime"},
         "tasks.window_timezone: timezone 'localtime' depends on the machine"),
        ({"TASKDASH_TASKS__RUNNING_STATUSES": '[" "]'},
         "tasks.running_statuses: must name at least one status"),
        ({"TASKDASH_TASKS__RUNNING_STATUSES": "[]"},
         "tasks.running_statuses: must name at least one status"),
        ({"TASKDASH_TASKS__WINDOW_CHECK_INTERVAL": "0"}, "tasks.window_check_interval"),
        ({"TASKDASH_TASKS__WINDOW_ZONE": "UTC"},
         "tasks.window_zone: unknown key (in TASKDASH_TASKS__WINDOW_ZONE); did you mean"),
    ],
)  # fmt: skip
def test_bad_window_settings_are_refused_clearly(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(env=env)
    assert message in str(caught.value)
    if "WINDOW_TIMEZONE" in next(iter(env)):
        assert "(in TASKDASH_TASKS__WINDOW_TIMEZONE)" in str(caught.value)


# -- TCP --------------------------------------------------------------------------------------


@pytest.fixture
def paris(store: Store) -> Store:
    store.window_rules = Rules(PARIS)
    return store


@pytest.mark.parametrize("bad", ["25:00", "12:60", "noon", "12:00\n", "\uff11\uff12:00", "1200"])
async def test_a_bad_time_over_tcp_is_refused_and_changes_nothing(paris: Store, bad: str) -> None:
    record = {"id": "w", "status": "running", **DAY}
    ok, refused = {"errid": 0, "errmsg": "正确"}, {"errid": 1000, "errmsg": "请求格式不正确"}
    server = TcpServer(paris, TcpSettings(port=0), drain_timeout=5)
    await server.start()
    try:
        assert server.port is not None
        c = await TcpClient("127.0.0.1", server.port, timeout=20).connect()
        assert await c.register(record) == {"id": "w", **ok}
        before = await paris.tasks.find_one({"_id": "w"})
        assert before is not None and before["window_start"] == 720
        update = {"id": "w", "status": "finish", "start_time": bad}
        assert await c.update(update) == {"id": "w", **refused}
        assert await c.register({"id": "new", "stop_time": bad}) == {"id": "new", **refused}
        await c.close()
    finally:
        await server.stop()
    assert await paris.tasks.find_one({"_id": "w"}) == before  # nothing, the status included
    assert await paris.tasks.find_one({"_id": "new"}) is None


# -- API and pages ----------------------------------------------------------------------------


@pytest.fixture
async def served(paris: Store) -> AsyncIterator[Served]:
    await make_user(paris, "alice")
    for task_id, status, window in (
        ("flag", "running", DAY),
        ("fine", "finish", DAY),
        ("plain", "running", {}),
        ("half", "running", {"start_time": "12:00"}),
    ):
        fields = {"status": status, "name": f"task {task_id}"}
        await write_registered(paris, task_id, fields, window, create=True, now_ms=EVENING)
    settings = load(env={"TASKDASH_TASKS__WINDOW_TIMEZONE": "Europe/Paris"})
    async with serve(paris, settings) as s:
        yield s


async def test_the_api_shows_the_window_and_filters_on_the_flag(served: Served) -> None:
    api = await client_of(served, "alice", "token")
    status, body = await api.call("/api/v1/tasks")
    assert status == 200
    windows = {t["id"]: t["window"] for t in body["tasks"]}
    assert windows["flag"] == {
        "start": "12:00",
        "stop": "18:00",
        "verdict": RUNNING_OUTSIDE,
        "out_of_window": True,
        "since": "2026-01-15T18:00:00+00:00",
    }
    assert windows["fine"]["verdict"] == "ok" and windows["fine"]["out_of_window"] is False
    assert windows["plain"] is None and windows["half"] is None
    status, body = await api.call("/api/v1/tasks?out_of_window=true")
    assert (status, [t["id"] for t in body["tasks"]]) == (200, ["flag"])
    status, body = await api.call("/api/v1/tasks?out_of_window=false&sort=name")
    assert [t["id"] for t in body["tasks"]] == ["fine", "half", "plain"]
    status, body = await api.call("/api/v1/tasks?out_of_window=true&status=finish")
    assert (status, body["tasks"]) == (200, [])
    status, body = await api.call("/api/v1/tasks?out_of_window=maybe")
    assert status == 400 and "out_of_window" in body["message"]


def ids_in(page: str) -> list[str]:
    return re.findall(r'<td data-label="ID" class="id"><a href="/tasks/([^"]+)"', page)


def flagged_rows(page: str) -> list[str]:
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.S)
    return [ids_in(row)[0] for row in rows if "window-flag" in row and ids_in(row)]


async def test_the_pages_show_the_badge_and_filter(served: Served) -> None:
    alice = await client_of(served, "alice", "session")
    page = (await alice.fetch("/tasks")).text
    assert ids_in(page) == ["fine", "flag", "half", "plain"]
    assert flagged_rows(page) == ["flag"]
    assert 'href="/tasks?out_of_window=1"' in page  # the filter link
    filtered = (await alice.fetch("/tasks?out_of_window=1")).text
    assert ids_in(filtered) == ["flag"]
    assert 'name="out_of_window" value="1" checked' in filtered

    detail = html.unescape((await alice.fetch("/tasks/flag")).text)
    head = detail.split('<div class="page-head">', 1)[1].split("</div>", 1)[0]
    assert "out of window" in head
    assert "12:00 \u2013 18:00" in detail and "(Europe/Paris)" in detail
    assert "running outside its window" in detail
    assert "flagged: running outside its window" in detail  # its window changes
    fine = html.unescape((await alice.fetch("/tasks/fine")).text)
    assert "window-flag" not in fine and "as expected" in fine
    half = html.unescape((await alice.fetch("/tasks/half")).text)
    assert "not a window: both times are needed" in half


# -- the whole daemon -------------------------------------------------------------------------


def test_the_daemon_judges_windows_stored_before_it_started(tmp_path: Path, mongo_uri: str) -> None:
    """A task stored by a version without verdicts (times, status, nothing else): the
    daemon's first pass gives it its minutes and its verdict, in [tasks] window_timezone."""
    database = f"t_{uuid.uuid4().hex[:12]}"
    minute = datetime.now(UTC).hour * 60 + datetime.now(UTC).minute
    start, stop = ((minute + k) % 1440 for k in (120, 180))  # hours away from now: outside
    clock = f"{start // 60:02d}:{start % 60:02d}", f"{stop // 60:02d}:{stop % 60:02d}"

    async def seed() -> None:
        store = Store(mongo_uri, database)
        try:
            await store.tasks.insert_one(
                {"_id": "old", "key": "old", "status": "running", "gone": False,
                 "start_time": clock[0], "stop_time": clock[1]}
            )  # fmt: skip
        finally:
            await store.close()

    asyncio.run(seed())
    env = daemon_env(
        tmp_path,
        TASKDASH_MONGODB__URI=mongo_uri,
        TASKDASH_MONGODB__DATABASE=database,
        TASKDASH_TASKS__WINDOW_TIMEZONE="UTC",
        TASKDASH_FETCHER__ENABLED="false",
    )
    daemon = DaemonProcess(tmp_path, env).start()
    try:
        daemon.wait_ready()
        token = daemon_token(env)

        def flagged() -> list[Any] | None:
            status, body = http_get(f"{daemon.web}/api/v1/tasks?out_of_window=true", token=token)
            assert status == 200, body
            return body["tasks"] or None

        (task,) = wait_for(flagged, timeout=30, every=0.2)
        assert task["id"] == "old" and task["window"]["verdict"] == RUNNING_OUTSIDE
        assert "component_started" in daemon.event_names()
        assert any(e.get("component") == "window_judge" for e in daemon.events()), (
            "the loop is a component the daemon stops"
        )
    finally:
        assert daemon.stop() == 0
    stopped = [e for e in daemon.events() if e.get("event") == "component_stopped"]
    assert "window_judge" in [e["component"] for e in stopped]
