"""The seed's TaskManager binding: who a task is assigned to, now and before.

Collections:

* ``assignments`` (``_id`` = task id): the current binding, ``user`` ("" = nobody),
  ``group_id``, ``reserved``, ``source`` ("tcp" or "web"), ``at`` (epoch ms) and ``version``
  (1, 2, ... per task). Every change is a compare-and-set on ``version`` (or an insert that
  fails if another writer inserted first), so two writers never lose each other's change
  silently: the loser sees :class:`AssignmentConflict` and decides (retry, or tell its user).
* ``assignment_history``: one document per change (task id, the new binding, the previous
  user, version), written right after the change it records; the current binding is the
  truth, the history explains it. A crash between the two writes loses one history line,
  never the binding.

The TCP interface sets the binding with :func:`set_assignment` (last writer wins, a no-op
when nothing changes); the web dashboard's claim uses ``expect_version`` to take a task only
if nobody took it meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pymongo.errors import DuplicateKeyError

from taskdash.errors import StoreError
from taskdash.store.mongo import Doc, Store, eq, translated
from taskdash.store.times import iso

Source = Literal["tcp", "web"]
HISTORY = "assignment_history"
_ATTEMPTS = 5  # compare-and-set retries of an unconditional set before giving up


class AssignmentConflict(StoreError):
    """The binding changed since ``expect_version``: someone else assigned the task first."""


@dataclass(frozen=True, slots=True)
class Assignment:
    """The current binding of one task (the seed's TaskManager, plus who set it and when)."""

    task_id: str
    user: str = ""
    group_id: str = ""
    reserved: str = ""
    source: str = ""
    at_ms: int = 0
    version: int = 0

    @classmethod
    def from_doc(cls, doc: Doc) -> Assignment:
        """Build from a stored document."""
        return cls(
            task_id=doc["_id"],
            user=doc.get("user", ""),
            group_id=doc.get("group_id", ""),
            reserved=doc.get("reserved", ""),
            source=doc.get("source", ""),
            at_ms=int(doc.get("at") or 0),
            version=int(doc.get("version") or 0),
        )

    def public(self) -> dict[str, Any]:
        """As the API shows it."""
        return {
            "user": self.user,
            "group_id": self.group_id,
            "reserved": self.reserved,
            "source": self.source,
            "at": iso(self.at_ms) if self.at_ms else None,
            "version": self.version,
        }


async def get_assignments(store: Store, task_ids: Sequence[str]) -> dict[str, Assignment]:
    """The current bindings of these tasks (absent = never assigned)."""
    if not task_ids:
        return {}
    async with translated("get_assignments"):
        cursor = store.assignments.find({"_id": {"$in": list(task_ids)}})
        return {doc["_id"]: Assignment.from_doc(doc) async for doc in cursor}


async def _write(store: Store, current: Assignment | None, new: Doc) -> bool:
    """Compare-and-set against ``current``; False when another writer got there first."""
    if current is None:
        try:
            await store.assignments.insert_one(new)
        except DuplicateKeyError:
            return False
        return True
    done = await store.assignments.update_one(
        {"_id": new["_id"], "version": eq(current.version)}, {"$set": new}
    )
    return done.matched_count == 1


def _merged(
    current: Assignment | None, user: str | None, group_id: str | None, reserved: str | None
) -> tuple[str, str, str]:
    """The binding asked for, a None part keeping what is stored."""
    stored = (current.user, current.group_id, current.reserved) if current else ("", "", "")
    user = stored[0] if user is None else user
    group_id = stored[1] if group_id is None else group_id
    return user, group_id, stored[2] if reserved is None else reserved


async def set_assignment(
    store: Store,
    task_id: str,
    *,
    user: str | None,
    group_id: str | None = None,
    reserved: str | None = None,
    source: Source,
    now_ms: int,
    expect_version: int | None = None,
) -> tuple[Assignment, bool]:
    """Bind ``task_id`` to ``user`` ("" = nobody); returns (the binding now, whether it changed).

    A part passed as None keeps its stored value. Without ``expect_version`` the newest call
    wins (retried on a concurrent change). With it, the change applies only if the stored
    version is that one (0 = never assigned), else :class:`AssignmentConflict`. Setting what
    is already stored writes nothing, history included.
    """
    async with translated("set_assignment"):
        for _ in range(_ATTEMPTS):
            found = await store.assignments.find_one({"_id": task_id})
            current = Assignment.from_doc(found) if found else None
            version = current.version if current else 0
            if expect_version is not None and expect_version != version:
                raise AssignmentConflict(
                    f"task {task_id} is at version {version}, not {expect_version}"
                )
            wanted = _merged(current, user, group_id, reserved)
            if wanted == _merged(current, None, None, None):
                return current or Assignment(task_id), False
            new = dict(zip(("user", "group_id", "reserved"), wanted, strict=True))
            new.update(_id=task_id, source=source, at=now_ms, version=version + 1)
            if await _write(store, current, new):
                await _record(store, new, current)
                return Assignment.from_doc(new), True
            if expect_version is not None:
                raise AssignmentConflict(f"task {task_id} was assigned by someone else meanwhile")
    raise AssignmentConflict(f"task {task_id}: assignment kept changing under {_ATTEMPTS} attempts")


async def _record(store: Store, new: Doc, previous: Assignment | None) -> None:
    entry = {k: v for k, v in new.items() if k != "_id"}
    entry.update(task_id=new["_id"], previous_user=previous.user if previous else "")
    await store[HISTORY].insert_one(entry)


async def assignment_history(store: Store, task_id: str, limit: int = 100) -> list[dict[str, Any]]:
    """The changes of one task's binding, newest first."""
    async with translated("assignment_history"):
        cursor = store[HISTORY].find({"task_id": eq(task_id)}).sort("version", -1).limit(limit)
        return [
            {
                "user": doc.get("user", ""),
                "previous_user": doc.get("previous_user", ""),
                "group_id": doc.get("group_id", ""),
                "source": doc.get("source", ""),
                "at": iso(doc.get("at")),
                "version": doc.get("version"),
            }
            async for doc in cursor
        ]
