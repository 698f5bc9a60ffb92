"""Real headless Chromium (the Debian ``chromium`` package) against a real ``taskdash run``.

Nothing here skips: a machine without Chromium fails with the command that installs it
(``.ci/run`` does it on CI). Playwright for Python drives the browser through
``executable_path``; ``playwright install`` (which downloads browsers) is never used.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pymongo
import pytest
from browser_helpers import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    LISTINGS,
    PASSWORDS,
    Dashboard,
    Listings,
    add_user,
    chromium_or_fail,
)
from playwright.sync_api import Browser, sync_playwright
from support import DaemonProcess, NxServer, daemon_env, wait_for

from taskdash.models import TaskService
from taskdash.nsq.announce import Announcer, publish


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per module; Playwright's own event loop must be gone (it is, at
    the module's end) before the suite's asyncio tests run again."""
    executable = chromium_or_fail()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(executable), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def dashboard(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """nx-27017, then ``taskdash run`` with short checker thresholds, three services beating."""
    tmp = tmp_path_factory.mktemp("dashboard")
    nx = NxServer(tmp / "nx")
    nx.start()
    site = ThreadingHTTPServer(("127.0.0.1", 0), Listings)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    env = daemon_env(
        tmp,
        TASKDASH_MONGODB__URI=nx.uri,
        TASKDASH_CHECKER__STALE_AFTER=2,
        TASKDASH_CHECKER__OFFLINE_AFTER=600,
        TASKDASH_CHECKER__CHECK_INTERVAL=0.2,
        TASKDASH_NSQ__HEARTBEAT_RESOLUTION=0.2,
        TASKDASH_NSQ__HEARTBEAT_FLUSH_INTERVAL=0.05,
        TASKDASH_FETCHER__FETCH_INTERVAL=1,
        TASKDASH_FETCHER__NODE_HEARTBEAT_INTERVAL=0.5,
        TASKDASH_FETCHER__NODE_TIMEOUT=2,
    )
    for name in PASSWORDS:
        add_user(env, name)
    daemon = DaemonProcess(tmp, env).start()
    mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(nx.uri)
    running = Dashboard(daemon, env, browser, mongo["taskdash"])
    try:
        daemon.wait_ready()
        base = f"http://127.0.0.1:{site.server_address[1]}"
        for sid in LISTINGS:
            service = TaskService(
                id=sid, name=sid.removeprefix("svc-").title(), type="batch", url=f"{base}/{sid}",
                description=f"the {sid} service",
            )  # fmt: skip
            running.announcers[sid] = Announcer(running.nsqd, service, every=0.3)
            running.announcers[sid].start()
        publish(running.nsqd, "taskdash.heartbeat", b'{"id": 42}')  # a dead letter to show
        harvested = sum(len(tasks) for tasks in LISTINGS.values())
        wait_for(lambda: running.db.tasks.count_documents({}) == harvested, timeout=30)
        wait_for(lambda: all(running.status_of(sid) == "online" for sid in LISTINGS), timeout=30)
        yield running
    finally:
        for announcer in running.announcers.values():
            announcer.stop()
        if daemon.proc and daemon.proc.poll() is None:
            daemon.stop()
        mongo.close()
        site.shutdown()
        site.server_close()
        nx.stop()
