"""The shape of every loop: a stop that always ends the task."""

from __future__ import annotations

import asyncio

import structlog.testing

from taskdash.background import Background, store_round
from taskdash.errors import StoreError


async def test_stop_ends_a_task_that_lost_a_cancellation() -> None:
    """A cancellation swallowed once (as asyncio.wait_for can in 3.11) does not hang stop()."""
    swallowed = 0

    async def body() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # lost, as by the race

    loop = Background("stubborn", body)
    await loop.start()
    await asyncio.sleep(0.01)
    stopping = asyncio.create_task(loop.stop())
    await asyncio.wait({stopping}, timeout=5)  # the body would sleep 30 s more
    done = stopping.done()
    if not done:
        stopping.cancel()
    assert done, "stop() hung on a lost cancellation"
    assert swallowed == 1 and not loop.running
    await loop.stop()  # idempotent


async def test_stop_reraises_what_the_body_raised() -> None:
    async def body() -> None:
        raise ValueError("boom")

    loop = Background("failing", body)
    await loop.start()
    await asyncio.sleep(0.01)
    try:
        await loop.stop()
    except ValueError as exc:
        assert str(exc) == "boom"
    else:
        raise AssertionError("the body's error was hidden")


async def test_a_store_round_logs_an_outage_once_and_a_bug_each_time() -> None:
    outcomes: list[BaseException | None] = [StoreError("down"), StoreError("down"), None]
    outcomes += [ValueError("bug"), ValueError("bug")]
    called: list[str] = []

    async def step() -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    last = ""
    seen: list[str] = []
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            last = await store_round(
                step,
                last,
                logger=structlog.get_logger("t"),
                failed="t_failed",
                crashed="t_crashed",
                on_store_error=lambda: called.append("store"),
            )
            seen.append(last)
    assert seen == ["down", "down", "", "", ""]
    assert [e["event"] for e in logs] == ["t_failed", "t_crashed", "t_crashed"]
    assert called == ["store", "store"]
