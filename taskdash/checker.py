"""The heartbeat checker: online -> stale -> offline, damped recovery, self-preservation.

Every pass is a handful of indexed, conditional updates, never a scan of every service in
Python: only services that change state are read back. Several daemons may run it at once
against one MongoDB (see :mod:`taskdash.store.status`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from taskdash.background import Background
from taskdash.errors import StoreError
from taskdash.settings import CheckerSettings
from taskdash.store import Store
from taskdash.store.status import OFFLINE, ONLINE, STALE, UNKNOWN, count, reset_damping, transition
from taskdash.store.times import ms_before

log = structlog.get_logger("taskdash.checker")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The daemon's own clock (receipt times are ours, never a sender's)."""
    return datetime.now(UTC)


@dataclass
class PassResult:
    """What one pass did."""

    changes: list[dict[str, Any]]
    self_preservation: bool
    quiet: int
    online: int
    seconds: float


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
    ) -> None:
        self.store = store
        self.settings = settings
        self.node_id = node_id
        self.on_change = on_change
        self.clock = clock
        self.self_preservation = False
        self.self_preservation_reason = ""
        self.passes = 0
        self.last_pass_ms: float | None = None
        self.last_error = ""
        self._loop_task = Background("checker", self._loop)

    def _quiet_decision(self, quiet: int, online: int) -> str:
        """Why silence should not be trusted this pass ("" = trust it)."""
        s = self.settings
        if not s.self_preservation or quiet < s.self_preservation_min or online == 0:
            return ""
        if quiet / online <= s.self_preservation_ratio:
            return ""
        return (
            f"{quiet} of {online} online services went quiet in one pass "
            f"(> {s.self_preservation_ratio:.0%}); more likely our NSQ path than the services"
        )

    async def check_once(self) -> PassResult:
        """One pass over every service state."""
        started = time.perf_counter()
        s = self.settings
        now = self.clock()
        stale_cut = ms_before(now, s.stale_after)
        offline_cut = ms_before(now, s.offline_after)
        quiet = await count(self.store, {"status": ONLINE, "alive_at": {"$lt": stale_cut}})
        online = await count(self.store, {"status": ONLINE}) if quiet else 0
        reason = self._quiet_decision(quiet, online)
        self._set_mode(reason)
        changes: list[dict[str, Any]] = []

        async def move(query: dict[str, Any], to: str, why: str) -> None:
            changes.extend(
                await transition(self.store, query, to=to, now=now, node=self.node_id, reason=why)
            )

        if not reason:
            silent_long = {"$lt": offline_cut}
            await move({"status": STALE, "alive_at": silent_long}, OFFLINE, "no heartbeat")
            for status in (ONLINE, UNKNOWN):
                await move(
                    {"status": status, "alive_at": {"$lt": stale_cut}}, STALE, "no heartbeat"
                )
        fresh = {"$gte": stale_cut}
        await reset_damping(
            self.store,
            {
                "status": {"$in": [STALE, OFFLINE]},
                "alive_at": {"$lt": stale_cut},
                "beats": {"$gt": 0},
            },
        )
        for status in (STALE, OFFLINE):
            await move(
                {"status": status, "alive_at": fresh, "beats": {"$gte": s.recover_beats}},
                ONLINE,
                f"{s.recover_beats} consecutive heartbeats",
            )
        await move(
            {"status": UNKNOWN, "alive_at": fresh, "beats": {"$gte": 1}}, ONLINE, "first heartbeat"
        )
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
        return PassResult(changes, bool(reason), quiet, online, seconds)

    def _set_mode(self, reason: str) -> None:
        if reason and not self.self_preservation:
            log.warning("self_preservation_entered", reason=reason)
        elif not reason and self.self_preservation:
            log.info("self_preservation_left", was=self.self_preservation_reason)
        self.self_preservation, self.self_preservation_reason = bool(reason), reason

    def check(self) -> tuple[bool, dict[str, Any]]:
        """Readiness details: the mode (normal / self_preservation) and the last pass."""
        details: dict[str, Any] = {
            "mode": "self_preservation" if self.self_preservation else "normal",
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
            except Exception:
                log.exception("checker_pass_crashed")
            await asyncio.sleep(self.settings.check_interval)

    async def start(self) -> None:
        """Start checking in the background."""
        await self._loop_task.start()

    async def stop(self) -> None:
        """Stop checking. Idempotent."""
        await self._loop_task.stop()
