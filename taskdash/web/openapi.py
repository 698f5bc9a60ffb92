"""The OpenAPI 3 document of the JSON API, built from the application's own routes.

Paths, methods and path parameters come from ``taskdash.web.app.ROUTES`` (every route whose
handler is a :class:`~taskdash.web.base.JsonHandler`; HTML pages are not part of the API), so
the document cannot describe a route that does not exist or miss one that does. What each
operation takes and answers comes from the handler: its ``OPENAPI`` table (per method:
summary, query parameters as :class:`Param`, a msgspec body type, answers, admin only), else
its docstrings. The query parameters the document lists are the ones the handler parses
(:meth:`~taskdash.web.api.Api.params` reads the same table), and nothing else is accepted.

Served at ``GET /api/v1/openapi.json`` behind a login or a token, like everything but
``/healthz`` and ``/readyz``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import tornado.routing
import tornado.web

from taskdash import __version__
from taskdash.web.auth import ApiHandler
from taskdash.web.base import JsonHandler, StoreHandler
from taskdash.windows import VERDICTS

Schema = dict[str, Any]
METHODS = ("get", "head", "post", "put", "patch", "delete", "options")
#: the longest id a path may hold, once percent-decoded
MAX_ID = 128


@dataclass(frozen=True)
class Param:
    """One query parameter: how the handler parses it and how the document shows it."""

    name: str
    description: str
    kind: str = "string"  # string | integer | boolean
    enum: tuple[str, ...] = ()
    max_length: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    default: Any = None

    def schema(self) -> Schema:
        out: Schema = {"type": self.kind}
        if self.enum:
            out["enum"] = list(self.enum)
        if self.max_length is not None:
            out["maxLength"] = self.max_length
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.default is not None:
            out["default"] = self.default
        return out


@dataclass(frozen=True)
class Operation:
    """What one method of one handler takes and answers (for the document)."""

    summary: str = ""
    params: Sequence[Param] = ()
    body: type | None = None
    answers: dict[int, tuple[str, str]] = field(default_factory=dict)  # status -> (text, schema)
    admin: bool = False


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def template(pattern: str) -> tuple[str, list[str]]:
    """``/api/v1/tasks/(?P<task_id>[^/]+)`` -> (``/api/v1/tasks/{task_id}``, ``["task_id"]``)."""
    matcher = tornado.routing.PathMatches(pattern)
    count = matcher.regex.groups
    by_index = {index: name for name, index in matcher.regex.groupindex.items()}
    names = [by_index.get(i, "id" if count == 1 else f"p{i}") for i in range(1, count + 1)]
    path = matcher.reverse(*(f"PARAM{i}" for i in range(count))) or ""
    for i, name in enumerate(names):
        path = path.replace(f"PARAM{i}", "{" + name + "}")
    return path, names


def implemented(handler: type[tornado.web.RequestHandler]) -> list[str]:
    """The HTTP methods ``handler`` answers (its own, not RequestHandler's 405)."""
    return [m for m in METHODS if getattr(handler, m) is not getattr(tornado.web.RequestHandler, m)]


def _summary(handler: type[tornado.web.RequestHandler], method: str) -> str:
    doc = inspect.getdoc(getattr(handler, method)) or inspect.getdoc(handler) or ""
    first = doc.split("\n\n")[0].replace("\n", " ")
    first = re.sub(r"^``[^`]*``( ``[^`]*``)?: ", "", first)  # "``GET /x``: y" -> "y"
    return first[:1].upper() + first[1:]


def _answers(handler: type[tornado.web.RequestHandler], method: str, op: Operation) -> Schema:
    error = {"application/json": {"schema": _ref("Error")}}
    out: Schema = {}
    for status, (text, schema) in (op.answers or {200: ("done", "")}).items():
        body = {"content": {"application/json": {"schema": _ref(schema)}}} if schema else {}
        out[str(status)] = {"description": text, **body}
    if op.params or op.body:
        out.setdefault("400", {"description": "a parameter out of bounds (the message names it)"})
    if issubclass(handler, ApiHandler):
        out.setdefault("401", {"description": "no session and no valid token (or a disabled user)"})
        if method not in ("get", "head", "options") or op.admin:
            out.setdefault(
                "403", {"description": "admin only, or XSRF token missing (session only)"}
            )
    if issubclass(handler, StoreHandler):
        out.setdefault("503", {"description": "MongoDB unreachable (store_unavailable)"})
    for status, value in out.items():
        if status[0] in "45":
            value.setdefault("content", error)
    return out


def alias_of(path: str) -> str | None:
    """The /api/v1 path a pre-v1 path (``/api/...``) is an alias of, else None."""
    if path.startswith("/api/") and not path.startswith("/api/v1/"):
        return "/api/v1/" + path.removeprefix("/api/")
    return None


def operation(
    handler: type[tornado.web.RequestHandler], method: str, path: str, bodies: list[type]
) -> Schema:
    """The document's entry for one method of one route."""
    table: dict[str, Operation] = getattr(handler, "OPENAPI", {})
    op = table.get(method, Operation())
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": f"percent-encoded; at most {MAX_ID} characters once decoded",
            "schema": {"type": "string", "maxLength": MAX_ID},
        }
        for name in re.findall(r"{(\w+)}", path)
    ]
    parameters += [
        {"name": p.name, "in": "query", "description": p.description, "schema": p.schema()}
        for p in op.params
    ]
    alias = alias_of(path)
    out: Schema = {
        "summary": op.summary or _summary(handler, method),
        "operationId": f"{method}{handler.__name__}{'Alias' if alias else ''}",
        "parameters": parameters,
        "responses": _answers(handler, method, op),
    }
    if op.body is not None:
        bodies.append(op.body)
        schema = _ref(op.body.__name__)
        out["requestBody"] = {"content": {"application/json": {"schema": schema}}}
    if issubclass(handler, ApiHandler):
        out["security"] = [{"bearer": []}, {"session": []}]
    else:
        out["security"] = []
    if alias:
        out["deprecated"] = True
        out["description"] = f"An alias of {alias}, kept for existing scripts (docs/api.md)."
    return out


def build(routes: Iterable[tuple[str, type[tornado.web.RequestHandler]]]) -> Schema:
    """The OpenAPI 3 document of every JSON route in ``routes``."""
    paths: Schema = {}
    bodies: list[type] = []
    for pattern, handler in routes:
        if not issubclass(handler, JsonHandler):
            continue
        path, _ = template(pattern)
        paths[path] = {m: operation(handler, m, path, bodies) for m in implemented(handler)}
    _, components = msgspec.json.schema_components(
        bodies, ref_template="#/components/schemas/{name}"
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "TaskDash",
            "version": __version__,
            "description": "Services, tasks and their assignments; see docs/api.md.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "taskdash_session"},
            },
            "schemas": {**SCHEMAS, **components},
        },
    }


def _object(properties: dict[str, Schema], required: Iterable[str] | None = None) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties if required is None else required),
    }


_TEXT: Schema = {"type": "string"}
_TIME: Schema = {"type": ["string", "null"], "format": "date-time"}
_INT: Schema = {"type": "integer"}
_CURSOR: Schema = {"type": ["string", "null"]}

SCHEMAS: dict[str, Schema] = {
    "Error": _object(
        {"error": _TEXT, "message": _TEXT, "status": _INT, "holder": _TEXT}, ("error", "message")
    ),
    "Assignment": {
        **_object(
            {
                "user": _TEXT,
                "group_id": _TEXT,
                "reserved": _TEXT,
                "source": {"type": "string", "enum": ["tcp", "web"]},
                "by": _TEXT,
                "at": _TIME,
                "version": _INT,
            }
        ),
        "type": ["object", "null"],  # null: never bound
    },
    "Task": _object(
        {
            **dict.fromkeys(("id", "name", "url", "description", "status", "reserved"), _TEXT),
            "service_id": _CURSOR,
            "start_time": _TEXT,
            "stop_time": _TEXT,
            "window": _ref("Window"),
            "first_seen_at": _TIME,
            "last_seen_at": _TIME,
            "gone": {"type": "boolean"},
            "gone_at": _TIME,
            "assignee": _TEXT,
            "assignment": _ref("Assignment"),
        }
    ),
    "Window": {  # docs/windows.md
        **_object(
            {
                "start": _TEXT,
                "stop": _TEXT,
                "verdict": {"type": ["string", "null"], "enum": [*VERDICTS, None]},
                "out_of_window": {"type": "boolean"},
                "since": _TIME,
            }
        ),
        "type": ["object", "null"],  # null: no daily window
    },
    "TaskPage": _object(
        {
            "tasks": {"type": "array", "items": _ref("Task")},
            "count": _INT,
            "limit": _INT,
            "next": _CURSOR,
            "prev": _CURSOR,
        }
    ),
    "HistoryEntry": _object(
        {
            **dict.fromkeys(("user", "previous_user", "group_id", "source", "by"), _TEXT),
            "at": _TIME,
            "version": _INT,
        }
    ),
    "TaskDetail": _object(
        {"task": _ref("Task"), "history": {"type": "array", "items": _ref("HistoryEntry")}}
    ),
    "Binding": _object({"task": _ref("Task"), "changed": {"type": "boolean"}}),
    "Any": {"type": "object", "additionalProperties": True},
}
