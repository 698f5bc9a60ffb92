"""The JSON API under ``/api/v1``: services, dead letters, tasks and their binding.

Every handler is an :class:`~taskdash.web.auth.ApiHandler` (a session or a bearer token;
nobody -> 401) and reads the store through the gate (503 ``store_unavailable`` at once while
MongoDB is known down). Inputs are bounded and a bad one is a 400 naming it: every query
parameter a method takes is declared in its ``OPENAPI`` table, which both parses it and
documents it (``/api/v1/openapi.json``); any other parameter is refused. Claims, releases,
assignments and unassignments are audited, refusals included. The pre-v1 paths
(``/api/services``...) are aliases of the same handlers, same rules (docs/api.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ClassVar, NoReturn, TypeVar

import msgspec
import tornado.web

from taskdash.store import Store, users
from taskdash.store.assignments import (
    AssignmentConflict,
    NoSuchTask,
    NotHolder,
    assignment_history,
    claim,
    release,
    set_assignment,
)
from taskdash.store.deadletters import list_dead_letters
from taskdash.store.services import get_service, list_services
from taskdash.store.status import history
from taskdash.store.tasklist import (
    GONE,
    MAX_CURSOR,
    MAX_PAGE,
    MAX_SEARCH,
    SORTS,
    BadQuery,
    Cursor,
    TaskQuery,
    find_tasks,
    get_task,
)
from taskdash.store.tasks import get_fetch_result
from taskdash.store.times import to_ms
from taskdash.web.auth import ApiError, ApiHandler
from taskdash.web.base import bounded
from taskdash.web.openapi import MAX_ID, Operation, Param, build

STATUSES = ("online", "stale", "offline", "unknown")
T = TypeVar("T")


class Refusal(ApiError):
    """An error answer with more to say than the message (``holder`` of a task)."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(status, code, message)
        self.extra = extra


class Api(ApiHandler):
    """What every v1 handler shares: parameters parsed from the ``OPENAPI`` table, bounded."""

    OPENAPI: ClassVar[dict[str, Operation]] = {}

    def operation(self) -> Operation:
        method = (self.request.method or "GET").lower()
        return self.OPENAPI.get("get" if method == "head" else method, Operation())

    def params(self, retired: dict[str, str] | None = None) -> dict[str, Any]:
        """This method's query parameters, parsed; 400 naming an unknown or a bad one."""
        declared = {p.name: p for p in self.operation().params}
        for name in self.request.query_arguments:
            if name not in declared:
                hint = (retired or {}).get(name, f"this endpoint takes {', '.join(declared)}")
                self.fail(400, "bad_request", f"unknown parameter {name[:64]!r}: {hint}")
        return {name: self._param(p) for name, p in declared.items()}

    def _param(self, p: Param) -> Any:
        if p.kind == "integer":
            return self.int_argument(p.name, p.default, p.minimum or 0, p.maximum or 0)
        raw = self.get_query_argument(p.name, None)
        if raw is None:
            return p.default
        if p.kind == "boolean":
            if raw not in ("true", "false"):
                self.fail(400, "bad_request", f"{p.name} must be true or false")
            return raw == "true"
        if p.max_length is not None and len(raw) > p.max_length:
            self.fail(400, "bad_request", f"{p.name} is longer than {p.max_length} characters")
        if p.enum and raw not in p.enum:
            self.fail(400, "bad_request", f"{p.name} must be one of {', '.join(p.enum)}")
        return raw

    def path_id(self, name: str, value: str) -> str:
        """A decoded id from the path; 400 naming it when it is longer than any id can be."""
        if len(value) > MAX_ID:
            self.fail(400, "bad_request", f"{name} is longer than {MAX_ID} characters")
        return value

    def body(self, kind: type[T]) -> T:
        """The JSON body as ``kind`` (an empty body is ``{}``); 400 saying what is wrong."""
        raw = self.request.body or b"{}"
        if len(raw) > 16384:
            self.fail(400, "bad_request", "body too large: at most 16384 bytes")
        try:
            return msgspec.json.decode(raw, type=kind)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self.fail(400, "bad_request", f"bad body: {exc}")

    def fail(self, status: int, code: str, message: str, **extra: Any) -> NoReturn:
        raise Refusal(status, code, message, **extra)

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, NoSuchTask):  # gone between a handler's check and its write
            self.send_failure(404, "not_found", "no task with this id")
            return
        super()._handle_request_exception(e)

    async def found(
        self, get: Callable[[Store, str], Awaitable[dict[str, Any] | None]], name: str, value: str
    ) -> dict[str, Any]:
        """``get(store, id)`` of the id in the path parameter ``name``, or 404."""
        found = await get(self.store, self.path_id(name, value))
        if found is None:
            raise tornado.web.HTTPError(404, f"no {name.removesuffix('_id')} with this id")
        return found

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, Refusal):
            self.clear()
            body = {"error": exc.code, "message": exc.message, "status": status_code}
            self.send_json({**body, **exc.extra}, status_code)
            return
        super().write_error(status_code, **kwargs)


# -- services and dead letters ----------------------------------------------------------------

_LIMIT = Param("limit", "how many at most", "integer", minimum=1, maximum=1000, default=100)


class ServicesHandler(Api):
    """``GET /api/v1/services?status=&limit=&skip=``: services by id."""

    OPENAPI = {
        "get": Operation(
            "Services by id, optionally those in one state",
            params=(
                Param("status", "only services in this state", enum=STATUSES),
                _LIMIT,
                Param(
                    "skip", "how many to skip", "integer", minimum=0, maximum=1_000_000, default=0
                ),
            ),
            answers={200: ("{services: [...], count}", "Any")},
        )
    }

    @bounded
    async def get(self) -> None:
        p = self.params()
        found = await list_services(
            self.store, status=p["status"], limit=p["limit"], skip=p["skip"]
        )
        self.send_json({"services": found, "count": len(found)})


class ServiceApi(Api):
    """Shared by the handlers of one service."""

    async def service(self, service_id: str) -> dict[str, Any]:
        """The service, or 404."""
        return await self.found(get_service, "service_id", service_id)


class ServiceHandler(ServiceApi):
    """``GET /api/v1/services/<id>``: one service and its heartbeat state."""

    OPENAPI = {"get": Operation(answers={200: ("the service", "Any"), 404: ("no such", "")})}

    @bounded
    async def get(self, service_id: str) -> None:
        self.send_json(await self.service(service_id))


class ServiceHistoryHandler(ServiceApi):
    """``GET /api/v1/services/<id>/history?limit=``: state changes, newest first."""

    OPENAPI = {
        "get": Operation(
            params=(_LIMIT,), answers={200: ("{id, history}", "Any"), 404: ("no such", "")}
        )
    }

    @bounded
    async def get(self, service_id: str) -> None:
        limit = self.params()["limit"]
        await self.service(service_id)
        events = await history(self.store, service_id, limit)
        self.send_json({"id": service_id, "history": events})


class FetchResultHandler(ServiceApi):
    """``GET /api/v1/services/<id>/fetch``: the last metadata fetch of one service."""

    OPENAPI = {"get": Operation(answers={200: ("the last fetch", "Any"), 404: ("none yet", "")})}

    @bounded
    async def get(self, service_id: str) -> None:
        await self.service(service_id)
        result = await get_fetch_result(self.store, service_id)
        if result is None:
            raise tornado.web.HTTPError(404, "this service was not fetched yet")
        self.send_json(result)


class DeadLettersHandler(Api):
    """``GET /api/v1/dead-letters?topic=&limit=``: messages that could never be applied."""

    OPENAPI = {
        "get": Operation(
            params=(Param("topic", "only this NSQ topic", max_length=64), _LIMIT),
            answers={200: ("{dead_letters: [...], count}, newest first", "Any")},
        )
    }

    @bounded
    async def get(self) -> None:
        p = self.params()
        letters = await list_dead_letters(self.store, topic=p["topic"], limit=p["limit"])
        self.send_json({"dead_letters": letters, "count": len(letters)})


# -- tasks ------------------------------------------------------------------------------------

LISTING = (
    Param("status", "only tasks with this status", max_length=64),
    Param("service_id", "only tasks of this service", max_length=MAX_ID),
    Param("assignee", "only tasks this user holds", max_length=MAX_ID),
    Param("mine", "only tasks the caller holds", "boolean"),
    Param("unassigned", "only tasks nobody holds", "boolean"),
    Param(
        "out_of_window", "true: only tasks out of their daily window; false: the others", "boolean"
    ),
    Param("gone", "tasks their service stopped listing", enum=GONE, default="hide"),
    Param("include_gone", "old name: true = gone=show", "boolean"),
    Param("q", "the id or the name starts with it (any case)", max_length=MAX_SEARCH),
    Param("description", "the description holds it (any case; scans)", max_length=MAX_SEARCH),
    Param("sort", "the order", enum=tuple(SORTS), default="id"),
    Param("order", "ascending or descending", enum=("asc", "desc"), default="asc"),
    Param("limit", "page size", "integer", minimum=1, maximum=MAX_PAGE, default=50),
    Param("after", "the page after this cursor (a page's next)", max_length=MAX_CURSOR),
    Param("before", "the page before this cursor (a page's prev)", max_length=MAX_CURSOR),
)
#: parameters the pre-v1 listing took and this one does not, with what to do instead
RETIRED = {"skip": "pages are keyset pages now: follow next (or prev) with after (or before)"}


class TasksHandler(Api):
    """``GET /api/v1/tasks``: a page of tasks, filtered, searched and sorted (docs/api.md)."""

    OPENAPI = {"get": Operation(params=LISTING, answers={200: ("one page", "TaskPage")})}

    @bounded
    async def get(self) -> None:
        query = self.task_query(self.params(RETIRED))
        try:
            page = await find_tasks(self.store, query)
        except BadQuery as exc:
            self.fail(400, "bad_request", str(exc))
        body = {"tasks": page.tasks, "count": len(page.tasks), "limit": query.limit}
        self.send_json({**body, "next": page.next, "prev": page.prev})

    def task_query(self, p: dict[str, Any]) -> TaskQuery:
        """The parameters as a TaskQuery; 400 when they contradict each other."""
        holders = [name for name in ("assignee", "mine", "unassigned") if p[name]]
        if len(holders) > 1:
            self.fail(400, "bad_request", f"give one of assignee, mine, unassigned, not {holders}")
        assignee = self.user.name if p["mine"] else "" if p["unassigned"] else p["assignee"]
        gone = p["gone"]
        if p["include_gone"] is not None:
            gone = "show" if p["include_gone"] else "hide"
        try:
            cursors = {k: Cursor.decode(p[k], k) for k in ("after", "before") if p[k]}
        except BadQuery as exc:
            self.fail(400, "bad_request", str(exc))
        fields = {k: p[k] for k in ("status", "service_id", "q", "description", "sort", "limit")}
        return TaskQuery(
            **{k: v for k, v in fields.items() if v is not None},
            assignee=assignee,
            out_of_window=p["out_of_window"],
            gone=gone,
            descending=p["order"] == "desc",
            **cursors,
        )


class TaskApi(Api):
    """Shared by the handlers of one task."""

    async def task(self, task_id: str) -> dict[str, Any]:
        """The task, or 404."""
        return await self.found(get_task, "task_id", task_id)

    def now_ms(self) -> int:
        return to_ms(self.now())

    async def done(self, action: str, task_id: str, changed: bool, **details: Any) -> None:
        """Audit the change and answer with the task as it is now."""
        await self.audit(action, target=task_id, changed=changed, **details)
        self.send_json({"task": await self.task(task_id), "changed": changed})

    async def refuse(
        self, action: str, task_id: str, status: int, message: str, holder: str
    ) -> NoReturn:
        """Audit the refusal, then answer it (409 conflict or 403 forbidden, naming the holder)."""
        code = "conflict" if status == 409 else "forbidden"
        await self.audit(action, target=task_id, outcome=code, holder=holder)
        self.fail(status, code, message, holder=holder)

    async def admin_only(self, action: str, task_id: str) -> None:
        """403 (audited) unless the caller is an admin."""
        if self.user.role != "admin":
            await self.audit(action, target=task_id, outcome="forbidden")
            self.require_admin()


_CHANGED = {200: ("the task now, and whether this changed it", "Binding"), 404: ("no such", "")}


class TaskHandler(TaskApi):
    """``GET /api/v1/tasks/<id>``: the task, its binding and the binding's history."""

    OPENAPI = {
        "get": Operation(
            params=(
                Param(
                    "history",
                    "history entries, newest first",
                    "integer",
                    minimum=1,
                    maximum=500,
                    default=100,
                ),
            ),
            answers={200: ("the task and its history", "TaskDetail"), 404: ("no such", "")},
        )
    }

    @bounded
    async def get(self, task_id: str) -> None:
        limit = self.params()["history"]
        task = await self.task(task_id)
        self.send_json(
            {"task": task, "history": await assignment_history(self.store, task_id, limit)}
        )


class ClaimBody(msgspec.Struct, forbid_unknown_fields=True):
    """Claim only if the binding is still at this version (as the page showed it)."""

    version: Annotated[int, msgspec.Meta(ge=0, le=2**53)] | None = None


class ClaimHandler(TaskApi):
    """``POST /api/v1/tasks/<id>/claim``: take a task nobody holds (409 naming the holder)."""

    OPENAPI = {
        "post": Operation(body=ClaimBody, answers={**_CHANGED, 409: ("held by someone", "")})
    }

    @bounded
    async def post(self, task_id: str) -> None:
        version = self.body(ClaimBody).version
        await self.task(task_id)
        try:
            _, changed = await claim(
                self.store, task_id, self.user.name, now_ms=self.now_ms(), expect_version=version
            )
        except AssignmentConflict as exc:
            await self.refuse("claim", task_id, 409, str(exc), exc.holder)
        await self.done("claim", task_id, changed)


class ReleaseHandler(TaskApi):
    """``POST /api/v1/tasks/<id>/release``: give back one's task (an admin: anyone's)."""

    OPENAPI = {"post": Operation(answers={**_CHANGED, 403: ("held by someone else", "")})}

    @bounded
    async def post(self, task_id: str) -> None:
        task = await self.task(task_id)
        now, holder = self.now_ms(), task["assignee"]
        try:
            if self.user.role == "admin" and holder not in ("", self.user.name):
                _, changed = await set_assignment(
                    self.store, task_id, user="", source="web", by=self.user.name, now_ms=now
                )
            else:
                _, changed = await release(self.store, task_id, self.user.name, now_ms=now)
        except NotHolder as exc:
            await self.refuse("release", task_id, 403, str(exc), exc.holder)
        await self.done("release", task_id, changed, holder=holder)


class AssignBody(msgspec.Struct, forbid_unknown_fields=True):
    """Give the task to ``user`` (an enabled account); ``group_id`` kept unless given."""

    user: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    group_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class AssignHandler(TaskApi):
    """``POST /api/v1/tasks/<id>/assign`` ``{"user", "group_id"}``: give a task to a user,
    replacing any claim (admin only)."""

    OPENAPI = {"post": Operation(body=AssignBody, answers=_CHANGED, admin=True)}

    @bounded
    async def post(self, task_id: str) -> None:
        await self.admin_only("assign", task_id)
        wanted = self.body(AssignBody)
        account = await users.get_user(self.store, wanted.user)
        if account is None or account.disabled:
            self.fail(400, "bad_request", f"user: no enabled account {wanted.user!r}")
        holder = (await self.task(task_id))["assignee"]
        _, changed = await set_assignment(
            self.store,
            task_id,
            user=wanted.user,
            group_id=wanted.group_id,
            source="web",
            by=self.user.name,
            now_ms=self.now_ms(),
        )
        await self.done("assign", task_id, changed, user=wanted.user, holder=holder)


class UnassignHandler(TaskApi):
    """``POST /api/v1/tasks/<id>/unassign``: take a task from whoever holds it (admin only)."""

    OPENAPI = {"post": Operation(answers=_CHANGED, admin=True)}

    @bounded
    async def post(self, task_id: str) -> None:
        await self.admin_only("unassign", task_id)
        holder = (await self.task(task_id))["assignee"]
        _, changed = await set_assignment(
            self.store, task_id, user="", source="web", by=self.user.name, now_ms=self.now_ms()
        )
        await self.done("unassign", task_id, changed, holder=holder)


class OpenApiHandler(Api):
    """``GET /api/v1/openapi.json``: this API's OpenAPI 3 document (built from the routes)."""

    OPENAPI = {"get": Operation(answers={200: ("the document", "Any")})}

    def get(self) -> None:
        from taskdash.web.app import ROUTES  # the app imports this module

        self.params()
        self.send_json(build(ROUTES))


#: an id in a path, still percent-encoded: ids are at most 128 characters once decoded, and one
#: character may take 4 bytes of UTF-8, each written as 3 characters (%XX). Longer once decoded:
#: a 400 naming the parameter (:meth:`Api.path_id`); longer still: no route, 404.
_ID = "[^/]{1,1536}"
ID = f"({_ID})"  # as a positional argument (the pages use it)
SERVICE = f"(?P<service_id>{_ID})"
TASK = f"(?P<task_id>{_ID})"

V1 = [
    (r"/api/v1/services", ServicesHandler),
    (rf"/api/v1/services/{SERVICE}", ServiceHandler),
    (rf"/api/v1/services/{SERVICE}/history", ServiceHistoryHandler),
    (rf"/api/v1/services/{SERVICE}/fetch", FetchResultHandler),
    (r"/api/v1/dead-letters", DeadLettersHandler),
    (r"/api/v1/tasks", TasksHandler),
    (rf"/api/v1/tasks/{TASK}", TaskHandler),
    (rf"/api/v1/tasks/{TASK}/claim", ClaimHandler),
    (rf"/api/v1/tasks/{TASK}/release", ReleaseHandler),
    (rf"/api/v1/tasks/{TASK}/assign", AssignHandler),
    (rf"/api/v1/tasks/{TASK}/unassign", UnassignHandler),
    (r"/api/v1/openapi.json", OpenApiHandler),
]
#: the paths there were before /api/v1: served by the same handlers at their old place too (same
#: login, same answers; the task listing's ``skip`` is gone), see docs/api.md
PRE_V1 = {
    "/api/v1/services",
    rf"/api/v1/services/{SERVICE}",
    rf"/api/v1/services/{SERVICE}/history",
    rf"/api/v1/services/{SERVICE}/fetch",
    "/api/v1/dead-letters",
    "/api/v1/tasks",
}
ROUTES = [*V1, *[(p.replace("/api/v1/", "/api/", 1), h) for p, h in V1 if p in PRE_V1]]
