"""The re-judge loop: daily-window verdicts that change with the clock alone.

A task's verdict is written whenever its status or window is (``store/task_windows.py``),
but it also changes when its window opens or closes, with no write at all. Windows open and
close only at the start of a minute, so the loop wakes at each minute's start (and at least
every ``[tasks] window_check_interval``, in case the wall clock is stepped), asks
:func:`taskdash.windows.minutes_crossed` which minutes of the day were crossed since its last
pass (DST jumps included), and judges only the tasks whose window starts or stops at one of
them: an index range per run of minutes. Its first pass, and one every :data:`FULL_PASS_EVERY`,
judge every task with a window (and every flagged one), which catches what no minute would:
a writer that died between its write and its judgement, a zone or status rule changed while
no daemon ran. Several daemons may run it at once: verdict writes are conditional, so each
flag change is written, and becomes an event, once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from taskdash.background import Background, store_round
from taskdash.store import Store
from taskdash.store.task_windows import (
    FULL_PASS,
    Judged,
    backfill_minutes,
    boundary_conditions,
    judge_where,
    record_window_events,
)
from taskdash.store.times import iso
from taskdash.windows import MINUTE_MS, minutes_crossed

log = structlog.get_logger("taskdash.windows")

FULL_PASS_EVERY = 3600.0  # seconds
#: woken this long after a minute starts, so that the minute has started on the clock read
AFTER_MINUTE = 0.05


def wall_ms() -> int:
    return int(time.time() * 1000)


class WindowJudge:
    """Runs :meth:`run_once` at each minute's start; ``clock`` is epoch ms (tests pass theirs)."""

    def __init__(
        self,
        store: Store,
        *,
        interval: float = 15.0,
        node_id: str = "",
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.store = store
        self.interval = interval
        self.node_id = node_id
        self.clock = clock
        self.last_ms: int | None = None  # the end of the last pass that succeeded
        self.last_full_ms: int | None = None
        self.passes = 0
        self.last_error = ""  # the store error of the last pass, "" once one succeeds
        self._task = Background("window_judge", self._loop)

    async def start(self) -> None:
        await self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def run_once(self) -> Judged:
        """One pass: the tasks whose window boundary was crossed since the last (or all)."""
        now = self.clock()
        full = self.last_full_ms is None or now - self.last_full_ms >= FULL_PASS_EVERY * 1000
        if self.last_full_ms is None:
            await backfill_minutes(self.store)  # times stored by a version without the minutes
        if full or self.last_ms is None:
            conditions = list(FULL_PASS)
        else:
            crossed = minutes_crossed(self.last_ms, now, self.store.window_rules.zone)
            conditions = boundary_conditions(crossed)
        judged = Judged()
        if conditions:
            judged = await judge_where(self.store, conditions, now, node=self.node_id)
        await record_window_events(self.store)  # left in outboxes by a writer that died
        self.last_ms = now
        if full:
            self.last_full_ms = now
        self.passes += 1
        if judged.changed or judged.left:
            log.info("windows_judged", full=full, changed=judged.changed, left=judged.left)
        return judged

    def _sleep_for(self) -> float:
        """Until just after the next minute starts, at most ``interval``."""
        into_minute = self.clock() % MINUTE_MS / 1000
        return min(self.interval, 60.0 - into_minute + AFTER_MINUTE)

    def check(self) -> tuple[bool, dict[str, Any]]:
        """Readiness details (never "not ready": verdicts are late, nothing is lost, while the
        store is down; the next pass covers the minutes a failed one missed)."""
        details: dict[str, Any] = {
            "passes": self.passes,
            "last_pass_at": iso(self.last_ms),
            "last_full_pass_at": iso(self.last_full_ms),
        }
        if self.last_error:
            details["error"] = self.last_error
        return True, details

    async def _loop(self) -> None:
        while True:
            # a store error is logged once per outage; anything else with its traceback, and
            # the loop goes on: an unforeseen exception must not end the verdicts for good
            self.last_error = await store_round(
                self.run_once,
                self.last_error,
                logger=log,
                failed="window_judge_failed",
                crashed="window_judge_crashed",
            )
            await asyncio.sleep(self._sleep_for())
