"""The first admin: ``taskdash run`` with no account creates ``admin`` and shows its password
once on stderr, never in the JSON log; it waits for a store that is down at start; of several
daemons starting together one creates it."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

from support import DaemonProcess, NxServer, daemon_env, free_port, wait_for
from test_users_cli import GOOD, user_cmd

from taskdash.store import Store, users

NOTICE = re.compile(r"created the first user 'admin' \(role admin\), password: (\S+)")


def _decided(daemon: DaemonProcess) -> str:
    """The first-admin step's outcome, once it is in the log."""

    def outcome() -> str | None:
        names = daemon.event_names()
        for name in ("initial_admin_created", "initial_admin_not_needed"):
            if name in names:
                return name
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.logs()
        return None

    return str(wait_for(outcome, timeout=60, every=0.1))


def _verify(uri: str, database: str, name: str, password: str) -> users.User | None:
    async def check() -> users.User | None:
        store = Store(uri, database)
        try:
            return await users.verify_login(store, name, password)
        finally:
            await store.close()

    return asyncio.run(check())


def _start_creates_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    """A start that finds an account: no admin created, nothing printed."""
    daemon = DaemonProcess(tmp_path, env, stderr_apart=True).start()
    try:
        daemon.wait_ready()
        assert _decided(daemon) == "initial_admin_not_needed"
        assert "password" not in daemon.console()
    finally:
        assert daemon.stop() == 0


def test_first_start_creates_admin_and_prints_its_password_once(tmp_path: Path) -> None:
    env = daemon_env(tmp_path)
    daemon = DaemonProcess(tmp_path, env, stderr_apart=True).start()
    try:
        daemon.wait_ready()
        assert _decided(daemon) == "initial_admin_created"
        console = daemon.console()
        found = NOTICE.search(console)
        assert found, console
        password = found.group(1)
        assert console.count(password) == 1
        assert "taskdash user passwd admin" in console
        assert password not in daemon.logs()
        (event,) = [e for e in daemon.events() if e["event"] == "initial_admin_created"]
        assert event["user"] == "admin" and "taskdash user passwd admin" in event["hint"]
        # while the daemon runs, the CLI goes through its embedded store
        listed = user_cmd("list", env=env)
        assert listed.returncode == 0 and listed.stdout.split()[5:8] == [
            "admin",
            "admin",
            "enabled",
        ]
        uri = f"mongodb://127.0.0.1:{env['TASKDASH_MONGODB__EMBEDDED_PORT']}/?directConnection=true"
        assert _verify(uri, "taskdash", "admin", password) is not None
    finally:
        assert daemon.stop() == 0
    _start_creates_nothing(tmp_path, env)  # the next start finds a user


def test_no_admin_when_a_user_was_added_before_the_first_start(tmp_path: Path) -> None:
    env = daemon_env(tmp_path)
    assert user_cmd("add", "alice", "--password-stdin", env=env, stdin=GOOD).returncode == 0
    _start_creates_nothing(tmp_path, env)
    listed = user_cmd("list", env=env)
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["NAME", "alice"]


def test_a_store_down_at_start_gets_its_admin_once_it_is_up(tmp_path: Path) -> None:
    server = NxServer(tmp_path / "mongo", port=free_port())
    env = daemon_env(
        tmp_path,
        TASKDASH_MONGODB__URI=server.uri,
        TASKDASH_MONGODB__SERVER_SELECTION_TIMEOUT="1",
    )
    daemon = DaemonProcess(tmp_path, env, stderr_apart=True).start()
    try:
        wait_for(lambda: "store_not_ready_at_start" in daemon.event_names(), timeout=60)
        server.start()
        assert _decided(daemon) == "initial_admin_created"
        found = NOTICE.search(daemon.console())
        assert found is not None
        assert _verify(server.uri, "taskdash", "admin", found.group(1)) is not None
    finally:
        daemon.stop()
        server.stop()


def test_daemons_starting_together_create_one_admin(tmp_path: Path, mongo_uri: str) -> None:
    shared = {
        "TASKDASH_MONGODB__URI": mongo_uri,
        "TASKDASH_MONGODB__DATABASE": f"t_{uuid.uuid4().hex[:12]}",
    }
    daemons = [
        DaemonProcess(path, daemon_env(path, **shared), stderr_apart=True)
        for path in (tmp_path / "a", tmp_path / "b")
    ]
    for daemon in daemons:
        daemon.tmp.mkdir()
    for daemon in daemons:
        daemon.start()
    try:
        outcomes = sorted(_decided(d) for d in daemons)
        assert outcomes == ["initial_admin_created", "initial_admin_not_needed"]
        assert sum(bool(NOTICE.search(d.console())) for d in daemons) == 1
    finally:
        for daemon in daemons:
            daemon.stop()
        asyncio.run(_drop(mongo_uri, shared["TASKDASH_MONGODB__DATABASE"]))


async def _drop(uri: str, database: str) -> None:
    store = Store(uri, database)
    try:
        await store.client.drop_database(database)
    finally:
        await store.close()
