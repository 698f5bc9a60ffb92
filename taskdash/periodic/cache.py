"""A short memory of answers the store confirmed (secrets, queues)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class RecentlySeen:
    """Keys confirmed by the store within ``ttl`` seconds (monotonic clock).

    Authentication and "the queue exists" are asked on every call; remembering a positive
    answer for a second halves the round trips of CreateTask and CompleteTask. The price: a
    service deregistered (or a queue destroyed) on another node is still accepted here for up
    to ``ttl``, which changes nothing stored (its tasks are gone, so nothing matches).
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._until: dict[Any, float] = {}

    def __contains__(self, key: Any) -> bool:
        until = self._until.get(key)
        return until is not None and until > time.monotonic()

    def add(self, key: Any) -> None:
        if len(self._until) > 10000:  # bounded: drop what has expired, else everything
            now = time.monotonic()
            self._until = {k: t for k, t in self._until.items() if t > now}
            if len(self._until) > 10000:
                self._until.clear()
        self._until[key] = time.monotonic() + self.ttl

    def forget(self, match: Callable[[Any], bool]) -> None:
        self._until = {k: t for k, t in self._until.items() if not match(k)}
