"""A bounded, time-limited read cache for Find: task id → the fields Find returns.

An entry lives ``[tcp] find_cache_ttl`` seconds (0 = no cache) and the cache holds at most
``[tcp] find_cache_size`` entries, the least recently used evicted first, so its memory is
bounded whatever ids clients ask. An unknown id is cached too (as ``None``, for the same TTL):
a task created elsewhere is then seen as late as any other change made elsewhere, and a
client polling for an id that does not exist yet costs one query per TTL, not one per Find.

The TCP server's own writes call :meth:`FindCache.invalidate` (through the batcher, which
also keeps a lookup already running from caching what it read before the write), so a client
that writes then reads sees its write. Changes made by other writers (the web dashboard, the
fetcher, another daemon) are seen at most ``find_cache_ttl`` late. The clock is injectable.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

#: the task's record as Find returns it (shared by every hit: never modify it)
Fields = Mapping[str, str]
Clock = Callable[[], float]


class _Miss(enum.Enum):
    MISS = enum.auto()


MISS: Final = _Miss.MISS
Cached = Fields | None | Literal[_Miss.MISS]


class FindCache:
    """LRU of ``task id → (expiry, fields or None)``; ``ttl`` 0 turns it off."""

    def __init__(self, ttl: float, size: int, *, clock: Clock = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, Fields | None]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        """Whether entries are kept at all (``ttl`` > 0)."""
        return self.ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, task_id: str) -> Cached:
        """The fields (None: known not to exist), or :data:`MISS` if absent or expired."""
        entry = self._entries.get(task_id)
        if entry is not None:
            if entry[0] > self.clock():
                self._entries.move_to_end(task_id)
                self.hits += 1
                return entry[1]
            del self._entries[task_id]
        self.misses += 1
        return MISS

    def put(self, task_id: str, fields: Fields | None) -> None:
        """Keep what the store answered for ``ttl`` seconds (nothing when the cache is off)."""
        if not self.enabled:
            return
        self._entries[task_id] = (self.clock() + self.ttl, fields)
        self._entries.move_to_end(task_id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
            self.evictions += 1

    def invalidate(self, task_id: str) -> None:
        """Forget ``task_id``: the next Find reads the store."""
        self._entries.pop(task_id, None)

    def clear(self) -> None:
        """Forget every entry (a store emptied behind the server's back, as tests do)."""
        self._entries.clear()

    def stats(self) -> dict[str, Any]:
        """For ``/readyz`` and the benchmark."""
        asked = self.hits + self.misses
        return {
            "ttl": self.ttl,
            "size": self.size,
            "entries": len(self._entries),
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": round(self.hits / asked, 4) if asked else 0.0,
            "evictions": self.evictions,
        }
