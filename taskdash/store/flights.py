"""Shared reads in flight: a listing asked again while the same one is on its way waits for it.

A dashboard is watched by many people, and each open tasks page polls: at 20 users the same
first page of tasks is asked several times while one read of it is still queued at the store
(``scripts/bench_web.py``). :class:`Flights` lets those requests share that read — a "single
flight", as Go's ``singleflight`` or groupcache do — instead of queuing identical reads
behind each other. Nothing is kept once a read has landed: this is not a cache, and no
answer is older than the read a request found on its way.

What a request sees is therefore the store as it was when that read began, at most one read
earlier than if it had asked alone. Two rules keep that invisible to the people using it:

* **A client sees its own writes.** Every write made on a client's behalf (a claim, a
  release, an assignment, a TCP Register or Update: ``store/assignments.py``,
  ``store/tasks.py``) runs inside :meth:`Flights.writing`, which calls :meth:`Flights.wrote`
  when it ends. A request joins only a
  read begun since the last such write on this daemon, so a page asked after the answer to
  a claim always reads again. Writes no client waits on (a fetch storing a listing, the
  window judge) do not end the sharing: they were never ordered before the request anyway.
* **Failures are shared, cancellations are not.** A read that fails fails every request
  waiting on it (each gets the same error, e.g. ``StoreUnavailable`` → 503). A request that
  is cancelled (its client went away) leaves the read running for the others.

On another daemon sharing the store, a client's write counts for a read begun after it, as
without sharing; a read already on its way there when the write landed may still be joined
(the gap is one read: milliseconds, or the request timeout when the store hangs).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class Flights:
    """Reads in flight by key; one per :class:`~taskdash.store.mongo.Store`."""

    def __init__(self, *, enabled: bool = True) -> None:
        #: False (``[web] share_reads = false``): every request reads on its own
        self.enabled = enabled
        self._flying: dict[tuple[int, Hashable], asyncio.Future[Any]] = {}
        #: bumped by :meth:`wrote`: a read begun before it is never joined after it
        self.generation = 0
        #: reads sent, and requests answered by a read already on its way (for metrics)
        self.flown = 0
        self.joined = 0

    def __len__(self) -> int:
        return len(self._flying)

    def wrote(self) -> None:
        """A write a client will be answered about is done: later requests read again."""
        self.generation += 1

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around a store function's writes made on a client's behalf: when the block ends
        (written, not written, or failed part-way: a write may have landed), :meth:`wrote`."""
        try:
            yield
        finally:
            self.wrote()

    async def share(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        """``read()``'s answer, from the read of ``key`` on its way if one began since the
        last :meth:`wrote`, else from a new one (``key`` must be hashable and name everything
        the answer depends on)."""
        if not self.enabled:
            return await read()
        flight, joined = self._flight(key, read)
        self.joined += joined
        # shield: a waiter cancelled (its client gone) must not cancel the others' read; a
        # read every waiter left has its failure retrieved by the shield (nobody to raise it to)
        return await asyncio.shield(flight)

    def launch(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """The read of ``key`` on its way (begun since the last :meth:`wrote`), or a new one;
        not awaited: :meth:`share` waits for it, a background refresh need not. The read is
        referenced here until it lands."""
        return self._flight(key, read)[0]

    def _flight(
        self, key: Hashable, read: Callable[[], Awaitable[T]]
    ) -> tuple[asyncio.Future[T], bool]:
        """(the read of ``key``, whether it was already on its way)."""
        slot = (self.generation, key)
        flight = self._flying.get(slot)
        if flight is not None:
            return flight, True
        flight = asyncio.ensure_future(read())
        self._flying[slot] = flight
        flight.add_done_callback(functools.partial(self._landed, slot))
        self.flown += 1
        return flight, False

    def _landed(self, slot: tuple[int, Hashable], flight: asyncio.Future[Any]) -> None:
        del self._flying[slot]  # a slot holds one read until it lands: this one
        if not flight.cancelled():
            flight.exception()  # a launched read nobody awaited: its failure ends here
