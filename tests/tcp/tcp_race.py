"""Certain interleavings of two writers, on a real server: a command listener as the hook.

A PyMongo ``CommandListener`` is called synchronously on the event loop that sends the
command, so while it runs that writer is frozen exactly between two of its round trips. The
listener then lets "another writer" act — its own thread, loop and client, so a real call of
the code under test — and only when that is done is the first writer's command sent (or its
reply handed back). No sleeps, no timing: the order is the only one possible.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from pymongo import AsyncMongoClient, monitoring

from taskdash.store import Store

When = Literal["before", "after"]


def run_elsewhere(work: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``work()`` to its end on a loop of its own in another thread; re-raise its error."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(work())
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class Between(monitoring.CommandListener):
    """Runs ``action`` once: ``before`` the first ``command`` on ``collection`` is sent, or
    ``after`` its reply arrived (before the caller sees it)."""

    def __init__(
        self, command: str, collection: str, action: Callable[[], None], when: When = "before"
    ) -> None:
        self.command, self.collection, self.action, self.when = command, collection, action, when
        self.fired = 0
        self._request_id: int | None = None

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.fired or self._request_id is not None:
            return
        if event.command_name == self.command and event.command.get(self.command) == (
            self.collection
        ):
            if self.when == "before":
                self.fired += 1
                self.action()
            else:
                self._request_id = event.request_id

    def _finished(self, request_id: int) -> None:
        if self._request_id is not None and request_id == self._request_id and not self.fired:
            self.fired += 1
            self.action()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._finished(event.request_id)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._finished(event.request_id)


async def listened_store(uri: str, database: str, listener: monitoring.CommandListener) -> Store:
    """A Store on ``database`` whose every command passes ``listener`` (close it after use)."""
    store = Store(uri, database)
    await store.client.close()
    store.client = AsyncMongoClient(uri, event_listeners=[listener], tz_aware=True)
    store.db = store.client[database]
    return store


def other_store(uri: str, database: str) -> Store:
    """The other writer's Store, for use inside :func:`run_elsewhere` (a client per loop)."""
    return Store(uri, database)
