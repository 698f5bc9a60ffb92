"""Per-user API tokens for scripts (collection ``api_tokens``).

A token is ``taskdash_`` + 32 random bytes (URL-safe base64), shown once when created. Only
its SHA-256 is stored, as ``_id``: a lookup by digest needs no other index, and a copy of the
database holds nothing to log in with. ``id`` is a short public handle to list and revoke it
by. ``last_used`` is rewritten at most once a minute. An optional ``expires_at`` (a BSON date,
written once) lets a TTL index remove expired tokens; they are refused before that anyway.

``role`` and ``disabled`` are the account's, kept equal to it by every change of the account
(:func:`taskdash.store.users.sync_credentials`): a disabled account's tokens are refused here,
and come back if it is enabled again. A token without ``role`` (made before it existed) makes
the request read the account instead.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from taskdash.store.mongo import Doc, Store, eq, translated
from taskdash.store.sessions import TOUCH_EVERY_MS, digest
from taskdash.store.times import to_ms

COLLECTION = "api_tokens"
PREFIX = "taskdash_"
#: the longest text that can be a token (anything longer is refused unread)
MAX_TOKEN_CHARS = 64
#: tokens one user may hold at once
MAX_PER_USER = 50


class TooManyTokens(Exception):
    """The user holds MAX_PER_USER tokens already."""


@dataclass(frozen=True)
class Token:
    """A token as listed (never the secret itself)."""

    id: str
    user: str
    name: str
    created_at: int
    last_used: int | None
    expires_at: int | None
    #: the account's role (None: a token from before tokens carried it)
    role: str | None = None

    def public(self) -> dict[str, object]:
        """What the API shows of it."""
        return {
            "id": self.id,
            "name": self.name,
            "created_at": self.created_at,
            "last_used": self.last_used,
            "expires_at": self.expires_at,
        }


def _token(doc: Doc) -> Token:
    expires = doc.get("expires_at")
    return Token(
        id=doc["id"],
        user=doc["user"],
        name=doc["name"],
        created_at=doc["created_at"],
        last_used=doc.get("last_used"),
        expires_at=None if expires is None else to_ms(expires),
        role=doc.get("role"),
    )


def looks_like_token(text: str) -> bool:
    """Whether ``text`` could be a token at all (checked before any store lookup)."""
    return text.startswith(PREFIX) and len(text) <= MAX_TOKEN_CHARS


async def create(
    store: Store,
    user: str,
    name: str,
    *,
    now: datetime,
    expires_in_days: float | None = None,
    role: str | None = None,
) -> tuple[str, Token]:
    """A new token for ``user`` (of ``role``): (the secret, shown once; what is kept of it).
    Accounts make theirs through :func:`taskdash.store.users.new_token`."""
    async with translated("count_tokens"):
        held = await store[COLLECTION].count_documents({"user": eq(user)})
    if held >= MAX_PER_USER:
        raise TooManyTokens(f"at most {MAX_PER_USER} tokens per user: revoke one first")
    secret = PREFIX + secrets.token_urlsafe(32)
    doc: Doc = {
        "_id": digest(secret),
        "id": secrets.token_hex(8),
        "user": user,
        "name": name,
        "created_at": to_ms(now),
        "last_used": None,
        "role": role,
        "disabled": False,
    }
    if expires_in_days is not None:
        doc["expires_at"] = now + timedelta(days=expires_in_days)
    async with translated("create_token"):
        await store[COLLECTION].insert_one(doc)
    return secret, _token(doc)


async def resolve(
    store: Store, secret: str, *, now: datetime, cache_ttl: float = 0.0
) -> Token | None:
    """The live token ``secret`` is (its use noted at most once a minute), else None; a live
    one read less than ``cache_ttl`` seconds ago is not read again (store/credcache.py)."""
    if not looks_like_token(secret):
        return None
    key, now_ms = digest(secret), to_ms(now)
    doc = store.credentials.get(key, now_ms, cache_ttl)
    if doc is not None and _usable(doc, now_ms):
        return _token(doc)
    generation = store.credentials.generation
    async with translated("resolve_token"):
        doc = await store[COLLECTION].find_one({"_id": key})
    if doc is None or doc.get("disabled") or _expired(doc, now_ms):
        return None
    if not _usable(doc, now_ms):  # its use is noted, at most once a minute
        async with translated("touch_token"):
            await store[COLLECTION].update_one(
                {"_id": key, "last_used": eq(doc.get("last_used"))},
                {"$set": {"last_used": now_ms}},
            )
        doc = {**doc, "last_used": now_ms}
    store.credentials.put(key, doc, now_ms, cache_ttl, generation)
    return _token(doc)


def _expired(doc: Doc, now_ms: int) -> bool:
    expires = doc.get("expires_at")
    return expires is not None and to_ms(expires) <= now_ms


def _usable(doc: Doc, now_ms: int) -> bool:
    """Whether a token read earlier may serve as it is: not expired, no touch due."""
    last_used = doc.get("last_used")
    fresh = last_used is not None and 0 <= now_ms - last_used < TOUCH_EVERY_MS
    return fresh and not _expired(doc, now_ms)


async def list_for(store: Store, user: str) -> list[Token]:
    """``user``'s tokens, oldest first."""
    async with translated("list_tokens"):
        cursor = store[COLLECTION].find({"user": eq(user)}).sort("created_at", 1)
        return [_token(doc) async for doc in cursor]


async def set_access(store: Store, user: str, *, disabled: bool, role: str | None = None) -> None:
    """Every token of ``user`` is refused (``disabled``) or accepted again, with ``role``."""
    changes: Doc = {"disabled": disabled}
    if role is not None:
        changes["role"] = role
    with store.credentials.changing():
        async with translated("set_token_access"):
            await store[COLLECTION].update_many({"user": eq(user)}, {"$set": changes})


async def revoke(store: Store, user: str, token_id: str) -> bool:
    """Delete ``user``'s token ``token_id``; False if ``user`` has no such token."""
    with store.credentials.changing():
        async with translated("revoke_token"):
            result = await store[COLLECTION].delete_one({"user": eq(user), "id": eq(token_id)})
    return result.deleted_count == 1
