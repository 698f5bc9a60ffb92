"""Two writers at once, interleaved certainly (``tcp_race``): nothing lost, nothing overwritten.

Each test freezes one writer between its read and its write (or between its write and the
reply), lets another writer act in full, and checks the database-side condition that keeps
the first from undoing the second. Every one of them fails when that condition is removed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import structlog.testing
from support import harvest
from tcp_helpers import OK, client, serving
from tcp_race import Between, listened_store, other_store, run_elsewhere

from taskdash.models import TaskMetaData
from taskdash.store import Store
from taskdash.store.assignments import (
    Assignment,
    AssignmentConflict,
    NotHolder,
    assignment_history,
    claim,
    get_assignment,
    release,
    set_assignment,
)
from taskdash.store.tasks import (
    Conflict,
    TcpWrite,
    write_registered,
)

T = TypeVar("T")
WINNER = {"name": "winner", "url": "http://w", "description": "w", "status": "new"}
LOSER = {"name": "loser", "url": "http://l", "description": "l", "status": "running"}


# -- two Registers of a new id -----------------------------------------------------------------


async def lost_insert_race(store: Store, mongo_uri: str) -> Between:
    """The world a Register's upsert meets when another Register inserted the id first.

    On MongoDB both upserts can find no document; one inserts, the other's insert then fails
    on the unique ``_id`` with DuplicateKeyError, which the server retries by itself only when
    the filter is exactly the unique key (SERVER-37124) — ours also says "no owner". nx-27017
    applies an upsert atomically, so this shows the loser exactly what MongoDB shows it: the
    winner's document is stored, not matching the upsert's filter (MongoDB's match did not
    see it), and it is the winner's unowned document once the failed upsert has returned.
    """
    done = await write_registered(store, "t1", WINNER, {}, create=True, now_ms=1)
    assert done.outcome == "created"
    await store.tasks.update_one({"_id": "t1"}, {"$set": {"service_id": "not-seen"}})

    async def winner_visible() -> None:
        other = other_store(mongo_uri, store.db.name)
        try:
            await other.tasks.update_one({"_id": "t1"}, {"$set": {"service_id": None}})
        finally:
            await other.close()

    return Between("update", "tasks", lambda: run_elsewhere(winner_visible), when="after")


async def test_a_register_losing_the_insert_race_is_applied_not_taken_as_owned(
    store: Store, mongo_uri: str
) -> None:
    race = await lost_insert_race(store, mongo_uri)
    loser = await listened_store(mongo_uri, store.db.name, race)
    try:
        window = {"start_time": "9:00", "stop_time": "10:00"}
        done = await write_registered(loser, "t1", LOSER, window, create=True, now_ms=2)
    finally:
        await loser.close()
    assert race.fired == 1, "the upsert met the duplicate key"
    assert done == TcpWrite("updated")
    doc = await store.tasks.find_one({"_id": "t1"})
    assert {k: doc[k] for k in (*LOSER, *window)} == {**LOSER, **window}, "last writer wins"
    assert doc["service_id"] is None and doc["first_seen_at"] == 1


async def test_over_tcp_the_losing_register_is_stored_and_not_logged_as_ignored(
    store: Store, mongo_uri: str
) -> None:
    race = await lost_insert_race(store, mongo_uri)
    loser = await listened_store(mongo_uri, store.db.name, race)
    try:
        async with serving(loser) as server:
            c = await client(server)
            with structlog.testing.capture_logs() as logs:
                assert await c.register({"id": "t1", **LOSER, "user": "ann"}) == {"id": "t1", **OK}
            found = await c.find("t1")
            await c.close()
    finally:
        await loser.close()
    assert race.fired == 1
    assert {k: found[k] for k in (*LOSER, "user")} == {**LOSER, "user": "ann"}
    assert not [e for e in logs if e["event"] == "tcp_owned_fields_ignored"]


async def test_a_register_of_a_service_task_is_still_owned_after_the_duplicate_key(
    store: Store,
) -> None:
    """The retry after a duplicate key matches only an unowned task: an owned one stays owned."""
    await harvest(store, "svc", TaskMetaData(id="t1", name="svc-name"), now_ms=1)
    done = await write_registered(
        store, "t1", {"name": "tcp"}, {"start_time": "9:00"}, create=True, now_ms=2
    )
    assert done == TcpWrite("owned", owner="svc", ignored=("name",))
    doc = await store.tasks.find_one({"_id": "t1"})
    assert (doc["name"], doc["service_id"], doc["start_time"]) == ("svc-name", "svc", "9:00")


# -- two services adopting one task registered over TCP ----------------------------------------


async def test_an_adoption_between_the_owner_read_and_the_adopt_is_not_overwritten(
    store: Store, mongo_uri: str
) -> None:
    """Service A reads "no owner", then B adopts, then A's adopt arrives: B keeps the task."""
    await write_registered(store, "t1", {"name": "tcp"}, {"start_time": "12:00"}, create=True,
                           now_ms=1)  # fmt: skip

    async def b_adopts() -> None:
        other = other_store(mongo_uri, store.db.name)
        try:
            await harvest(other, "svc-b", TaskMetaData(id="t1", name="from-b"), now_ms=20)
        finally:
            await other.close()

    # A's first update of ``tasks`` is its adopt, sent after it read the owner (None)
    race = Between("update", "tasks", lambda: run_elsewhere(b_adopts))
    a = await listened_store(mongo_uri, store.db.name, race)
    try:
        first = await harvest(a, "svc-a", TaskMetaData(id="t1", name="from-a"), now_ms=10)
    finally:
        await a.close()
    assert race.fired == 1
    doc = await store.tasks.find_one({"_id": "t1"})
    assert (doc["service_id"], doc["name"], doc["start_time"]) == ("svc-b", "from-b", "12:00")
    assert first.conflicts == [] and "svc-a" in first.stale, "A reloads and tries again"
    again = await harvest(store, "svc-a", TaskMetaData(id="t1", name="from-a"), now_ms=30)
    assert again.conflicts == [Conflict("t1", "svc-a", "svc-b")]


# -- two assignments of one task ---------------------------------------------------------------


def bob_binds(other: Store) -> Awaitable[object]:
    """Bob's binding over TCP (newest wins), as another writer makes it."""
    return set_assignment(other, "t", user="bob", source="tcp", now_ms=2)


def bob_claims(other: Store) -> Awaitable[object]:
    return claim(other, "t", "bob", now_ms=2)


async def ann_during(
    store: Store,
    mongo_uri: str,
    command: str,
    other: Callable[[Store], Awaitable[object]],
    work: Callable[[Store], Awaitable[T]],
) -> T:
    """Ann's ``work``, with ``other`` (another writer: own client, own loop) run to its end
    just before Ann's first ``command`` on ``tasks`` is sent."""

    async def another() -> None:
        theirs = other_store(mongo_uri, store.db.name)
        try:
            await other(theirs)
        finally:
            await theirs.close()

    race = Between(command, "tasks", lambda: run_elsewhere(another))
    ann = await listened_store(mongo_uri, store.db.name, race)
    try:
        return await work(ann)
    finally:
        await ann.close()
        assert race.fired == 1, "the other writer ran in between"


async def history_of(store: Store) -> list[tuple[str, str, int]]:
    """(user, previous user, version), newest first."""
    return [
        (h["user"], h["previous_user"], h["version"]) for h in await assignment_history(store, "t")
    ]


async def a_task(store: Store) -> None:
    """Task "t", as TCP registers it: nobody holds it."""
    assert (await write_registered(store, "t", {}, {}, create=True, now_ms=1)).outcome == "created"


async def test_two_claims_at_once_one_wins_the_other_is_told_the_holder(
    store: Store, mongo_uri: str
) -> None:
    """Bob's claim lands between Ann's request and its arrival: her one conditional update
    (nobody holds it) no longer matches, and she is told Bob holds it."""
    await a_task(store)
    with pytest.raises(AssignmentConflict) as lost:
        await ann_during(
            store,
            mongo_uri,
            "findAndModify",
            bob_claims,
            lambda ann: claim(ann, "t", "ann", now_ms=3),
        )
    assert lost.value.holder == "bob"
    current = await get_assignment(store, "t")
    assert (current.user, current.version, current.source) == ("bob", 1, "web")
    assert await history_of(store) == [("bob", "", 1)]


def ann_binds(ann: Store) -> Awaitable[tuple[Assignment, bool]]:
    return set_assignment(ann, "t", user="ann", source="tcp", now_ms=3)


async def test_tcp_assignments_racing_both_apply_in_order(store: Store, mongo_uri: str) -> None:
    """Without a condition the newest wins, but Bob's change is not silently erased: Ann's
    write misses on ``version``, she reads again and writes version 3 after Bob's 2."""
    await a_task(store)
    await set_assignment(store, "t", user="x", source="tcp", now_ms=1)
    now, changed = await ann_during(store, mongo_uri, "update", bob_binds, ann_binds)
    assert changed and (now.user, now.version) == ("ann", 3)
    assert await history_of(store) == [("ann", "bob", 3), ("bob", "x", 2), ("x", "", 1)]


async def test_a_first_assignment_losing_the_race_retries_on_the_winner(
    store: Store, mongo_uri: str
) -> None:
    """Never assigned: Bob's first binding lands between Ann's read and her write."""
    await a_task(store)
    now, changed = await ann_during(store, mongo_uri, "update", bob_binds, ann_binds)
    assert changed and (now.user, now.version) == ("ann", 2)
    assert await history_of(store) == [("ann", "bob", 2), ("bob", "", 1)]


async def test_a_release_after_someone_else_took_the_task_over_is_refused(
    store: Store, mongo_uri: str
) -> None:
    """Ann holds the task; an admin gives it to Bob just before Ann's release arrives: her
    release (conditional on her holding it) must not free Bob's task."""
    await a_task(store)
    await claim(store, "t", "ann", now_ms=1)
    with pytest.raises(NotHolder) as refused:
        await ann_during(
            store,
            mongo_uri,
            "findAndModify",
            bob_binds,
            lambda ann: release(ann, "t", "ann", now_ms=3),
        )
    assert refused.value.holder == "bob"
    assert (await get_assignment(store, "t")).user == "bob"
    assert await history_of(store) == [("bob", "ann", 2), ("ann", "", 1)]
