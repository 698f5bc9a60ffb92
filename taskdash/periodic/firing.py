"""Firing schedules: every node fires the schedules of the queues it has started.

No node is in charge and no lock is taken: each fire is a conditional update on the
schedule's ``next_run_at`` (see :mod:`taskdash.store.schedules`), so each run creates exactly
one task across all nodes, whichever fire it. To keep them from racing for the same runs,
nodes share each queue's schedules (:mod:`taskdash.periodic.sharing`). A pass over a queue
costs, per batch of up to :data:`BATCH` due schedules: one read of the due schedules, one of
the batches still open among their last fires, the batch document written and deleted, one
bulk of conditional updates, one read of what was won and one insert of the tasks. Passes
are at least :data:`TICK` apart, so that these round trips are shared by many fires.

Time: runs are judged on the store's clock (:class:`StoreClock`), so nodes whose clocks
disagree still fire each run at the same moment; the tasks themselves carry the firing node's
own times, like any task it creates.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from taskdash.background import Background
from taskdash.errors import StoreError, StoreUnavailable
from taskdash.logs import RateLimitedLog
from taskdash.periodic.fires import (
    Definitions,
    finish_batch,
    finish_open_fires,
    store_tasks,
    timing_of,
)
from taskdash.periodic.leasing import Clock, Leasing, now_ms
from taskdash.periodic.sharing import TAKEOVER_MS, Peers
from taskdash.periodic.timing import Plan, plan
from taskdash.periodic.views import iso
from taskdash.store.mongo import Doc
from taskdash.store.schedules import Fire, ScheduleStore
from taskdash.store.times import to_ms

log = structlog.get_logger("taskdash.periodic.firing")

BATCH = 500  # due schedules read and fired together
HOLD_MS = 10_000  # a batch of fires still open after this is finished by whichever node looks
MAX_IDLE = 1.0  # seconds between passes at most (schedules created on other nodes)
# seconds between passes at least, unless behind: what falls due meanwhile is fired
# together, so that a pass's fixed cost (about ten round trips) is shared by many fires, for
# at most this much lateness
TICK = 0.1
SYNC_EVERY = 60.0  # seconds between two readings of the store's clock
RETRY_MAX = 5.0  # seconds between passes at most while the store is unreachable


def _plan(definition: Doc, state: Doc, now: int) -> Plan:
    """What firing this schedule now does (see :func:`taskdash.periodic.timing.plan`)."""
    timing, misfire, grace = timing_of(definition), definition["misfire"], definition["grace_ms"]
    return plan(timing, state["next_run_at"], now, misfire, grace)


class StoreClock:
    """The store's time as seen from this node: its own clock plus a measured offset.

    The offset is read from the store (``hello``'s ``localTime``) every :data:`SYNC_EVERY`
    seconds, at the middle of the round trip; until the first reading it is 0.
    """

    def __init__(self, ask: Callable[[], Awaitable[Any]], local: Clock = now_ms) -> None:
        self.ask = ask
        self.local = local
        self.offset = 0

    def __call__(self) -> int:
        return self.local() + self.offset

    async def sync(self) -> None:
        before = self.local()
        value = await self.ask()
        after = self.local()
        if isinstance(value, datetime):
            aware = value if value.tzinfo else value.replace(tzinfo=UTC)
            self.offset = to_ms(aware) - (before + after) // 2


class Firer:
    """Fires the due schedules of the queues this node has started (``leasing.started``)."""

    def __init__(
        self,
        leasing: Leasing,
        store: ScheduleStore,
        *,
        clock: Clock,
        sync: Callable[[], Awaitable[None]] | None = None,
        batch: int = BATCH,
        takeover_ms: int = TAKEOVER_MS,
        tick: float = TICK,
    ) -> None:
        self.leasing = leasing
        self.store = store
        self.clock = clock
        self.sync = sync
        self.batch = batch
        self.tick = tick
        self.fired = 0
        self.skipped = 0
        self.lost = 0  # runs another node fired first (or paused meanwhile)
        self.last_pass_at: int | None = None
        self.last_error: str | None = None
        self.peers = Peers(store, leasing.node_id, takeover_ms)
        self.definitions = Definitions(store)
        self._poke = asyncio.Event()
        self._task = Background("periodic_firer", self._loop)
        self._failed = RateLimitedLog(log, "periodic_firing_failed", every=10.0)

    # --- one pass ------------------------------------------------------------------------

    async def fire_due(self) -> int | None:
        """Fire every due schedule of the started queues; the next time (ms, schedule clock)
        one of them is due, if any."""
        queues = {key[2] for key in self.leasing.started}
        wakes = []
        for inc in sorted(queues):
            while True:
                now = self.clock()
                await self.peers.refresh(queues, now)  # every BEAT_MS, a long pass included
                due = await self.store.due(inc, now, self.batch)
                ours, theirs = [], []
                for doc in due:
                    now_ = self.peers.fires_now(inc, doc["_id"], doc["wake_at"], now)
                    (ours if now_ else theirs).append(doc)
                if ours:
                    await self._fire(ours, now)
                # another node's schedules come back later, unless that node failed them
                wakes += [doc["wake_at"] + self.peers.takeover_ms for doc in theirs]
                if len(due) < self.batch or not ours:
                    break
            wake = await self.store.next_wake(inc, now)
            if wake is not None:
                wakes.append(wake)
        await self.peers.refresh(queues, self.clock())  # no queue: still says so
        await self._finish_stale(self.clock())
        self.last_pass_at = self.clock()
        return min(wakes, default=None)

    async def _finish_stale(self, now: int) -> None:
        """Finish the batches some node opened more than :data:`HOLD_MS` ago (of any queue:
        it may have died; its fires' tasks must not wait for their schedules' next run)."""
        for token in await self.store.stale_batches(now - HOLD_MS, limit=10):
            await finish_batch(self.store, self.definitions, token, self.leasing.clock())
            log.info("periodic_fire_batch_finished", token=token)

    async def _fire(self, due: list[Doc], now: int) -> None:
        """Fire one batch: finish open fires, claim each run, store the tasks won."""
        local = self.leasing.clock()
        await finish_open_fires(self.store, self.definitions, due, local)
        known = await self.definitions.of(due)
        due = [state for state in due if state["_id"] in known]  # else: deleted meanwhile
        plans = [_plan(known[state["_id"]], state, now) for state in due]
        creating = sum(p.create for p in plans)
        ids = iter(await self.leasing.take_ids(creating))
        token = secrets.token_hex(16)
        fires = []
        for state, p in zip(due, plans, strict=True):
            run = {"due": p.due, "at": now, "node": self.leasing.node_id, "missed": p.missed}
            if p.missed_more:
                run["missed_more"] = True
            if p.create:
                jitter = known[state["_id"]]["jitter_ms"]
                delay = random.randint(0, jitter) if jitter else 0
                run.update(task_id=next(ids), token=token, delay_ms=delay)
            changes = {"next_run_at": p.next_run_at, "wake_at": p.next_run_at, "last_run": run}
            counts = {"fired" if p.create else "skipped": 1, "missed": p.missed}
            fires.append(
                Fire(state["_id"], state["next_run_at"], {**changes, "updated_at": now}, counts)
            )
        if creating:
            await self.store.open_batch(token, self.leasing.node_id, now)
        await self.store.fire(fires)
        if creating:
            won = await self.store.fired_in(token)
            self.fired += await store_tasks(self.store, self.definitions, won, local)
            await self.store.close_batch(token)
            self.lost += creating - len(won)
        self.skipped += len(plans) - creating

    # --- the loop ------------------------------------------------------------------------

    def _wait(self, until_wake_ms: int) -> float:
        """Seconds to sleep before the next pass: none when already behind (what came due
        during this pass is the next batch), else until the next wake, :data:`TICK` at
        least (to fire together what comes due meanwhile), :data:`MAX_IDLE` at most."""
        if until_wake_ms <= 0:
            return 0.0
        return min(MAX_IDLE, max(self.tick, until_wake_ms / 1000))

    def poke(self) -> None:
        """Look again now (a schedule or a started queue changed on this node)."""
        self._poke.set()

    async def start(self) -> None:
        await self._task.start()

    async def stop(self) -> None:
        """Stop the loop; the other nodes take this one's share at once (best effort)."""
        was_running = self._task.running
        await self._task.stop()
        if was_running:
            with contextlib.suppress(StoreError):
                await self.peers.leave()

    def check(self) -> tuple[bool, dict[str, Any]]:
        """Readiness: the loop runs; what it did, and the last error while the store fails."""
        details: dict[str, Any] = {
            "queues": len({key[2] for key in self.leasing.started}),
            "fired": self.fired,
            "skipped": self.skipped,
            "lost": self.lost,
            "last_pass_at": iso(self.last_pass_at) if self.last_pass_at else None,
        }
        if self.last_error:
            details["last_error"] = self.last_error
        return self._task.running, details

    async def _loop(self) -> None:
        next_sync = 0.0
        failures = 0
        while True:
            self._poke.clear()
            wait = MAX_IDLE
            try:
                if self.sync is not None and time.monotonic() >= next_sync:
                    await self.sync()
                    next_sync = time.monotonic() + SYNC_EVERY
                wake = await self.fire_due()
            except StoreUnavailable as exc:
                failures += 1
                self.last_error = str(exc)
                self._failed(error=str(exc))
                wait = min(RETRY_MAX, 0.25 * 2**failures)
            except Exception as exc:  # a bug: logged, and the loop goes on
                failures += 1
                self.last_error = repr(exc)
                self._failed(error=repr(exc), bug=True)
                wait = RETRY_MAX
            else:
                failures, self.last_error = 0, None
                if wake is not None:
                    wait = self._wait(wake - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), wait)
