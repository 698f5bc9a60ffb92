"""The Tornado application: every module's routes, each handler given the one WebContext."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tornado.web

from taskdash.metrics.http import log_function, routed
from taskdash.web import account, alerts, api, health, pages, scrape
from taskdash.web.base import JsonHandler
from taskdash.web.context import WebContext

if TYPE_CHECKING:
    from taskdash.settings import WebSettings


class NotFoundHandler(JsonHandler):
    """A JSON 404 for every unknown path."""

    def initialize(self, ctx: WebContext | None = None) -> None:  # type: ignore[override]
        """The default handler is built without the route's keyword arguments."""

    def check_xsrf_cookie(self) -> None:
        """A 404 whatever the method (``xsrf_cookies`` would answer a POST 403 first)."""

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, "not found")


class StaticFiles(tornado.web.StaticFileHandler):
    """The stylesheet and the script: open to anyone (they hold no data), typed strictly."""

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")


#: the largest request body read (the account API takes 16 KiB, forms far less): a larger one
#: is refused by the HTTP server before any handler runs (JSON 413, see taskdash.oversized)
MAX_BODY_SIZE = 64 * 1024


def server_options(web: WebSettings) -> dict[str, Any]:
    """What the HTTP server serving :func:`make_app` is given (the daemon, tests, the bench).

    ``xheaders``: with ``[web] xheaders`` the client's address and scheme come from the reverse
    proxy's ``X-Real-IP`` / ``X-Forwarded-For`` and ``X-Forwarded-Proto`` / ``X-Scheme``
    (docs/dashboard.md): the audit log and the per-address login throttle then see the
    client, not the proxy. Off by default: without a proxy that sets them, anyone could.
    """
    return {"xheaders": web.xheaders, "max_body_size": MAX_BODY_SIZE}


#: (pattern, handler) of every route, module by module; each handler's ``initialize`` takes
#: the WebContext
ROUTES: list[tuple[str, type[tornado.web.RequestHandler]]] = [
    *health.ROUTES,
    *api.ROUTES,
    *alerts.ROUTES,
    *account.ROUTES,
    *pages.ROUTES,
    *scrape.ROUTES,
]
HERE = Path(__file__).parent


def make_app(ctx: WebContext) -> tornado.web.Application:
    """Build the application; resources come in ``ctx``, never looked up globally.

    The store comes through ``ctx.gate``, attached once it exists: the application serves
    ``/healthz`` before MongoDB is reachable.
    """
    return tornado.web.Application(
        routed([(pattern, handler, {"ctx": ctx}) for pattern, handler in ROUTES]),
        default_handler_class=NotFoundHandler,
        log_function=log_function(ctx.extra.get("metrics")),  # requests by route and status
        # no secret given (an app built by a test): one for this process only
        cookie_secret=ctx.cookie_secret or secrets.token_urlsafe(48),
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"samesite": "Lax"},
        template_path=str(HERE / "templates"),
        static_path=str(HERE / "static"),
        static_handler_class=StaticFiles,
        login_url="/login",
    )
