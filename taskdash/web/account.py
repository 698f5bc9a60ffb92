"""Logging in and out (the form and its JSON twin), one's own account and tokens, and the
admin's users and audit log. Every change is audited; no answer ever holds a password or a
stored digest, and a token's secret is shown once, in the reply that creates it.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any

import msgspec

from taskdash.passwords import check_password
from taskdash.store import audit as audit_log
from taskdash.store import tokens, users
from taskdash.store.times import iso, to_ms
from taskdash.store.users import Role, User
from taskdash.web.auth import (
    LOGIN_URL,
    MAX_PASSWORD_FIELD,
    ApiError,
    ApiHandler,
    LoginOutcome,
    PublicApi,
    PublicPage,
    safe_next,
)
from taskdash.web.base import bounded

#: what every failed login is told, whatever failed (no such name, disabled, wrong password)
WRONG = "wrong name or password"
Text = Annotated[str, msgspec.Meta(max_length=MAX_PASSWORD_FIELD)]
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    """A JSON request body: unknown fields are a 400, not silently ignored."""


class LoginBody(_Body):
    # no length limit of their own: a login too long for any account fails like any other
    # (the body's limit bounds them)
    name: str
    password: str


class TokenBody(_Body):
    name: Label
    expires_in_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] | None = None


class PasswordBody(_Body):
    current: Text
    new: Text


class NewUserBody(_Body):
    name: Annotated[str, msgspec.Meta(max_length=64)]
    password: Text
    role: Role = "user"


class UserChangeBody(_Body):
    role: Role | None = None
    disabled: bool | None = None
    password: Text | None = None


def user_json(user: User) -> dict[str, Any]:
    """An account as the API shows it."""
    return {
        "name": user.name,
        "role": user.role,
        "disabled": user.disabled,
        "created_at": iso(user.created_at),
        "updated_at": iso(user.updated_at),
    }


def token_json(token: tokens.Token) -> dict[str, Any]:
    """A token as listed: never its secret nor its digest."""
    return {
        "id": token.id,
        "name": token.name,
        "created_at": iso(token.created_at),
        "last_used": None if token.last_used is None else iso(token.last_used),
        "expires_at": None if token.expires_at is None else iso(token.expires_at),
    }


def retry_after(outcome: LoginOutcome) -> str:
    """The Retry-After header's value: whole seconds, rounded up."""
    return str(max(1, math.ceil(outcome.retry_after)))


def throttled_message(outcome: LoginOutcome) -> str:
    why = "locked after too many failed logins" if outcome.locked else "too many failed logins"
    return f"{why}: try again in {retry_after(outcome)} s"


def throttled(outcome: LoginOutcome) -> ApiError:
    """429 with Retry-After: the attempt was not even checked."""
    headers = {"Retry-After": retry_after(outcome)}
    return ApiError(429, "throttled", throttled_message(outcome), headers)


class LoginPage(PublicPage):
    """``GET /login`` shows the form; ``POST /login`` checks it and opens a session."""

    def get(self) -> None:
        target = safe_next(self.get_query_argument("next", None))
        if self.user is not None:
            self.redirect(target)
            return
        self.render("login.html", next=target, error="", name="")

    @bounded
    async def post(self) -> None:
        name = self.get_body_argument("name", "")
        password = self.get_body_argument("password", "")
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

    @bounded
    async def post(self) -> None:
        await self.log_out()
        self.redirect(LOGIN_URL)


class LoginApi(PublicApi):
    """``POST /api/v1/login`` ``{"name", "password"}``: the form's JSON twin (sets the cookie)."""

    @bounded
    async def post(self) -> None:
        body = self.body(LoginBody)
        outcome = await self.log_in(body.name, body.password)
        if outcome.throttled:
            raise throttled(outcome)
        if outcome.user is None:
            raise ApiError(401, "unauthorized", WRONG)
        self.send_json({"user": user_json(outcome.user)})


class LogoutApi(ApiHandler):
    """``POST /api/v1/logout``: ends the session the request came with (204)."""

    @bounded
    async def post(self) -> None:
        await self.log_out()
        self.set_status(204)
        self.finish()


class MeApi(ApiHandler):
    """``GET /api/v1/me``: who the request is from, and how it authenticated."""

    def get(self) -> None:
        self.send_json({**user_json(self.user), "via": self.via})


class MyTokensApi(ApiHandler):
    """``GET /api/v1/me/tokens``; ``POST`` ``{"name", "expires_in_days"?}`` makes one (201,
    the secret in this reply only)."""

    @bounded
    async def get(self) -> None:
        listed = await tokens.list_for(self.store, self.user.name)
        self.send_json({"tokens": [token_json(t) for t in listed]})

    @bounded
    async def post(self) -> None:
        body = self.body(TokenBody)
        secret, token = await tokens.create(
            self.store,
            self.user.name,
            body.name,
            now=self.now(),
            expires_in_days=body.expires_in_days,
        )
        await self.audit("token.create", target=token.id, name=token.name)
        self.send_json({**token_json(token), "token": secret}, 201)


async def revoke_token(handler: ApiHandler, owner: str, token_id: str) -> None:
    """Revoke ``owner``'s token (404 if they have none of that id); audited; 204."""
    if not await tokens.revoke(handler.store, owner, token_id[:64]):
        raise ApiError(404, "not_found", f"{owner} has no token {token_id[:64]!r}")
    await handler.audit("token.revoke", target=token_id, owner=owner)
    handler.set_status(204)
    handler.finish()


class MyTokenApi(ApiHandler):
    """``DELETE /api/v1/me/tokens/<id>``: only one's own (another's id is not found)."""

    @bounded
    async def delete(self, token_id: str) -> None:
        await revoke_token(self, self.user.name, token_id)


class MyPasswordApi(ApiHandler):
    """``POST /api/v1/me/password`` ``{"current", "new"}``: the other sessions end (204).

    The current password is checked like a login, throttled alike: a stolen session is no
    way to guess it faster.
    """

    @bounded
    async def post(self) -> None:
        body = self.body(PasswordBody)
        outcome = await self.check_password(body.current)
        if outcome.user is None:
            failure = "throttled" if outcome.throttled else "failed"
            await self.audit("user.password", target=self.user.name, outcome=failure)
        if outcome.throttled:
            raise throttled(outcome)
        if outcome.user is None:
            raise ApiError(403, "forbidden", "the current password is wrong")
        await users.set_password(
            self.store, self.user.name, body.new, keep_session=self.session_key
        )
        await self.audit("user.password", target=self.user.name)
        self.set_status(204)
        self.finish()


class UsersApi(ApiHandler):
    """Admin: ``GET /api/v1/users``; ``POST`` ``{"name", "password", "role"?}`` (201)."""

    @bounded
    async def get(self) -> None:
        self.require_admin()
        self.send_json({"users": [user_json(u) for u in await users.list_users(self.store)]})

    @bounded
    async def post(self) -> None:
        self.require_admin()
        body = self.body(NewUserBody)
        user = await users.add_user(self.store, body.name, body.password, role=body.role)
        await self.audit("user.create", target=user.name, role=user.role)
        self.send_json(user_json(user), 201)


class UserApi(ApiHandler):
    """Admin: ``GET /api/v1/users/<name>``; ``PATCH`` ``{"role"?, "disabled"?, "password"?}``.

    Disabling (or a password reset) ends the account's sessions; no change may leave no
    enabled admin (409 ``last_admin``).
    """

    @bounded
    async def get(self, name: str) -> None:
        self.require_admin()
        user = await users.get_user(self.store, name)
        if user is None:
            raise ApiError(404, "not_found", f"no user {name[:64]!r}")
        self.send_json(user_json(user))

    @bounded
    async def patch(self, name: str) -> None:
        self.require_admin()
        body = self.body(UserChangeBody)
        if body.password is not None:
            check_password(body.password)  # before anything changes: all or nothing
        user = await users.change_guarded(self.store, name, role=body.role, disabled=body.disabled)
        changed = {
            k: v for k, v in (("role", body.role), ("disabled", body.disabled)) if v is not None
        }
        if changed:
            await self.audit("user.change", target=name, **changed)
        if body.password is not None:
            keep = self.session_key if name == self.user.name else None
            await users.set_password(self.store, name, body.password, keep_session=keep)
            await self.audit("user.password", target=name)
        self.send_json(user_json(user))


class UserTokensApi(ApiHandler):
    """Admin: ``GET /api/v1/users/<name>/tokens``."""

    @bounded
    async def get(self, name: str) -> None:
        self.require_admin()
        listed = await tokens.list_for(self.store, name)
        self.send_json({"tokens": [token_json(t) for t in listed]})


class UserTokenApi(ApiHandler):
    """Admin: ``DELETE /api/v1/users/<name>/tokens/<id>`` revokes anyone's token."""

    @bounded
    async def delete(self, name: str, token_id: str) -> None:
        self.require_admin()
        await revoke_token(self, name, token_id)


def since_argument(raw: str | None) -> int | None:
    """``since`` as epoch milliseconds: given as such, or as ISO-8601 with a time zone."""
    if raw is None:
        return None
    if raw.isdigit() and len(raw) <= 15:
        return int(raw)
    try:
        when = datetime.fromisoformat(raw[:64])
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ApiError(
            400, "bad_request", "since must be epoch milliseconds or ISO-8601 with a zone"
        )
    return to_ms(when)


class AuditApi(ApiHandler):
    """Admin: ``GET /api/v1/audit?actor=&action=&since=&limit=``, newest first."""

    @bounded
    async def get(self) -> None:
        self.require_admin()
        filters = {k: self.get_query_argument(k, None) for k in ("actor", "action")}
        for key, value in filters.items():
            if value is not None and len(value) > audit_log.MAX_TEXT:
                raise ApiError(400, "bad_request", f"{key} is longer than {audit_log.MAX_TEXT}")
        found = await audit_log.entries(
            self.store,
            actor=filters["actor"],
            action=filters["action"],
            since_ms=since_argument(self.get_query_argument("since", None)),
            limit=self.int_argument("limit", 100, 1, audit_log.MAX_LIMIT),
        )
        entries = [{**vars(e), "at": iso(e.at)} for e in found]
        self.send_json({"entries": entries, "count": len(entries)})


ROUTES = [
    (r"/api/v1/me", MeApi),
    (r"/api/v1/me/tokens", MyTokensApi),
    (r"/api/v1/me/tokens/([^/]+)", MyTokenApi),
    (r"/api/v1/me/password", MyPasswordApi),
    (r"/api/v1/users", UsersApi),
    (r"/api/v1/users/([^/]+)", UserApi),
    (r"/api/v1/users/([^/]+)/tokens", UserTokensApi),
    (r"/api/v1/users/([^/]+)/tokens/([^/]+)", UserTokenApi),
    (r"/api/v1/audit", AuditApi),
    (r"/login", LoginPage),
    (r"/logout", LogoutPage),
    (r"/api/v1/login", LoginApi),
    (r"/api/v1/logout", LogoutApi),
]
