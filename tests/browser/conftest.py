"""Real headless Chromium (the Debian ``chromium`` package) against a real ``taskdash run``.

Nothing here skips: a machine without Chromium fails with the command that installs it
(``.ci/run`` does it on CI). Playwright for Python drives the browser through
``executable_path``; ``playwright install`` (which downloads browsers) is never used.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pymongo
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from support import VENV_BIN, DaemonProcess, NxServer, daemon_env, wait_for

from taskdash.models import TaskService
from taskdash.nsq.announce import Announcer, publish

CHROMIUM = Path("/usr/lib/chromium/chromium")
#: the recipe of ../shared/docs/ENVIRONMENT.md (the /usr/bin/chromium wrapper misbehaves)
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PASSWORDS = {"alice": "pw-alice-123456", "bob": "pw-bob-1234567", "root": "pw-root-1234567"}
ROLES = {"alice": "user", "bob": "user", "root": "admin"}
XSS = "<script>alert(1)</script>"
#: what each service lists (the fetcher harvests it from the test's own HTTP server)
LISTINGS: dict[str, list[dict[str, str]]] = {
    "svc-crawl": [
        {"id": "crawl-1", "name": "Crawl news sites", "url": "http://example.invalid/news",
         "description": "every 10 min", "status": "running", "reserved": ""},
        {"id": "crawl-2", "name": XSS, "url": "javascript:alert(2)",
         "description": "<b>not bold</b>", "status": "failed", "reserved": "r-1"},
        {"id": "crawl-3", "name": "Crawl prices", "url": "https://example.invalid/prices",
         "description": "nightly", "status": "finish", "reserved": ""},
    ],
    "svc-report": [
        {"id": "report-1", "name": "Weekly report", "url": "", "description": "PDF to the board",
         "status": "waiting", "reserved": ""},
        {"id": "report-2", "name": "Monthly report", "url": "", "description": "",
         "status": "running", "reserved": ""},
    ],
    "svc-flaky": [],
}  # fmt: skip


def chromium_or_fail() -> Path:
    """The browser binary, or a failed test saying how to install it (never a skip)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is missing ({CHROMIUM}); the browser tests need the Debian package: "
            "`DEBIAN_FRONTEND=noninteractive apt-get install -y chromium` (.ci/run installs it "
            "when missing). Never `playwright install`.",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the session."""
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


class Listings(BaseHTTPRequestHandler):
    """``GET /<service id>``: that service's task listing (what the fetcher harvests)."""

    def do_GET(self) -> None:
        tasks = LISTINGS.get(self.path.strip("/"))
        body = json.dumps({"tasks": tasks or []}).encode()
        self.send_response(200 if tasks is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@dataclass
class Dashboard:
    """A running daemon with users, services, tasks and heartbeats; a browser page maker."""

    daemon: DaemonProcess
    env: dict[str, str]
    browser: Browser
    db: Any
    announcers: dict[str, Announcer] = field(default_factory=dict)

    @property
    def web(self) -> str:
        return self.daemon.web

    @property
    def nsqd(self) -> str:
        return f"http://127.0.0.1:{self.env['TASKDASH_NSQ__EMBEDDED_HTTP_PORT']}"

    def page(self, **context: Any) -> Page:
        """A fresh browser context (no cookie) and page; dialogs are recorded, never accepted."""
        page = self.browser.new_context(**context).new_page()
        page.set_default_timeout(15_000)
        page.dialogs = []  # type: ignore[attr-defined]
        page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))  # type: ignore[attr-defined]
        return page

    def status_of(self, service_id: str) -> str:
        """A service's state as stored (read straight from MongoDB, not through the pages)."""
        doc = self.db.services.find_one({"_id": service_id}, {"status": 1})
        return str(doc["status"]) if doc else ""

    def shot(self, page: Page, name: str) -> None:
        """Keep a full-page screenshot as a test artifact (tests/artifacts/, git-ignored)."""
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def add_user(env: dict[str, str], name: str) -> None:
    """``taskdash user add`` as an operator runs it (password on stdin)."""
    out = subprocess.run(
        [str(VENV_BIN / "taskdash"), "user", "add", name, "--role", ROLES[name],
         "--password-stdin"],
        input=PASSWORDS[name], env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


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
