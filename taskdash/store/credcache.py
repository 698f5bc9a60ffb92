"""Verified credentials (sessions, API tokens) remembered in-process for a few seconds.

Every API request used to read its session or token from the store before doing any work:
one command per request, about a fifth of what a task page costs nx-27017
(scripts/bench_web.py). With ``[web] credential_cache_ttl`` > 0, a credential found live is
remembered for that long, by its stored digest, and the next requests carrying it skip the
read. What that changes, and what it does not:

* **This daemon sees every change at once.** Every write that can take access away from a
  credential (revoking a token, ending a session, disabling an account, changing a role: all
  of them go through :mod:`.tokens` and :mod:`.sessions`) empties the cache of the store it
  wrote through. A lookup that started before such a write does not put what it read into
  the cache afterwards (:attr:`CredentialCache.generation`), so no old answer survives it.
* **Other daemons** sharing the store see a revocation made here within the TTL at most
  (they keep serving the credential from their own cache until it ages out).
* Nothing else is relaxed: only live credentials are remembered (an unknown, disabled or
  expired one is read again every time, so a new token works at once), and an entry is used
  only while its own checks still pass with no write due: a session that looks idle or due
  for its ``last_seen`` touch, a token due for its ``last_used`` touch, are read again first,
  so those decisions are always taken on a fresh copy.

Ages are measured on the request's clock (``now``): an entry from the future (the clock went
back) is not used. The cache is bounded (:data:`MAX_ENTRIES`, the oldest dropped first).
Looking a digest up in a dict tells a client no more than looking it up in the store did
(taskdash/web/auth.py: a client cannot steer a SHA-256 towards a stored one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

Doc = dict[str, Any]

#: how many credentials are remembered at most (one entry per session or token in use)
MAX_ENTRIES = 4096


class CredentialCache:
    """Live credential documents by stored digest, each with the time it was read (ms)."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, tuple[int, Doc]] = {}
        #: bumped by every :meth:`forget_all`; a read taken before a bump is not stored
        self.generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now_ms: int, ttl: float) -> Doc | None:
        """The document read for ``key`` less than ``ttl`` seconds before ``now_ms``, else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        read_at, doc = entry
        if not 0 <= now_ms - read_at < ttl * 1000:
            del self._entries[key]
            return None
        return doc

    def put(self, key: str, doc: Doc, now_ms: int, ttl: float, generation: int) -> None:
        """Remember ``doc`` (just read live) unless caching is off or a write came since the
        read began (``generation`` is :attr:`generation` as it was then)."""
        if ttl <= 0 or generation != self.generation:
            return
        self._entries.pop(key, None)
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (now_ms, doc)

    def forget_all(self) -> None:
        """A credential or an account changed through this store: nothing remembered holds."""
        self._entries.clear()
        self.generation += 1

    @contextlib.contextmanager
    def changing(self) -> Iterator[None]:
        """Around a write that may take access away: everything is forgotten once it is done
        (or failed: it may have landed all the same). A lookup that read the old document
        while the write was on its way may have stored it: it goes too; one that reads after
        finds the new one."""
        try:
            yield
        finally:
            self.forget_all()
