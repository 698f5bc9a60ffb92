"""Server-side login sessions (collection ``sessions``).

The browser holds a random 256-bit id (in a signed cookie); the store holds only its SHA-256
as ``_id``, so a copy of the database opens no session. A session ends at ``expires_at`` (the
login plus ``[web] session_ttl``, a BSON date written once, read by a TTL index) or after
``[web] session_idle_timeout`` without a request, whichever comes first; logging out deletes
it, and a password change or a disabled account deletes the user's sessions.

``last_seen`` is rewritten at most once a minute, not on every request: the idle timeout is
therefore exact to a minute, and a busy page costs no write per request.

``role`` is the account's role, copied at the login and kept equal to it by every change of
the account (:func:`taskdash.store.users.sync_credentials`): a request reads its session and
nothing else to know who it is from and what they may do. A session without ``role`` (written
before it existed) makes the request read the account, as every request once did.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from taskdash.store.mongo import Doc, Store, eq, translated
from taskdash.store.times import to_ms

COLLECTION = "sessions"
#: ``last_seen`` is not rewritten more often than this (milliseconds)
TOUCH_EVERY_MS = 60_000


def digest(secret: str) -> str:
    """What is stored for a session id or token: its SHA-256, hex."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Session:
    """A live session: ``key`` is the stored digest (never the id the browser holds)."""

    key: str
    user: str
    created_at: int
    last_seen: int
    #: the account's role (None: a session from before sessions carried it)
    role: str | None = None


async def create(
    store: Store, user: str, *, now: datetime, ttl: float, role: str | None = None
) -> str:
    """Open a session for ``user`` (of ``role``); returns the id for the cookie (shown nowhere
    else). Logins open theirs through :func:`taskdash.store.users.open_session`."""
    session_id = secrets.token_urlsafe(32)
    now_ms = to_ms(now)
    doc: Doc = {
        "_id": digest(session_id),
        "user": user,
        "role": role,
        "created_at": now_ms,
        "last_seen": now_ms,
        "expires_at": now + timedelta(seconds=ttl),
    }
    async with translated("create_session"):
        await store[COLLECTION].insert_one(doc)
    return session_id


async def resolve(
    store: Store, session_id: str, *, now: datetime, idle: float, cache_ttl: float = 0.0
) -> Session | None:
    """The live session behind ``session_id`` (its last use noted), else None; a live one read
    less than ``cache_ttl`` seconds ago is not read again (store/credcache.py).

    An expired or idle session found here is deleted at once: a TTL monitor may be slow (and
    nx-27017 only expires on read). That is decided on a fresh read, never a remembered one.
    """
    key, now_ms = digest(session_id), to_ms(now)
    doc = store.credentials.get(key, now_ms, cache_ttl)
    if doc is not None and _usable(doc, now_ms, idle):
        return _session(key, doc, now_ms)
    generation = store.credentials.generation
    async with translated("resolve_session"):
        doc = await store[COLLECTION].find_one({"_id": key})
    if doc is None:
        return None
    if _ended(doc, now_ms, idle):
        await end(store, key)
        return None
    if not _usable(doc, now_ms, idle):  # its use is noted, at most once a minute
        async with translated("touch_session"):
            await store[COLLECTION].update_one(
                {"_id": key, "last_seen": eq(doc["last_seen"])}, {"$set": {"last_seen": now_ms}}
            )
        doc = {**doc, "last_seen": now_ms}
    store.credentials.put(key, doc, now_ms, cache_ttl, generation)
    return _session(key, doc, now_ms)


def _ended(doc: Doc, now_ms: int, idle: float) -> bool:
    """Past its expiry, or idle for ``idle`` seconds."""
    return to_ms(doc["expires_at"]) <= now_ms or now_ms - doc["last_seen"] >= idle * 1000


def _usable(doc: Doc, now_ms: int, idle: float) -> bool:
    """Whether a session read earlier may serve as it is: live, no touch due."""
    return 0 <= now_ms - doc["last_seen"] < TOUCH_EVERY_MS and not _ended(doc, now_ms, idle)


def _session(key: str, doc: Doc, now_ms: int) -> Session:
    return Session(
        key=key,
        user=doc["user"],
        created_at=doc["created_at"],
        last_seen=now_ms,
        role=doc.get("role"),
    )


async def end(store: Store, key: str) -> None:
    """Delete one session by its stored digest (logout)."""
    with store.credentials.changing():
        async with translated("end_session"):
            await store[COLLECTION].delete_one({"_id": key})


async def end_for_user(store: Store, user: str, *, keep: str | None = None) -> int:
    """Delete every session of ``user`` but ``keep`` (a digest); returns how many ended."""
    query: Doc = {"user": eq(user)}
    if keep is not None:
        query["_id"] = {"$ne": keep}
    with store.credentials.changing():
        async with translated("end_sessions"):
            result = await store[COLLECTION].delete_many(query)
    return result.deleted_count


async def set_role(store: Store, user: str, role: str) -> None:
    """Every session of ``user`` carries ``role`` from now on."""
    with store.credentials.changing():
        async with translated("set_session_role"):
            await store[COLLECTION].update_many({"user": eq(user)}, {"$set": {"role": role}})


async def count_for_user(store: Store, user: str) -> int:
    """How many sessions ``user`` has (expired ones not yet removed included)."""
    async with translated("count_sessions"):
        return await store[COLLECTION].count_documents({"user": eq(user)})
