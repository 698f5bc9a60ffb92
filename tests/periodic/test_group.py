"""Group commit of task inserts: concurrent callers share writes, each gets its own outcome."""

from __future__ import annotations

import asyncio

import pytest

from taskdash.store.periodic import Group


async def test_concurrent_adds_share_batches_and_each_returns_its_result() -> None:
    batches: list[list[int]] = []

    async def write(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0)
        return [item * 10 for item in items]

    group: Group[int, int] = Group("test", write)
    results = await asyncio.gather(*(group.add(i) for i in range(50)))
    assert results == [i * 10 for i in range(50)]
    assert sorted(i for batch in batches for i in batch) == list(range(50))
    assert len(batches) < 50  # shared writes
    assert await group.add(7) == 70  # alone afterwards: a batch of one


async def test_a_failed_write_fails_every_caller_of_that_batch_only() -> None:
    async def write(items: list[int]) -> list[None]:
        await asyncio.sleep(0)
        if 3 in items:
            raise RuntimeError("refused")
        return [None] * len(items)

    group: Group[int, None] = Group("test", write)
    outcomes = await asyncio.gather(*(group.add(i) for i in range(6)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)  # one batch: all told
    assert await group.add(4) is None  # the group still works
    with pytest.raises(RuntimeError):
        await group.add(3)
