"""The heartbeat checker: online -> stale -> offline, damped recovery, self-preservation.

Every pass is a handful of indexed, conditional updates, never a scan of every service in
Python: only services that change state are read back. Several daemons may run it at once
against one MongoDB (see :mod:`taskdash.store.status`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from taskdash.background import Background
from taskdash.errors import StoreError
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
    """What one pass intends: state moves by (old, new), beat counts to reset, quiet count."""

    moves: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    reset: list[str] = field(default_factory=list)
    quiet: int = 0


@dataclass
class PassResult:
    """What one pass did."""

    changes: list[dict[str, Any]]
    self_preservation: bool
    quiet: int
    online: int
    seconds: float
    grace: str = ""  # why quiet services were not flagged yet ("" = they were)


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
        self.self_preservation = False
        self.self_preservation_reason = ""
        self._preserving_since: datetime | None = None
        # silence is only evidence once we have been watching for stale_after (see check_once)
        self.watching_since: datetime | None = None
        self.passes = 0
        self.last_pass_ms: float | None = None
        self.last_error = ""
        self._loop_task = Background("checker", self._loop)

    def _quiet_decision(self, quiet: int, online: int, now: datetime) -> str:
        """Why silence should not be trusted this pass ("" = trust it)."""
        s = self.settings
        if not s.self_preservation or quiet < s.self_preservation_min or online == 0:
            return ""
        if quiet / online <= s.self_preservation_ratio:
            return ""
        since = self._preserving_since or now
        if s.self_preservation_max and (now - since).total_seconds() >= s.self_preservation_max:
            if self.self_preservation:
                log.warning(
                    "self_preservation_expired",
                    quiet=quiet,
                    online=online,
                    after_seconds=s.self_preservation_max,
                )
            return ""
        return (
            f"{quiet} of {online} online services went quiet in one pass "
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
        s = self.settings
        plan = Plan()
        for doc in docs:
            status, alive, beats = doc["status"], doc.get("alive_at", 0), doc.get("beats", 0)
            quiet = alive < stale_cut
            if quiet and status in (ONLINE, UNKNOWN):
                plan.moves.setdefault((status, STALE), []).append(doc["_id"])
                plan.quiet += status == ONLINE
            elif quiet and status == STALE and alive < offline_cut:
                plan.moves.setdefault((STALE, OFFLINE), []).append(doc["_id"])
            if quiet and status in (STALE, OFFLINE) and beats > 0:
                plan.reset.append(doc["_id"])
            needed = 1 if status == UNKNOWN else s.recover_beats
            if not quiet and status != ONLINE and beats >= needed:
                plan.moves.setdefault((status, ONLINE), []).append(doc["_id"])
        return plan

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
        needs_total = s.self_preservation and plan.quiet >= s.self_preservation_min
        online = await count(self.store, ONLINE) if needs_total else 0
        preserving = self._quiet_decision(plan.quiet, online, now)
        self._set_mode(preserving, now)
        grace = self._grace(now)
        reason = preserving or grace
        if plan.reset:
            await reset_damping(
                self.store, {"_id": {"$in": plan.reset}, "alive_at": {"$lt": stale_cut}}
            )
        for (old, new), ids in plan.moves.items():
            if new != ONLINE and reason:
                continue  # self-preservation or grace: silence is not trusted this pass
            query: dict[str, Any] = {"_id": {"$in": ids}, "status": old}
            if new == ONLINE:
                query["alive_at"] = {"$gte": stale_cut}
                why = (
                    "first heartbeat"
                    if old == UNKNOWN
                    else f"{s.recover_beats} consecutive heartbeats"
                )
            else:
                query["alive_at"] = {"$lt": offline_cut if new == OFFLINE else stale_cut}
                why = "no heartbeat"
            await transition(self.store, query, to=new, now=now, node=self.node_id, reason=why)
        # also events left waiting by an earlier pass cut short (crash, stop, store error)
        changes = await record_events(self.store)
        for change in changes:
            log.info(
                "service_status_changed",
                service_id=change["service_id"],
                old=change["from"],
                new=change["to"],
                reason=change["reason"],
            )
        seconds = time.perf_counter() - started
        self.passes += 1
        self.last_pass_ms = round(seconds * 1000, 3)
        if changes and self.on_change is not None:
            await self.on_change()
        return PassResult(changes, bool(preserving), plan.quiet, online, seconds, grace)

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
            try:
                await self.check_once()
                self.last_error = ""
            except StoreError as exc:
                if not self.last_error:
                    log.error("checker_pass_failed", error=str(exc))
                self.last_error = str(exc)
                self.watching_since = None  # heartbeats are not being stored: watch anew
            except Exception:
                log.exception("checker_pass_crashed")
            await asyncio.sleep(self.settings.check_interval)

    async def start(self) -> None:
        """Start checking in the background."""
        await self._loop_task.start()

    async def stop(self) -> None:
        """Stop checking. Idempotent."""
        await self._loop_task.stop()
