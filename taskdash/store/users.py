"""Dashboard accounts (collection ``users``, ``_id`` = the name, so names are unique by the index
every collection has): role, disabled flag, argon2id password hash, creation and change times.

The hash never leaves this module: callers get a :class:`User`. Times are epoch milliseconds
(``updated_at`` is rewritten by updates; see :mod:`.times`).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Literal

from taskdash.errors import StoreError, ValidationError
from taskdash.passwords import Passwords, check_password
from taskdash.store import sessions
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
    """Disable (no login, whatever the password; its sessions end) or enable an account."""
    await _update(store, name, {"disabled": disabled}, clock)
    if disabled:
        await sessions.end_for_user(store, name)


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
    await _update(store, name, changes, clock)
    if before.role == "admin" and not before.disabled and not await count_enabled_admins(store):
        await _update(store, name, {"role": before.role, "disabled": before.disabled}, clock)
        raise LastAdmin(f"{name!r} is the last enabled admin: make another admin first")
    if disabled:
        await sessions.end_for_user(store, name)
    after = await get_user(store, name)
    assert after is not None
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
