"""The whole daemon (``taskdash run``): it generates the cookie secret once (mode 0600), the first
admin logs in with the password it printed, the session survives a restart, and a secret file
others may read stops the start with one line."""

from __future__ import annotations

import asyncio
import re
import stat
from pathlib import Path

from support import DaemonProcess, daemon_env, running_daemon, wait_for
from web_client import WebClient

from taskdash.cookie_secret import FILE_NAME
from taskdash.store import Store

NOTICE = re.compile(r"created the first user 'admin' \(role admin\), password: (\S+)")


async def _login_and_ask(base: str, password: str) -> dict[str, str]:
    """Log in as admin through the form; the cookies the browser would keep."""
    client = WebClient(base)
    reply = await client.login_form("admin", "not-the-password")
    assert reply.status == 401
    await client.login("admin", password)
    status, me = await client.call("/api/v1/me")
    assert (status, me["name"], me["role"], me["via"]) == (200, "admin", "admin", "session")
    status, audit = await client.call("/api/v1/audit?action=login")
    assert [e["outcome"] for e in audit["entries"]] == ["ok", "failed"]
    return client.cookies


async def _me(base: str, cookies: dict[str, str]) -> int:
    client = WebClient(base)
    client.cookies = dict(cookies)
    return (await client.call("/api/v1/me"))[0]


async def _has_session_ttl(uri: str) -> bool:
    """Whether the daemon created the sessions' TTL index."""
    store = Store(uri, "taskdash")
    try:
        indexes = (await store["sessions"].index_information()).values()
        return any(i.get("expireAfterSeconds") == 0 for i in indexes)
    finally:
        await store.close()


def test_first_admin_logs_in_and_the_session_survives_a_restart(tmp_path: Path) -> None:
    env = daemon_env(tmp_path)
    daemon = DaemonProcess(tmp_path, env, stderr_apart=True).start()
    try:
        daemon.wait_ready()
        found = wait_for(lambda: NOTICE.search(daemon.console()), timeout=60)
        secret_file = tmp_path / "var" / FILE_NAME
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text()
        cookies = asyncio.run(_login_and_ask(daemon.web, found.group(1)))
        port = env["TASKDASH_MONGODB__EMBEDDED_PORT"]
        uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
        assert wait_for(lambda: asyncio.run(_has_session_ttl(uri)), timeout=30)
        assert secret.strip() not in daemon.logs() + daemon.console()
    finally:
        assert daemon.stop() == 0
    with running_daemon(tmp_path, env) as again:
        assert secret_file.read_text() == secret, "generated once, then kept"
        assert asyncio.run(_me(again.web, cookies)) == 200
        assert asyncio.run(_me(again.web, {**cookies, "taskdash_session": "x"})) == 401


def test_a_secret_file_others_may_read_stops_the_start(tmp_path: Path) -> None:
    env = daemon_env(tmp_path)
    secret_file = tmp_path / "var" / FILE_NAME
    secret_file.parent.mkdir(parents=True)
    secret_file.write_text("z" * 64)
    secret_file.chmod(0o644)
    with running_daemon(tmp_path, env, ready=False) as daemon:
        assert daemon.proc is not None and daemon.proc.wait(60) == 1
    errors = [e for e in daemon.events() if e.get("level") in ("error", "critical")]
    assert [e["event"] for e in errors] == ["start_failed"], errors
    assert errors[0]["error"].startswith(f"{secret_file} is readable or writable by group")
    assert "chmod 600" in errors[0]["error"] and "z" * 64 not in daemon.logs()
