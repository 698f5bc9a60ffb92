"""The dashboard in real headless Chromium against ``taskdash run``: log in, filter, claim, log
out, assign as an admin, watch a service turn stale without reloading, phone width.

A screenshot of each page lands in tests/artifacts/ (git-ignored) for people to look at.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_helpers import PASSWORDS, XSS, Dashboard, chromium_or_fail
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.timeout(240)


def log_in(page: Page, dash: Dashboard, name: str, then: str = "/tasks", shot: str = "") -> None:
    """Through the login form, as a person does, starting from a page that needs it."""
    page.goto(f"{dash.web}{then}")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.fill("#name", name)
    page.fill("#password", PASSWORDS[name])
    if shot:
        dash.shot(page, shot)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{dash.web}{then}")
    expect(page.locator(".who .user")).to_contain_text(name)


def log_out(page: Page, dash: Dashboard) -> None:
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login"))
    page.goto(f"{dash.web}/tasks")  # the session is over: back to the form
    expect(page).to_have_url(re.compile(r"/login\?next="))


def rows(page: Page) -> list[str]:
    return page.locator("table.tasks td.id").all_inner_texts()


def test_user_filters_and_claims_then_admin_assigns(dashboard: Dashboard) -> None:
    page = dashboard.page(viewport={"width": 1280, "height": 900})
    log_in(page, dashboard, "alice", shot="login")
    assert rows(page) == ["crawl-1", "crawl-2", "crawl-3", "report-1", "report-2"]
    # the task named <script>... is text on the page, and nothing ran
    expect(page.locator("td.name", has_text=XSS)).to_have_count(1)
    expect(page.locator("td.url", has_text="javascript:alert(2)").locator("a")).to_have_count(0)
    expect(page.locator("td.desc", has_text="<b>not bold</b>")).to_have_count(1)
    dashboard.shot(page, "tasks")

    page.fill("input[name=service]", "svc-report")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"service=svc-report"))
    assert rows(page) == ["report-1", "report-2"]
    page.get_by_role("link", name="Status").click()  # sort by status
    expect(page).to_have_url(re.compile(r"sort=status"))
    assert rows(page) == ["report-2", "report-1"]  # running < waiting
    dashboard.shot(page, "tasks-filtered")

    page.get_by_role("link", name="report-1").click()
    expect(page.locator("h1")).to_have_text("Weekly report")
    page.get_by_role("button", name="Claim").click()
    expect(page.locator(".flash")).to_have_text("You claimed the task.")
    expect(page.locator(".holder")).to_contain_text("Held by alice (you)")
    expect(page.get_by_role("button", name="Release")).to_be_visible()
    dashboard.shot(page, "task-claimed")

    page.goto(f"{dashboard.web}/tasks?mine=1&service=svc-report")
    expect(page.locator("table.tasks td[data-label=Assignee]", has_text="alice")).to_have_count(1)
    log_out(page, dashboard)

    log_in(page, dashboard, "root", then="/tasks/report-2")
    page.select_option("select[name=user]", "bob")
    page.get_by_role("button", name="Assign", exact=True).click()
    expect(page.locator(".flash")).to_have_text("The task is assigned.")
    expect(page.locator(".holder")).to_contain_text("Held by bob")
    expect(page.locator("table.grid tbody tr")).to_have_count(1)  # the history line
    dashboard.shot(page, "task-assigned")

    page.get_by_role("link", name="Users").click()
    for name in PASSWORDS:
        expect(page.locator("table.users th", has_text=name)).to_have_count(1)
    dashboard.shot(page, "users")
    page.get_by_role("link", name="Audit log").click()
    expect(page.locator("td[data-label=Action]", has_text="claim")).to_have_count(1)
    expect(page.locator("td[data-label=Action]", has_text="assign")).to_have_count(1)
    dashboard.shot(page, "audit")

    page.get_by_role("link", name="Dead letters").click()
    expect(page.locator("table.letters tbody tr")).to_have_count(1)
    dashboard.shot(page, "dead-letters")

    page.get_by_role("link", name="Pipeline").click()
    heartbeats = page.locator("article.reader", has_text="taskdash.heartbeat")
    expect(heartbeats.locator(".badge")).to_have_text("ready")
    expect(page.locator("article.nsqd tr.channel", has_text="taskdash").first).to_be_visible()
    expect(page.locator("#checker-h + dl")).to_contain_text("normal")
    expect(page.locator("#nodes-h ~ table")).to_contain_text("(this daemon)")
    dashboard.shot(page, "pipeline")

    page.get_by_role("link", name="Services").click()
    page.get_by_role("link", name="svc-crawl").click()
    expect(page.locator(".timeline li").first).to_contain_text("first heartbeat")
    expect(page.locator("#fetch-h + dl")).to_contain_text("ok")
    dashboard.shot(page, "service")

    page.locator("a.user").click()  # one's own account: a token for a script
    expect(page.locator("h1")).to_have_text("Your account")
    page.fill("input[name=name]", "nightly report")
    page.get_by_role("button", name="Create a token").click()
    expect(page.locator("code.token-secret")).to_contain_text("taskdash_")
    expect(page.locator("table.tokens th", has_text="nightly report")).to_have_count(1)
    dashboard.shot(page, "account")
    log_out(page, dashboard)
    assert page.dialogs == []  # type: ignore[attr-defined]


def test_a_service_turns_stale_on_the_open_page(dashboard: Dashboard) -> None:
    page = dashboard.page(viewport={"width": 1280, "height": 900})
    log_in(page, dashboard, "root", then="/services")
    badge = page.locator('tr[data-service="svc-flaky"] [data-status]')
    expect(badge).to_have_text("online")
    page.evaluate("window.__sameDocument = true")
    dashboard.announcers["svc-flaky"].stop()  # its heartbeats stop: stale after 2 s
    expect(badge).to_have_text("stale", timeout=30_000)
    assert page.evaluate("window.__sameDocument === true")  # no reload, no navigation
    expect(page.locator("[data-refresh-state]")).to_contain_text("Updated")
    expect(page.locator('tr[data-service="svc-crawl"] [data-status]')).to_have_text("online")
    dashboard.shot(page, "services-stale")

    # while a form is being filled in, the table is left alone
    page.goto(f"{dashboard.web}/tasks")
    page.fill("input[name=q]", "report")
    expect(page.locator("[data-refresh-state]")).to_have_text(
        "Paused while you edit a form", timeout=15_000
    )
    log_out(page, dashboard)


def test_phone_width(dashboard: Dashboard) -> None:
    page = dashboard.page(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
        has_touch=True,
    )  # fmt: skip
    log_in(page, dashboard, "bob")
    for path, name in (
        ("/tasks", "phone-tasks"),
        ("/tasks/crawl-2", "phone-task"),
        ("/services", "phone-services"),
        ("/pipeline", "phone-pipeline"),
    ):
        page.goto(f"{dashboard.web}{path}")
        # nothing wider than the screen: no sideways scrolling
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (path, width)
        dashboard.shot(page, name)
    # a table row is a card with labelled cells
    page.goto(f"{dashboard.web}/tasks")
    label = page.locator("table.tasks td[data-label=Status]").first
    assert page.evaluate(
        "e => getComputedStyle(e, '::before').content", label.element_handle()
    ) == ('"Status"')
    log_out(page, dashboard)


def test_no_chromium_is_a_failure_saying_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y chromium"):
        chromium_or_fail(tmp_path / "chromium")
