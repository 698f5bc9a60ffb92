"""Dashboard accounts (collection ``users``, ``_id`` = the name, so names are unique by the index
every collection has): role, disabled flag, argon2id password hash, creation and change times.

The hash never leaves this module: callers get a :class:`User`. Times are epoch milliseconds
(``updated_at`` is rewritten by updates; see :mod:`.times`).

**Credentials carry the account's access.** A session and an API token hold the account's
``role`` (a token also ``disabled``), so that a request reads its credential and nothing else
(taskdash/web/auth.py says why). Every change of an account's role or state goes through this
module and brings its credentials along (:func:`sync_credentials`):

* a change that takes rights away (disabling, demoting) first takes them from the
  credentials, then writes the account, then syncs: a crash in between leaves the credentials
  narrower than the account, never wider (the account's next change mends that: ``taskdash
  user enable`` will do);
* a change that gives rights writes the account, then syncs;
* a sync reads the account, writes the credentials to match, and reads the account again: if
  it changed meanwhile, it syncs again. Whatever the interleaving with another change, the
  last credential write follows the last account write (that change's own sync comes after
  it), so they end equal;
* a credential made for an account (a login's session, a token) is checked against the
  account once written: one made while the account was being disabled or demoted is ended
  or corrected, since either it was written before that change's sync (which then catches
  it) or its check reads the account after the change.

So the account's state must not be edited in the collection by hand: ``taskdash user
disable`` (or the API, the Users page) is what disables an account everywhere.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from taskdash.errors import StoreError, ValidationError
from taskdash.passwords import Passwords, check_password
from taskdash.store import sessions, tokens
from taskdash.store.mongo import Doc, Store, eq, insert_new, translated
from taskdash.store.times import Clock, to_ms, utcnow

Role = Literal["user", "admin"]
ROLES: tuple[Role, ...] = ("user", "admin")
#: the account ``taskdash run`` creates when it finds no user at all
FIRST_ADMIN = "admin"
#: lower case only, so that ``Admin`` and ``admin`` can never be two people
NAME_RULE = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
#: what the daemon logs and prints after creating it
HINT = f"change its password with: taskdash user passwd {FIRST_ADMIN}"
ADD_HINT = "create one with: taskdash user add NAME --role admin"
NAME_HINT = "1-64 characters: a-z, 0-9, '.', '_', '@', '-', starting with a letter or digit"
_PASSWORDS = Passwords()


class UserExists(StoreError):
    """A user of that name exists already."""


class UnknownUser(StoreError):
    """No user of that name."""


class LastAdmin(StoreError):
    """The change would leave no enabled admin."""


@dataclass(frozen=True)
class User:
    """An account as the rest of TaskDash sees it: everything but the hash."""

    name: str
    role: Role
    disabled: bool
    created_at: int
    updated_at: int


def name_error(name: str) -> str | None:
    """Why ``name`` may not be a user name (None if it may)."""
    if NAME_RULE.fullmatch(name):
        return None
    return f"invalid user name {name[:80]!r}: {NAME_HINT}"


def check_name(name: str) -> str:
    """``name``, or ValidationError when it breaks the rule."""
    problem = name_error(name)
    if problem:
        raise ValidationError(problem, field="name")
    return name


def _user(doc: Doc) -> User:
    return User(
        name=doc["_id"],
        role=doc["role"],
        disabled=bool(doc.get("disabled", False)),
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
    )


async def add_user(
    store: Store,
    name: str,
    password: str,
    *,
    role: Role = "user",
    clock: Clock = utcnow,
    passwords: Passwords = _PASSWORDS,
) -> User:
    """Create an account; UserExists if the name is taken (also when two add it at once)."""
    check_name(name)
    if role not in ROLES:
        raise ValidationError(f"invalid role {role!r}: one of {', '.join(ROLES)}", field="role")
    encoded = await passwords.hash(check_password(password))
    now = to_ms(clock())
    doc: Doc = {
        "_id": name,
        "role": role,
        "disabled": False,
        "password": encoded,
        "created_at": now,
        "updated_at": now,
    }
    async with translated("add_user"):
        created = await insert_new(store.users, doc)
    if not created:
        raise UserExists(f"user {name!r} exists already")
    return _user(doc)


async def get_user(store: Store, name: str) -> User | None:
    """The account, or None."""
    async with translated("get_user"):
        doc = await store.users.find_one({"_id": name}, {"password": 0})
    return None if doc is None else _user(doc)


async def list_users(store: Store) -> list[User]:
    """Every account, by name."""
    async with translated("list_users"):
        return [_user(d) async for d in store.users.find({}, {"password": 0}).sort("_id", 1)]


async def count_users(store: Store) -> int:
    """How many accounts exist (disabled ones too)."""
    async with translated("count_users"):
        return await store.users.count_documents({})


async def _update(store: Store, name: str, changes: Doc, clock: Clock) -> None:
    """Apply ``changes`` to one account; UnknownUser if there is none of that name."""
    async with translated("update_user"):
        result = await store.users.update_one(
            {"_id": name}, {"$set": {**changes, "updated_at": to_ms(clock())}}
        )
    if result.matched_count == 0:
        raise UnknownUser(f"no user {name!r}")


async def set_password(
    store: Store,
    name: str,
    password: str,
    *,
    clock: Clock = utcnow,
    passwords: Passwords = _PASSWORDS,
    keep_session: str | None = None,
) -> None:
    """Replace the password (rules checked first) and end every session of the account but
    ``keep_session`` (the one that changed it); UnknownUser if there is no such account."""
    encoded = await passwords.hash(check_password(password))
    await _update(store, name, {"password": encoded}, clock)
    await sessions.end_for_user(store, name, keep=keep_session)


async def set_disabled(store: Store, name: str, disabled: bool, *, clock: Clock = utcnow) -> None:
    """Disable (no login, whatever the password; its sessions end, its tokens are refused) or
    enable an account (its tokens work again)."""
    if disabled:
        await _grant(store, name, None)  # rights go first (see the module doc)
    await _update(store, name, {"disabled": disabled}, clock)
    await sync_credentials(store, name)


#: how many times :func:`sync_credentials` follows an account that keeps changing
_SYNC_ATTEMPTS = 5


def _access(user: User | None) -> tuple[str, bool] | None:
    """What credentials carry of an account (None: no account)."""
    return None if user is None else (user.role, user.disabled)


async def _grant(store: Store, name: str, user: User | None) -> None:
    """Make ``name``'s sessions and tokens carry ``user``'s access (None or disabled: none)."""
    if user is None or user.disabled:
        await sessions.end_for_user(store, name)
        await tokens.set_access(store, name, disabled=True)
    else:
        await sessions.set_role(store, name, user.role)
        await tokens.set_access(store, name, disabled=False, role=user.role)


async def sync_credentials(store: Store, name: str) -> User | None:
    """Make the account's sessions and tokens carry what it is now; returns the account.

    Read, write, read again until two reads agree (module doc); an account that keeps
    changing for that long is left with no access at all, which the next change mends.
    """
    user = await get_user(store, name)
    for _ in range(_SYNC_ATTEMPTS):
        await _grant(store, name, user)
        again = await get_user(store, name)
        if _access(again) == _access(user):
            return again
        user = again
    await _grant(store, name, None)
    return user


async def open_session(store: Store, user: User, *, now: datetime, ttl: float) -> str | None:
    """A session for ``user`` (just verified), carrying its role; None if the account was
    disabled meanwhile (the session is ended again). See the module doc."""
    session_id = await sessions.create(store, user.name, now=now, ttl=ttl, role=user.role)
    current = await get_user(store, user.name)
    if _access(current) != _access(user):
        current = await sync_credentials(store, user.name)
    if current is None or current.disabled:
        await sessions.end(store, sessions.digest(session_id))
        return None
    return session_id


async def new_token(
    store: Store, name: str, label: str, *, now: datetime, expires_in_days: float | None = None
) -> tuple[str, tokens.Token]:
    """A new API token of account ``name``, carrying its role (UnknownUser if there is no
    such account, or it is disabled); checked against the account once written."""
    user = await get_user(store, name)
    if user is None or user.disabled:
        raise UnknownUser(f"no enabled user {name!r}")
    secret, token = await tokens.create(
        store, name, label, now=now, expires_in_days=expires_in_days, role=user.role
    )
    if _access(await get_user(store, name)) != _access(user):
        await sync_credentials(store, name)
    return secret, token


async def count_enabled_admins(store: Store) -> int:
    """How many accounts could still administer TaskDash."""
    async with translated("count_admins"):
        return await store.users.count_documents({"role": eq("admin"), "disabled": eq(False)})


async def change_guarded(
    store: Store,
    name: str,
    *,
    role: Role | None = None,
    disabled: bool | None = None,
    clock: Clock = utcnow,
) -> User:
    """Change role and/or disabled, refusing (LastAdmin) to leave no enabled admin.

    The change is written, then the admins are counted; with none left it is undone. Two
    admins demoting each other at the same moment may then both be refused, never both
    succeed. (The CLI's ``disable`` is not guarded: it is the way back in.)
    """
    before = await get_user(store, name)
    if before is None:
        raise UnknownUser(f"no user {name!r}")
    if role is not None and role not in ROLES:
        raise ValidationError(f"invalid role {role!r}: one of {', '.join(ROLES)}", field="role")
    changes: Doc = {}
    if role is not None:
        changes["role"] = role
    if disabled is not None:
        changes["disabled"] = disabled
    if not changes:
        return before
    last_admin = LastAdmin(f"{name!r} is the last enabled admin: make another admin first")
    was_admin = before.role == "admin" and not before.disabled
    demoting = disabled or (role == "user" and before.role == "admin")
    if was_admin and demoting and await count_enabled_admins(store) <= 1:
        raise last_admin  # plainly refused: nothing written, no session ended
    if disabled:  # rights go first (see the module doc)
        await _grant(store, name, None)
    elif demoting:
        await _grant(store, name, dataclasses.replace(before, role="user"))
    await _update(store, name, changes, clock)
    if was_admin and not await count_enabled_admins(store):
        # another admin was demoted at the same moment: undone (its sessions stay ended)
        await _update(store, name, {"role": before.role, "disabled": before.disabled}, clock)
        await sync_credentials(store, name)
        raise last_admin
    after = await sync_credentials(store, name)
    if after is None:
        raise UnknownUser(f"no user {name!r}")
    return after


async def verify_login(
    store: Store, name: str, password: str, *, passwords: Passwords = _PASSWORDS
) -> User | None:
    """The account when ``password`` is right and it is enabled, else None.

    Every path costs one argon2 verification (an unknown name is checked against a dummy
    hash, a disabled account's password is checked all the same), so the time taken does not
    tell which names exist. A hash made with weaker parameters than today's is replaced, only
    if the stored one is still the one verified (a password changed meanwhile wins).
    """
    async with translated("verify_login"):
        doc = await store.users.find_one({"_id": name})
    if doc is None:
        await passwords.verify_nobody(password)
        return None
    verdict = await passwords.verify(doc["password"], password)
    if not verdict.ok or doc.get("disabled", False):
        return None
    if verdict.rehash is not None:
        async with translated("rehash_password"):
            await store.users.update_one(
                {"_id": name, "password": doc["password"]}, {"$set": {"password": verdict.rehash}}
            )
    return _user(doc)


async def create_first_admin(
    store: Store, *, clock: Clock = utcnow, passwords: Passwords = _PASSWORDS
) -> str | None:
    """With no account at all, create ``admin`` with a random password and return it.

    None when any account exists, or when another daemon starting at the same moment created
    ``admin`` first (the name is the ``_id``: only one insert can win).
    """
    if await count_users(store):
        return None
    password = secrets.token_urlsafe(18)
    try:
        await add_user(store, FIRST_ADMIN, password, role="admin", clock=clock, passwords=passwords)
    except UserExists:
        return None
    return password


def first_admin_notice(password: str) -> str:
    """What the daemon prints on stderr, once: the only place the password ever appears."""
    return (
        f"taskdash: created the first user {FIRST_ADMIN!r} (role admin), password: {password}\n"
        f"taskdash: it is shown only this once; {HINT}"
    )
