"""Sessions and tokens remembered for ``[web] credential_cache_ttl`` (store/credcache.py): a
change made through this daemon's store counts at once, one made through another daemon's
store within the TTL, and nothing but live credentials is remembered. Two daemons are two
Store objects on one database (each has its own cache), on nx-27017."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from web_client import make_token, make_user, serve

from taskdash.settings import load
from taskdash.store import Store, sessions, tokens, users
from taskdash.store.credcache import CredentialCache
from taskdash.store.times import to_ms

TTL = 5.0
NOW = datetime.now(UTC).replace(microsecond=0)


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


@pytest.fixture
async def other(store: Store, mongo_uri: str) -> AsyncIterator[Store]:
    """Another daemon's store: the same database, a cache of its own."""
    twin = Store(mongo_uri, store.db.name)
    yield twin
    await twin.close()


async def token_of(store: Store, name: str, role: users.Role = "user") -> tuple[str, str]:
    """A new account ``name`` with one token: (secret, token id)."""
    await make_user(store, name, role)
    secret = await make_token(store, name)
    (token,) = await tokens.list_for(store, name)
    return secret, token.id


async def live(store: Store, secret: str, at: datetime = NOW, ttl: float = TTL) -> bool:
    return await tokens.resolve(store, secret, now=at, cache_ttl=ttl) is not None


# -- the cache alone ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("read_at", "now", "remembered"),
    [(1000, 1000, True), (1000, 5999, True), (1000, 6000, False), (1000, 999, False)],
)
def test_an_entry_serves_for_less_than_the_ttl_and_never_from_the_future(
    read_at: int, now: int, remembered: bool
) -> None:
    cache = CredentialCache()
    cache.put("k", {"x": 1}, read_at, TTL, cache.generation)
    assert (cache.get("k", now, TTL) is not None) is remembered


def test_a_read_begun_before_a_change_is_not_remembered() -> None:
    cache = CredentialCache()
    began = cache.generation
    with cache.changing():
        pass
    cache.put("k", {"x": 1}, 0, TTL, began)
    assert cache.get("k", 0, TTL) is None and len(cache) == 0


def test_a_change_forgets_everything_even_when_it_fails() -> None:
    cache = CredentialCache()
    cache.put("k", {"x": 1}, 0, TTL, cache.generation)
    with pytest.raises(RuntimeError), cache.changing():
        raise RuntimeError("the write may have landed")
    assert cache.get("k", 0, TTL) is None


def test_the_cache_is_bounded_and_off_with_a_zero_ttl() -> None:
    cache = CredentialCache(max_entries=3)
    for i in range(5):
        cache.put(f"k{i}", {"i": i}, 0, TTL, cache.generation)
    assert len(cache) == 3 and cache.get("k0", 0, TTL) is None and cache.get("k4", 0, TTL)
    cache.put("z", {}, 0, 0.0, cache.generation)
    assert cache.get("z", 0, TTL) is None


# -- tokens ------------------------------------------------------------------------------------


async def test_a_remembered_token_is_not_read_again_within_the_ttl(
    store: Store, other: Store
) -> None:
    secret, _ = await token_of(store, "alice")
    assert await live(store, secret)
    await other["api_tokens"].delete_many({})  # gone, behind this daemon's back
    assert await live(store, secret, later(TTL - 0.001)), "remembered"
    assert not await live(store, secret, later(TTL)), "read again once the TTL is over"
    assert not await live(store, secret, ttl=0.0), "0 = off: read every time"


async def test_a_token_revoked_here_is_refused_at_once(store: Store) -> None:
    secret, token_id = await token_of(store, "alice")
    assert await live(store, secret)
    assert await tokens.revoke(store, "alice", token_id)
    assert not await live(store, secret)


async def test_a_token_revoked_on_another_daemon_is_refused_within_the_ttl(
    store: Store, other: Store
) -> None:
    secret, token_id = await token_of(store, "alice")
    assert await live(store, secret) and await live(other, secret)
    assert await tokens.revoke(other, "alice", token_id)
    assert not await live(other, secret), "at once where it was revoked"
    assert await live(store, secret, later(1)), "here: still remembered..."
    assert not await live(store, secret, later(TTL)), "...for the TTL at most"


async def test_a_disabled_account_is_refused_at_once_here_within_the_ttl_elsewhere(
    store: Store, other: Store
) -> None:
    secret, _ = await token_of(store, "alice")
    await make_user(store, "root", "admin")
    assert await live(store, secret) and await live(other, secret)
    await users.change_guarded(store, "alice", disabled=True)
    assert not await live(store, secret)
    assert await live(other, secret, later(1))
    assert not await live(other, secret, later(TTL))


async def test_a_role_change_counts_at_once_here(store: Store) -> None:
    secret, _ = await token_of(store, "alice", "admin")
    await make_user(store, "root", "admin")
    assert (await tokens.resolve(store, secret, now=NOW, cache_ttl=TTL)).role == "admin"  # type: ignore[union-attr]
    await users.change_guarded(store, "alice", role="user")
    assert (await tokens.resolve(store, secret, now=NOW, cache_ttl=TTL)).role == "user"  # type: ignore[union-attr]


async def test_a_refused_token_is_not_remembered(store: Store, other: Store) -> None:
    secret, _ = await token_of(store, "alice")
    await users.set_disabled(other, "alice", True)
    assert not await live(store, secret)
    await users.set_disabled(other, "alice", False)
    assert await live(store, secret), "enabled on another daemon: works here at once"


async def test_an_expired_token_is_refused_even_when_remembered(store: Store) -> None:
    await make_user(store, "alice")
    secret, _ = await users.new_token(store, "alice", "t", now=NOW, expires_in_days=1 / 86400)
    assert await live(store, secret)
    assert not await live(store, secret, later(1))


async def test_a_remembered_token_still_notes_its_use_once_a_minute(store: Store) -> None:
    secret, _ = await token_of(store, "alice")
    for second in range(0, 61, 4):
        assert await live(store, secret, later(second), ttl=60)
    (token,) = await tokens.list_for(store, "alice")
    assert token.last_used == to_ms(later(60))


# -- sessions ----------------------------------------------------------------------------------


async def open_session(store: Store, name: str) -> str:
    user = await make_user(store, name)
    session_id = await users.open_session(store, user, now=NOW, ttl=3600)
    assert session_id is not None
    return session_id


async def session_live(store: Store, session_id: str, at: datetime = NOW) -> bool:
    found = await sessions.resolve(store, session_id, now=at, idle=600, cache_ttl=TTL)
    return found is not None


async def test_a_session_ended_here_is_refused_at_once_elsewhere_within_the_ttl(
    store: Store, other: Store
) -> None:
    session_id = await open_session(store, "alice")
    assert await session_live(store, session_id) and await session_live(other, session_id)
    await sessions.end(store, sessions.digest(session_id))  # a logout here
    assert not await session_live(store, session_id)
    assert await session_live(other, session_id, later(1))
    assert not await session_live(other, session_id, later(TTL))


async def test_a_password_change_ends_the_sessions_remembered_here(store: Store) -> None:
    session_id = await open_session(store, "alice")
    assert await session_live(store, session_id)
    await users.set_password(store, "alice", "another-password-0123456789")
    assert not await session_live(store, session_id)


async def test_an_idle_session_is_judged_on_a_fresh_read(store: Store, other: Store) -> None:
    session_id = await open_session(store, "alice")
    assert await session_live(store, session_id, later(0))
    # used through the other daemon after 9 minutes: this one's copy says 9 minutes idle
    assert await session_live(other, session_id, later(540))
    assert await session_live(store, session_id, later(660)), "not ended on the old copy"


async def test_a_remembered_session_is_checked_for_idleness_and_still_touched(
    store: Store,
) -> None:
    session_id = await open_session(store, "alice")
    key = sessions.digest(session_id)
    assert await sessions.resolve(store, session_id, now=later(50), idle=600, cache_ttl=60)
    assert await sessions.resolve(store, session_id, now=later(70), idle=600, cache_ttl=60)
    doc = await store["sessions"].find_one({"_id": key})
    assert doc is not None and doc["last_seen"] == to_ms(later(70)), "touched, once a minute"
    other = await open_session(store, "bob")
    assert await sessions.resolve(store, other, now=later(20), idle=30, cache_ttl=60)
    assert await sessions.resolve(store, other, now=later(40), idle=30, cache_ttl=60) is None


# -- through HTTP: two daemons on one database ----------------------------------------------


async def test_two_daemons_one_revokes_the_other_refuses_within_the_ttl(
    store: Store, other: Store
) -> None:
    secret, token_id = await token_of(store, "alice")
    async with serve(store) as here, serve(other, load(env={})) as there:
        mine, theirs = here.client(token=secret), there.client(token=secret)
        assert (await mine.call("/api/v1/tasks"))[0] == 200
        assert (await theirs.call("/api/v1/tasks"))[0] == 200
        status, _ = await mine.call(f"/api/v1/me/tokens/{token_id}", "DELETE")
        assert status in (200, 204)
        assert (await mine.call("/api/v1/tasks"))[0] == 401, "at once on this daemon"
        assert (await theirs.call("/api/v1/tasks"))[0] == 200, "remembered on the other"
        there.clock.advance(there.ctx.settings.web.credential_cache_ttl)
        assert (await theirs.call("/api/v1/tasks"))[0] == 401, "within the TTL"
