"""The seed's TaskManager binding: who holds a task, kept in the task's own document.

Fields of every ``tasks`` document (set empty when the task is inserted, whoever inserts it):

* ``assignee``: the user holding the task, "" = nobody. A top-level field so that "assigned to
  X" and "unassigned" are equality queries an index answers (``assignee_key``).
* ``assignment``: the rest of the binding: ``group_id``, ``reserved``, ``source`` ("tcp" or
  "web"), ``by`` (who made the change: a user name, or the TCP peer), ``at`` (epoch ms) and
  ``version`` (0 = never bound, then 1, 2, ... per change).

Living in the task document, every change is one write on one document, so it is atomic with
the conditions it needs:

* a web **claim** is one conditional update "only if nobody holds it" (optionally "and it is at
  this version"): of two users claiming at once exactly one wins, the other is told who holds
  it (:class:`AssignmentConflict`);
* a **release** is one conditional update "only if the caller holds it" (:class:`NotHolder`);
* an admin's **assign/unassign** and the TCP interface's Register/Update use
  :func:`set_assignment`: the newest call wins, as a compare-and-set on ``version`` retried on a
  concurrent change, and nothing is written when nothing changes.

The fetcher never writes these fields (``store.tasks`` leaves them out of every update), so a
fetch cannot clobber a binding. ``assignment_history`` gets one document per change (task id,
the new binding, the previous user, source, by whom, version), written right after it: the
binding is the truth, the history explains it; a crash between the two loses one history line,
never the binding. There was never a release with the former ``assignments`` collection, so
nothing is migrated from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pymongo import ReturnDocument

from taskdash.errors import StoreError
from taskdash.store.mongo import CHANGED_AT, Doc, Store, eq, translated
from taskdash.store.times import iso

Source = Literal["tcp", "web"]
HISTORY = "assignment_history"
_ATTEMPTS = 5  # compare-and-set retries of an unconditional set before giving up
_PROJECTION = {"assignee": 1, "assignment": 1}


class NoSuchTask(StoreError):
    """The task id is not stored."""


class AssignmentConflict(StoreError):
    """The task is held by someone else (``holder``), or changed since the expected version."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class NotHolder(AssignmentConflict):
    """A release by someone who does not hold the task."""


def empty_binding() -> Doc:
    """The binding fields of a task nobody ever held (every insert of a task sets them)."""
    return {
        "assignee": "",
        "assignment": {
            "group_id": "",
            "reserved": "",
            "source": "",
            "by": "",
            "at": 0,
            "version": 0,
        },
    }


@dataclass(frozen=True, slots=True)
class Assignment:
    """The current binding of one task (the seed's TaskManager, plus who set it and when)."""

    task_id: str
    user: str = ""
    group_id: str = ""
    reserved: str = ""
    source: str = ""
    by: str = ""
    at_ms: int = 0
    version: int = 0

    @classmethod
    def from_doc(cls, doc: Doc) -> Assignment:
        """Build from a stored task document (its ``assignee`` and ``assignment``)."""
        binding = doc.get("assignment") or {}
        return cls(
            task_id=doc["_id"],
            user=doc.get("assignee") or "",
            group_id=binding.get("group_id") or "",
            reserved=binding.get("reserved") or "",
            source=binding.get("source") or "",
            by=binding.get("by") or "",
            at_ms=int(binding.get("at") or 0),
            version=int(binding.get("version") or 0),
        )

    def public(self) -> dict[str, Any] | None:
        """As the API shows it; None for a task that was never bound."""
        if not self.version:
            return None
        return {
            "user": self.user,
            "group_id": self.group_id,
            "reserved": self.reserved,
            "source": self.source,
            "by": self.by,
            "at": iso(self.at_ms) if self.at_ms else None,
            "version": self.version,
        }


def _changes(binding: Assignment) -> Doc:
    """The ``$set`` that stores ``binding`` (``version`` included)."""
    return {
        "assignee": binding.user,
        "assignment": {
            "group_id": binding.group_id,
            "reserved": binding.reserved,
            "source": binding.source,
            "by": binding.by,
            "at": binding.at_ms,
            "version": binding.version,
        },
        CHANGED_AT: binding.at_ms,
    }


async def get_assignment(store: Store, task_id: str) -> Assignment:
    """The current binding of one task; NoSuchTask if the task is not stored."""
    async with translated("get_assignment"):
        doc = await store.tasks.find_one({"_id": task_id}, _PROJECTION)
    if doc is None:
        raise NoSuchTask(f"no task {task_id!r}")
    return Assignment.from_doc(doc)


async def get_assignments(store: Store, task_ids: Sequence[str]) -> dict[str, Assignment]:
    """The bindings of these tasks, by id (a task that is not stored is left out)."""
    if not task_ids:
        return {}
    async with translated("get_assignments"):
        cursor = store.tasks.find({"_id": {"$in": list(task_ids)}}, _PROJECTION)
        return {doc["_id"]: Assignment.from_doc(doc) async for doc in cursor}


async def set_assignment(
    store: Store,
    task_id: str,
    *,
    user: str | None,
    group_id: str | None = None,
    reserved: str | None = None,
    source: Source,
    by: str = "",
    now_ms: int,
) -> tuple[Assignment, bool]:
    """Bind ``task_id`` to ``user`` ("" = nobody); returns (the binding now, whether it changed).

    A part passed as None keeps its stored value. The newest call wins: a compare-and-set on
    ``version``, read again and retried when another writer changed the binding in between (so
    that change is in the history, never silently erased). Setting what is already stored
    writes nothing, history included. NoSuchTask if the task is not stored.
    """
    with store.flights.writing():  # a client waits on it (store/flights.py)
        async with translated("set_assignment"):
            for _ in range(_ATTEMPTS):
                doc = await store.tasks.find_one({"_id": task_id}, _PROJECTION)
                if doc is None:
                    raise NoSuchTask(f"no task {task_id!r}")
                current = Assignment.from_doc(doc)
                wanted = Assignment(
                    task_id,
                    user=current.user if user is None else user,
                    group_id=current.group_id if group_id is None else group_id,
                    reserved=current.reserved if reserved is None else reserved,
                )
                if (wanted.user, wanted.group_id, wanted.reserved) == (
                    current.user,
                    current.group_id,
                    current.reserved,
                ):
                    return current, False
                new = Assignment(
                    task_id,
                    user=wanted.user,
                    group_id=wanted.group_id,
                    reserved=wanted.reserved,
                    source=source,
                    by=by,
                    at_ms=now_ms,
                    version=current.version + 1,
                )
                done = await store.tasks.update_one(
                    {"_id": task_id, "assignment.version": eq(current.version)},
                    {"$set": _changes(new)},
                )
                if done.matched_count == 1:
                    await _record(store, new, current.user)
                    return new, True
        raise AssignmentConflict(
            f"task {task_id}: assignment kept changing under {_ATTEMPTS} attempts", holder=""
        )


async def claim(
    store: Store,
    task_id: str,
    user: str,
    *,
    now_ms: int,
    expect_version: int | None = None,
) -> tuple[Assignment, bool]:
    """``user`` takes the task if nobody holds it: one conditional update.

    With ``expect_version``, only if the binding is still at that version as well (the page
    showed it free at version N: a release and a new claim meanwhile is a conflict too).
    Returns (the binding, whether it changed): claiming a task one holds already changes
    nothing. AssignmentConflict names the holder; NoSuchTask if there is no such task.
    """
    condition: Doc = {"_id": task_id, "assignee": eq("")}
    if expect_version is not None:
        condition["assignment.version"] = eq(expect_version)
    claimed = await _hand_over(store, condition, user, by=user, now_ms=now_ms, previous="")
    if claimed is not None:
        return claimed, True
    current = await get_assignment(store, task_id)
    if current.user == user and expect_version in (None, current.version):
        return current, False
    if current.user:
        raise AssignmentConflict(f"task {task_id} is held by {current.user}", current.user)
    raise AssignmentConflict(
        f"task {task_id} changed meanwhile (version {current.version}, not {expect_version})",
        holder="",
    )


async def release(store: Store, task_id: str, user: str, *, now_ms: int) -> tuple[Assignment, bool]:
    """``user`` gives the task back: one update conditional on ``user`` holding it.

    Returns (the binding, whether it changed); releasing a task nobody holds changes nothing.
    NotHolder names the holder when it is someone else; NoSuchTask if there is no such task.
    """
    condition = {"_id": task_id, "assignee": eq(user)}
    released = await _hand_over(store, condition, "", by=user, now_ms=now_ms, previous=user)
    if released is not None:
        return released, True
    current = await get_assignment(store, task_id)
    if not current.user:
        return current, False
    raise NotHolder(f"task {task_id} is held by {current.user}, not by {user}", current.user)


async def _hand_over(
    store: Store, condition: Doc, holder: str, *, by: str, now_ms: int, previous: str
) -> Assignment | None:
    """A web claim or release: one update making ``holder`` hold the task if ``condition``
    still matches, recorded in the history; None when it no longer matched."""
    update = {
        "$set": {
            "assignee": holder,
            "assignment.source": "web",
            "assignment.by": by,
            "assignment.at": now_ms,
            CHANGED_AT: now_ms,
        },
        "$inc": {"assignment.version": 1},
    }
    with store.flights.writing():  # a client waits on it (store/flights.py)
        async with translated("hand_over"):
            doc = await store.tasks.find_one_and_update(
                condition, update, projection=_PROJECTION, return_document=ReturnDocument.AFTER
            )
            if doc is None:
                return None
            changed = Assignment.from_doc(doc)
            await _record(store, changed, previous)
        return changed


async def _record(store: Store, new: Assignment, previous_user: str) -> None:
    await store[HISTORY].insert_one(
        {
            "task_id": new.task_id,
            "user": new.user,
            "previous_user": previous_user,
            "group_id": new.group_id,
            "reserved": new.reserved,
            "source": new.source,
            "by": new.by,
            "at": new.at_ms,
            "version": new.version,
        }
    )


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
                "by": doc.get("by", ""),
                "at": iso(doc.get("at")),
                "version": doc.get("version"),
            }
            async for doc in cursor
        ]
