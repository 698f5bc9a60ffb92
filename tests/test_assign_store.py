"""The TaskManager binding in the task document: claim, release, assign, TCP, and fetches."""

from __future__ import annotations

import asyncio

import pytest

from taskdash.models import TaskMetaData
from taskdash.store import Store
from taskdash.store.assignments import (
    AssignmentConflict,
    NoSuchTask,
    NotHolder,
    assignment_history,
    claim,
    get_assignment,
    get_assignments,
    release,
    set_assignment,
)
from taskdash.store.tasks import ServiceListing, apply_listings, load_known, write_registered


async def harvest(store: Store, service_id: str, *tasks: TaskMetaData, now_ms: int) -> None:
    """Store a service's listing exactly as the fetcher does."""
    known = (await load_known(store, [service_id]))[service_id]
    await apply_listings(store, [ServiceListing(service_id, list(tasks), known)], now_ms)


async def changes(store: Store, task_id: str = "t") -> list[tuple[str, str, str, str, int]]:
    """(user, previous user, source, by, version) of every change, oldest first."""
    history = await assignment_history(store, task_id)
    return [
        (h["user"], h["previous_user"], h["source"], h["by"], h["version"])
        for h in reversed(history)
    ]


async def test_a_claim_takes_a_free_task_once_and_names_the_holder_to_the_next(
    store: Store,
) -> None:
    await harvest(store, "svc", TaskMetaData(id="t", name="n"), now_ms=1)
    taken, changed = await claim(store, "t", "ann", now_ms=10)
    assert changed and (taken.user, taken.source, taken.by, taken.at_ms, taken.version) == (
        "ann",
        "web",
        "ann",
        10,
        1,
    )
    again, changed = await claim(store, "t", "ann", now_ms=11)
    assert not changed and again.version == 1, "claiming one's own task changes nothing"
    with pytest.raises(AssignmentConflict, match="held by ann") as lost:
        await claim(store, "t", "bob", now_ms=12)
    assert lost.value.holder == "ann"
    assert (await get_assignment(store, "t")).user == "ann"
    assert await changes(store) == [("ann", "", "web", "ann", 1)]
    both = await get_assignments(store, ["t", "nope"])
    assert list(both) == ["t"] and both["t"].user == "ann"
    assert await get_assignments(store, []) == {}


async def test_a_claim_at_an_expected_version_fails_once_the_task_moved_on(store: Store) -> None:
    await harvest(store, "svc", TaskMetaData(id="t"), now_ms=1)
    await claim(store, "t", "ann", now_ms=2)
    await release(store, "t", "ann", now_ms=3)  # free again, at version 2
    with pytest.raises(AssignmentConflict, match="version 2, not 0") as moved:
        await claim(store, "t", "bob", now_ms=4, expect_version=0)
    assert moved.value.holder == ""
    taken, changed = await claim(store, "t", "bob", now_ms=5, expect_version=2)
    assert changed and (taken.user, taken.version) == ("bob", 3)


async def test_twenty_users_claiming_at_once_one_wins(store: Store) -> None:
    await harvest(store, "svc", TaskMetaData(id="t"), now_ms=1)

    async def attempt(user: str) -> str:
        try:
            await claim(store, "t", user, now_ms=2)
        except AssignmentConflict as exc:
            return f"lost to {exc.holder}"
        return "won"

    outcomes = await asyncio.gather(*(attempt(f"u{i}") for i in range(20)))
    winner = (await get_assignment(store, "t")).user
    assert outcomes.count("won") == 1 and outcomes[int(winner[1:])] == "won"
    assert outcomes.count(f"lost to {winner}") == 19
    assert len(await changes(store)) == 1


async def test_release_only_by_the_holder(store: Store) -> None:
    await harvest(store, "svc", TaskMetaData(id="t"), now_ms=1)
    free, changed = await release(store, "t", "ann", now_ms=2)
    assert not changed and free.version == 0, "releasing a free task changes nothing"
    await claim(store, "t", "ann", now_ms=3)
    with pytest.raises(NotHolder, match="held by ann, not by bob") as refused:
        await release(store, "t", "bob", now_ms=4)
    assert refused.value.holder == "ann"
    done, changed = await release(store, "t", "ann", now_ms=5)
    assert changed and (done.user, done.by, done.version) == ("", "ann", 2)
    assert await changes(store) == [("ann", "", "web", "ann", 1), ("", "ann", "web", "ann", 2)]


async def test_an_admin_assignment_replaces_a_claim_and_is_in_the_history(store: Store) -> None:
    await harvest(store, "svc", TaskMetaData(id="t"), now_ms=1)
    await claim(store, "t", "ann", now_ms=2)
    now, changed = await set_assignment(
        store, "t", user="bob", group_id="ops", source="web", by="root", now_ms=3
    )
    assert changed and (now.user, now.group_id, now.by, now.version) == ("bob", "ops", "root", 2)
    same, changed = await set_assignment(store, "t", user="bob", source="web", by="x", now_ms=4)
    assert not changed and same == now, "the same binding again writes nothing"
    await set_assignment(store, "t", user="", source="web", by="root", now_ms=5)
    assert (await get_assignment(store, "t")).group_id == "ops", "unassign keeps the group"
    assert await changes(store) == [
        ("ann", "", "web", "ann", 1),
        ("bob", "ann", "web", "root", 2),
        ("", "bob", "web", "root", 3),
    ]


async def test_no_binding_for_a_task_that_is_not_stored(store: Store) -> None:
    with pytest.raises(NoSuchTask):
        await claim(store, "ghost", "ann", now_ms=1)
    with pytest.raises(NoSuchTask):
        await release(store, "ghost", "ann", now_ms=1)
    with pytest.raises(NoSuchTask):
        await set_assignment(store, "ghost", user="ann", source="tcp", now_ms=1)
    assert await store.tasks.count_documents({}) == 0, "nothing created"
    assert await assignment_history(store, "ghost") == []


async def test_no_fetch_ever_clobbers_a_binding(store: Store) -> None:
    """Changed, gone, listed again, and adopted from TCP: the binding stays as it was."""
    await harvest(store, "svc", TaskMetaData(id="t", name="a"), now_ms=1)
    await claim(store, "t", "ann", now_ms=2)
    await write_registered(store, "tcp-t", {"name": "x"}, {}, create=True, now_ms=3)
    await set_assignment(store, "tcp-t", user="bob", group_id="g", source="tcp", now_ms=4)
    before = [await get_assignment(store, i) for i in ("t", "tcp-t")]
    await harvest(store, "svc", TaskMetaData(id="t", name="changed"), now_ms=5)
    await harvest(store, "svc", now_ms=6)  # t is gone
    await harvest(store, "svc", TaskMetaData(id="t", name="back"), now_ms=7)
    await harvest(store, "other", TaskMetaData(id="tcp-t", name="adopted"), now_ms=8)
    doc = await store.tasks.find_one({"_id": "tcp-t"})
    assert (doc["service_id"], doc["name"]) == ("other", "adopted"), "the fetch did apply"
    assert [await get_assignment(store, i) for i in ("t", "tcp-t")] == before
