"""Login throttling shared by every daemon on the store (collection ``login_failures``).

One document per failed attempt and per key (``user:<name>``, ``addr:<ip>``), written once
with a TTL date: inserts from several daemons never overwrite each other, so no failure is
lost to a race, and old ones vanish by themselves. The state of a key is read from its recent
failures: after ``delay_after`` of them within the window each new attempt must wait a delay
doubling per failure (up to ``delay_max``); after ``lock_after`` the key is locked for
``lock_time`` after the last failure. A refused attempt is not a failure (it was never
checked), so a locked key opens again on time whatever an attacker keeps sending.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from taskdash.store.mongo import Doc, Store, eq, translated
from taskdash.store.times import to_ms

COLLECTION = "login_failures"


@dataclass(frozen=True)
class Rule:
    """When a key starts waiting and when it is locked."""

    delay_after: int
    lock_after: int


@dataclass(frozen=True)
class Policy:
    """``[web] login_*``: how failures turn into waits and locks."""

    user: Rule
    address: Rule
    window: float
    delay_initial: float
    delay_max: float
    lock_time: float

    def wait_after(self, failures: int, rule: Rule) -> float:
        """Seconds the next attempt must wait after the last of ``failures`` (0: none)."""
        if failures >= rule.lock_after:
            return self.lock_time
        if failures < rule.delay_after:
            return 0.0
        return min(self.delay_initial * 2 ** (failures - rule.delay_after), self.delay_max)


@dataclass(frozen=True)
class Verdict:
    """Whether an attempt may be checked now; if not, for how long it is refused."""

    retry_after: float = 0.0
    locked: bool = False

    @property
    def allowed(self) -> bool:
        return self.retry_after <= 0


def user_key(name: str) -> str:
    return f"user:{name}"


def address_key(address: str) -> str:
    return f"addr:{address}"


async def _recent(store: Store, key: str, since_ms: int, limit: int) -> list[int]:
    """The times of ``key``'s failures since ``since_ms``, newest first, at most ``limit``."""
    query = {"key": eq(key), "at": {"$gt": since_ms}}
    async with translated("login_failures"):
        cursor = store[COLLECTION].find(query, {"at": 1, "_id": 0}).sort("at", -1).limit(limit)
        return [doc["at"] async for doc in cursor]


async def check(
    store: Store, keys: list[tuple[str, Rule]], policy: Policy, *, now: datetime
) -> Verdict:
    """Whether an attempt on these keys may be checked now (the longest wait wins)."""
    now_ms = to_ms(now)
    verdict = Verdict()
    for key, rule in keys:
        failures = await _recent(store, key, now_ms - int(policy.window * 1000), rule.lock_after)
        if not failures:
            continue
        wait = policy.wait_after(len(failures), rule)
        remaining = (failures[0] + wait * 1000 - now_ms) / 1000
        if remaining > verdict.retry_after:
            verdict = Verdict(retry_after=remaining, locked=len(failures) >= rule.lock_after)
    return verdict


async def record_failure(store: Store, keys: list[str], policy: Policy, *, now: datetime) -> None:
    """Count one failed attempt against each key."""
    keep = timedelta(seconds=max(policy.window, policy.lock_time))
    docs: list[Doc] = [{"key": k, "at": to_ms(now), "expires_at": now + keep} for k in keys]
    async with translated("record_login_failure"):
        await store[COLLECTION].insert_many(docs)


async def clear(store: Store, key: str) -> None:
    """Forget ``key``'s failures (a successful login clears its user's, not its address's)."""
    async with translated("clear_login_failures"):
        await store[COLLECTION].delete_many({"key": eq(key)})
