"""The stores behind logins, on nx-27017: audit entries, throttle arithmetic, sessions, token
lookups, the indexes (TTL included), and the last-admin guard under a race."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from web_client import make_token, make_user

from taskdash.store import Store, audit, sessions, throttle, tokens, users
from taskdash.store.throttle import Policy, Rule
from taskdash.store.times import to_ms

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


async def test_audit_entries_are_bounded_and_expire_after_the_ttl(store: Store) -> None:
    await audit.record(
        store,
        actor="x" * 1000,
        action="login",
        target="t" * 1000,
        outcome="failed",
        address="10.0.0.1",
        details={"big": "d" * 1000, "n": 3, "flag": True, "none": None, "obj": {"a": 1}},
        now_ms=to_ms(NOW),
        ttl_days=90,
    )
    doc = await store.audit.find_one({})
    assert doc is not None
    assert len(doc["actor"]) == len(doc["target"]) == len(doc["details"]["big"]) == 256
    assert doc["details"]["n"] == 3 and doc["details"]["flag"] is True
    assert doc["details"]["none"] is None and doc["details"]["obj"] == "{'a': 1}"
    assert doc["expires_at"] == NOW + timedelta(days=90)
    many = {f"k{i}": i for i in range(100)}
    await audit.record(store, actor="a", action="b", details=many, now_ms=to_ms(NOW))
    newest = await store.audit.find_one({"actor": "a"})
    assert newest is not None and len(newest["details"]) == 20


async def test_audit_listing_is_newest_first_filtered_and_capped(store: Store) -> None:
    for i in range(5):
        actor = "alice" if i % 2 == 0 else "bob"
        action = "login" if i < 3 else "token.create"
        await audit.record(store, actor=actor, action=action, now_ms=1000 + i)
    assert [e.at for e in await audit.entries(store)] == [1004, 1003, 1002, 1001, 1000]
    assert [e.at for e in await audit.entries(store, actor="alice")] == [1004, 1002, 1000]
    assert [e.at for e in await audit.entries(store, action="login", since_ms=1001)] == [
        1002,
        1001,
    ]
    assert len(await audit.entries(store, limit=2)) == 2
    assert len(await audit.entries(store, limit=10**9)) == 5  # capped at MAX_LIMIT, not refused
    assert len(await audit.entries(store, limit=0)) == 1


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(0, 0.0), (2, 0.0), (3, 1.0), (4, 2.0), (5, 4.0), (6, 8.0), (7, 10.0), (9, 10.0), (10, 600.0)],
)
def test_wait_after_failures(failures: int, expected: float) -> None:
    policy = Policy(
        user=Rule(delay_after=3, lock_after=10),
        address=Rule(delay_after=10, lock_after=50),
        window=900,
        delay_initial=1,
        delay_max=10,
        lock_time=600,
    )
    assert policy.wait_after(failures, policy.user) == expected


async def test_old_failures_fall_out_of_the_window(store: Store) -> None:
    policy = Policy(Rule(1, 2), Rule(1, 2), window=100, delay_initial=5, delay_max=5, lock_time=50)
    key = throttle.user_key("alice")
    await throttle.record_failure(store, [key], policy, now=NOW)
    verdict = await throttle.check(store, [(key, policy.user)], policy, now=NOW)
    assert (verdict.retry_after, verdict.locked) == (5.0, False)
    await throttle.record_failure(store, [key], policy, now=NOW + timedelta(seconds=60))
    verdict = await throttle.check(
        store, [(key, policy.user)], policy, now=NOW + timedelta(seconds=61)
    )
    assert (verdict.retry_after, verdict.locked) == (49.0, True)
    later = NOW + timedelta(seconds=110)  # the lock is over, the older failure is out
    verdict = await throttle.check(store, [(key, policy.user)], policy, now=later)
    assert verdict.allowed
    doc = await store[throttle.COLLECTION].find_one({"key": key})
    assert doc is not None and doc["expires_at"] == NOW + timedelta(seconds=100)


async def test_sessions_end_for_a_user_but_the_kept_one(store: Store) -> None:
    ids = [await sessions.create(store, "alice", now=NOW, ttl=3600) for _ in range(3)]
    other = await sessions.create(store, "bob", now=NOW, ttl=3600)
    keep = sessions.digest(ids[0])
    assert await sessions.end_for_user(store, "alice", keep=keep) == 2
    assert await sessions.resolve(store, ids[0], now=NOW, idle=60) is not None
    assert await sessions.resolve(store, ids[1], now=NOW, idle=60) is None
    assert await sessions.resolve(store, other, now=NOW, idle=60) is not None


async def test_password_changes_from_the_cli_end_every_session(store: Store) -> None:
    await make_user(store, "alice")
    await sessions.create(store, "alice", now=NOW, ttl=3600)
    await users.set_password(store, "alice", "a-new-password-123")
    assert await sessions.count_for_user(store, "alice") == 0


async def test_a_token_lookup_needs_the_prefix_and_a_sane_length(store: Store) -> None:
    await make_user(store, "alice")
    secret = await make_token(store, "alice")
    assert await tokens.resolve(store, secret, now=datetime.now(UTC)) is not None
    assert await tokens.resolve(store, secret[len(tokens.PREFIX) :], now=NOW) is None
    assert await tokens.resolve(store, secret + "x" * 100, now=NOW) is None
    assert not await tokens.revoke(store, "bob", (await tokens.list_for(store, "alice"))[0].id)


async def test_indexes_with_ttl(store: Store) -> None:
    await users.ensure_indexes(store)
    await users.ensure_indexes(store)  # idempotent
    for collection in ("sessions", "api_tokens", "login_failures", "audit"):
        # by keys: nx-27017 names indexes its own way
        found = {tuple(i["key"]): i for i in (await store[collection].index_information()).values()}
        assert found[(("expires_at", 1),)]["expireAfterSeconds"] == 0, collection
    failures = await store["login_failures"].index_information()
    assert [("key", 1), ("at", 1)] in [i["key"] for i in failures.values()]


async def test_two_admins_demoting_each_other_at_once_leave_an_admin(store: Store) -> None:
    await make_user(store, "ann", "admin")
    await make_user(store, "ben", "admin")
    results = await asyncio.gather(
        users.change_guarded(store, "ann", role="user"),
        users.change_guarded(store, "ben", role="user"),
        return_exceptions=True,
    )
    assert any(isinstance(r, users.LastAdmin) for r in results), results
    assert await users.count_enabled_admins(store) >= 1
