"""One background task with ``start()`` and an idempotent ``stop()``: the shape of every loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class Background:
    """Runs ``body()`` as a task; :meth:`stop` cancels it and waits until it has ended."""

    def __init__(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self.body = body
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the task was started and has not ended."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the task (returns at once)."""
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        await self.body()

    async def stop(self) -> None:
        """Cancel and wait until the task has ended. Idempotent.

        A cancellation can be lost: in Python 3.11 ``asyncio.wait_for`` drops it when the
        awaited thing completes in the same instant, and a library may retry through it. So the
        task is cancelled again every second until it has really ended, instead of a daemon's
        stop hanging on one lost cancellation.
        """
        task, self._task = self._task, None
        if task is None:
            return
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        with contextlib.suppress(asyncio.CancelledError):
            await task
