"""One background task with ``start()`` and an idempotent ``stop()``: the shape of every loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from taskdash.errors import StoreError


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


async def store_round(
    step: Callable[[], Awaitable[object]],
    last_error: str,
    *,
    logger: Any,
    failed: str,
    crashed: str,
    on_store_error: Callable[[], None] | None = None,
) -> str:
    """One round of a loop working on the store; returns its ``last_error`` after the round.

    A store error is logged as ``failed`` only when it begins (one line per outage, not per
    round) and kept for ``/readyz``; ``on_store_error`` then runs. Anything else is a bug:
    logged with its traceback as ``crashed``, and the loop goes on (``last_error`` unchanged).
    """
    try:
        await step()
    except StoreError as exc:
        if not last_error:
            logger.error(failed, error=str(exc))
        if on_store_error is not None:
            on_store_error()
        return str(exc)
    except Exception:
        logger.exception(crashed)
        return last_error
    return ""
