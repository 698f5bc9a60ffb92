"""The dashboard's pages through a real HTTP client against the real application on loopback,
over nx-27017 (taskdash/web/pages.py, templates/): escaping, filters, claim and assign,
authorization by role, the refresh fragments."""

from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from web_client import Reply, Served, WebClient, make_user, password_for, serve

from taskdash.checker import Checker
from taskdash.models import TaskMetaData, TaskService
from taskdash.settings import CheckerSettings
from taskdash.store import Store, audit, nodes, users
from taskdash.store.assignments import get_assignment
from taskdash.store.deadletters import add_dead_letter
from taskdash.store.services import record_heartbeats, register_services
from taskdash.store.tasks import ServiceListing, apply_listings
from taskdash.store.times import to_ms
from taskdash.web.pages import CSP, age_text, epoch_ms, path_id, tone, web_link, when
from taskdash.web.pipeline import Pipeline

XSS = "<script>alert(1)</script>"


def task(tid: str, **fields: str) -> TaskMetaData:
    return TaskMetaData(id=tid, **fields)


async def listing(store: Store, service_id: str, tasks: list[TaskMetaData]) -> None:
    """Tasks harvested from one service, as the fetcher stores them."""
    await register_services(store, [TaskService(id=service_id, name=service_id)], datetime.now(UTC))
    await apply_listings(store, [ServiceListing(service_id, tasks, {})], to_ms(datetime.now(UTC)))


@pytest.fixture
async def app(store: Store) -> AsyncIterator[Served]:
    await make_user(store, "alice")
    await make_user(store, "bob")
    await make_user(store, "root", "admin")
    await listing(
        store,
        "svc-a",
        [
            task(
                "t-1", name=XSS, url="javascript:alert(2)", description="<b>x</b>", status="running"
            ),
            task("t-2", name="second", url="https://example.invalid/t2", status="finish"),
            task("t-3", name="third", status="running"),
        ],
    )
    await listing(store, "svc-b", [task("b-1", name="other service", status="failed")])
    async with serve(store) as served:
        yield served


async def logged_in(app: Served, name: str) -> WebClient:
    client = app.client()
    await client.login(name, password_for(name))
    return client


async def post_form(client: WebClient, path: str, **fields: str) -> Reply:
    """A browser's form POST: urlencoded, with the XSRF field."""
    body = urllib.parse.urlencode({**fields, "_xsrf": client.xsrf})
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return await client.fetch(path, "POST", body, headers, xsrf=False)


def ids_in(page: str) -> list[str]:
    """Task ids linked from a tasks table, in order."""
    return [
        urllib.parse.unquote(m)
        for m in re.findall(r'<td data-label="ID" class="id"><a href="/tasks/([^"]+)"', page)
    ]


# -- helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "just now"), (-0.4, "just now"), (1, "1 s ago"), (59.9, "59 s ago"), (60, "1 min ago"),
     (3599, "59 min ago"), (3600, "1 h ago"), (86399, "23 h ago"), (86400 * 3, "3 d ago"),
     (-5, "in 5 s"), (-120, "in 2 min")],
)  # fmt: skip
def test_age_text(seconds: float, text: str) -> None:
    assert age_text(seconds) == text


def test_times_and_links() -> None:
    at = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
    ms = to_ms(at)
    assert epoch_ms(ms) == ms and epoch_ms(at) == ms and epoch_ms(at.isoformat()) == ms
    assert epoch_ms(None) is None and epoch_ms("") is None and epoch_ms("soon") is None
    assert epoch_ms(True) is None and epoch_ms([1]) is None
    assert when(ms, ms + 12_000) == (
        '<time class="age" datetime="2026-11-26T12:00:00Z" title="2026-11-26T12:00:00Z">'
        "12 s ago</time>"
    )
    assert "—" in when(None, ms)
    assert web_link("https://a.example/x") and web_link("http://a.example")
    for bad in ("javascript:alert(1)", "data:text/html,x", "//a.example", "", None, "http://"):
        assert not web_link(bad), bad
    assert not web_link("http://a.example/" + "x" * 3000)
    assert tone("Running") == "t-busy" and tone("online") == "t-ok" and tone("stale") == "t-warn"
    assert tone("offline") == "t-bad" and tone("whatever") == "t-plain"
    assert path_id("a/b c?") == "a%2Fb%20c%3F"


# -- who may see what ---------------------------------------------------------------------


PAGES = ["/tasks", "/tasks/t-1", "/services", "/services/svc-a", "/pipeline", "/dead-letters"]
ADMIN_PAGES = ["/users", "/audit"]


async def test_anonymous_goes_to_the_login_form(app: Served) -> None:
    client = app.client()
    for path in [*PAGES, *ADMIN_PAGES, "/tasks?fragment=1"]:
        reply = await client.fetch(path)
        assert reply.status == 302, path
        location = urllib.parse.urlsplit(reply.headers["Location"])
        assert location.path == "/login" and urllib.parse.parse_qs(location.query)["next"] == [path]
    reply = await client.fetch("/tasks/t-1", "POST", b"action=claim")
    assert reply.status in (401, 403)
    assert (await get_assignment(app.store, "t-1")).version == 0  # never bound


async def test_every_page_renders_for_a_user_and_admin_pages_are_refused(app: Served) -> None:
    alice = await logged_in(app, "alice")
    for path in PAGES:
        reply = await alice.fetch(path)
        assert reply.status == 200, (path, reply.text[:2000])
        assert reply.headers["Content-Security-Policy"] == CSP
        assert 'href="/users"' not in reply.text  # admins' links only for admins
        assert '<form method="post" action="/logout"' in reply.text
    for path in ADMIN_PAGES:
        reply = await alice.fetch(path)
        assert reply.status == 403 and "Not allowed" in reply.text, path
        assert reply.headers["Content-Type"].startswith("text/html")
    root = await logged_in(app, "root")
    for path in [*PAGES, *ADMIN_PAGES]:
        reply = await root.fetch(path)
        assert reply.status == 200, (path, reply.text[:2000])
        assert 'href="/users"' in reply.text and 'href="/audit"' in reply.text
    assert (await root.fetch("/")).headers["Location"] == "/tasks"


async def test_unknown_objects_and_bad_input_are_html_error_pages(app: Served) -> None:
    alice = await logged_in(app, "alice")
    cases = {
        "/tasks/nope": (404, "no task with this id"),
        "/services/nope": (404, "no service with this id"),
        "/tasks?sort=password": (400, "sort must be one of"),
        "/tasks?per=0": (400, "per must be between 1 and 200"),
        "/tasks?per=many": (400, "per must be an integer"),
        "/tasks?q=" + "x" * 65: (400, "q is longer than 64 characters"),
        "/tasks?status=" + "x" * 129: (400, "status is longer than 128 characters"),
        "/tasks?gone=maybe": (400, "gone must be one of hide, show, only"),
        "/tasks?after=garbage": (400, "after is not a cursor this API gave"),
        "/tasks?mine=1&unassigned=1": (400, "give one of assignee, mine, unassigned"),
        "/services?status=sleepy": (400, "status must be one of"),
        "/dead-letters?limit=5000": (400, "limit must be between"),
    }
    for path, (status, message) in cases.items():
        reply = await alice.fetch(path)
        assert reply.status == status, (path, reply.text[:500])
        assert message in html.unescape(reply.text), (path, reply.text[:2000])
        assert reply.headers["Content-Type"].startswith("text/html")


# -- escaping -----------------------------------------------------------------------------


async def test_every_value_is_escaped(app: Served) -> None:
    await add_dead_letter(
        app.store, topic="taskdash.heartbeat", msg_id="m1", body=b'<img src=x onerror="alert(3)">',
        reason="<i>bad</i>", field="id", attempts=1, node="n", now=datetime.now(UTC),
    )  # fmt: skip
    alice = await logged_in(app, "alice")
    for path in ("/tasks", "/tasks/t-1", "/services/svc-a", "/dead-letters", "/tasks?fragment=1"):
        page = (await alice.fetch(path)).text
        assert "<script>alert" not in page and "<img src=x" not in page, path
        assert "<b>x</b>" not in page and "<i>bad</i>" not in page, path
        assert 'href="javascript:' not in page, path
    tasks = (await alice.fetch("/tasks")).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in tasks
    assert "javascript:alert(2)" in tasks  # shown as text, not as a link
    assert '<a href="https://example.invalid/t2" rel="noopener noreferrer nofollow"' in tasks
    letters = (await alice.fetch("/dead-letters")).text
    assert "&lt;img src=x onerror=&quot;alert(3)&quot;&gt;" in letters


async def test_ids_with_slashes_and_spaces_have_working_links(app: Served) -> None:
    await listing(app.store, "svc/odd id", [task("odd/task ?#", name="odd")])
    alice = await logged_in(app, "alice")
    tasks = (await alice.fetch("/tasks?" + urllib.parse.urlencode({"service": "svc/odd id"}))).text
    assert 'href="/tasks/odd%2Ftask%20%3F%23"' in tasks and ids_in(tasks) == ["odd/task ?#"]
    detail = await alice.fetch("/tasks/odd%2Ftask%20%3F%23")
    assert detail.status == 200 and "odd/task ?#" in html.unescape(detail.text)
    assert 'href="/services/svc%2Fodd%20id"' in detail.text
    assert (await alice.fetch("/services/svc%2Fodd%20id")).status == 200


# -- the tasks table ----------------------------------------------------------------------


async def test_filters_and_pages(app: Served) -> None:
    alice = await logged_in(app, "alice")
    assert (await post_form(alice, "/tasks/t-3", action="claim")).status == 303
    pages = {
        "": ["b-1", "t-1", "t-2", "t-3"],
        "status=running": ["t-1", "t-3"],
        "service=svc-b": ["b-1"],
        "mine=1": ["t-3"],
        "assignee=alice": ["t-3"],
        "assignee=bob": [],
        "unassigned=1": ["b-1", "t-1", "t-2"],
        "q=T-": ["t-1", "t-2", "t-3"],  # the id starts with it, any case
        "q=sec": ["t-2"],  # the name starts with it
        "description=%3Cb%3E": ["t-1"],
        "sort=-id": ["t-3", "t-2", "t-1", "b-1"],
        "sort=name": ["t-1", "b-1", "t-2", "t-3"],  # "<script>..." sorts first
        "sort=-assignee": ["t-3", "t-2", "t-1", "b-1"],  # ties by id, the same way
        "status=running&sort=-id": ["t-3", "t-1"],
    }
    for query, expected in pages.items():
        assert ids_in((await alice.fetch(f"/tasks?{query}")).text) == expected, query
    empty = (await alice.fetch("/tasks?status=nothing")).text
    assert "No task matches these filters." in empty and 'rel="next"' not in empty

    # keyset pages: next, then back
    first = (await alice.fetch("/tasks?per=3")).text
    assert ids_in(first) == ["b-1", "t-1", "t-2"] and 'rel="prev"' not in first
    second = (await alice.fetch("/tasks" + html.unescape(link(first, "next")))).text
    assert ids_in(second) == ["t-3"] and 'rel="next"' not in second
    back = (await alice.fetch("/tasks" + html.unescape(link(second, "prev")))).text
    assert ids_in(back) == ["b-1", "t-1", "t-2"]
    assert "per=3" in link(second, "prev")  # the filters stay


def link(page: str, rel: str) -> str:
    """The href of the pager's ``rel`` link."""
    found = re.search(rf'rel="{rel}" href="([^"]+)"', page)
    assert found, rel
    return found.group(1)


async def test_the_fragment_is_the_table_alone(app: Served) -> None:
    alice = await logged_in(app, "alice")
    reply = await alice.fetch("/tasks?status=running&fragment=1")
    assert reply.status == 200 and reply.headers["X-Fragment"] == "1"
    assert "<html" not in reply.text and "<table" in reply.text
    assert ids_in(reply.text) == ["t-1", "t-3"]
    # links built in a fragment lead to the page, not to another fragment
    assert "fragment" not in reply.text
    page = await alice.fetch("/tasks?status=running")
    assert "X-Fragment" not in page.headers and "<html" in page.text
    assert 'data-refresh="5"' in page.text
    services = await alice.fetch("/services?fragment=1")
    assert services.headers["X-Fragment"] == "1" and "<html" not in services.text
    detail = await alice.fetch("/tasks/t-1?fragment=1")  # no refresh there: the whole page
    assert "X-Fragment" not in detail.headers and "<html" in detail.text


# -- claim, release, assign ---------------------------------------------------------------


async def test_claim_and_release(app: Served) -> None:
    alice, bob = await logged_in(app, "alice"), await logged_in(app, "bob")
    reply = await post_form(alice, "/tasks/t-2", action="claim")
    assert (reply.status, reply.headers["Location"]) == (303, "/tasks/t-2?done=claim")
    page = (await alice.fetch(reply.headers["Location"])).text
    assert "You claimed the task." in page and "Held by <strong>alice</strong> (you)" in page
    assert (await get_assignment(app.store, "t-2")).user == "alice"

    taken = await post_form(bob, "/tasks/t-2", action="claim")
    assert taken.status == 409 and "task t-2 is held by alice" in taken.text
    refused = await post_form(bob, "/tasks/t-2", action="release")
    assert refused.status == 403 and "held by alice, not by bob" in refused.text
    assert (await get_assignment(app.store, "t-2")).user == "alice"

    assert (await post_form(alice, "/tasks/t-2", action="release")).status == 303
    assert (await get_assignment(app.store, "t-2")).user == ""
    assert (await post_form(bob, "/tasks/t-2", action="claim")).status == 303

    entries = await audit.entries(app.store, action="claim")
    assert [(e.actor, e.target, e.outcome) for e in entries] == [
        ("bob", "t-2", "ok"), ("bob", "t-2", "conflict"), ("alice", "t-2", "ok"),
    ]  # fmt: skip
    (refusal,) = await audit.entries(app.store, action="release", actor="bob")
    assert (refusal.outcome, refusal.details) == ("forbidden", {"holder": "alice"})
    history = (await alice.fetch("/tasks/t-2")).text
    assert history.count('<td data-label="Through">web</td>') == 3
    assert "Held by <strong>bob</strong>" in history and "claimed" in history


async def test_a_claim_made_on_an_old_page_is_refused(app: Served) -> None:
    alice, bob = await logged_in(app, "alice"), await logged_in(app, "bob")
    shown = (await alice.fetch("/tasks/t-1")).text
    version = re.search(r'name="version" value="(\d+)"', shown)
    assert version and version.group(1) == "0"
    # meanwhile bob claims it and gives it back: free again, but not as alice saw it
    assert (await post_form(bob, "/tasks/t-1", action="claim")).status == 303
    assert (await post_form(bob, "/tasks/t-1", action="release")).status == 303
    late = await post_form(alice, "/tasks/t-1", action="claim", version="0")
    assert late.status == 409 and "changed meanwhile" in late.text
    assert (await get_assignment(app.store, "t-1")).user == ""


async def test_a_form_without_the_xsrf_token_changes_nothing(app: Served) -> None:
    alice = await logged_in(app, "alice")
    body = b"action=claim"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    reply = await alice.fetch("/tasks/t-1", "POST", body, headers, xsrf=False)
    assert reply.status == 403
    assert (await get_assignment(app.store, "t-1")).version == 0  # never bound


async def test_only_admins_assign(app: Served) -> None:
    alice, root = await logged_in(app, "alice"), await logged_in(app, "root")
    assert (await post_form(alice, "/tasks/t-1", action="claim")).status == 303
    for action in ("assign", "unassign"):
        reply = await post_form(alice, "/tasks/t-1", action=action, user="alice")
        assert reply.status == 403 and "admin role" in reply.text
    detail = (await alice.fetch("/tasks/t-1")).text
    assert 'name="user"' not in detail  # no assign form for a user

    refusals = await audit.entries(app.store, actor="alice", action="assign")
    assert [(e.target, e.outcome) for e in refusals] == [("t-1", "forbidden")]

    form = (await root.fetch("/tasks/t-1")).text
    assert "<option>bob</option>" in form and "<option selected>alice</option>" in form
    reply = await post_form(root, "/tasks/t-1", action="assign", user="bob")
    assert (reply.status, reply.headers["Location"]) == (303, "/tasks/t-1?done=assign")
    assert (await get_assignment(app.store, "t-1")).user == "bob"
    (entry, *_) = await audit.entries(app.store, action="assign", actor="root")
    assert (entry.target, entry.details) == (
        "t-1", {"changed": True, "user": "bob", "holder": "alice"},
    )  # fmt: skip
    assert "assigned by root" in (await alice.fetch("/tasks/t-1")).text

    for bad in ("", "nobody", "x" * 200):
        reply = await post_form(root, "/tasks/t-1", action="assign", user=bad)
        assert reply.status == 400, bad
    await users.set_disabled(app.store, "alice", True)
    assert (await post_form(root, "/tasks/t-1", action="assign", user="alice")).status == 400
    assert (await post_form(root, "/tasks/t-1", action="steal")).status == 400
    assert (await post_form(root, "/tasks/nope", action="claim")).status == 404
    assert (await get_assignment(app.store, "t-1")).user == "bob"

    assert (await post_form(root, "/tasks/t-1", action="unassign")).status == 303
    assert (await get_assignment(app.store, "t-1")).user == ""


# -- services -----------------------------------------------------------------------------


async def test_services_show_state_heartbeat_and_self_preservation(app: Served) -> None:
    clock_now = [datetime.now(UTC)]
    settings = CheckerSettings(self_preservation_min=3)  # the thresholds the page shows
    checker = Checker(app.store, settings, node_id="n1", clock=lambda: clock_now[0])
    ids = [f"svc-{i}" for i in range(4)]
    await register_services(app.store, [TaskService(id=i) for i in ids], clock_now[0])
    await record_heartbeats(app.store, {i: (1, clock_now[0]) for i in ids})
    await checker.check_once()
    app.ctx.extra["pipeline"] = Pipeline(checker=checker)
    alice = await logged_in(app, "alice")

    page = (await alice.fetch("/services")).text
    assert "Self-preservation" not in page
    assert re.search(r'data-service="svc-0".*?data-status>online<', page, re.S)
    assert "Stale after 15 s without a heartbeat, offline after 60 s" in page

    clock_now[0] += timedelta(seconds=20)  # every service silent: more likely our NSQ path
    result = await checker.check_once()
    assert result.self_preservation
    page = (await alice.fetch("/services?fragment=1")).text
    assert "Self-preservation:" in page and "4 of 4 services online" in page
    assert "went quiet" in page

    only = (await alice.fetch("/services?status=online")).text
    assert 'data-service="svc-0"' in only and 'data-service="svc-a"' not in only


async def test_service_detail_has_its_timeline_and_tasks(app: Served) -> None:
    now = datetime.now(UTC)
    checker = Checker(app.store, CheckerSettings(), node_id="n1", clock=lambda: now)
    await record_heartbeats(app.store, {"svc-a": (1, now)})
    await checker.check_once()  # unknown -> online, recorded
    alice = await logged_in(app, "alice")
    page = (await alice.fetch("/services/svc-a")).text
    assert re.search(
        r"unknown</span> → <span[^>]*>online</span>\s*<span class=\"muted\">first heartbeat", page
    )
    assert 'href="/tasks/t-1"' in page and "Not fetched yet." in page
    assert "The heartbeat checker does not run in this daemon" in page


# -- pipeline, dead letters ---------------------------------------------------------------


async def test_pipeline_page_without_running_parts(app: Served) -> None:
    await nodes.heartbeat(app.store, "other-node", to_ms(datetime.now(UTC)))
    alice = await logged_in(app, "alice")
    page = (await alice.fetch("/pipeline")).text
    assert "No NSQ reader runs in this daemon." in page
    assert "No nsqd address is configured" in page
    assert "other-node" in page and "live" in page
    app.ctx.extra["pipeline"] = Pipeline(node_id="other-node", nsqd_http=["http://127.0.0.1:9"])
    fragment = await alice.fetch("/pipeline?fragment=1")
    assert fragment.headers["X-Fragment"] == "1"
    assert "no answer" in fragment.text and "unreachable" in fragment.text
    assert "(this daemon)" in fragment.text


async def test_dead_letters_filtered_by_topic(app: Served) -> None:
    for i, topic in enumerate(("taskdash.service", "taskdash.heartbeat")):
        await add_dead_letter(
            app.store, topic=topic, msg_id=f"m{i}", body=b"{", reason="invalid JSON", field=None,
            attempts=1, node="n", now=datetime.now(UTC),
        )  # fmt: skip
    alice = await logged_in(app, "alice")
    both = (await alice.fetch("/dead-letters")).text
    assert both.count("invalid JSON") == 2
    one = (await alice.fetch("/dead-letters?topic=taskdash.service")).text
    assert one.count("invalid JSON") == 1


# -- users and audit (admins) -------------------------------------------------------------


async def test_admins_manage_users(app: Served) -> None:
    root, alice = await logged_in(app, "root"), await logged_in(app, "alice")
    reply = await post_form(
        root, "/users", action="add", name="carol", role="user", password="pw-carol-0123456789"
    )
    assert (reply.status, reply.headers["Location"]) == (303, "/users?done=user_added")
    assert (await users.get_user(app.store, "carol")).role == "user"  # type: ignore[union-attr]
    assert (
        await post_form(root, "/users", action="role", name="carol", role="admin")
    ).status == 303
    assert (await post_form(root, "/users", action="disable", name="carol")).status == 303
    carol = await users.get_user(app.store, "carol")
    assert carol is not None and (carol.role, carol.disabled) == ("admin", True)
    assert (await post_form(root, "/users", action="enable", name="carol")).status == 303
    assert (
        await post_form(
            root, "/users", action="password", name="carol", password="pw-carol-new-0123456"
        )
    ).status == 303
    client = app.client()
    await client.login("carol", "pw-carol-new-0123456")

    refused = {
        ("add", "carol", "user", "pw-0123456789ab"): (409, "exists already"),
        ("add", "Bad Name", "user", "pw-0123456789ab"): (400, "invalid user name"),
        ("add", "dave", "boss", "pw-0123456789ab"): (400, "role must be one of"),
        ("role", "ghost", "user", ""): (404, "no user"),
        ("fly", "carol", "", ""): (400, "action must be"),
    }
    for (action, name, role, password), (status, message) in refused.items():
        reply = await post_form(
            root, "/users", action=action, name=name, role=role, password=password
        )
        assert reply.status == status and message in html.unescape(reply.text), (
            action,
            name,
            reply.text[:1500],
        )
    # the last enabled admins cannot all go
    assert (await post_form(root, "/users", action="disable", name="carol")).status == 303
    last = await post_form(root, "/users", action="role", name="root", role="user")
    assert last.status == 409 and "last enabled admin" in last.text
    # users cannot
    for action in ("add", "disable"):
        reply = await post_form(
            alice, "/users", action=action, name="bob", role="user", password="pw-0123456789ab"
        )
        assert reply.status == 403
    assert not (await users.get_user(app.store, "bob")).disabled  # type: ignore[union-attr]

    log = (await root.fetch("/audit?actor=root")).text
    assert "user_add" in log and "user_password" in log and "user_role" in log
    assert "alice" not in re.sub(r"<header.*?</header>", "", log, flags=re.S)
    limited = (await root.fetch("/audit?limit=2")).text
    assert limited.count('<td data-label="Action">') == 2 and "Show more" in limited


async def test_store_down_is_an_html_503(app: Served) -> None:
    alice = await logged_in(app, "alice")
    app.ctx.gate.close()
    reply = await alice.fetch("/tasks")
    assert reply.status == 503 and "Unavailable for now" in reply.text


async def test_a_query_that_is_not_utf8_is_a_400(app: Served) -> None:
    alice = await logged_in(app, "alice")
    assert (await alice.fetch("/tasks?status=%ff")).status == 400
    assert (await alice.fetch("/tasks?x=%ff")).status == 400  # kept in the links it builds
