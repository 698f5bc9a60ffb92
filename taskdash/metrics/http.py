"""HTTP: requests by route pattern and status with their latency, and the ``/metrics`` handler.

The route label is the pattern of the route that matched (``/api/v1/tasks/(?P<task_id>...)``),
never the raw path: a label per task id would grow without bound. Each route's matcher
records its pattern on the request (:class:`LabelledPath`); the application's
``log_function`` (:meth:`HttpMetrics.observe`) counts the request once it is finished.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import tornado.httputil
import tornado.routing
import tornado.web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import gzip_accepted

if TYPE_CHECKING:
    from taskdash.metrics.registry import Metrics

#: the request attribute a matched route leaves its pattern in
ROUTE_ATTR = "taskdash_route"
#: no route matched (the 404 handler)
UNMATCHED = "unmatched"
#: methods kept as labels; anything else a client sends is "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class LabelledPath(tornado.routing.PathMatches):
    """A route's path pattern that tells the request it matched (the metrics' route label)."""

    def __init__(self, pattern: str) -> None:
        super().__init__(pattern)
        self.pattern = pattern

    def match(self, request: tornado.httputil.HTTPServerRequest) -> dict[str, Any] | None:
        found = super().match(request)
        if found is not None:
            setattr(request, ROUTE_ATTR, self.pattern)
        return found


def routed(routes: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``(pattern, handler, ...)`` routes with their patterns as :class:`LabelledPath`."""
    return [(LabelledPath(pattern), *rest) for pattern, *rest in routes]


def route_of(handler: tornado.web.RequestHandler) -> str:
    """The label for a finished request: its route pattern, ``static`` or ``unmatched``."""
    route = getattr(handler.request, ROUTE_ATTR, None)
    if route is not None:
        return str(route)
    return "static" if isinstance(handler, tornado.web.StaticFileHandler) else UNMATCHED


class HttpMetrics:
    """``taskdash_http_requests_total`` and ``taskdash_http_request_duration_seconds``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "taskdash_http_requests_total",
            "HTTP requests answered, by route pattern, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "taskdash_http_request_duration_seconds",
            "Seconds from an HTTP request's arrival to its answer, by route pattern and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(self, handler: tornado.web.RequestHandler) -> None:
        """The application's ``log_function``: count and time one finished request."""
        route = route_of(handler)
        method = handler.request.method or ""
        method = method if method in METHODS else "other"
        self.requests.labels(route, method, str(handler.get_status())).inc()
        self.duration.labels(route, method).observe(handler.request.request_time())


def log_function(metrics: Metrics | None) -> Any:
    """What an application is given as ``log_function``: the metrics' observer, or nothing."""
    if metrics is None:
        return lambda handler: None
    return metrics.http.observe


class ScrapeHandler(tornado.web.RequestHandler):
    """``GET /metrics``: Prometheus text (OpenMetrics when Accept asks, gzip when
    Accept-Encoding does), token if configured."""

    metrics: Metrics | None

    def initialize(self, metrics: Metrics | None) -> None:
        self.metrics = metrics

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish(f"{status_code} {self._reason}\n")

    async def get(self) -> None:
        metrics = self.metrics
        if metrics is None:  # [metrics] enabled = false
            raise tornado.web.HTTPError(404)
        if not metrics.authorized(self.request.headers.get("Authorization", "")):
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Bearer realm="taskdash-metrics"')
            self.finish("401 send the [metrics] token as 'Authorization: Bearer <token>'\n")
            return
        await metrics.refresh()
        body, content_type = metrics.expose(self.request.headers.get("Accept", ""))
        self.set_header("Content-Type", content_type)
        self.set_header("Vary", "Accept, Accept-Encoding")
        if gzip_accepted(self.request.headers.get("Accept-Encoding", "")):
            # Prometheus asks for gzip: a scrape is ~5-20x smaller (hundreds of series)
            body = gzip.compress(body, compresslevel=6)
            self.set_header("Content-Encoding", "gzip")
        self.finish(body)
