"""Keeps an eye on MongoDB: readiness for ``/readyz``, indexes once reachable, backoff when not.

The monitor is the one place that knows whether the store is up. The HTTP API asks it before
touching MongoDB, so that while the store is known down a request is answered 503 at once
instead of after a server selection timeout; an outage is logged once when it starts and once
when it ends, never per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog

from taskdash.background import Background
from taskdash.errors import StoreError
from taskdash.store.mongo import Store

log = structlog.get_logger("taskdash.store.monitor")


def probe_timeout(*, interval: float, server_selection_timeout: float) -> float:
    """How long one ping may take before the store counts as down.

    Twice the probe interval, at least one second (a loaded two-core machine must not flap),
    never more than the driver's server selection timeout. With the defaults (1 s interval,
    5 s selection) that is 2 s, so a frozen MongoDB shows in ``/readyz`` within about 3 s.
    """
    return min(server_selection_timeout, max(2 * interval, 1.0))


class StoreMonitor:
    """Pings the store on an interval; the daemon never crashes because MongoDB is away."""

    def __init__(
        self,
        store: Store,
        *,
        interval: float,
        retry_initial: float,
        retry_max: float,
        timeout: float | None = None,
    ) -> None:
        self.store = store
        self.interval = interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        if timeout is None:
            timeout = probe_timeout(interval=interval, server_selection_timeout=float("inf"))
        self.timeout = timeout
        self.ready = False
        self._became_ready = asyncio.Event()
        self._wake = asyncio.Event()
        self.last_error = ""
        self.failures = 0
        self.outages = 0
        self.down_since: float | None = None
        self._loop_task = Background("store_monitor", self._loop)

    def check(self) -> tuple[bool, dict[str, Any]]:
        """Readiness for the health registry."""
        details: dict[str, Any] = {"indexes": self.store.indexes_ready, "outages": self.outages}
        if self.last_error:
            details["error"] = self.last_error
        if self.down_since is not None:
            details["down_for"] = round(time.monotonic() - self.down_since, 3)
        return self.ready, details

    def mark_down(self, reason: str) -> None:
        """Someone saw the store go (a dead embedded child): not ready now, probe at once."""
        self._failed(reason, unexpected=False)
        self._wake.set()

    @property
    def probe_requested(self) -> bool:
        """Whether a probe was asked for ahead of schedule (by :meth:`suspect`)."""
        return self._wake.is_set()

    def suspect(self) -> None:
        """A caller's operation failed: probe now rather than at the next interval."""
        self._wake.set()

    def _failed(self, error: str, *, unexpected: bool, exc: BaseException | None = None) -> None:
        """Record a failure; the first one of an outage is logged, the rest only counted."""
        if self.ready or self.failures == 0:
            self.outages += int(self.ready)
            self.down_since = time.monotonic()
            log.error("store_unreachable", error=error, exc_info=exc if unexpected else None)
        self.ready, self.last_error = False, error
        self._became_ready.clear()
        self.failures += 1

    async def probe(self) -> bool:
        """One ping (plus index creation the first time it succeeds); updates readiness."""
        try:
            async with asyncio.timeout(self.timeout + 1.0):  # the driver's deadline, and ours
                await self.store.ping(self.timeout)
                if not self.store.indexes_ready:
                    await self.store.ensure_indexes()
        except TimeoutError:
            self._failed(f"ping: no answer within {self.timeout}s", unexpected=False)
            return False
        except Exception as exc:
            self._failed(str(exc), unexpected=not isinstance(exc, StoreError), exc=exc)
            return False
        if not self.ready:
            down_for = None if self.down_since is None else time.monotonic() - self.down_since
            log.info(
                "store_ready",
                after_failures=self.failures,
                down_for=None if down_for is None else round(down_for, 3),
            )
        self.ready, self.last_error, self.failures, self.down_since = True, "", 0, None
        self._became_ready.set()
        return True

    async def _sleep(self, seconds: float) -> None:
        """Sleep until the next probe is due, or until someone reports trouble."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _loop(self) -> None:
        delay = self.retry_initial
        while True:
            ok = await self.probe()
            if ok:
                delay = self.retry_initial
                await self._sleep(self.interval)
            else:
                await self._sleep(delay)
                delay = min(delay * 2, self.retry_max)

    async def until_ready(self) -> None:
        """Return once the store is ready (at once if it is): for work that needs it only once."""
        await self._became_ready.wait()

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the first successful probe."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._became_ready.wait()
        return self.ready

    async def start(self) -> None:
        """Start probing in the background (returns at once, even if MongoDB is down)."""
        await self._loop_task.start()

    async def stop(self) -> None:
        """Stop probing. Idempotent."""
        await self._loop_task.stop()
