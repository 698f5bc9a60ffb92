"""``/metadata``: what TaskDash fetches every few seconds must not scan every task, and must
not show a lease that has ended as running."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Clock, Node, register

from taskdash.store.periodic import STATES, PeriodicStore, list_filter, sample_filter


def uses_an_index(plan: dict[str, Any]) -> bool:
    """Whether an explain() plan reads an index (nx-27017's words or MongoDB's stages)."""
    text = str(plan)
    return ("USING INDEX" in text or "IXSCAN" in text) and "COLLSCAN" not in text


@pytest.mark.parametrize("state", STATES)
async def test_the_metadata_query_reads_an_index(node: Node, state: str) -> None:
    store: PeriodicStore = node.leasing.store
    who = await register(node.stub)
    await who.create(3)
    plan = await store.tasks.find(sample_filter(state), {"task_data": 0}).limit(10).explain()
    assert uses_an_index(plan), plan


async def test_an_expired_lease_is_shown_as_restart(make_api: Any, clock: Clock) -> None:
    api = await make_api()
    who = await register(api.node.stub)
    await who.create(2)
    [held, expiring] = await who.lease(2)
    clock.advance(200)
    await api.node.leasing.extend(who.caller, who.queue, held["task_id"], 300)
    clock.advance(101)  # the second lease ended (300 s); the extended one has not
    status, records = await api.call("GET", "/metadata")
    assert status == 200
    by_id = {r["id"]: r["status"] for r in records}
    assert by_id[f"periodic-{held['task_id']}"] == "running"
    assert by_id[f"periodic-{expiring['task_id']}"] == "restart"


@pytest.mark.parametrize("state", [None, *STATES])
async def test_the_task_listing_reads_an_index(node: Node, state: str | None) -> None:
    """Every page of ``GET .../tasks`` is a range of an index, not a scan of every task
    (nx-27017 answers an ``_id`` range by scanning: 1.4-2.8 s a page at 100,000 tasks)."""
    store: PeriodicStore = node.leasing.store
    who = await register(node.stub)
    await who.create(3)
    ref = await node.leasing.queue_ref(who.caller, who.queue)
    query, order = list_filter(ref.inc, state, after=1)
    plan = await store.tasks.find(query).sort(order, 1).limit(10).explain()
    assert uses_an_index(plan), plan
    listed = await store.list_tasks(ref.inc, state=state, after=0, limit=10)
    assert [t["state"] for t in listed] == (["pending"] * 3 if state in (None, "pending") else [])
