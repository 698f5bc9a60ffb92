"""Logging in and out (the form and its JSON twin), the user's own account, and user admin."""

from __future__ import annotations

import math
from typing import Any

from taskdash.store.users import User
from taskdash.web.auth import (
    LOGIN_URL,
    ApiError,
    ApiHandler,
    LoginOutcome,
    PublicApi,
    PublicPage,
    safe_next,
)

#: what every failed login is told, whatever failed (no such name, disabled, wrong password)
WRONG = "wrong name or password"
#: the longest name and password a login form field may carry (longer: refused, unread)
MAX_FIELD = 4096


def user_json(user: User) -> dict[str, Any]:
    """An account as the API shows it."""
    return {
        "name": user.name,
        "role": user.role,
        "disabled": user.disabled,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
    }


def retry_after(outcome: LoginOutcome) -> str:
    """The Retry-After header's value: whole seconds, rounded up."""
    return str(max(1, math.ceil(outcome.retry_after)))


def throttled_message(outcome: LoginOutcome) -> str:
    why = "locked after too many failed logins" if outcome.locked else "too many failed logins"
    return f"{why}: try again in {retry_after(outcome)} s"


class LoginPage(PublicPage):
    """``GET /login`` shows the form; ``POST /login`` checks it and opens a session."""

    def get(self) -> None:
        target = safe_next(self.get_query_argument("next", None))
        if self.user is not None:
            self.redirect(target)
            return
        self.render("login.html", next=target, error="", name="")

    async def post(self) -> None:
        name = self.get_body_argument("name", "")[:MAX_FIELD]
        password = self.get_body_argument("password", "")[:MAX_FIELD]
        target = safe_next(self.get_body_argument("next", None))
        outcome = await self.log_in(name, password)
        if outcome.user is not None:
            self.redirect(target)
            return
        if outcome.throttled:
            self.set_status(429)
            self.set_header("Retry-After", retry_after(outcome))
            error = throttled_message(outcome)
        else:
            self.set_status(401)
            error = WRONG
        self.render("login.html", next=target, error=error, name=name[:64])


class LogoutPage(PublicPage):
    """``POST /logout``: the session ends, the cookie goes, back to the form."""

    async def post(self) -> None:
        await self.log_out()
        self.redirect(LOGIN_URL)


class LoginApi(PublicApi):
    """``POST /api/v1/login`` ``{"name", "password"}``: the form's JSON twin (sets the cookie)."""

    async def post(self) -> None:
        body = self.json_body()
        name, password = (
            body.get(k) if isinstance(body, dict) else None for k in ("name", "password")
        )
        if not isinstance(name, str) or not isinstance(password, str):
            raise ApiError(400, "bad_request", 'expected {"name": text, "password": text}')
        outcome = await self.log_in(name[:MAX_FIELD], password[:MAX_FIELD])
        if outcome.throttled:
            headers = {"Retry-After": retry_after(outcome)}
            raise ApiError(429, "throttled", throttled_message(outcome), headers)
        if outcome.user is None:
            raise ApiError(401, "unauthorized", WRONG)
        self.send_json({"user": user_json(outcome.user)})


class LogoutApi(ApiHandler):
    """``POST /api/v1/logout``: ends the session the request came with (204)."""

    async def post(self) -> None:
        await self.log_out()
        self.set_status(204)
        self.finish()


class MeApi(ApiHandler):
    """``GET /api/v1/me``: who the request is from, and how it authenticated."""

    def get(self) -> None:
        self.send_json({**user_json(self.user), "via": self.via})


ROUTES = [
    (r"/api/v1/me", MeApi),
    (r"/login", LoginPage),
    (r"/logout", LogoutPage),
    (r"/api/v1/login", LoginApi),
    (r"/api/v1/logout", LogoutApi),
]
