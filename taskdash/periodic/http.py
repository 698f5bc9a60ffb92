"""The HTTP JSON API of the periodic service: the six operations, the seed's seven extensions,
lease extension and redrive; plus ``/metadata`` (the TaskMetaData TaskDash fetches) and health.

Same rules and messages as gRPC (both call :class:`Leasing`); a refusal is
``{"error": "<kind>", "message": "..."}`` with the HTTP status of its kind. A service
authenticates with ``Authorization: Bearer <secret>``; listing services takes the admin token.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog
import tornado.web

from taskdash.errors import StoreError, StoreUnavailable
from taskdash.health import Health
from taskdash.logs import RateLimitedLog
from taskdash.metrics.http import ScrapeHandler, log_function, routed
from taskdash.periodic.auth import token_matches
from taskdash.periodic.errors import Kind, PeriodicError
from taskdash.periodic.leasing import Caller, Leasing
from taskdash.periodic.metadata import metadata
from taskdash.periodic.views import encode
from taskdash.settings import PeriodicSettings

if TYPE_CHECKING:
    from taskdash.metrics import Metrics

log = structlog.get_logger("taskdash.periodic.http")

HTTP_STATUS = {
    Kind.INVALID_ARGUMENT: 400,
    Kind.UNAUTHENTICATED: 401,
    Kind.PERMISSION_DENIED: 403,
    Kind.NOT_FOUND: 404,
    Kind.ALREADY_EXISTS: 409,
    Kind.FAILED_PRECONDITION: 409,
    Kind.INTERNAL: 500,
    Kind.UNAVAILABLE: 503,
}

_TYPES = {str: "a string", int: "an integer", bool: "true or false", float: "a number"}
MAX_DIGITS = 20  # UINT64_MAX has 20 digits; int() of thousands of digits raises ValueError


def _bad(message: str) -> PeriodicError:
    return PeriodicError(Kind.INVALID_ARGUMENT, message)


class Handler(tornado.web.RequestHandler):
    """JSON in and out; every failure becomes ``{"error", "message"}``, never a traceback."""

    leasing: Leasing
    settings_: PeriodicSettings
    _bug_log = RateLimitedLog(log, "periodic_http_failed", every=10.0)

    def initialize(self, leasing: Leasing, settings: PeriodicSettings) -> None:
        self.leasing = leasing
        self.settings_ = settings

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def reply(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(encode(body))

    def fail(self, status: int, error: str, message: str) -> None:
        self.set_status(status)
        if status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="taskdash-periodic"')
        self.finish(json.dumps({"error": error, "message": message}))

    def _handle_request_exception(self, e: BaseException) -> None:
        if self._finished:
            return
        if isinstance(e, PeriodicError):
            self.fail(HTTP_STATUS[e.kind], e.kind.value, str(e))
        elif isinstance(e, StoreUnavailable):
            self.fail(503, "unavailable", "the task store (MongoDB) is unreachable")
        elif isinstance(e, StoreError):
            log.error("periodic_store_error", path=self.request.path, error=str(e))
            self.fail(500, "internal", "the task store refused the operation")
        elif isinstance(e, tornado.web.HTTPError):
            self.fail(e.status_code, "http_error", e.log_message or self._reason)
        else:
            self._bug_log(path=self.request.path, error=repr(e))
            self.fail(500, "internal", "internal error; see the service log")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish(json.dumps({"error": "http_error", "message": self._reason}))

    # --- inputs ------------------------------------------------------------------------

    def body(self) -> dict[str, Any]:
        """The JSON object sent (an empty body is an empty object).

        Any failure to decode it is the client's: a RecursionError (deep nesting) is a 400
        like a syntax error. NaN and Infinity are not JSON, here as in ``task_data``.
        """
        if not self.request.body.strip():
            return {}

        def refuse_constant(name: str) -> None:
            raise ValueError(f"{name} is not JSON")

        try:
            value = json.loads(self.request.body, parse_constant=refuse_constant)
        except RecursionError:
            raise _bad("the body is nested too deeply to be decoded") from None
        except Exception as exc:  # any decoding failure is the input's, never ours
            raise _bad(f"the body is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise _bad("the body must be a JSON object")
        return value

    def field(self, body: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
        """``body[name]`` of type ``kind`` (bool is no integer here), or its default."""
        if name not in body:
            if default is ...:
                raise _bad(f"{name} is required")
            return default
        value = body[name]
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise _bad(f"{name} must be {_TYPES[kind]}")
        return value

    def query_int(self, name: str, default: int, *, saturate: bool = False) -> int:
        """A non-negative integer query argument in ASCII digits (``"²".isdigit()`` is true).

        More than 20 digits is over any uint64: with ``saturate`` (a cursor such as
        ``after``) it means "after everything", 2**64; otherwise it is refused.
        """
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        if not (raw.isascii() and raw.isdigit()):
            raise _bad(f"{name} must be a non-negative integer, got {raw[:40]!r}")
        digits = raw.lstrip("0") or "0"
        if len(digits) > MAX_DIGITS:
            if saturate:
                return 2**64
            raise _bad(f"{name} is too large, got {raw[:40]!r}...")
        return int(digits)

    def caller(self, service: str) -> Caller:
        """The service in the path, with the secret of its ``Authorization: Bearer`` header."""
        scheme, _, secret = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise PeriodicError(
                Kind.UNAUTHENTICATED,
                "send the service's secret as 'Authorization: Bearer <secret>'",
            )
        return Caller(service, secret.strip())


def task_id_arg(raw: str) -> int:
    """The task id in a path: ASCII digits only, at most 20 of them (the range is checked
    with the other fields: above uint64 is refused, above int64 is not found)."""
    digits = raw.lstrip("0") or "0"
    if not (raw.isascii() and raw.isdigit()) or len(digits) > MAX_DIGITS:
        raise _bad(f"task_id must be a positive integer (uint64), got {raw[:40]!r}")
    return int(digits)


class ServicesHandler(Handler):
    """POST: ServiceRegistry. GET: every service (admin token)."""

    async def post(self) -> None:
        name = self.field(self.body(), "service_name", str)
        secret = await self.leasing.register(name)
        self.reply({"service_name": name, "secret": secret}, 201)

    async def get(self) -> None:
        _scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        if not self.settings_.admin_token:
            raise PeriodicError(
                Kind.PERMISSION_DENIED, "listing services is off: set [periodic] admin_token"
            )
        if not token_matches(token.strip(), self.settings_.admin_token):
            raise PeriodicError(
                Kind.UNAUTHENTICATED, "send the admin token as 'Authorization: Bearer <token>'"
            )
        after = self.get_query_argument("after", "")
        services = await self.leasing.list_services(after, self.query_int("limit", 0))
        self.reply({"services": services})


class ServiceHandler(Handler):
    """DELETE: deregister the service, with its queues and tasks."""

    async def delete(self, service: str) -> None:
        await self.leasing.deregister(self.caller(service))
        self.reply({"success": True})


class QueuesHandler(Handler):
    """POST: CreatePeriodicTaskQueue. GET: the service's queues."""

    async def post(self, service: str) -> None:
        queue = self.field(self.body(), "queue_name", str)
        await self.leasing.create_queue(self.caller(service), queue)
        self.reply({"success": True}, 201)

    async def get(self, service: str) -> None:
        self.reply({"queues": await self.leasing.list_queues(self.caller(service))})


class QueueHandler(Handler):
    """DELETE: destroy the queue with its tasks."""

    async def delete(self, service: str, queue: str) -> None:
        await self.leasing.destroy_queue(self.caller(service), queue)
        self.reply({"success": True})


class QueueActionHandler(Handler):
    """POST start / stop (this node) / lease (GetTaskList) / redrive."""

    async def post(self, service: str, queue: str, action: str) -> None:
        who, body = self.caller(service), self.body()
        if action == "start":
            await self.leasing.start_queue(who, queue)
            self.reply({"success": True})
        elif action == "stop":
            was = await self.leasing.stop_queue(who, queue)
            self.reply({"success": True, "was_started": was})
        elif action == "lease":
            limit = self.field(body, "limit", int, 0)
            if limit < 0:
                raise _bad("limit must be >= 0")
            self.reply({"task_list": await self.leasing.lease(who, queue, limit)})
        else:
            task_id = self.field(body, "task_id", int, None)
            count = await self.leasing.redrive(who, queue, task_id)
            self.reply({"success": True, "redriven": count})


class TasksHandler(Handler):
    """POST: CreateTask (``task_data`` is any JSON value). GET: the full list, paged."""

    async def post(self, service: str, queue: str) -> None:
        body = self.body()
        task_type = self.field(body, "task_type", str, "")
        if "task_data" not in body:
            raise _bad("task_data is required (any JSON value)")
        try:
            data = json.dumps(body["task_data"], ensure_ascii=False, separators=(",", ":"))
        except RecursionError:  # decoded within the limit, but encoding nests deeper
            raise _bad("task_data is nested too deeply to be decoded") from None
        task_id = await self.leasing.create_task(self.caller(service), queue, task_type, data)
        self.reply({"success": True, "task_id": task_id}, 201)

    async def get(self, service: str, queue: str) -> None:
        state = self.get_query_argument("state", None)
        after = self.query_int("after", 0, saturate=True)
        limit = self.query_int("limit", 0)
        tasks = await self.leasing.list_tasks(
            self.caller(service), queue, state=state, after=after, limit=limit
        )
        next_after = tasks[-1]["task_id"] if tasks else None
        self.reply({"tasks": tasks, "next_after": next_after})


class TaskHandler(Handler):
    """GET one task; DELETE destroys it."""

    async def get(self, service: str, queue: str, raw_id: str) -> None:
        task = await self.leasing.get_task(self.caller(service), queue, task_id_arg(raw_id))
        self.reply(task)

    async def delete(self, service: str, queue: str, raw_id: str) -> None:
        await self.leasing.delete_task(self.caller(service), queue, task_id_arg(raw_id))
        self.reply({"success": True})


class TaskActionHandler(Handler):
    """POST complete (CompleteTask) / extend (the lease)."""

    async def post(self, service: str, queue: str, raw_id: str, action: str) -> None:
        who, body, task_id = self.caller(service), self.body(), task_id_arg(raw_id)
        if action == "complete":
            success = self.field(body, "success", bool)
            state = await self.leasing.complete(who, queue, task_id, success)
            self.reply({"success": True, "state": state})
        else:
            seconds = self.field(body, "seconds", float, self.settings_.visibility_timeout)
            try:
                as_float = float(seconds)
            except OverflowError:  # an integer too large for a float (10**400)
                raise _bad(
                    f"seconds must be > 0 and <= 43200, got {str(seconds)[:40]}..."
                ) from None
            until = await self.leasing.extend(who, queue, task_id, as_float)
            self.reply({"success": True, "lease_until": until})


class MetadataHandler(Handler):
    """The tasks as TaskDash's TaskMetaData records (what its fetcher GETs)."""

    async def get(self) -> None:
        base = self.settings_.advertise_url or f"{self.request.protocol}://{self.request.host}"
        self.reply(await metadata(self.leasing, base, self.settings_.metadata_limit))


class HealthHandler(Handler):
    """``/healthz``: the process runs. ``/readyz``: the store answers."""

    def initialize(self, leasing: Leasing, settings: PeriodicSettings, health: Health) -> None:
        super().initialize(leasing, settings)
        self.health = health

    def get(self, which: str) -> None:
        if which == "healthz":
            self.reply({"status": "ok", "node_id": self.leasing.node_id})
            return
        ready, components = self.health.report()
        body = {"status": "ready" if ready else "not ready", "components": components}
        self.reply(body, 200 if ready else 503)


class NotFound(Handler):
    def prepare(self) -> None:
        self.fail(404, "not_found", f"no such endpoint: {self.request.method} {self.request.path}")


NAME = r"([^/]+)"
SERVICE = rf"/v1/services/{NAME}"
QUEUE = rf"{SERVICE}/queues/{NAME}"


Route = tuple[str, type, dict[str, Any]]


def make_app(
    leasing: Leasing,
    settings: PeriodicSettings,
    health: Health,
    extra: Sequence[Route] = (),
    metrics: Metrics | None = None,
) -> tornado.web.Application:
    """The routes (plus ``extra``, the schedules' for one); resources are passed in.

    With ``metrics``: ``/metrics``, and every request counted by route pattern and status.
    """
    res = {"leasing": leasing, "settings": settings}
    return tornado.web.Application(
        routed(
            [
                (r"/(healthz|readyz)", HealthHandler, {**res, "health": health}),
                (r"/metadata", MetadataHandler, res),
                (r"/v1/services", ServicesHandler, res),
                (rf"{SERVICE}", ServiceHandler, res),
                (rf"{SERVICE}/queues", QueuesHandler, res),
                (rf"{QUEUE}", QueueHandler, res),
                (rf"{QUEUE}/(start|stop|lease|redrive)", QueueActionHandler, res),
                (rf"{QUEUE}/tasks", TasksHandler, res),
                (rf"{QUEUE}/tasks/([^/]+)", TaskHandler, res),
                (rf"{QUEUE}/tasks/([^/]+)/(complete|extend)", TaskActionHandler, res),
                *extra,
                (r"/metrics", ScrapeHandler, {"metrics": metrics}),
            ]
        ),
        default_handler_class=NotFound,
        default_handler_args=res,
        log_function=log_function(metrics),
    )
