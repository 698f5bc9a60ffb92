"""Which node fires which schedule first: a share of each queue per node, so nodes rarely race.

Correctness never depends on this: every fire is a conditional update, and any node may fire
any due schedule of a queue it serves. But two nodes that wake at the same moment read the
same due schedules and both try each one; on nx-27017 the loser's update costs almost as
much as the winner's. So each node writes a heartbeat into ``periodic_firers`` (which queues
it fires) and every node ranks the live firers of a queue for each schedule by rendezvous
hashing (the fetcher's split of services): the first in rank fires it when due, the others
only once it is :data:`TAKEOVER_MS` overdue. A node that stops deletes its heartbeat, so the
others take its share at once; a node that died is dropped after :data:`FIRER_TTL_MS`, and
its share is fired late meanwhile. The heartbeat comes from the firing loop itself (between
batches too), so a heartbeat means the loop runs: a node that is behind because the store is
slow is not raced (the others firing its share too would only add lost updates to the load);
only a schedule a live node has left a minute overdue is fired by the others anyway.
"""

from __future__ import annotations

import hashlib

from taskdash.store.schedules import ScheduleStore

BEAT_MS = 2_000  # heartbeat and peer refresh
FIRER_TTL_MS = 10_000  # a firer not heard of for this long is gone
TAKEOVER_MS = 60_000  # a live node's schedule is fired by the others once this late


def rank(node: str, key: str) -> bytes:
    """Rendezvous weight of ``node`` for schedule ``key`` (same on every node)."""
    return hashlib.blake2b(f"{node}\0{key}".encode(), digest_size=8).digest()


class Peers:
    """This node's view of the live firers of each queue."""

    def __init__(self, store: ScheduleStore, node: str, takeover_ms: int = TAKEOVER_MS) -> None:
        self.store = store
        self.node = node
        self.takeover_ms = takeover_ms
        self._firers: dict[str, list[str]] = {}  # queue incarnation -> other live firers
        self._next_beat = 0

    async def refresh(self, queues: set[str], now: int) -> None:
        """Every :data:`BEAT_MS`: say which queues this node fires, read who else does."""
        if now < self._next_beat:
            return
        await self.store.beat(self.node, sorted(queues), now)
        firers: dict[str, list[str]] = {}
        for doc in await self.store.firers(now - FIRER_TTL_MS):
            if doc["_id"] != self.node:
                for inc in doc["queues"]:
                    firers.setdefault(inc, []).append(doc["_id"])
        self._firers = firers
        self._next_beat = now + BEAT_MS

    def first(self, queue_inc: str, key: str) -> bool:
        """Whether this node ranks first for schedule ``key`` of the queue."""
        mine = rank(self.node, key)
        return all(rank(other, key) < mine for other in self._firers.get(queue_inc, ()))

    def fires_now(self, queue_inc: str, key: str, wake_at: int, now: int) -> bool:
        """Whether to fire a due schedule now: ours, or someone else's this late."""
        return now - wake_at >= self.takeover_ms or self.first(queue_inc, key)

    async def leave(self) -> None:
        """Stop firing: the others take this node's share at their next refresh."""
        await self.store.leave(self.node)
        self._next_beat = 0
