"""Which daemon fetches which service: rendezvous (highest-random-weight) hashing.

Every daemon computes the same owner for a service from the same list of live nodes, with no
coordination; when a node joins or leaves, only the services it gains or loses move. Node
liveness itself lives in MongoDB (:mod:`taskdash.store.nodes`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence


def weight(node: str, service_id: str) -> int:
    """A stable pseudo-random weight of the pair (same on every host and Python run)."""
    digest = hashlib.blake2b(f"{node}\0{service_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(service_id: str, nodes: Sequence[str]) -> str:
    """The live node that fetches ``service_id`` (ties broken by node id)."""
    if not nodes:
        raise ValueError("no live nodes")
    return max(nodes, key=lambda node: (weight(node, service_id), node))


def share(service_ids: Iterable[str], nodes: Sequence[str], me: str) -> list[str]:
    """The services ``me`` fetches among ``nodes`` (``me`` counts as live whatever the list)."""
    members = sorted(set(nodes) | {me})
    return [sid for sid in service_ids if owner(sid, members) == me]
