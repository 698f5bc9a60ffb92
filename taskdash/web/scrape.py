"""``/metrics`` on the web port: the daemon's Prometheus metrics (docs/metrics.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import tornado.web

from taskdash.metrics.http import ScrapeHandler

if TYPE_CHECKING:
    from taskdash.web.context import WebContext


class MetricsPage(ScrapeHandler):
    """The daemon's :class:`~taskdash.metrics.Metrics` come in ``ctx.extra["metrics"]``;
    absent (``[metrics] enabled = false``, or an app built without them) it answers 404."""

    def initialize(self, ctx: WebContext) -> None:  # type: ignore[override]
        super().initialize(ctx.extra.get("metrics"))


ROUTES: list[tuple[str, type[tornado.web.RequestHandler]]] = [("/metrics", MetricsPage)]
