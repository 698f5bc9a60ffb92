"""The Tornado application: every module's routes, each handler given the one WebContext."""

from __future__ import annotations

import secrets
from pathlib import Path

import tornado.web

from taskdash.web import account, api, health, pages
from taskdash.web.base import JsonHandler
from taskdash.web.context import WebContext


class NotFoundHandler(JsonHandler):
    """A JSON 404 for every unknown path."""

    def initialize(self, ctx: WebContext | None = None) -> None:  # type: ignore[override]
        """The default handler is built without the route's keyword arguments."""

    def check_xsrf_cookie(self) -> None:
        """A 404 whatever the method (``xsrf_cookies`` would answer a POST 403 first)."""

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, "not found")


#: (pattern, handler) of every route, module by module; each handler's ``initialize`` takes
#: the WebContext
ROUTES: list[tuple[str, type[tornado.web.RequestHandler]]] = [
    *health.ROUTES,
    *api.ROUTES,
    *account.ROUTES,
    *pages.ROUTES,
]
HERE = Path(__file__).parent


def make_app(ctx: WebContext) -> tornado.web.Application:
    """Build the application; resources come in ``ctx``, never looked up globally.

    The store comes through ``ctx.gate``, attached once it exists: the application serves
    ``/healthz`` before MongoDB is reachable.
    """
    return tornado.web.Application(
        [(pattern, handler, {"ctx": ctx}) for pattern, handler in ROUTES],
        default_handler_class=NotFoundHandler,
        log_function=lambda handler: None,
        max_body_size=1024 * 1024,
        # no secret given (an app built by a test): one for this process only
        cookie_secret=ctx.cookie_secret or secrets.token_urlsafe(48),
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"samesite": "Lax"},
        template_path=str(HERE / "templates"),
        static_path=str(HERE / "static"),
        login_url="/login",
    )
