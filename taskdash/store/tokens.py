"""Per-user API tokens for scripts (collection ``api_tokens``).

A token is ``taskdash_`` + 32 random bytes (URL-safe base64), shown once when created. Only
its SHA-256 is stored, as ``_id``: a lookup by digest needs no other index, and a copy of the
database holds nothing to log in with. ``id`` is a short public handle to list and revoke it
by. ``last_used`` is rewritten at most once a minute. An optional ``expires_at`` (a BSON date,
written once) lets a TTL index remove expired tokens; they are refused before that anyway.
"""

from __future__ import annotations

import dataclasses
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
    )


def looks_like_token(text: str) -> bool:
    """Whether ``text`` could be a token at all (checked before any store lookup)."""
    return text.startswith(PREFIX) and len(text) <= MAX_TOKEN_CHARS


async def create(
    store: Store, user: str, name: str, *, now: datetime, expires_in_days: float | None = None
) -> tuple[str, Token]:
    """A new token for ``user``: (the secret, shown once; what is kept of it)."""
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
    }
    if expires_in_days is not None:
        doc["expires_at"] = now + timedelta(days=expires_in_days)
    async with translated("create_token"):
        await store[COLLECTION].insert_one(doc)
    return secret, _token(doc)


async def resolve(store: Store, secret: str, *, now: datetime) -> Token | None:
    """The live token ``secret`` is (its use noted at most once a minute), else None."""
    if not looks_like_token(secret):
        return None
    async with translated("resolve_token"):
        doc = await store[COLLECTION].find_one({"_id": digest(secret)})
    if doc is None:
        return None
    token = _token(doc)
    now_ms = to_ms(now)
    if token.expires_at is not None and token.expires_at <= now_ms:
        return None
    if token.last_used is None or now_ms - token.last_used >= TOUCH_EVERY_MS:
        async with translated("touch_token"):
            await store[COLLECTION].update_one(
                {"_id": doc["_id"], "last_used": eq(token.last_used)},
                {"$set": {"last_used": now_ms}},
            )
        token = dataclasses.replace(token, last_used=now_ms)
    return token


async def list_for(store: Store, user: str) -> list[Token]:
    """``user``'s tokens, oldest first."""
    async with translated("list_tokens"):
        cursor = store[COLLECTION].find({"user": eq(user)}).sort("created_at", 1)
        return [_token(doc) async for doc in cursor]


async def revoke(store: Store, user: str, token_id: str) -> bool:
    """Delete ``user``'s token ``token_id``; False if ``user`` has no such token."""
    async with translated("revoke_token"):
        result = await store[COLLECTION].delete_one({"user": eq(user), "id": eq(token_id)})
    return result.deleted_count == 1
