"""The shape of every loop: a stop that always ends the task."""

from __future__ import annotations

import asyncio

from taskdash.background import Background


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
