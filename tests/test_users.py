"""Dashboard accounts on a real store: rules, argon2id hashing, login checks, the first admin."""

from __future__ import annotations

import asyncio
import unicodedata
from datetime import UTC, datetime, timedelta

import pytest
from argon2 import PasswordHasher

from taskdash.errors import ValidationError
from taskdash.passwords import Passwords, Verdict, password_error
from taskdash.store import Store, users

GOOD = "correct horse battery"
#: cheap and old-fashioned parameters: a hash made with them must be renewed at login
WEAK = Passwords(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a", True),
        ("admin", True),
        ("alice.smith", True),
        ("ops_bot-2@site", True),
        ("0day", True),
        ("x" * 64, True),
        ("", False),
        ("x" * 65, False),
        ("Alice", False),  # upper case: 'Alice' and 'alice' would be two people
        ("-alice", False),
        (".alice", False),
        ("@alice", False),
        ("al ice", False),
        ("al/ice", False),
        ("al:ice", False),
        ("alice\n", False),
        ("élise", False),
        ("a$b", False),
    ],
)
def test_name_rules(name: str, ok: bool) -> None:
    assert (users.name_error(name) is None) is ok


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("x" * 11, "too short"),
        ("x" * 12, None),
        ("é" * 12, None),  # 12 characters, 24 bytes
        ("ﬁ" * 6, None),  # NFKC makes each ligature 'fi': 12 characters
        ("a" * 1024, None),
        ("a" * 1025, "too long"),
        ("€" * 342, "too long"),  # 342 characters, 1,026 bytes
        ("", "too short"),
    ],
)
def test_password_rules(password: str, problem: str | None) -> None:
    found = password_error(password)
    assert found is None if problem is None else problem in (found or "")


async def test_right_password_logs_in_wrong_one_does_not(store: Store) -> None:
    added = await users.add_user(store, "alice", GOOD, role="admin")
    assert (added.name, added.role, added.disabled) == ("alice", "admin", False)
    assert await users.verify_login(store, "alice", GOOD) == added
    assert await users.verify_login(store, "alice", GOOD + "!") is None
    assert await users.verify_login(store, "alice", "") is None


async def test_the_hash_is_argon2id_and_never_handed_out(store: Store) -> None:
    user = await users.add_user(store, "alice", GOOD)
    stored = await store.users.find_one({"_id": "alice"})
    assert stored is not None and stored["password"].startswith("$argon2id$")
    assert GOOD not in str(stored)
    assert not hasattr(user, "password")
    assert await users.get_user(store, "alice") == user


async def test_an_unknown_name_costs_one_verification_too(store: Store) -> None:
    passwords = Passwords()
    assert await users.verify_login(store, "nobody", GOOD, passwords=passwords) is None
    assert passwords.dummy_hash is not None  # verified against the dummy, like a real user


async def test_a_disabled_account_cannot_log_in_even_with_its_password(store: Store) -> None:
    await users.add_user(store, "alice", GOOD)
    await users.set_disabled(store, "alice", True)
    assert await users.verify_login(store, "alice", GOOD) is None
    assert (await users.get_user(store, "alice")).disabled  # type: ignore[union-attr]
    await users.set_disabled(store, "alice", False)
    assert await users.verify_login(store, "alice", GOOD) is not None


async def test_a_weaker_hash_is_renewed_at_login(store: Store) -> None:
    await users.add_user(store, "alice", GOOD, passwords=WEAK)
    before = (await store.users.find_one({"_id": "alice"}))["password"]  # type: ignore[index]
    assert "m=1024,t=1,p=1" in before
    assert await users.verify_login(store, "alice", GOOD) is not None
    after = (await store.users.find_one({"_id": "alice"}))["password"]  # type: ignore[index]
    assert after != before and not PasswordHasher().check_needs_rehash(after)
    assert await users.verify_login(store, "alice", GOOD) is not None


class PasswdDuringLogin(Passwords):
    """A real hasher; someone sets a new password while a login's verification runs."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    async def verify(self, encoded: str, password: str) -> Verdict:
        verdict = await super().verify(encoded, password)
        await users.set_password(self.store, "alice", "changed meanwhile", passwords=WEAK)
        return verdict


async def test_a_renewed_hash_never_overwrites_a_password_changed_meanwhile(store: Store) -> None:
    await users.add_user(store, "alice", GOOD, passwords=WEAK)
    assert await users.verify_login(store, "alice", GOOD, passwords=PasswdDuringLogin(store))
    assert await users.verify_login(store, "alice", GOOD) is None
    assert await users.verify_login(store, "alice", "changed meanwhile") is not None


async def test_a_wrong_password_renews_nothing(store: Store) -> None:
    await users.add_user(store, "alice", GOOD, passwords=WEAK)
    before = (await store.users.find_one({"_id": "alice"}))["password"]  # type: ignore[index]
    assert await users.verify_login(store, "alice", "not the password") is None
    assert (await store.users.find_one({"_id": "alice"}))["password"] == before  # type: ignore[index]


async def test_passwords_are_compared_after_unicode_normalization(store: Store) -> None:
    composed = "café crème brûlée"
    await users.add_user(store, "alice", composed)
    typed_elsewhere = unicodedata.normalize("NFD", composed)
    assert typed_elsewhere != composed
    assert await users.verify_login(store, "alice", typed_elsewhere) is not None


async def test_names_are_unique(store: Store) -> None:
    await users.add_user(store, "alice", GOOD)
    with pytest.raises(users.UserExists, match="alice"):
        await users.add_user(store, "alice", GOOD + "2", role="admin")
    assert await users.verify_login(store, "alice", GOOD) is not None  # the first one stays


@pytest.mark.parametrize(
    ("name", "password", "role", "field"),
    [
        ("Bad Name", GOOD, "user", "name"),
        ("alice", "short", "user", "password"),
        ("alice", GOOD, "root", "role"),
    ],
)
async def test_bad_input_is_refused_before_anything_is_stored(
    store: Store, name: str, password: str, role: str, field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        await users.add_user(store, name, password, role=role)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert await users.count_users(store) == 0


async def test_set_password_replaces_it_and_moves_updated_at(store: Store) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    await users.add_user(store, "alice", GOOD, clock=lambda: start)
    later = start + timedelta(hours=1)
    await users.set_password(store, "alice", "a new long password", clock=lambda: later)
    assert await users.verify_login(store, "alice", GOOD) is None
    user = await users.verify_login(store, "alice", "a new long password")
    assert user is not None
    assert user.created_at == int(start.timestamp() * 1000)
    assert user.updated_at == int(later.timestamp() * 1000)
    with pytest.raises(ValidationError):
        await users.set_password(store, "alice", "short")


async def test_changing_an_unknown_user_says_so(store: Store) -> None:
    with pytest.raises(users.UnknownUser, match="nobody"):
        await users.set_password(store, "nobody", GOOD)
    with pytest.raises(users.UnknownUser, match="nobody"):
        await users.set_disabled(store, "nobody", True)
    assert await users.get_user(store, "nobody") is None


async def test_list_and_count(store: Store) -> None:
    assert await users.list_users(store) == [] and await users.count_users(store) == 0
    for name in ("carol", "alice", "bob"):
        await users.add_user(store, name, GOOD, passwords=WEAK)
    assert [u.name for u in await users.list_users(store)] == ["alice", "bob", "carol"]
    assert await users.count_users(store) == 3


async def test_first_admin_is_created_once_with_a_random_password(store: Store) -> None:
    password = await users.create_first_admin(store)
    assert password is not None and len(password) == 24
    admin = await users.verify_login(store, users.FIRST_ADMIN, password)
    assert admin is not None and admin.role == "admin"
    assert await users.create_first_admin(store) is None
    assert await users.count_users(store) == 1


async def test_no_first_admin_when_any_user_exists(store: Store) -> None:
    await users.add_user(store, "alice", GOOD, passwords=WEAK)
    assert await users.create_first_admin(store) is None
    assert [u.name for u in await users.list_users(store)] == ["alice"]


async def test_concurrent_first_starts_create_one_admin(store: Store) -> None:
    # each creator counts (none yet), hashes in a thread, then inserts: only one insert wins
    found = await asyncio.gather(*(users.create_first_admin(store) for _ in range(4)))
    created = [p for p in found if p is not None]
    assert len(created) == 1
    assert [u.name for u in await users.list_users(store)] == [users.FIRST_ADMIN]
    assert await users.verify_login(store, users.FIRST_ADMIN, created[0]) is not None
