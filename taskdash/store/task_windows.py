"""Daily-window verdicts kept in each task, and the events their flag's changes make.

What a task carries besides the seed's ``start_time`` / ``stop_time`` (``taskdash/windows.py``
says what a verdict means):

* ``window_start`` / ``window_stop``: those times as minutes of the day (None: not set),
  written with them; indexed, so that the re-judge loop (``taskdash/window_judge.py``) finds
  the tasks whose window opens or closes at the minutes the clock just crossed.
* ``window_verdict``: ``ok``, ``running_outside``, ``idle_inside``; None: nothing to judge.
* ``out_of_window``: the flag (one of the last two); indexed with ``key`` for the listing.
* ``window_since``: when the stored verdict was set (epoch ms).
* ``window_version``: +1 at every verdict write: the compare-and-set below.
* ``window_outbox`` / ``window_outbox_pending``: flag changes waiting to be moved to
  ``task_events`` (:func:`record_window_events`).

Why the verdict is written right after the status or window, not in the same update: a
fetch writes a status without knowing the stored window, and a TCP Update may send the status
alone, or one time alone; computing the verdict in the write would need a read first on
every hot path, or an update pipeline nx-27017 lacks. So the writer judges right after its
write: one read of the tasks that have a window (a fetch's changed tasks have none, mostly),
and a write only where the verdict changes. That write is conditional on everything the
verdict came from (status, both times) and on ``window_version``: a judgement made from a
state that changed meanwhile, or overtaken by another judgement, matches nothing and is made
again from a fresh read (:data:`ATTEMPTS`). The last writer of a state always judges after
it, so the stored verdict ends up that of the last state. A writer that died between its
write and its judgement leaves an old verdict until the loop's next full pass.

The flag's changes are events: the verdict write pushes one into the task's outbox in the
same update (so it exists if and only if the flip does, and each flip is won by one writer),
and :func:`record_window_events` moves outboxes into ``task_events`` under ids derived from
the event, so an event moved twice is recorded once — the pattern of ``store/status.py``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from taskdash.store.mongo import Doc, Store, duplicates_only, eq, translated
from taskdash.store.times import from_ms, iso, utcnow
from taskdash.windows import FLAGGED, clock_or_none

#: a verdict write lost this many times in a row (its task kept changing) is left for later
ATTEMPTS = 3
CHUNK = 5000
FLAGGED_EVENT, CLEARED_EVENT = "window_flagged", "window_cleared"
#: the fields a verdict is computed from: the verdict write is conditional on all of them
STATE = ("status", "start_time", "stop_time")
_MINUTES = {"start_time": "window_start", "stop_time": "window_stop"}
#: what judging a task reads of it
JUDGED = dict.fromkeys(
    (*STATE, "window_verdict", "out_of_window", "window_version", "service_id"), 1
)


def window_minutes(window: Mapping[str, str]) -> Doc:
    """The indexed minutes of the times in ``window`` (``start_time`` and/or ``stop_time``),
    to write with them."""
    return {_MINUTES[name]: clock_or_none(text) for name, text in window.items()}


def _chunks(ids: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), CHUNK):
        yield list(ids[start : start + CHUNK])


@dataclass
class Judged:
    """What a judgement wrote: verdicts changed, and those left for later (their writes lost
    the compare-and-set :data:`ATTEMPTS` times: the next pass or write judges them)."""

    changed: int = 0
    left: int = 0


def _changes(doc: Doc, verdict: str | None, now_ms: int, node: str) -> tuple[Doc, str] | None:
    """What writing ``verdict`` sets, and the flag change's event (JSON text, "" if the flag
    stays); None when the stored verdict is the same."""
    flagged = verdict in FLAGGED
    was_flagged = bool(doc.get("out_of_window"))  # nx-27017 gives a stored bool back as 0/1
    if verdict == doc.get("window_verdict") and flagged == was_flagged:
        return None
    fields: Doc = {"window_verdict": verdict, "out_of_window": flagged, "window_since": now_ms}
    if flagged == was_flagged:
        return fields, ""
    event = {
        "token": uuid.uuid4().hex,
        "kind": FLAGGED_EVENT if flagged else CLEARED_EVENT,
        "verdict": verdict,
        "previous": doc.get("window_verdict"),
        **{k: doc.get(k) for k in (*STATE, "service_id")},
        "at": now_ms,
        "node": node,
    }
    fields["window_outbox_pending"] = 1
    return fields, json.dumps(event, separators=(",", ":"))


def _verdict_update(doc: Doc, verdict: str | None, now_ms: int, node: str) -> UpdateOne | None:
    """The write of ``verdict``, conditional on what it came from (None: nothing changes)."""
    changes = _changes(doc, verdict, now_ms, node)
    if changes is None:
        return None
    fields, event = changes
    match = {"_id": doc["_id"], **{k: eq(doc.get(k)) for k in (*STATE, "window_version")}}
    update: Doc = {"$set": fields, "$inc": {"window_version": 1}}
    if event:
        update["$push"] = {"window_outbox": event}
    return UpdateOne(match, update)


def verdict_on_insert(store: Store, state: Doc, now_ms: int) -> Doc:
    """The verdict fields of a task created with ``state`` (its status and times), for the
    insert's ``$setOnInsert``: a new task is judged in the write that creates it."""
    changes = _changes(state, _verdict(store, state, now_ms), now_ms, "")
    if changes is None:
        return {}
    fields, event = changes
    return {**fields, "window_version": 1, **({"window_outbox": [event]} if event else {})}


async def _read(store: Store, conditions: Sequence[Doc]) -> list[Doc]:
    """The tasks matching any of ``conditions`` (each one query an index serves), once each."""
    found: dict[str, Doc] = {}
    for condition in conditions:
        async for doc in store.tasks.find(condition, JUDGED):
            found.setdefault(doc["_id"], doc)
    return list(found.values())


async def judge_where(
    store: Store, conditions: Sequence[Doc], now_ms: int, *, node: str = ""
) -> Judged:
    """Judge the tasks matching any of ``conditions`` at ``now_ms``; write what changed."""
    async with translated("judge_windows"):
        docs = await _read(store, conditions)
    return await judge_docs(store, docs, now_ms, node=node)


async def judge_docs(store: Store, docs: list[Doc], now_ms: int, *, node: str = "") -> Judged:
    """Judge tasks as read (:data:`JUDGED`; a write's own view of what it wrote will do):
    write what changed; a write that lost its compare-and-set is judged again from a read."""
    result = Judged()
    flipped = False
    async with translated("judge_windows"):
        for attempt in range(ATTEMPTS):
            planned = _plan(store, docs, now_ms, node)
            if not planned:
                break
            ops = [op for _, op, _ in planned]
            flipped = flipped or any(flips for _, _, flips in planned)
            written = await store.tasks.bulk_write(ops, ordered=False)
            result.changed += written.modified_count
            if written.matched_count == len(ops):
                break
            if attempt == ATTEMPTS - 1:
                result.left = len(ops) - written.matched_count
                break
            # some lost the compare-and-set: judge those tasks again, as they are now
            docs = await _read(store, [{"_id": {"$in": [task_id for task_id, _, _ in planned]}}])
    if flipped and result.changed:
        await record_window_events(store)
    return result


def _plan(
    store: Store, docs: list[Doc], now_ms: int, node: str
) -> list[tuple[str, UpdateOne, bool]]:
    """(task id, its verdict write, whether its flag changes) for the tasks that change."""
    planned = []
    for doc in docs:
        verdict = _verdict(store, doc, now_ms)
        op = _verdict_update(doc, verdict, now_ms, node)
        if op is not None:
            planned.append((doc["_id"], op, bool(doc.get("out_of_window")) != (verdict in FLAGGED)))
    return planned


def _verdict(store: Store, doc: Doc, now_ms: int) -> str | None:
    return store.window_rules.judge(
        doc.get("start_time"), doc.get("stop_time"), doc.get("status"), now_ms
    )


async def judge_tasks(store: Store, task_ids: Sequence[str], now_ms: int, node: str = "") -> Judged:
    """Judge these tasks (a TCP write: its window may have just been set, or removed)."""
    total = Judged()
    for chunk in _chunks(task_ids):
        part = await judge_where(store, [{"_id": {"$in": chunk}}], now_ms, node=node)
        total.changed, total.left = total.changed + part.changed, total.left + part.left
    return total


async def judge_windowed(
    store: Store, task_ids: Sequence[str], now_ms: int, node: str = ""
) -> Judged:
    """Judge those of these tasks that have a window (a fetch's new statuses: most have none,
    and a task without a window keeps the verdict it has, None, whatever its status)."""
    total = Judged()
    for chunk in _chunks(task_ids):
        where = {"_id": {"$in": chunk}, "window_start": {"$gte": 0}}
        part = await judge_where(store, [where], now_ms, node=node)
        total.changed, total.left = total.changed + part.changed, total.left + part.left
    return total


def minute_runs(minutes: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted minutes as runs of consecutive ones, ``(first, last)``: one range query each."""
    runs: list[tuple[int, int]] = []
    for minute in sorted(minutes):
        if runs and runs[-1][1] == minute - 1:
            runs[-1] = (runs[-1][0], minute)
        else:
            runs.append((minute, minute))
    return runs


def boundary_conditions(minutes: Iterable[int]) -> list[Doc]:
    """The tasks whose window opens or closes at one of ``minutes``: index ranges, no ``$in``
    (nx-27017 scans for ``$in``)."""
    conditions: list[Doc] = []
    for first, last in minute_runs(minutes):
        for name in _MINUTES.values():
            conditions.append(
                {name: eq(first)} if first == last else {name: {"$gte": first, "$lte": last}}
            )
    return conditions


#: every task with a window start, and every flagged one (a flag whose window was removed by
#: a writer that died before judging): what a full pass judges
FULL_PASS = ({"window_start": {"$gte": 0}}, {"out_of_window": eq(True)})


async def backfill_minutes(store: Store) -> int:
    """Give ``window_start`` / ``window_stop`` to tasks whose times were stored before these
    fields existed (once per start: a scan for ``start_time`` or ``stop_time`` set without)."""
    count = 0
    async with translated("backfill_window_minutes"):
        for name, minutes in _MINUTES.items():
            cursor = store.tasks.find({name: {"$gt": ""}, minutes: {"$exists": False}}, {name: 1})
            ops = [
                UpdateOne(
                    {"_id": d["_id"], name: eq(d[name])}, {"$set": window_minutes({name: d[name]})}
                )
                async for d in cursor
            ]
            if ops:
                count += (await store.tasks.bulk_write(ops, ordered=False)).modified_count
    return count


# -- events -----------------------------------------------------------------------------------


async def record_window_events(store: Store, limit: int = 10_000) -> list[Doc]:
    """Move flag changes waiting in task outboxes into ``task_events``; returns those this call
    recorded first (for the alert webhooks to pick up: ``published`` false, like
    ``service_events``).

    An outbox is emptied only if no verdict was written after it was read
    (``window_version`` unchanged); otherwise the next call moves the rest.
    """
    events = store["task_events"]
    async with translated("record_window_events"):
        cursor = store.tasks.find(
            {"window_outbox_pending": {"$gt": 0}}, {"window_outbox": 1, "window_version": 1}
        ).limit(limit)
        docs = [doc async for doc in cursor]
        if not docs:
            return []
        moved = [_event(store, d["_id"], raw) for d in docs for raw in d.get("window_outbox", [])]
        recorded = moved
        if moved:
            try:
                await events.insert_many(moved, ordered=False)
            except BulkWriteError as exc:  # moved by another daemon first
                already = {e["index"] for e in duplicates_only(exc)}
                recorded = [e for i, e in enumerate(moved) if i not in already]
        clear = {"$set": {"window_outbox": [], "window_outbox_pending": 0}}
        await store.tasks.bulk_write(
            [UpdateOne({"_id": d["_id"], "window_version": eq(d.get("window_version"))}, clear)
             for d in docs],
            ordered=False,
        )  # fmt: skip
    return recorded


def _event(store: Store, task_id: str, raw: str) -> Doc:
    entry: dict[str, Any] = json.loads(raw)
    at = from_ms(entry.pop("at"))
    return {
        "_id": f"{task_id}:{entry.pop('token')}",
        "task_id": task_id,
        **entry,
        "at": at,
        "published": False,
        "claim_until": 0,
        # kept for [checker] history_ttl_days from when it is recorded (``at`` is the judging
        # clock's, which tests set in the past)
        "expires_at": utcnow() + timedelta(seconds=store.history_ttl_seconds),
    }


async def window_events(store: Store, task_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """A task's flag changes, newest first (the task page)."""
    async with translated("window_events"):
        cursor = store["task_events"].find({"task_id": eq(task_id)}).sort("at", -1).limit(limit)
        return [
            {
                "kind": e["kind"],
                "verdict": e.get("verdict"),
                "previous": e.get("previous"),
                "status": e.get("status"),
                "at": iso(e["at"]),
                "node": e.get("node", ""),
            }
            async for e in cursor
        ]


# -- for the alert webhooks (taskdash/alerts/windows.py) ---------------------------------------


async def unalerted_window_events(store: Store, limit: int) -> list[Doc]:
    """Flag changes not yet turned into alert events (``alerted`` absent), oldest first."""
    async with translated("unalerted_window_events"):
        cursor = store["task_events"].find({"alerted": eq(None)}).limit(limit)
        return sorted([doc async for doc in cursor], key=lambda d: d["at"])


async def mark_window_events(store: Store, ids: Sequence[str], alerted: str = "queued") -> None:
    """Those flag changes are alert events now (or never will be: ``alerted="too_old"``)."""
    if ids:
        async with translated("mark_window_events"):
            await store["task_events"].update_many(
                {"_id": {"$in": list(ids)}}, {"$set": {"alerted": alerted}}
            )
