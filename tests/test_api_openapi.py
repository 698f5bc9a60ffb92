"""The OpenAPI document against the real routes: no route undocumented, nothing documented that
the router does not serve, the same methods and path parameters; and it is served behind login.

The document is built from ``app.ROUTES``; this test does not trust that: it walks the routes
with its own reading of each pattern, and it asks the application's router which handler each
documented path reaches.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import tornado.httputil
import tornado.web
from web_client import Served, make_token, make_user, serve

from taskdash.health import Health
from taskdash.settings import load
from taskdash.store import Store
from taskdash.web.app import ROUTES, make_app
from taskdash.web.base import JsonHandler, StoreGate
from taskdash.web.context import WebContext
from taskdash.web.openapi import build

HTTP = ("get", "head", "post", "put", "patch", "delete", "options")
SAMPLE = "sample-1"


def own_methods(handler: type[tornado.web.RequestHandler]) -> set[str]:
    """The methods a class (or a parent below RequestHandler) defines itself."""
    return {
        m
        for m in HTTP
        for klass in handler.__mro__[: handler.__mro__.index(tornado.web.RequestHandler)]
        if m in vars(klass)
    }


def json_routes() -> list[tuple[str, type[tornado.web.RequestHandler]]]:
    return [(p, h) for p, h in ROUTES if issubclass(h, JsonHandler)]


def sample_url(pattern: str) -> str:
    """The pattern with every group replaced by SAMPLE (this test's own reading)."""
    return re.sub(r"\((?:\?P<\w+>)?[^()]*\)", SAMPLE, pattern)


def group_names(pattern: str) -> list[str]:
    named = re.findall(r"\(\?P<(\w+)>", pattern)
    return named or (["id"] if "(" in pattern else [])


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build(ROUTES)


def test_every_json_route_is_documented_with_its_methods_and_path_parameters(
    document: dict[str, Any],
) -> None:
    by_url = {
        re.sub(r"{\w+}", SAMPLE, path): (path, item) for path, item in document["paths"].items()
    }
    assert len(by_url) == len(document["paths"])
    for pattern, handler in json_routes():
        path, item = by_url[sample_url(pattern)]
        assert set(item) == own_methods(handler), (pattern, handler)
        for operation in item.values():
            in_path = [p["name"] for p in operation["parameters"] if p["in"] == "path"]
            assert in_path == group_names(pattern) == re.findall(r"{(\w+)}", path)


def test_every_documented_path_reaches_a_handler_with_those_methods(
    document: dict[str, Any],
) -> None:
    ctx = WebContext(settings=load(env={}), health=Health(), gate=StoreGate())
    app = make_app(ctx)
    assert len(document["paths"]) == len(json_routes())
    for path, item in document["paths"].items():
        line = tornado.httputil.RequestStartLine("GET", re.sub(r"{\w+}", SAMPLE, path), "HTTP/1.1")
        headers = tornado.httputil.HTTPHeaders({"Host": "127.0.0.1"})
        request = tornado.httputil.HTTPServerRequest(start_line=line, headers=headers)
        delegate = app.find_handler(request)
        handler = delegate.handler_class
        assert issubclass(handler, JsonHandler), path
        assert set(item) == own_methods(handler), path


def test_the_document_holds_together(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    text = repr(document)
    for ref in set(re.findall(r"#/components/schemas/(\w+)", text)):
        assert ref in document["components"]["schemas"], ref
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    for path, item in document["paths"].items():
        for method, op in item.items():
            assert op["summary"] and op["responses"], (path, method)
            if path.startswith("/api/") and not path.startswith("/api/v1/"):
                assert op["deprecated"] and "/api/v1/" in op["description"]
    listing = document["paths"]["/api/v1/tasks"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"status", "q", "sort", "after", "limit"}
    assign = document["paths"]["/api/v1/tasks/{task_id}/assign"]["post"]
    body = assign["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert document["components"]["schemas"][body.rsplit("/", 1)[1]]["required"] == ["user"]


@pytest.fixture
async def served(store: Store) -> AsyncIterator[Served]:
    async with serve(store) as running:
        yield running


async def test_served_behind_login_and_every_listed_parameter_is_taken(
    served: Served, store: Store, document: dict[str, Any]
) -> None:
    assert (await served.client().call("/api/v1/openapi.json"))[0] == 401
    await make_user(store, "ann")
    web = served.client(token=await make_token(store, "ann"))
    status, served_document = await web.call("/api/v1/openapi.json")
    assert (status, served_document) == (200, document)
    values = {"integer": "1", "boolean": "false", "string": "x"}
    for param in document["paths"]["/api/v1/tasks"]["get"]["parameters"]:
        if param["name"] in ("after", "before", "mine", "unassigned", "assignee"):
            continue  # cursors must be real ones; holder filters exclude each other
        value = param["schema"].get("enum", [values[param["schema"]["type"]]])[0]
        status, body = await web.call(f"/api/v1/tasks?{param['name']}={value}")
        assert status == 200, (param["name"], body)
