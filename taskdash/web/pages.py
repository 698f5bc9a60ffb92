"""The dashboard's HTML pages: tasks, services, pipeline, dead letters, users, audit.

Every page is a :class:`~taskdash.web.auth.PageHandler` (nobody -> the login form; errors are
pages) rendering a Tornado template from ``templates/`` with autoescaping on: every value a
service, a publisher or a user sent is shown as text. The pages that refresh by themselves
(tasks, services, pipeline) answer ``?fragment=1`` with their table alone (header
``X-Fragment: 1``), which ``static/app.js`` fetches every few seconds.

State changes are POST forms carrying the XSRF token; each redirects back with ``?done=<code>``
(a fixed message, never text from the request), or shows the page again with the problem and
the matching status (400, 403, 404, 409).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import tornado.web

from taskdash.errors import ValidationError
from taskdash.store import (
    assignments,
    deadletters,
    services,
    status,
    task_windows,
    tasklist,
    tokens,
    users,
)
from taskdash.store import audit as audit_log
from taskdash.store.alerts import recent as recent_alerts
from taskdash.store.tasks import get_fetch_result, get_fetch_results
from taskdash.store.times import from_ms, to_ms
from taskdash.web import account
from taskdash.web.api import ID
from taskdash.web.auth import PageHandler
from taskdash.web.base import JsonHandler, bounded
from taskdash.web.context import WebContext
from taskdash.web.pipeline import WINDOWS, Pipeline, node_rows

#: seconds between two refreshes of a page's table (app.js reads it from data-refresh)
REFRESH = 5
PAGE_SIZES = (25, 50, 100)
#: the service page shows this many of the service's latest alert deliveries
ALERTS_SHOWN = 10
#: the longest text filter accepted (search, status, service, user names)
MAX_FILTER = 128
#: the services page shows this many at most per page (each with its last fetch)
SERVICE_PAGE = 50
SERVICE_STATUSES = (status.ONLINE, status.STALE, status.OFFLINE, status.UNKNOWN)
DONE = {
    "claim": "You claimed the task.",
    "release": "You released the task.",
    "assign": "The task is assigned.",
    "unassign": "The task is unassigned.",
    "user_added": "The user is created.",
    "user_changed": "The user is changed.",
    "password_set": "The password is changed; the user's sessions are ended.",
    "own_password": "Your password is changed; your other sessions are ended.",
    "token_revoked": "The token is revoked.",
}
#: task status words (the services' own, free text) that get a colour beside their text
_STATUS_TONES = {
    "ok": ("online", "finish", "finished", "done", "success", "succeeded", "ok", "completed"),
    "busy": ("running", "active", "started", "busy", "processing"),
    "warn": ("stale", "waiting", "pending", "paused", "retrying", "queued"),
    "bad": ("offline", "failed", "fail", "error", "dead", "killed", "gone"),
}
_TONE_OF = {word: tone for tone, words in _STATUS_TONES.items() for word in words}
#: a daily-window verdict (taskdash/windows.py) in words; None: the task reports no status
WINDOW_VERDICTS = {
    "ok": "as expected",
    "running_outside": "running outside its window",
    "idle_inside": "not running inside its window",
    None: "not judged: no status",
}


def epoch_ms(value: object) -> int | None:
    """A stored or shown time (epoch ms, ISO-8601 text, datetime) as epoch ms; None if none."""
    if isinstance(value, bool) or value is None or value == "":
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, datetime):
        return to_ms(value)
    if isinstance(value, str):
        try:
            return to_ms(datetime.fromisoformat(value))
        except ValueError:
            return None
    return None


def age_text(seconds: float) -> str:
    """``12 s ago``, ``3 min ago``, ``2 h ago``, ``4 d ago`` (``in 5 s`` for the future)."""
    whole = int(abs(seconds))
    if whole < 1:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if whole >= size:
            text = f"{whole // size} {unit}"
            break
    else:
        text = f"{whole} s"
    return f"in {text}" if seconds < 0 else f"{text} ago"


def when(value: object, now_ms: int) -> str:
    """A ``<time>`` element showing the age (app.js keeps it current); ``—`` if no time."""
    at = epoch_ms(value)
    if at is None:
        return '<span class="none">—</span>'
    iso = from_ms(at).isoformat(timespec="seconds").replace("+00:00", "Z")
    return (
        f'<time class="age" datetime="{iso}" title="{iso}">{age_text((now_ms - at) / 1000)}</time>'
    )


def tone(word: object) -> str:
    """The colour class of a status word (``t-ok``...); the word itself is always shown too."""
    return f"t-{_TONE_OF.get(str(word).strip().lower(), 'plain')}"


def web_link(url: object) -> bool:
    """Whether ``url`` may be a link: http(s) only (never ``javascript:``, ``data:``...)."""
    if not isinstance(url, str) or len(url) > 2048:
        return False
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def path_id(value: str) -> str:
    """An id as one path segment (``/`` and everything else percent-encoded)."""
    return urllib.parse.quote(value, safe="")


class Page(PageHandler):
    """A dashboard page: template helpers, bounded query arguments, the fragment variant."""

    #: the template shown alone for ``?fragment=1`` ("" = the page does not refresh)
    fragment = ""
    #: only admins may see the page (users get the 403 page)
    admin_only = False

    def initialize(self, ctx: WebContext) -> None:
        super().initialize(ctx)
        self.gate = ctx.gate  # what :func:`bounded` reads

    def admit(self) -> None:
        super().admit()
        if self.admin_only and self.user is not None:
            self.require_admin()

    @property
    def pipeline(self) -> Pipeline:
        """The running parts' figures (an empty view when this process runs none)."""
        found = self.ctx.extra.get("pipeline")
        return found if isinstance(found, Pipeline) else Pipeline()

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = super().get_template_namespace()
        now_ms = to_ms(self.now())
        done = DONE.get(self.get_query_argument("done", ""))
        namespace.update(
            now_ms=now_ms,
            when=lambda value: when(value, now_ms),
            epoch_ms=epoch_ms,
            tone=tone,
            web_link=web_link,
            path_id=path_id,
            qs=self.qs,
            refresh=REFRESH,
            flash=("ok", done) if done else None,
            problem=None,
            is_admin=self.user is not None and self.user.role == "admin",
            window_verdicts=WINDOW_VERDICTS,
        )
        return namespace

    def text_argument(self, name: str, limit: int = MAX_FILTER) -> str:
        """A query or form argument, stripped; 400 naming it when longer than ``limit``."""
        value = self.get_argument(name, "").strip()
        if len(value) > limit:
            raise tornado.web.HTTPError(400, "%s is longer than %d characters", name, limit)
        return value

    #: an integer query argument within bounds, else a 400 naming it (the API's own rule)
    int_argument = JsonHandler.int_argument

    def qs(self, **changes: object) -> str:
        """This page's query string with ``changes`` (None or "" drops a key), ``?``-prefixed."""
        args = {k: self.get_query_argument(k) for k in self.request.query_arguments}
        for key in ("fragment", "done"):
            args.pop(key, None)
        for key, value in changes.items():
            if value is None or value == "":
                args.pop(key, None)
            else:
                args[key] = str(value)
        return "?" + urllib.parse.urlencode(args) if args else self.request.path

    @property
    def wants_fragment(self) -> bool:
        return bool(self.fragment) and self.get_query_argument("fragment", "") == "1"

    def show(self, template: str, status: int = 200, **values: Any) -> None:
        """Render the page, or its refreshable fragment alone when asked for."""
        self.set_status(status)
        if self.wants_fragment:
            self.set_header("X-Fragment", "1")
            self.render(self.fragment, **values)
        else:
            self.render(template, **values)

    def back(self, done: str) -> None:
        """After a change: back to this page, which says what was done (POST-redirect-GET)."""
        self.redirect(f"{self.request.path}?done={done}", status=303)


class RootPage(Page):
    """``/``: the tasks."""

    def get(self) -> None:
        self.redirect("/tasks")


#: the columns a table can be sorted by, with their heads (store/tasklist.py SORTS)
SORT_LABELS = {"id": "ID", "name": "Name", "status": "Status", "service": "Service",
               "assignee": "Assignee", "last_seen": "Last seen"}  # fmt: skip
GONE_LABELS = {"hide": "hidden", "show": "shown too", "only": "only gone"}


@dataclass
class TaskFilters:
    """The tasks page's filters, as given (bounded) in the query string."""

    status: str = ""
    service: str = ""
    assignee: str = ""
    q: str = ""
    description: str = ""
    mine: bool = False
    unassigned: bool = False
    out_of_window: bool = False
    gone: str = "hide"
    sort: str = "id"
    per: int = PAGE_SIZES[1]

    @property
    def descending(self) -> bool:
        return self.sort.startswith("-")


class TasksPage(Page):
    """``/tasks``: the seed's table, filtered, searched, sorted, a keyset page at a time."""

    fragment = "_tasks_table.html"

    def filters(self) -> TaskFilters:
        f = TaskFilters(
            **{k: self.text_argument(k) for k in ("status", "service", "assignee", "q")},
            description=self.text_argument("description"),
            mine=self.get_query_argument("mine", "") == "1",
            unassigned=self.get_query_argument("unassigned", "") == "1",
            out_of_window=self.get_query_argument("out_of_window", "") == "1",
            gone=self.text_argument("gone") or "hide",
            sort=self.text_argument("sort") or "id",
            per=self.int_argument("per", PAGE_SIZES[1], 1, tasklist.MAX_PAGE),
        )
        if sum((bool(f.assignee), f.mine, f.unassigned)) > 1:
            raise tornado.web.HTTPError(400, "give one of assignee, mine, unassigned")
        return f

    def query(self, f: TaskFilters) -> tasklist.TaskQuery:
        """The store's query for these filters and the page's cursor; 400 naming a bad one."""
        assignee = self.user.name if f.mine else "" if f.unassigned else f.assignee or None
        cursors = {k: self.text_argument(k, tasklist.MAX_CURSOR) for k in ("after", "before")}
        return tasklist.TaskQuery(
            status=f.status or None,
            service_id=f.service or None,
            assignee=assignee,
            out_of_window=True if f.out_of_window else None,
            gone=f.gone,  # type: ignore[arg-type]  # checked by the store
            q=f.q,
            description=f.description,
            sort=f.sort.removeprefix("-"),
            descending=f.descending,
            limit=f.per,
            **{k: tasklist.Cursor.decode(v, k) for k, v in cursors.items() if v},
        ).checked()

    @bounded
    async def get(self) -> None:
        f = self.filters()
        try:
            page = await tasklist.find_tasks(self.store, self.query(f))
        except tasklist.BadQuery as exc:
            raise tornado.web.HTTPError(400, "%s", exc) from None
        self.show(
            "tasks.html",
            tasks=page.tasks,
            page=page,
            f=f,
            sorts=SORT_LABELS,
            gones=GONE_LABELS,
            page_sizes=PAGE_SIZES,
        )


class TaskPage(Page):
    """``/tasks/<id>``: its fields, claim / release, assign / unassign, the history."""

    @bounded
    async def get(self, task_id: str) -> None:
        await self.show_task(task_id)

    async def show_task(self, task_id: str, status: int = 200, problem: str = "") -> None:
        task = await tasklist.get_task(self.store, task_id)
        if task is None:
            raise tornado.web.HTTPError(404, "no task with this id")
        people = await users.list_users(self.store) if self.user.role == "admin" else []
        self.show(
            "task.html",
            status,
            task=task,
            binding=await assignments.get_assignment(self.store, task_id),
            history=await assignments.assignment_history(self.store, task_id, limit=50),
            window_events=await task_windows.window_events(self.store, task_id, limit=10),
            window_zone=self.ctx.settings.tasks.window_timezone or "this machine's time zone",
            people=[p for p in people if not p.disabled],
            problem=problem,
        )

    @bounded
    async def post(self, task_id: str) -> None:
        action = self.text_argument("action")
        act = {
            "claim": self.claim,
            "release": self.release,
            "assign": self.assign,
            "unassign": self.unassign,
        }.get(action)
        if act is None:
            raise tornado.web.HTTPError(400, "action must be claim, release, assign or unassign")
        if action in ("assign", "unassign") and self.user.role != "admin":
            await self.audit(action, target=task_id, outcome="forbidden")
            self.require_admin()
        try:
            changed, details = await act(task_id)
        except assignments.NoSuchTask:
            raise tornado.web.HTTPError(404, "no task with this id") from None
        except assignments.AssignmentConflict as exc:
            # NotHolder: a release of someone else's task is not this user's to do
            status = 403 if isinstance(exc, assignments.NotHolder) else 409
            outcome = "forbidden" if status == 403 else "conflict"
            await self.audit(action, target=task_id, outcome=outcome, holder=exc.holder)
            await self.show_task(task_id, status, str(exc))
            return
        await self.audit(action, target=task_id, changed=changed, **details)
        self.back(action)

    async def claim(self, task_id: str) -> tuple[bool, dict[str, str]]:
        """Take the task if nobody holds it and it is still as the page showed it."""
        version = self.get_body_argument("version", "")
        # ASCII digits, within what a binding's version can be ("²" is a digit to isdigit())
        if version and not (version.isascii() and version.isdigit() and len(version) <= 15):
            raise tornado.web.HTTPError(400, "version must be a binding's version number")
        _, changed = await assignments.claim(
            self.store,
            task_id,
            self.user.name,
            now_ms=to_ms(self.now()),
            expect_version=int(version) if version else None,
        )
        return changed, {}

    async def release(self, task_id: str) -> tuple[bool, dict[str, str]]:
        """Give back one's own task; an admin releases anyone's (the API's rule)."""
        holder = (await assignments.get_assignment(self.store, task_id)).user
        if self.user.role == "admin" and holder not in ("", self.user.name):
            changed, _ = await self.hand_to(task_id, "")
            return changed, {"holder": holder}
        now_ms = to_ms(self.now())
        _, changed = await assignments.release(self.store, task_id, self.user.name, now_ms=now_ms)
        return changed, {"holder": holder}

    async def assign(self, task_id: str) -> tuple[bool, dict[str, str]]:
        """An admin gives the task to an enabled user, replacing any claim."""
        return await self.hand_to(task_id, await self.assignee())

    async def unassign(self, task_id: str) -> tuple[bool, dict[str, str]]:
        """An admin takes the task from whoever holds it."""
        return await self.hand_to(task_id, "")

    async def hand_to(self, task_id: str, user: str) -> tuple[bool, dict[str, str]]:
        holder = (await assignments.get_assignment(self.store, task_id)).user
        _, changed = await assignments.set_assignment(
            self.store, task_id, user=user, source="web", by=self.user.name,
            now_ms=to_ms(self.now()),
        )  # fmt: skip
        return changed, {"user": user, "holder": holder} if user else {"holder": holder}

    async def assignee(self) -> str:
        """The user an admin assigns to: an enabled account (400 otherwise)."""
        name = self.text_argument("user")
        account = await users.get_user(self.store, name) if name else None
        if account is None or account.disabled:
            raise tornado.web.HTTPError(400, "choose an enabled user to assign the task to")
        return account.name


class ServicesPage(Page):
    """``/services``: status, heartbeat age against the thresholds, last fetch."""

    fragment = "_services_table.html"

    @bounded
    async def get(self) -> None:
        state = self.text_argument("status")
        if state and state not in SERVICE_STATUSES:
            raise tornado.web.HTTPError(
                400, "status must be one of %s", ", ".join(SERVICE_STATUSES)
            )
        page = self.int_argument("page", 1, 1, 100_000)
        rows = await services.list_services(
            self.store, status=state or None, limit=SERVICE_PAGE + 1, skip=(page - 1) * SERVICE_PAGE
        )
        more, rows = len(rows) > SERVICE_PAGE, rows[:SERVICE_PAGE]
        fetches = await get_fetch_results(self.store, [r["id"] for r in rows])
        for row in rows:
            row["fetch"] = fetches.get(row["id"])
        numbers = await asyncio.gather(*(status.count(self.store, s) for s in SERVICE_STATUSES))
        counts = dict(zip(SERVICE_STATUSES, numbers, strict=True))
        self.show(
            "services.html",
            services=rows,
            counts=counts,
            state=state,
            page=page,
            more=more,
            thresholds=self.ctx.settings.checker,
            checker=self.pipeline.checker_view(),
        )


class ServicePage(Page):
    """``/services/<id>``: the service, its last fetch, its state-change timeline, its tasks."""

    @bounded
    async def get(self, service_id: str) -> None:
        found = await services.get_service(self.store, service_id)
        if found is None:
            raise tornado.web.HTTPError(404, "no service with this id")
        query = tasklist.TaskQuery(service_id=service_id, gone="show", limit=50)
        tasks = await tasklist.find_tasks(self.store, query)
        self.show(
            "service.html",
            service=found,
            fetch=await get_fetch_result(self.store, service_id),
            timeline=await status.history(self.store, service_id, limit=100),
            alerts=await recent_alerts(self.store, service_id, ALERTS_SHOWN),
            tasks=tasks.tasks,
            more_tasks=tasks.next is not None,
            thresholds=self.ctx.settings.checker,
            checker=self.pipeline.checker_view(),
        )


class PipelinePage(Page):
    """``/pipeline``: NSQ next to what TaskDash does with it (see :mod:`.pipeline`)."""

    fragment = "_pipeline_body.html"

    @bounded
    async def get(self) -> None:
        pipeline = self.pipeline
        fetcher = self.ctx.settings.fetcher
        nodes = await node_rows(
            self.store,
            node_id=pipeline.node_id,
            now_ms=to_ms(self.now()),
            live_within_ms=int(fetcher.node_timeout * 1000),
        )
        self.show(
            "pipeline.html",
            readers=pipeline.reader_rows(),
            windows=WINDOWS,
            nsqds=await pipeline.nsqd_rows(),
            checker=pipeline.checker_view(),
            fetcher=pipeline.fetcher_view(),
            nodes=nodes,
        )


class DeadLettersPage(Page):
    """``/dead-letters``: messages that could never be applied, newest first."""

    @bounded
    async def get(self) -> None:
        topic = self.text_argument("topic")
        limit = self.int_argument("limit", 100, 1, 1000)
        letters = await deadletters.list_dead_letters(self.store, topic=topic or None, limit=limit)
        self.show("dead_letters.html", letters=letters, topic=topic, limit=limit)


#: the users page's form actions -> the audit action the account API writes for the same change
USER_ACTIONS = {"add": "user.create", "password": "user.password"}


class UsersPage(Page):
    """``/users`` (admins): accounts, and the forms to add, change, disable, set a password."""

    admin_only = True

    @bounded
    async def get(self) -> None:
        await self.show_users()

    async def show_users(self, status: int = 200, problem: str = "") -> None:
        accounts = await users.list_users(self.store)
        self.show("users.html", status, accounts=accounts, roles=users.ROLES, problem=problem)

    @bounded
    async def post(self) -> None:
        action, name = self.text_argument("action"), self.text_argument("name")
        try:
            done = await self.change(action, name)
        except (ValidationError, users.UserExists, users.UnknownUser, users.LastAdmin) as exc:
            audited = USER_ACTIONS.get(action, "user.change")
            await self.audit(audited, target=name, outcome="refused", why=str(exc))
            status = 404 if isinstance(exc, users.UnknownUser) else 409
            await self.show_users(400 if isinstance(exc, ValidationError) else status, str(exc))
            return
        self.back(done)

    async def change(self, action: str, name: str) -> str:
        """Apply one user change, audited as the account API audits it; returns its ``done``
        code."""
        if action == "add":
            role = self.role()
            await users.add_user(
                self.store, name, self.get_body_argument("password", ""), role=role
            )
            await self.audit("user.create", target=name, role=role)
            return "user_added"
        if action == "role":
            role = self.role()
            await users.change_guarded(self.store, name, role=role)
            await self.audit("user.change", target=name, role=role)
            return "user_changed"
        if action in ("disable", "enable"):
            disabled = action == "disable"
            await users.change_guarded(self.store, name, disabled=disabled)
            await self.audit("user.change", target=name, disabled=disabled)
            return "user_changed"
        if action == "password":
            keep = self.session_key if name == self.user.name else None  # one's own: stay in
            password = self.get_body_argument("password", "")
            await users.set_password(self.store, name, password, keep_session=keep)
            await self.audit("user.password", target=name)
            return "password_set"
        raise tornado.web.HTTPError(400, "action must be add, role, disable, enable or password")

    def role(self) -> users.Role:
        role = self.text_argument("role")
        if role not in users.ROLES:
            raise ValidationError(f"role must be one of {', '.join(users.ROLES)}", field="role")
        return role  # type: ignore[return-value]


class AccountPage(Page):
    """``/account``: one's own API tokens (create: the secret shown once, on this answer
    only; revoke) and password, as the account API does it (same checks, same audit)."""

    @bounded
    async def get(self) -> None:
        await self.show_account()

    async def show_account(self, status: int = 200, problem: str = "", **values: Any) -> None:
        listed = await tokens.list_for(self.store, self.user.name)
        values = {"secret": None, "created": None, "token_name": "", **values}
        self.show("account.html", status, tokens=listed, problem=problem, **values)

    @bounded
    async def post(self) -> None:
        action = self.text_argument("action")
        if action == "token":
            await self.create_token()
        elif action == "revoke":
            token_id = self.text_argument("id", 64)
            if not await account.revoke(self, self.user.name, token_id):
                raise tornado.web.HTTPError(404, "you have no such token")
            self.back("token_revoked")
        elif action == "password":
            await self.change_password()
        else:
            raise tornado.web.HTTPError(400, "action must be token, revoke or password")

    async def create_token(self) -> None:
        name = self.get_body_argument("name", "")
        days = self.get_body_argument("expires_in_days", "").strip()
        try:
            wanted = msgspec.convert(
                {"name": name, "expires_in_days": days or None}, account.TokenBody, strict=False
            )
            secret, token = await account.create_token(self, wanted)
        except msgspec.ValidationError as exc:
            await self.show_account(400, f"token: {exc}", token_name=name[:64])
            return
        except tokens.TooManyTokens as exc:
            await self.show_account(409, str(exc), token_name=name[:64])
            return
        # the secret is in this answer only: never in a URL, never stored (no-store)
        await self.show_account(201, secret=secret, created=token)

    async def change_password(self) -> None:
        current = self.get_body_argument("current", "")[: account.MAX_PASSWORD_FIELD + 1]
        new = self.get_body_argument("new", "")
        try:
            outcome = await account.change_own_password(self, current, new)
        except ValidationError as exc:
            await self.show_account(400, str(exc))
            return
        if outcome.throttled:
            self.set_header("Retry-After", account.retry_after(outcome))
            await self.show_account(429, account.throttled_message(outcome))
        elif outcome.user is None:
            await self.show_account(403, account.WRONG_CURRENT)
        else:
            self.back("own_password")


class AuditPage(Page):
    """``/audit`` (admins): who did what, when, from where; newest first, filtered."""

    admin_only = True

    @bounded
    async def get(self) -> None:
        actor, action = self.text_argument("actor"), self.text_argument("action")
        limit = self.int_argument("limit", 100, 1, audit_log.MAX_LIMIT)
        entries = await audit_log.entries(
            self.store, actor=actor or None, action=action or None, limit=limit
        )
        self.show("audit.html", entries=entries, actor=actor, action=action, limit=limit)


ROUTES = [
    (r"/", RootPage),
    (r"/tasks", TasksPage),
    (rf"/tasks/{ID}", TaskPage),
    (r"/services", ServicesPage),
    (rf"/services/{ID}", ServicePage),
    (r"/pipeline", PipelinePage),
    (r"/dead-letters", DeadLettersPage),
    (r"/users", UsersPage),
    (r"/audit", AuditPage),
    (r"/account", AccountPage),
]
