"""Daily windows in real headless Chromium against ``taskdash run``: a task given a window
over TCP that its running status is outside of shows the badge, and the filter finds it."""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from browser_helpers import Dashboard
from playwright.sync_api import expect
from test_browser_dashboard import log_in, rows

from taskdash.tcp.client import TcpClient
from taskdash.windows import minute_of_day
from taskdash.zones import machine_zone

pytestmark = pytest.mark.timeout(240)


def hours_away() -> dict[str, str]:
    """A window that opens in two hours and closes in three, in the daemon's (this machine's)
    zone: now is outside it."""
    now = minute_of_day(int(time.time() * 1000), machine_zone())
    start, stop = ((now + k) % 1440 for k in (120, 180))
    return {
        "start_time": f"{start // 60}:{start % 60:02d}",
        "stop_time": f"{stop // 60}:{stop % 60:02d}",
    }


def test_out_of_window_badge_and_filter(dashboard: Dashboard) -> None:
    async def set_window() -> dict[str, object]:
        port = int(dashboard.env["TASKDASH_TCP__PORT"])
        client = await TcpClient("127.0.0.1", port, timeout=20).connect()
        try:
            return await client.update({"id": "crawl-1", **hours_away()})
        finally:
            await client.close()

    with ThreadPoolExecutor(1) as apart:  # Playwright's own event loop runs in this thread
        reply = apart.submit(asyncio.run, set_window()).result()
    assert reply["errid"] == 0  # crawl-1 is running: outside its window
    page = dashboard.page(viewport={"width": 1280, "height": 900})
    log_in(page, dashboard, "alice")
    flagged = page.locator("table.tasks tr", has=page.locator(".window-flag"))
    expect(flagged).to_have_count(1)
    expect(flagged.locator("td.id")).to_have_text("crawl-1")
    page.get_by_label("Out of window").check()
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"out_of_window=1"))
    assert rows(page) == ["crawl-1"]
    dashboard.shot(page, "tasks-out-of-window")
    page.get_by_role("link", name="crawl-1").click()
    expect(page.locator(".page-head .window-flag")).to_have_text("out of window")
    expect(page.locator("dd.window")).to_contain_text("running outside its window")
    dashboard.shot(page, "task-out-of-window")
