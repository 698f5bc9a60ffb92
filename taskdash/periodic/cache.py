"""A short memory of answers the store confirmed (a secret's service, a queue)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MAX_KEYS = 10000


class RecentlySeen:
    """Values confirmed by the store within ``ttl_ms`` of the service's clock.

    Authentication and "the queue exists" are asked on every call; remembering a positive
    answer for a second halves the round trips of CreateTask and CompleteTask. The price: a
    service deregistered (or a queue destroyed) on another node is still accepted here for up
    to ``ttl_ms``. What is remembered is the *incarnation* the store answered (a random id
    given to each service and queue document when it is created), and every task carries
    its queue's: whatever a stale answer lets through stays with the deleted incarnation,
    never with a service or queue created again under the same name.

    The clock is the service's own (epoch ms, injectable), so tests decide when it expires.
    """

    def __init__(self, ttl_ms: int, clock: Callable[[], int]) -> None:
        self.ttl_ms = ttl_ms
        self.clock = clock
        self._seen: dict[Any, tuple[int, str]] = {}

    def get(self, key: Any) -> str | None:
        """The value confirmed for ``key`` lately, or None.

        An entry ending more than ``ttl_ms`` from now was added before the clock (wall time)
        went back: it is not trusted, or it would be for as long as the clock jumped.
        """
        seen = self._seen.get(key)
        if seen is None or not 0 < seen[0] - self.clock() <= self.ttl_ms:
            return None
        return seen[1]

    def add(self, key: Any, value: str) -> None:
        """Remember ``value`` for ``key`` for ``ttl_ms`` from now."""
        now = self.clock()
        if len(self._seen) > MAX_KEYS:  # bounded: drop what has expired, else everything
            self._seen = {k: v for k, v in self._seen.items() if v[0] > now}
            if len(self._seen) > MAX_KEYS:
                self._seen.clear()
        self._seen[key] = (now + self.ttl_ms, value)

    def forget(self, match: Callable[[Any], bool]) -> None:
        """Drop every key ``match`` accepts (this node deleted what they stand for)."""
        self._seen = {k: v for k, v in self._seen.items() if not match(k)}
