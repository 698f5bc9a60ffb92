"""What the browser tests share: Chromium's recipe, the data the daemon is given, the running
dashboard and its screenshots (imported by name: several test folders have a conftest)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page
from support import VENV_BIN, DaemonProcess

from taskdash.nsq.announce import Announcer

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


def chromium_or_fail(binary: Path = CHROMIUM) -> Path:
    """The browser binary, or a failed test saying how to install it (never a skip)."""
    if not binary.exists():
        pytest.fail(
            f"Chromium is missing ({binary}); the browser tests need the Debian package: "
            "`DEBIAN_FRONTEND=noninteractive apt-get install -y chromium` (.ci/run installs it "
            "when missing). Never `playwright install`.",
            pytrace=False,
        )
    return binary


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
