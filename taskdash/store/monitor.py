"""Keeps an eye on MongoDB: readiness for ``/readyz``, indexes once reachable, backoff when not."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from taskdash.background import Background
from taskdash.errors import StoreError
from taskdash.store.mongo import Store

log = structlog.get_logger("taskdash.store.monitor")


class StoreMonitor:
    """Pings the store on an interval; the daemon never crashes because MongoDB is away."""

    def __init__(
        self, store: Store, *, interval: float, retry_initial: float, retry_max: float
    ) -> None:
        self.store = store
        self.interval = interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.ready = False
        self._became_ready = asyncio.Event()
        self.last_error = ""
        self.failures = 0
        self._loop_task = Background("store_monitor", self._loop)

    def check(self) -> tuple[bool, dict[str, Any]]:
        """Readiness for the health registry."""
        details: dict[str, Any] = {"indexes": self.store.indexes_ready}
        if self.last_error:
            details["error"] = self.last_error
        return self.ready, details

    async def probe(self) -> bool:
        """One ping (plus index creation the first time it succeeds); updates readiness."""
        try:
            await self.store.ping()
            if not self.store.indexes_ready:
                await self.store.ensure_indexes()
        except Exception as exc:
            if self.ready or self.failures == 0:
                unexpected = not isinstance(exc, StoreError)
                log.error("store_unreachable", error=str(exc), exc_info=unexpected)
            self.ready, self.last_error = False, str(exc)
            self._became_ready.clear()
            self.failures += 1
            return False
        if not self.ready:
            log.info("store_ready", after_failures=self.failures)
        self.ready, self.last_error, self.failures = True, "", 0
        self._became_ready.set()
        return True

    async def _loop(self) -> None:
        delay = self.retry_initial
        while True:
            ok = await self.probe()
            if ok:
                delay = self.retry_initial
                await asyncio.sleep(self.interval)
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)

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
