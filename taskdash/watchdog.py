"""systemd's watchdog (``WatchdogSec=``): ``WATCHDOG=1`` sent from the event loop itself.

The pings come from a coroutine on the process's own loop, never from a thread: while
something blocks the loop (a synchronous call that hangs, a callback that never yields) no
ping goes out, systemd kills the process after ``WatchdogSec=`` and ``Restart=on-failure``
starts it again. A thread would keep pinging for a loop that answers nothing. The interval is
half of systemd's (``WATCHDOG_USEC / 2``), so one late ping is not yet fatal.

Not to be confused with the shutdown watchdog thread of :mod:`taskdash.lifecycle`, which
ends a process whose stop overruns its budget.
"""

from __future__ import annotations

import asyncio

import structlog

from taskdash.background import Background
from taskdash.systemd import Notifier

log = structlog.get_logger("taskdash.systemd")


class WatchdogPings:
    """Sends ``WATCHDOG=1`` every ``interval`` seconds while the event loop runs callbacks."""

    def __init__(self, notifier: Notifier, interval: float | None = None) -> None:
        self.notifier = notifier
        #: seconds between pings; None (systemd asked for none) means never
        self.interval = notifier.watchdog_interval if interval is None else interval
        #: pings systemd (or a test) accepted
        self.sent = 0
        self._task = Background("systemd_watchdog", self._ping_forever)

    @property
    def enabled(self) -> bool:
        """Whether systemd set ``WATCHDOG_USEC`` for this process and listens."""
        return self.notifier.enabled and self.interval is not None

    async def start(self) -> None:
        """Ping at once, then every interval; does nothing when the watchdog is off."""
        if not self.enabled:
            return
        log.info("systemd_watchdog_enabled", interval=self.interval)
        await self._task.start()

    async def stop(self) -> None:
        """No more pings. Idempotent."""
        await self._task.stop()

    async def _ping_forever(self) -> None:
        assert self.interval is not None
        while True:
            if self.notifier.watchdog():
                self.sent += 1
            # a loop blocked longer than this delays the next ping: that is the point
            await asyncio.sleep(self.interval)
