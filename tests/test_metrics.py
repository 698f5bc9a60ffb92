"""``/metrics`` of the web application, in process on a loopback port: the token, the formats,
route-pattern labels, one registry per application; the label tables."""

from __future__ import annotations

import asyncio
import gzip
import os
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import tornado.httpserver
import tornado.netutil
from web_client import Reply, WebClient

from taskdash.errors import ConfigError
from taskdash.fetcher.client import Response
from taskdash.fetcher.errors import FetchError, ParseError, Refused
from taskdash.fetcher.outcome import Outcome
from taskdash.health import Health
from taskdash.metrics import Metrics
from taskdash.metrics.fetch import result_label
from taskdash.metrics.reading import Scrape
from taskdash.settings import MetricsSettings, load
from taskdash.web.app import make_app
from taskdash.web.base import StoreGate
from taskdash.web.context import WebContext

TOKEN = "metrics-token-0123456789"


class Served:
    """The web application on a free loopback port, with the metrics given (or none)."""

    def __init__(self, metrics: Metrics | None) -> None:
        self.metrics = metrics
        ctx = WebContext(settings=load(env={}), health=Health(), gate=StoreGate())
        if metrics is not None:
            ctx.extra["metrics"] = metrics
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.server = tornado.httpserver.HTTPServer(make_app(ctx))
        self.server.add_sockets(sockets)
        self.base = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        self.web = WebClient(self.base)

    async def fetch(self, path: str, method: str = "GET", **headers: str) -> Reply:
        return await self.web.fetch(path, method, headers=headers)

    async def scrape(self, token: str = "") -> Scrape:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self.fetch("/metrics", **headers)
        assert response.status == 200, response.body
        return Scrape(response.text)

    def close(self) -> None:
        self.server.stop()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(metrics: Metrics | None = None, **settings: Any) -> Served:
        if metrics is None and settings.get("enabled", True):
            metrics = Metrics(MetricsSettings(**settings))
        served = Served(metrics)
        started.append(served)
        return served

    yield start
    for served in started:
        served.close()


async def test_requests_are_counted_by_route_pattern_never_by_raw_path(
    serve: Callable[..., Served],
) -> None:
    app = serve()
    codes = [(await app.fetch(f"/api/v1/tasks/{tid}")).status for tid in ("t-1", "t-2")]
    assert codes[0] == codes[1]
    assert (await app.fetch("/healthz")).status == 200
    assert (await app.fetch("/no/such/page")).status == 404
    assert (await app.fetch("/healthz", method="BREW")).status == 405
    found = await app.scrape()
    route = "/api/v1/tasks/(?P<task_id>[^/]{1,1536})"
    total = "taskdash_http_requests_total"
    assert found.value(total, route=route, method="GET", status=str(codes[0])) == 2
    assert found.value(total, route="/healthz", method="GET", status="200") == 1
    assert found.value(total, route="unmatched", method="GET", status="404") == 1
    assert found.value(total, route="/healthz", method="other", status="405") == 1
    count = "taskdash_http_request_duration_seconds_count"
    assert found.value(count, route=route, method="GET") == 2
    # the scrape itself is counted once it is answered: seen by the next scrape
    again = await app.scrape()
    assert again.value(total, route="/metrics", method="GET", status="200") == 1
    routes = {labels["route"] for labels in again.labelled(total)}
    assert not any("t-1" in r or "no/such" in r for r in routes), routes


async def test_each_application_has_its_own_registry(serve: Callable[..., Served]) -> None:
    one, other = serve(), serve()
    await one.fetch("/healthz")
    await one.fetch("/healthz")
    total = "taskdash_http_requests_total"
    assert (await one.scrape()).value(total, route="/healthz", method="GET", status="200") == 2
    assert (await other.scrape()).value(total, route="/healthz", method="GET", status="200") == 0


async def test_prometheus_text_by_default_openmetrics_when_asked(
    serve: Callable[..., Served],
) -> None:
    app = serve()
    plain = await app.fetch("/metrics")
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"# HELP taskdash_build_info " in plain.body
    assert plain.headers["Cache-Control"] == "no-store"
    om = await app.fetch("/metrics", Accept="application/openmetrics-text; version=1.0.0")
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
    assert om.body.endswith(b"# EOF\n")


def raw_get(url: str, **headers: str) -> tuple[dict[str, str], bytes]:
    """A GET through urllib, which neither asks for nor undoes a compression by itself."""
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return dict(r.headers), r.read()


async def test_the_page_is_gzipped_when_the_scraper_accepts_it(
    serve: Callable[..., Served],
) -> None:
    app = serve()
    url = f"{app.base}/metrics"
    headers, body = await asyncio.to_thread(raw_get, url, **{"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert b"# HELP taskdash_build_info " in gzip.decompress(body)
    assert "Accept-Encoding" in headers["Vary"]
    headers, body = await asyncio.to_thread(raw_get, url, **{"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in headers and b"# HELP taskdash_build_info " in body


async def test_the_token_guards_the_page_when_configured(serve: Callable[..., Served]) -> None:
    app = serve(token=TOKEN)
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer"},
    ):
        refused = await app.fetch("/metrics", **headers)
        assert refused.status == 401, headers
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="taskdash-metrics"'
        assert b"taskdash_" not in refused.body
    found = await app.scrape(token=TOKEN)
    assert found.value("taskdash_http_requests_total", route="/metrics", method="GET",
                       status="401") == 5  # fmt: skip
    assert (await app.fetch("/metrics", Authorization=f"bearer  {TOKEN} ")).status == 200


async def test_disabled_metrics_answer_404(serve: Callable[..., Served]) -> None:
    app = serve(enabled=False)
    assert app.metrics is None
    assert (await app.fetch("/metrics")).status == 404


def test_the_token_from_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    metrics = Metrics(MetricsSettings(token_file=str(path)))
    assert not metrics.open
    assert metrics.authorized(f"Bearer {TOKEN}")
    assert not metrics.authorized("Bearer nope")
    assert Metrics(MetricsSettings()).authorized("")


@pytest.mark.parametrize(
    ("env", "mode", "message"),
    [
        ({"TASKDASH_METRICS__TOKEN": "short"}, None, "metrics.token: must be at least 16"),
        ({"TASKDASH_METRICS__TOKEN": TOKEN, "TASKDASH_METRICS__TOKEN_FILE": "{file}"}, 0o600,
         "metrics.token: must be empty when token_file is set"),
        ({"TASKDASH_METRICS__TOKEN_FILE": "{file}"}, 0o644, "is readable by others"),
        ({"TASKDASH_METRICS__TOKEN_FILE": "{missing}"}, None, "metrics.token_file: cannot be read"),
        ({"TASKDASH_METRICS__STORE_COUNTS_TTL": "-1"}, None, "store_counts_ttl"),
    ],
)  # fmt: skip
def test_bad_metrics_settings_are_clear_errors(
    tmp_path: Path, env: dict[str, str], mode: int | None, message: str
) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    if mode is not None:
        os.chmod(path, mode)
    paths = {"file": str(path), "missing": str(tmp_path / "missing")}
    with pytest.raises(ConfigError, match=message):
        load(env={k: v.format(**paths) for k, v in env.items()})


def test_a_short_token_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("short\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=r"metrics\.token_file: must hold at least 16"):
        load(env={"TASKDASH_METRICS__TOKEN_FILE": str(path)})


def _outcome(status: int | None = 200, error: FetchError | None = None) -> Outcome:
    response = Response(status, b"", "", "", "") if status is not None else None
    return Outcome("svc", "http://x/", {}, 0, response=response, error=error)


@pytest.mark.parametrize(
    ("outcome", "label"),
    [
        (_outcome(200), "ok"),
        (_outcome(304), "not_modified"),
        (_outcome(None, FetchError("refused", reason="connection")), "connection"),
        (_outcome(None, FetchError("slow", reason="timeout")), "timeout"),
        (_outcome(503, FetchError("HTTP 503", status=503)), "http_5xx"),
        (_outcome(404, FetchError("HTTP 404", status=404)), "http_4xx"),
        (_outcome(999, FetchError("odd", status=9999)), "http_other"),
        (_outcome(None, Refused("link-local")), "refused"),
        (_outcome(200, ParseError("not JSON")), "bad_listing"),
        (_outcome(None, FetchError("?", reason="something_new")), "other"),
    ],
)
def test_fetch_results_are_a_bounded_label_set(outcome: Outcome, label: str) -> None:
    assert result_label(outcome) == label
