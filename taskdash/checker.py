"""The heartbeat checker: online -> stale -> offline, damped recovery, self-preservation.

Every pass is a handful of indexed, conditional updates, never a scan of every service in
Python: only services that change state are read back. Several daemons may run it at once
against one MongoDB (see :mod:`taskdash.store.status`).

States: ``unknown`` (registered, never heard from) -> ``online`` at the first heartbeat, or
``offline`` after ``offline_after`` without one; ``online`` -> ``stale`` after ``stale_after``
of silence -> ``offline`` after ``offline_after``; back to ``online`` after ``recover_beats``
consecutive beats. Mass silence (self-preservation) is judged over a window, see
:meth:`Checker._silence`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from taskdash.background import Background, store_round
from taskdash.logs import log_each_or_summary
from taskdash.settings import CheckerSettings
from taskdash.store import Store
from taskdash.store.status import (
    OFFLINE,
    ONLINE,
    STALE,
    UNKNOWN,
    candidates,
    count,
    record_events,
    reset_damping,
    transition,
)
from taskdash.store.times import Clock, ms_before, utcnow

log = structlog.get_logger("taskdash.checker")


@dataclass
class Plan:
    """What one pass intends: moves by (old, new), beat counts to reset, online->stale count."""

    moves: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    reset: list[str] = field(default_factory=list)
    quiet: int = 0


@dataclass
class PassResult:
    """What one pass did."""

    changes: list[dict[str, Any]]
    self_preservation: bool
    quiet: int  # online services past stale_after this pass
    online: int  # the population mass silence was judged against (0 = not judged)
    seconds: float
    grace: str = ""  # why quiet services were not flagged yet ("" = they were)
    silent: int = 0  # services that went or are going quiet within the window


class Checker:
    """Runs :meth:`check_once` every ``check_interval``; ``on_change`` hears about new events."""

    def __init__(
        self,
        store: Store,
        settings: CheckerSettings,
        *,
        node_id: str,
        on_change: Callable[[], Awaitable[None]] | None = None,
        clock: Clock = utcnow,
        summary_threshold: int = 20,
    ) -> None:
        self.store = store
        self.settings = settings
        self.node_id = node_id
        self.on_change = on_change
        self.clock = clock
        self.summary_threshold = summary_threshold
        self.self_preservation = False
        self.self_preservation_reason = ""
        self._preserving_since: datetime | None = None
        # silence is only evidence once we have been watching for stale_after (see check_once)
        self.watching_since: datetime | None = None
        self.passes = 0
        self.last_pass_ms: float | None = None
        self.last_error = ""
        self.on_pass: Callable[[PassResult], None] | None = None  # the metrics hear every pass
        self._loop_task = Background("checker", self._loop)

    def _quiet_decision(self, silent: int, population: int, now: datetime) -> str:
        """Why silence should not be trusted this pass ("" = trust it)."""
        s = self.settings
        if not s.self_preservation or silent < s.self_preservation_min or population == 0:
            return ""
        if silent / population <= s.self_preservation_ratio:
            return ""
        since = self._preserving_since or now
        if s.self_preservation_max and (now - since).total_seconds() >= s.self_preservation_max:
            if self.self_preservation:
                log.warning(
                    "self_preservation_expired",
                    silent=silent,
                    population=population,
                    after_seconds=s.self_preservation_max,
                )
            return ""
        return (
            f"{silent} of {population} services online within the last stale_after "
            f"({s.stale_after:g} s) went quiet or have been silent for over half of it "
            f"(> {s.self_preservation_ratio:.0%}); more likely our NSQ path than the services"
        )

    def _grace(self, now: datetime) -> str:
        """Silence is not evidence until this checker has watched for ``stale_after``.

        After a start, or a store outage, heartbeats queued in NSQ meanwhile are still being
        read: a service quiet in the database may have beaten all along. Services that were
        quiet before are flagged once the grace is over; recoveries are never held.
        """
        if self.watching_since is None:
            self.watching_since = now
        watched = (now - self.watching_since).total_seconds()
        if watched >= self.settings.stale_after:
            return ""
        return (
            f"watching for {watched:.1f} s of stale_after ({self.settings.stale_after:g} s) "
            "since a start or a store outage; heartbeats queued meanwhile may still arrive"
        )

    def plan(self, docs: list[dict[str, Any]], stale_cut: int, offline_cut: int) -> Plan:
        """Decide from the candidates what this pass should do (no I/O)."""
        plan = Plan()
        for doc in docs:
            status, alive, beats = doc["status"], doc.get("alive_at", 0), doc.get("beats", 0)
            new = self._next_state(status, alive, beats, stale_cut, offline_cut)
            if new is not None:
                plan.moves.setdefault((status, new), []).append(doc["_id"])
                plan.quiet += (status, new) == (ONLINE, STALE)
            if alive < stale_cut and status in (STALE, OFFLINE) and beats > 0:
                plan.reset.append(doc["_id"])
        return plan

    def _next_state(
        self, status: str, alive: int, beats: int, stale_cut: int, offline_cut: int
    ) -> str | None:
        """Where one service should go now, or None.

        ``unknown`` means registered and never heard from: it is not ``stale`` (which says a
        service went quiet after being online) but goes ``offline`` once ``offline_after``
        passed without a heartbeat (a registration counts as a sign of life): a service that
        never sends one is probably broken, and the operator should see it.
        """
        quiet = alive < stale_cut
        if status == UNKNOWN:
            if alive < offline_cut:
                return OFFLINE
            return ONLINE if not quiet and beats >= 1 else None
        if not quiet:
            return ONLINE if status != ONLINE and beats >= self.settings.recover_beats else None
        if status == ONLINE:
            return STALE
        return OFFLINE if status == STALE and alive < offline_cut else None

    def _reason(self, old: str, new: str) -> str:
        """The reason recorded with a change (history, log, published event)."""
        if new == ONLINE:
            if old == UNKNOWN:
                return "first heartbeat"
            return f"{self.settings.recover_beats} consecutive heartbeats"
        return "no first heartbeat" if old == UNKNOWN else "no heartbeat"

    async def _silence(self, now: datetime, stale_cut: int) -> tuple[int, int]:
        """How many services went or are going quiet, out of how many: (silent, population).

        Judged over a window, not one pass: services that fell silent together reach
        ``stale_after`` up to a beat period plus ``heartbeat_resolution`` apart, so a pass
        could flag the first few before the mass shows. Silent: the online services quiet for
        more than half of ``stale_after``, plus those flagged stale within the last
        ``stale_after`` (while the mode lasts, since ``stale_after`` before it began).
        Population: the online services plus those flagged. Half is the midpoint that works
        both ways while stored beats are less than that apart (beat period + resolution +
        flush): a healthy service is never counted silent, and when the first of a total
        silence reaches ``stale_after`` all the others have been silent for half of it.
        Only runs in passes with an online service to flag (three index counts): when none
        is left, the mode ends.
        """
        s = self.settings
        going = ms_before(now, s.stale_after / 2)
        window = ms_before(self._preserving_since or now, 2 * s.stale_after)
        online = await count(self.store, ONLINE)
        quiet = await count(self.store, ONLINE, alive_before=going)
        flagged = await count(self.store, STALE, alive_from=window, alive_before=stale_cut)
        return quiet + flagged, online + flagged

    async def check_once(self) -> PassResult:
        """One pass: read the few candidates, decide, apply with conditional updates."""
        started = time.perf_counter()
        s = self.settings
        now = self.clock()
        stale_cut = ms_before(now, s.stale_after)
        offline_cut = ms_before(now, s.offline_after)
        plan = self.plan(
            await candidates(self.store, stale_cut, offline_cut), stale_cut, offline_cut
        )
        silent, population = 0, 0
        if s.self_preservation and plan.quiet:
            silent, population = await self._silence(now, stale_cut)
        preserving = self._quiet_decision(silent, population, now)
        self._set_mode(preserving, now)
        grace = self._grace(now)
        await self._apply(plan, now, stale_cut, offline_cut, held=bool(preserving or grace))
        # also events left waiting by an earlier pass cut short (crash, stop, store error)
        changes = await record_events(self.store)
        self._log_changes(changes)
        seconds = time.perf_counter() - started
        self.passes += 1
        self.last_pass_ms = round(seconds * 1000, 3)
        result = PassResult(
            changes, bool(preserving), plan.quiet, population, seconds, grace, silent=silent
        )
        if self.on_pass is not None:
            self.on_pass(result)
        if changes and self.on_change is not None:
            await self.on_change()
        return result

    async def _apply(
        self, plan: Plan, now: datetime, stale_cut: int, offline_cut: int, *, held: bool
    ) -> None:
        """Apply the plan; ``held``: silence is not trusted (self-preservation or grace)."""
        if plan.reset:
            await reset_damping(
                self.store, {"_id": {"$in": plan.reset}, "alive_at": {"$lt": stale_cut}}
            )
        for (old, new), ids in plan.moves.items():
            if new != ONLINE and held:
                continue
            query: dict[str, Any] = {"_id": {"$in": ids}, "status": old}
            if new == ONLINE:
                query["alive_at"] = {"$gte": stale_cut}
            else:
                query["alive_at"] = {"$lt": offline_cut if new == OFFLINE else stale_cut}
            reason = self._reason(old, new)
            await transition(self.store, query, to=new, now=now, node=self.node_id, reason=reason)

    def _log_changes(self, changes: list[dict[str, Any]]) -> None:
        """A line per change for a few; above ``summary_threshold``, one summary per pass.

        A pass can move thousands at once (a rack powered off); every change is still in
        ``service_events`` and published, the log only has to stay readable.
        """
        items = [
            {
                "service_id": c["service_id"],
                "old": c["from"],
                "new": c["to"],
                "change": f"{c['from']}->{c['to']}",
                "reason": c["reason"],
            }
            for c in changes
        ]
        log_each_or_summary(
            log,
            "service_status_changed",
            items,
            threshold=self.summary_threshold,
            group_by="change",
        )

    def _set_mode(self, reason: str, now: datetime) -> None:
        if reason and not self.self_preservation:
            log.warning("self_preservation_entered", reason=reason)
            self._preserving_since = now
        elif not reason and self.self_preservation:
            log.info("self_preservation_left", was=self.self_preservation_reason)
            self._preserving_since = None
        self.self_preservation, self.self_preservation_reason = bool(reason), reason

    def check(self) -> tuple[bool, dict[str, Any]]:
        """Readiness details: the mode (normal / self_preservation) and the last pass."""
        details: dict[str, Any] = {
            "mode": "self_preservation" if self.self_preservation else "normal",
            "watching_since": self.watching_since.isoformat() if self.watching_since else None,
            "passes": self.passes,
            "last_pass_ms": self.last_pass_ms,
        }
        if self.self_preservation:
            details["reason"] = self.self_preservation_reason
        if self.last_error:
            details["error"] = self.last_error
        return True, details

    async def _loop(self) -> None:
        while True:
            self.last_error = await store_round(
                self.check_once,
                self.last_error,
                logger=log,
                failed="checker_pass_failed",
                crashed="checker_pass_crashed",
                on_store_error=self._watch_anew,
            )
            await asyncio.sleep(self.settings.check_interval)

    def _watch_anew(self) -> None:
        """Heartbeats are not being stored during a store outage: watch anew after it."""
        self.watching_since = None

    async def start(self) -> None:
        """Start checking in the background."""
        await self._loop_task.start()

    async def stop(self) -> None:
        """Stop checking. Idempotent."""
        await self._loop_task.stop()
