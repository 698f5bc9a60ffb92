"""Who is asking: sessions and API tokens behind every handler but ``/healthz`` and ``/readyz``.

- :class:`ApiHandler` (JSON under ``/api``): a session cookie first, else ``Authorization:
  Bearer <token>``; nobody (or a disabled user, an ended session, a revoked token) -> 401.
- :class:`PageHandler` (HTML): nobody -> 302 to ``/login?next=<path>``; errors are pages.

After ``prepare``: ``self.user`` (a :class:`Caller`: name and role) and ``self.via``
(``"session"`` | ``"token"``).
A state-changing request (POST, PUT, PATCH, DELETE) authenticated by the session cookie must
carry the XSRF token (``X-XSRFToken`` header or ``_xsrf`` form field), else 403 ``xsrf``; one
authenticated by a bearer token needs none (a browser never adds that header by itself).
Tornado's own check runs before ``prepare``, i.e. before we know which of the two it is, so
it is deferred to after authentication.

Timing: no secret is compared here byte by byte. A token and a session id are looked up by
the SHA-256 of what was sent (the stored ``_id``): how long the lookup takes depends on that
digest, which a client cannot steer towards a stored one (that would be a pre-image search),
so it tells nothing about the stored ones. The cookie's signature and the XSRF token are
compared by Tornado with ``hmac.compare_digest``. A login costs one argon2 verification
whatever the name (:func:`~taskdash.store.users.verify_login`); only a name or password no
account can have (their limits are public) is refused sooner.

At most one read per request: the credential, and none while it is remembered
(``[web] credential_cache_ttl``, store/credcache.py: revocations on this daemon count at once,
on another within the TTL). A request used to read its session (or token) and
then the account, to see it still enabled and learn its role: two round trips to MongoDB
before any work, the account read being ~10 % of a task listing's cost (scripts/bench_web.py).
Now the session and the token carry the account's role (a token also whether the account is
disabled), and the account read is skipped. This is as strict as before only if a credential
can never say more than its account, which store/users.py guarantees for every change made
through it (its module doc has the proof):

* disabling ends the account's sessions and marks its tokens refused (they come back when
  it is enabled again, as documented); a password change or reset ends the other sessions;
  a role change rewrites the role in every session and token;
* rights are taken from the credentials before the account is written, so a crash in the
  middle leaves credentials narrower than the account, never wider;
* a session or token made while its account was being disabled or demoted is checked
  against the account once written and ended or corrected.

What no longer works is editing ``disabled`` or ``role`` in the ``users`` collection by hand:
nothing would bring the credentials along (docs/users.md says to use ``taskdash user``).
Requests already running when an account is disabled finish, as before. Credentials made
before they carried the role (``role`` absent) are served the old way, the account read, and
brought up to date at that first use (:func:`~taskdash.store.users.sync_credentials`).
"""

from __future__ import annotations

import os
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import tornado.escape
import tornado.web

from taskdash.errors import StoreError, StoreUnavailable, ValidationError
from taskdash.passwords import MAX_BYTES
from taskdash.store import audit as audit_log
from taskdash.store import deadline, sessions, throttle, tokens, users
from taskdash.store.throttle import Policy, Rule
from taskdash.store.times import to_ms
from taskdash.store.users import User
from taskdash.web.base import STORE_DOWN, StoreHandler, ours

if TYPE_CHECKING:
    from taskdash.settings import WebSettings
    from taskdash.store import Store
    from taskdash.web.context import WebContext

SESSION_COOKIE = "taskdash_session"
LOGIN_URL = "/login"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
TEMPLATES = Path(__file__).parent / "templates"
#: (path, label, admin only): the pages' navigation, filtered by role
NAV: list[tuple[str, str, bool]] = [
    ("/tasks", "Tasks", False),
    ("/services", "Services", False),
    ("/pipeline", "Pipeline", False),
    ("/dead-letters", "Dead letters", False),
    ("/users", "Users", True),
    ("/audit", "Audit log", True),
]
#: every HTML answer's Content-Security-Policy: nothing inline, nothing from elsewhere (the
#: network may be closed anyway), forms post only here, never framed (clickjacking)
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: an Authorization header longer than this is not read
MAX_AUTHORIZATION = 256
#: the longest name or password a login reads (longer: refused unread, nobody has one)
MAX_PASSWORD_FIELD = 4 * MAX_BYTES
#: the largest JSON body the account endpoints read
MAX_BODY = 16384
#: what the store refuses, as API answers (status, code); the message is the error's own
STORE_REFUSALS: dict[type[Exception], tuple[int, str]] = {
    ValidationError: (400, "bad_request"),
    users.UnknownUser: (404, "not_found"),
    users.UserExists: (409, "conflict"),
    users.LastAdmin: (409, "last_admin"),
    tokens.TooManyTokens: (409, "conflict"),
}
T = TypeVar("T")


class ApiError(tornado.web.HTTPError):
    """An error answer with its own stable code (``xsrf``, ``unauthorized``...) and headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, message.replace("%", "%%"))
        self.code = code
        self.message = message
        self.headers = headers or {}


def policy(web: WebSettings) -> Policy:
    """``[web] login_*`` as the throttle takes it."""
    return Policy(
        user=Rule(web.login_user_delay_after, web.login_user_lock_after),
        address=Rule(web.login_address_delay_after, web.login_address_lock_after),
        window=web.login_window,
        delay_initial=web.login_delay_initial,
        delay_max=web.login_delay_max,
        lock_time=web.login_lock_time,
    )


def safe_next(raw: str | None) -> str:
    """Where to go after the login: a local path only (never ``//host``, ``/\\host``, a scheme)."""
    if not raw or len(raw) > 2048 or not raw.startswith("/") or raw[1:2] in ("/", "\\"):
        return "/"
    if any(ch < " " or ch in "\\\x7f" for ch in raw):
        return "/"
    parts = urllib.parse.urlsplit(raw)
    return "/" if parts.scheme or parts.netloc else raw


def login_url(back_to: str) -> str:
    """The login form, with where to go back to afterwards."""
    return f"{LOGIN_URL}?{urllib.parse.urlencode({'next': back_to})}"


def nav_for(user: Caller | None, current: str) -> list[dict[str, Any]]:
    """The navigation links ``user`` may follow, the current one marked."""
    if user is None:
        return []
    return [
        {"href": href, "label": label, "current": current == href or current.startswith(href + "/")}
        for href, label, admin_only in NAV
        if not admin_only or user.role == "admin"
    ]


@dataclass(frozen=True)
class Caller:
    """Who a request is from, as its session or token says: the account's name and role."""

    name: str
    role: str


@dataclass(frozen=True)
class LoginOutcome:
    """What a login attempt came to: a user with the new session id, or why not."""

    user: User | None = None
    session_id: str = ""
    retry_after: float = 0.0
    locked: bool = False

    @property
    def throttled(self) -> bool:
        return self.retry_after > 0


class Authenticated(tornado.web.RequestHandler):
    """Identification, deferred XSRF check, admin check, audit and login, for both kinds."""

    ctx: WebContext
    store: Store
    user: Caller | None = None
    via: str = ""
    #: the digest of the session this request came with (None for a token or nobody)
    session_key: str | None = None
    #: the name a login attempt gave, for the audit while nobody is logged in
    attempted: str = ""

    def now(self) -> datetime:
        return self.ctx.clock()

    @property
    def web(self) -> WebSettings:
        return self.ctx.settings.web

    def check_xsrf_cookie(self) -> None:
        """Tornado calls this before ``prepare``: too early, see :meth:`check_xsrf`."""

    def check_xsrf(self) -> None:
        """Tornado's double-submit check, answered 403 ``xsrf``."""
        try:
            super().check_xsrf_cookie()
        except tornado.web.HTTPError as exc:
            raise ApiError(
                403, "xsrf", "missing or wrong XSRF token (_xsrf or X-XSRFToken)"
            ) from exc

    def check_session_xsrf(self) -> None:
        """A state-changing request on a session's strength needs the XSRF token."""
        if self.request.method not in SAFE_METHODS and self.via == "session":
            self.check_xsrf()

    async def identify(self) -> None:
        """Set ``user``, ``via`` and ``session_key`` from the cookie, else the bearer token."""
        with deadline(self.ctx.gate.request_timeout):
            cookie = self.get_signed_cookie(
                SESSION_COOKIE, max_age_days=self.web.session_ttl / 86400
            )
            if cookie is not None:
                session = await sessions.resolve(
                    self.store,
                    cookie.decode(),
                    now=self.now(),
                    idle=self.web.session_idle_timeout,
                    cache_ttl=self.web.credential_cache_ttl,
                )
                if session is not None and await self._accept(session.user, session.role):
                    self.via, self.session_key = "session", session.key
                    return
            bearer = self._bearer()
            if bearer:
                token = await tokens.resolve(
                    self.store, bearer, now=self.now(), cache_ttl=self.web.credential_cache_ttl
                )
                if token is not None and await self._accept(token.user, token.role):
                    self.via = "token"

    async def _accept(self, name: str, role: str | None) -> bool:
        """The credential's account as the caller: its role as the credential carries it (see
        the module doc); one made before credentials carried it reads the account."""
        if role is None:
            user = await users.sync_credentials(self.store, name)
            if user is None or user.disabled:
                return False
            role = user.role
        self.user = Caller(name, role)
        return True

    def _bearer(self) -> str:
        header = self.request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if len(header) > MAX_AUTHORIZATION or scheme.lower() != "bearer":
            return ""
        return value.strip()

    def require_admin(self) -> None:
        """403 ``forbidden`` unless the user is an admin."""
        if self.user is None or self.user.role != "admin":
            raise ApiError(403, "forbidden", "this needs the admin role")

    async def audit(
        self, action: str, *, target: str = "", outcome: str = "ok", **details: Any
    ) -> None:
        """One audit entry: who (the user, or the name a login tried), what, from where, when."""
        await audit_log.record(
            self.store,
            actor=self.user.name if self.user is not None else self.attempted,
            action=action,
            target=target,
            outcome=outcome,
            address=self.request.remote_ip or "",
            details=details,
            now_ms=to_ms(self.now()),
            ttl_days=self.web.audit_ttl_days,
        )

    def _secure(self) -> bool:
        return self.request.protocol == "https" or self.web.secure_cookies

    def set_cookie(self, name: str, value: str | bytes, *args: Any, **kwargs: Any) -> None:
        """Every cookie (the session's and Tornado's ``_xsrf``): ``Secure`` over HTTPS or with
        ``[web] secure_cookies``, ``SameSite=Lax`` unless said otherwise."""
        if self._secure():
            kwargs["secure"] = True
        kwargs.setdefault("samesite", "Lax")
        super().set_cookie(name, value, *args, **kwargs)

    def new_xsrf_token(self) -> None:
        """A fresh XSRF token (and ``_xsrf`` cookie) for this browser: at a login, so that a
        token planted or seen before it (a shared machine, a sibling domain setting cookies)
        is worth nothing afterwards. Tornado keeps the raw token on the handler; it has no
        public way to replace it, hence the attributes (tests/test_web_security.py)."""
        self._raw_xsrf_token = (None, os.urandom(16), time.time())
        if hasattr(self, "_xsrf_token"):
            del self._xsrf_token
        self.xsrf_token  # noqa: B018  (the property sets the cookie)

    async def _checked(self, name: str, password: str) -> LoginOutcome:
        """Throttle, then verify: a failure counts against the name and the address, a success
        clears the name's. Not audited here (the caller knows what was attempted).

        One argon2 verification per attempt that gets through the throttle, whatever the
        name (see :func:`users.verify_login`); a name or password no account can have is
        refused without one (their limits are public).
        """
        rules = policy(self.web)
        now = self.now()
        possible = users.name_error(name) is None and len(password) <= MAX_PASSWORD_FIELD
        keys = [(throttle.address_key(self.request.remote_ip or ""), rules.address)]
        if possible:
            keys.append((throttle.user_key(name), rules.user))
        verdict = await throttle.check(self.store, keys, rules, now=now)
        if not verdict.allowed:
            return LoginOutcome(retry_after=verdict.retry_after, locked=verdict.locked)
        user = await users.verify_login(self.store, name, password) if possible else None
        if user is None:
            await throttle.record_failure(self.store, [k for k, _ in keys], rules, now=now)
        else:
            await throttle.clear(self.store, throttle.user_key(name))
        return LoginOutcome(user=user)

    async def check_password(self, password: str) -> LoginOutcome:
        """The logged-in user's own password, checked (and throttled) like a login."""
        assert self.user is not None
        return await self._checked(self.user.name, password)

    async def log_in(self, name: str, password: str) -> LoginOutcome:
        """Check one login (throttled, audited); on success open a session and set its cookie."""
        self.attempted = name[: audit_log.MAX_TEXT]
        outcome = await self._checked(name, password)
        if outcome.throttled:
            retry = round(outcome.retry_after, 1)
            await self.audit("login", outcome="throttled", retry_after=retry, locked=outcome.locked)
            return outcome
        if outcome.user is None:
            await self.audit("login", outcome="failed")
            return outcome
        user = outcome.user
        if self.session_key is not None:  # a login over a session replaces it
            await sessions.end(self.store, self.session_key)
        ttl = self.web.session_ttl
        session_id = await users.open_session(self.store, user, now=self.now(), ttl=ttl)
        if session_id is None:  # disabled while logging in
            await self.audit("login", outcome="failed")
            return LoginOutcome()
        self.set_signed_cookie(
            SESSION_COOKIE,
            session_id,
            expires_days=ttl / 86400,
            httponly=True,
            samesite="Lax",
            secure=self._secure(),
        )
        self.user, self.via = Caller(user.name, user.role), "session"
        self.session_key = sessions.digest(session_id)
        self.new_xsrf_token()
        await self.audit("login")
        return LoginOutcome(user=user, session_id=session_id)

    async def log_out(self) -> None:
        """End this request's session (if it came with one) and drop the cookie; audited."""
        if self.session_key is not None:
            await sessions.end(self.store, self.session_key)
            await self.audit("logout")
            self.session_key = None
        self.clear_cookie(SESSION_COOKIE)


class PublicApi(Authenticated, StoreHandler):
    """A JSON endpoint anyone may call (the login); errors in the one shape, with their code."""

    async def prepare(self) -> None:  # type: ignore[override]
        super().prepare()  # the store, or 503 at once
        await self.identify()
        self.admit()

    def admit(self) -> None:
        """A login posted here needs the XSRF token (see :meth:`PublicPage.admit`)."""
        if self.request.method not in SAFE_METHODS:
            self.check_xsrf()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        if not isinstance(exc, ApiError):
            super().write_error(status_code, **kwargs)
            return
        self.clear()
        for name, value in exc.headers.items():
            self.set_header(name, value)
        body = {"error": exc.code, "message": exc.message, "status": status_code}
        self.send_json(body, status_code)

    def body(self, kind: type[T], limit: int = MAX_BODY) -> T:
        """The JSON body decoded as ``kind`` (a msgspec Struct: unknown fields refused); a 400
        naming the problem if it is larger than ``limit`` bytes, not JSON or not that shape."""
        if len(self.request.body) > limit:
            raise ApiError(400, "bad_request", f"body too large: at most {limit} bytes")
        try:
            return msgspec.json.decode(self.request.body or b"{}", type=kind)
        except msgspec.DecodeError as exc:
            raise ApiError(400, "bad_request", f"bad JSON body: {exc}") from None

    def _handle_request_exception(self, e: BaseException) -> None:
        for kind, (status, code) in STORE_REFUSALS.items():
            if isinstance(e, kind):
                self.send_failure(status, code, str(e))
                return
        super()._handle_request_exception(e)


class ApiHandler(PublicApi):
    """A JSON endpoint that needs a user: see the module doc."""

    user: Caller

    def admit(self) -> None:
        if self.user is None:
            raise ApiError(
                401,
                "unauthorized",
                "log in, or send Authorization: Bearer <token>",
                {"WWW-Authenticate": 'Bearer realm="taskdash"'},
            )
        self.check_session_xsrf()


class PublicPage(Authenticated):
    """An HTML page anyone may see (the login form); errors are pages too."""

    def initialize(self, ctx: WebContext) -> None:
        self.ctx = ctx
        self.gate = ctx.gate  # for :func:`~taskdash.web.base.bounded`

    def set_default_headers(self) -> None:
        """Every HTML answer (the login form, error pages, redirects included): never cached
        (a page shows what its user may see), never framed, nothing inline."""
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Content-Security-Policy", CSP)

    async def prepare(self) -> None:  # type: ignore[override]
        self.store = self.ctx.gate.acquire()
        await self.identify()
        self.admit()

    def admit(self) -> None:
        """Anyone may see the page; a form posted here needs the XSRF token all the same (a
        forged login would log the victim's browser into the attacker's account)."""
        if self.request.method not in SAFE_METHODS:
            self.check_xsrf()

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = super().get_template_namespace()
        namespace.update(user=self.user, nav=nav_for(self.user, self.request.path))
        return namespace

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, StoreUnavailable):
            self.ctx.gate.failed()
            self.send_error(503, message=str(e) if ours(e) else STORE_DOWN)
        elif isinstance(e, StoreError):
            self.send_error(500, message="the store refused the operation")
        else:
            super()._handle_request_exception(e)  # type: ignore[arg-type]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """``error.html`` (the pages' own) when it exists, else a minimal page; never a trace."""
        exc = kwargs.get("exc_info", (None, None))[1]
        message = kwargs.get("message") or self._reason
        if isinstance(exc, ApiError):
            message = exc.message
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        self.set_header("Content-Type", "text/html; charset=utf-8")
        if (Path(self.get_template_path() or TEMPLATES) / "error.html").exists():
            self.render("error.html", status=status_code, message=message)
            return
        text = tornado.escape.xhtml_escape(f"{status_code}: {message}")
        self.finish(f"<!doctype html><title>{text}</title><p>{text}</p>")


class PageHandler(PublicPage):
    """An HTML page that needs a user: nobody is sent to the login form."""

    user: Caller

    def admit(self) -> None:
        """Nobody: to the login form and back to this page afterwards. A form posted without
        a session (it ended while the form was open) goes there too (303: the form is not
        sent again); nothing it asked for is done."""
        if self.user is None:
            if self.request.method in ("GET", "HEAD"):
                self.redirect(login_url(self.request.uri or "/"))
            else:
                self.redirect(login_url(self.request.path or "/"), status=303)
            return
        self.check_session_xsrf()
