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

Confirmation (:meth:`taskdash.tcp.lookup.FindBatcher.look`): every write of what Find returns
stamps the task's ``changed_at``, and the server reads the tasks changed since its last look
every ``ttl / 2``, putting what changed into the cache. Each look that succeeds confirms
the entries read since the looks began without a break: nothing changed for them up to that
look, so they stay valid ``ttl`` after it instead of after their own read. A look that fails
breaks the chain (:meth:`FindCache.unconfirm`): entries are then valid ``ttl`` after their own
read again, as without confirmation, until a new chain begins. Whatever the looks say, an
entry is read again from the store at least every ``max_age`` seconds (a writer whose clock
runs far behind would stamp its changes before the looks' window).
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
    """LRU of ``task id → (read at, fields or None)``; ``ttl`` 0 turns it off."""

    def __init__(
        self,
        ttl: float,
        size: int,
        *,
        max_age: float = float("inf"),
        clock: Clock = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.size = size
        self.max_age = max_age
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, Fields | None]] = OrderedDict()
        #: start of the unbroken chain of change looks (None: no chain), and of its last look
        self._chain_since: float | None = None
        self._confirmed_at = float("-inf")
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        """Whether entries are kept at all (``ttl`` > 0)."""
        return self.ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, task_id: str, *, count_miss: bool = True) -> Cached:
        """The fields (None: known not to exist), or :data:`MISS` if absent or expired.

        ``count_miss`` False: a look before the real lookup, which counts the miss itself.
        """
        entry = self._entries.get(task_id)
        if entry is not None:
            if self._fresh(entry[0], self.clock()):
                self._entries.move_to_end(task_id)
                self.hits += 1
                return entry[1]
            del self._entries[task_id]
        if count_miss:
            self.misses += 1
        return MISS

    def _fresh(self, read_at: float, now: float) -> bool:
        if now - read_at >= self.max_age:
            return False
        chain = self._chain_since
        known_at = self._confirmed_at if chain is not None and read_at >= chain else read_at
        return now - max(read_at, known_at) < self.ttl

    def put(self, task_id: str, fields: Fields | None, read_at: float | None = None) -> None:
        """Keep what the store answered (nothing when the cache is off).

        ``read_at``: when the read that answered began (the cache's clock; default now): the
        entry is valid ``ttl`` after it, or after the last confirmation (module docstring).
        """
        if not self.enabled:
            return
        self._entries[task_id] = (self.clock() if read_at is None else read_at, fields)
        self._entries.move_to_end(task_id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
            self.evictions += 1

    def invalidate(self, task_id: str) -> None:
        """Forget ``task_id``: the next Find reads the store."""
        self._entries.pop(task_id, None)

    def holds(self, task_id: str) -> bool:
        """Whether ``task_id`` has an entry, valid or not (a change look updates only those)."""
        return task_id in self._entries

    def confirm(self, looked_at: float) -> None:
        """A change look that began at ``looked_at`` succeeded: nothing else changed until it.

        The first look after a break starts the chain: entries read before it are not
        confirmed (changes between their read and this look's window may have been missed).
        """
        if self._chain_since is None:
            self._chain_since = looked_at
        self._confirmed_at = looked_at

    def unconfirm(self) -> None:
        """A change look failed: entries are valid ``ttl`` after their own read again."""
        self._chain_since = None
        self._confirmed_at = float("-inf")

    def clear(self) -> None:
        """Forget every entry (a store emptied behind the server's back, as tests do)."""
        self._entries.clear()

    def stats(self) -> dict[str, Any]:
        """For ``/readyz`` and the benchmark."""
        asked = self.hits + self.misses
        return {
            "ttl": self.ttl,
            "size": self.size,
            "confirmed": self._chain_since is not None,
            "entries": len(self._entries),
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": round(self.hits / asked, 4) if asked else 0.0,
            "evictions": self.evictions,
        }
