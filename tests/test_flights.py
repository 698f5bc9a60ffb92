"""Shared reads in flight (store/flights.py): who shares a read, who starts a new one, and what
a failure or a cancellation does to the others."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from taskdash.errors import ConfigError
from taskdash.settings import load
from taskdash.store.flights import Flights


class Held:
    """Reads that answer when released: ``started`` counts them."""

    def __init__(self) -> None:
        self.started = 0
        self.release = asyncio.Event()
        self.error: BaseException | None = None

    def read(self, answer: object) -> Callable[[], Coroutine[Any, Any, object]]:
        async def reading() -> object:
            self.started += 1
            await self.release.wait()
            if self.error is not None:
                raise self.error
            return answer

        return reading


async def test_requests_asked_while_a_read_is_on_its_way_share_it() -> None:
    flights, held = Flights(), Held()
    waiting = [asyncio.ensure_future(flights.share("page", held.read(n))) for n in range(3)]
    await asyncio.sleep(0)
    held.release.set()
    assert await asyncio.gather(*waiting) == [0, 0, 0], "all three have the first read's answer"
    assert held.started == 1
    assert (flights.flown, flights.joined, len(flights)) == (1, 2, 0)


async def test_other_keys_and_later_requests_read_on_their_own() -> None:
    flights, held = Flights(), Held()
    held.release.set()
    both = await asyncio.gather(
        flights.share("a", held.read("A")), flights.share("b", held.read("B"))
    )
    assert both == ["A", "B"]
    assert await flights.share("a", held.read("A2")) == "A2", "a landed read is not kept"
    assert held.started == 3


async def test_a_request_after_a_write_does_not_join_a_read_begun_before_it() -> None:
    flights, held = Flights(), Held()
    before = asyncio.ensure_future(flights.share("page", held.read("old")))
    await asyncio.sleep(0)
    flights.wrote()
    after = asyncio.ensure_future(flights.share("page", held.read("new")))
    same_time = asyncio.ensure_future(flights.share("page", held.read("unused")))
    await asyncio.sleep(0)
    held.release.set()
    assert await asyncio.gather(before, after, same_time) == ["old", "new", "new"]
    assert held.started == 2


async def test_a_failed_read_fails_every_request_waiting_on_it_then_is_forgotten() -> None:
    flights, held = Flights(), Held()
    held.error = RuntimeError("store gone")
    waiting = [asyncio.ensure_future(flights.share("page", held.read(0))) for _ in range(2)]
    await asyncio.sleep(0)
    held.release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert [str(r) for r in results] == ["store gone", "store gone"]
    held.error = None
    assert await flights.share("page", held.read("again")) == "again"


async def test_a_cancelled_request_leaves_the_read_to_the_others() -> None:
    flights, held = Flights(), Held()
    gone = asyncio.ensure_future(flights.share("page", held.read("page")))
    staying = asyncio.ensure_future(flights.share("page", held.read("unused")))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    held.release.set()
    assert await staying == "page"
    assert gone.cancelled()


async def test_a_read_every_requester_left_ends_quietly() -> None:
    """Its failure is nobody's to raise: retrieved, so asyncio logs no 'never retrieved'."""
    flights, held = Flights(), Held()
    held.error = RuntimeError("store gone")
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        alone = asyncio.ensure_future(flights.share("page", held.read(0)))
        await asyncio.sleep(0)
        alone.cancel()
        held.release.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(flights) == 0
        gc.collect()
        assert reported == []
    finally:
        loop.set_exception_handler(None)


def test_a_client_write_ends_the_sharing_done_or_failed() -> None:
    flights = Flights()
    with flights.writing():
        pass
    assert flights.generation == 1
    with pytest.raises(RuntimeError), flights.writing():
        raise RuntimeError("timed out (the write may have landed)")
    assert flights.generation == 2


async def test_switched_off_every_request_reads_on_its_own() -> None:
    flights, held = Flights(enabled=False), Held()
    waiting = [asyncio.ensure_future(flights.share("page", held.read(n))) for n in range(3)]
    await asyncio.sleep(0)
    held.release.set()
    assert await asyncio.gather(*waiting) == [0, 1, 2]
    assert held.started == 3


def test_share_reads_is_on_unless_the_config_says_otherwise() -> None:
    assert load(env={}).web.share_reads is True
    assert load(env={"TASKDASH_WEB__SHARE_READS": "false"}).web.share_reads is False
    with pytest.raises(ConfigError, match="share_reads"):
        load(env={"TASKDASH_WEB__SHARE_READS": "sometimes"})
