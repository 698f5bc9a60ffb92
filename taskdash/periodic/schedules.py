"""Schedules on a queue: create, list, show, pause, resume, delete; and how callers see them.

The rules behind the HTTP endpoints and ``taskdash periodic schedule``. Every call is
authenticated like the queue's other calls (the service's name and secret) and names a queue
of that service. What a schedule's fields mean is in ``docs/periodic.md``; when it runs, in
:mod:`taskdash.periodic.timing`; who fires it, in :mod:`taskdash.periodic.firing`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import msgspec

from taskdash.periodic.checks import INT64_MAX, check_name, check_task_data, check_task_type
from taskdash.periodic.errors import Kind, PeriodicError
from taskdash.periodic.fires import Definitions, finish_open_fires, timing_of
from taskdash.periodic.leasing import Caller, Clock, Leasing, QueueRef
from taskdash.periodic.timing import (
    MAX_GRACE_S,
    MAX_JITTER_S,
    ONCE,
    Timing,
    check_interval,
    check_misfire,
    check_seconds,
)
from taskdash.periodic.views import iso, item_size
from taskdash.store.mongo import Doc
from taskdash.store.schedules import ScheduleStore, schedule_key

FIELDS = (
    "schedule_id",
    "interval",
    "cron",
    "timezone",
    "task_type",
    "task_data",
    "misfire",
    "misfire_grace",
    "jitter",
    "paused",
)
DEFAULT_GRACE_S = 60.0
NEXT_RUNS = 5  # upcoming runs shown per schedule
PAUSE_TRIES = 5  # a pause races fires: read again and retry this many times
_KINDS = {str: "a string", float: "a number", bool: "true or false"}


def _bad(message: str) -> PeriodicError:
    return PeriodicError(Kind.INVALID_ARGUMENT, message)


def _get(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    """``body[name]`` of type ``kind`` (numbers: int or float, never bool), or ``default``."""
    value = body.get(name, default)
    if value is default:
        return value
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise _bad(f"{name} must be {_KINDS[kind]}")
    return value


def _number(value: float) -> float:
    """A number as a float for range checks (an integer too large for one is out of range)."""
    try:
        return float(value)
    except OverflowError:
        return float("inf")


def new_schedule(body: dict[str, Any], ref: QueueRef, now: int, max_data: int) -> tuple[Doc, Doc]:
    """The definition and state of the schedule a create request describes, every field
    checked."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise _bad(f"unknown field {unknown[0][:40]!r}; the fields are {', '.join(FIELDS)}")
    schedule_id = _get(body, "schedule_id", str, None)
    if schedule_id is None:
        schedule_id = f"s-{secrets.token_hex(8)}"
    check_name("schedule_id", schedule_id)
    if "task_data" not in body:
        raise _bad("task_data is required (any JSON value: the data of every task fired)")
    try:
        data = json.dumps(body["task_data"], ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        raise _bad("task_data is nested too deeply to be decoded") from None
    check_task_data(data, max_data)
    task_type = check_task_type(_get(body, "task_type", str, ""))
    jitter_ms = check_seconds("jitter", _number(_get(body, "jitter", float, 0)), 0, MAX_JITTER_S)
    grace = _number(_get(body, "misfire_grace", float, DEFAULT_GRACE_S))
    definition: Doc = {
        "_id": schedule_key(ref.inc, schedule_id),
        "schedule_id": schedule_id,
        "incarnation": secrets.token_hex(12),
        "service": ref.service,
        "service_inc": ref.service_inc,
        "queue": ref.queue,
        "queue_inc": ref.inc,
        **_timing_fields(body, now, jitter_ms),
        "task_type": task_type,
        "task_data": data,
        "size": item_size(task_type, data, schedule_id),
        "misfire": check_misfire(_get(body, "misfire", str, ONCE)),
        "grace_ms": check_seconds("misfire_grace", grace, 1, MAX_GRACE_S),
        "jitter_ms": jitter_ms,
        "created_at": now,
    }
    return definition, new_state(definition, _get(body, "paused", bool, False), now)


def new_state(definition: Doc, paused: bool, now: int) -> Doc:
    """A schedule's first state: its next run after ``now`` (to fire unless ``paused``)."""
    next_run_at = timing_of(definition).next_after(now)
    state: Doc = {
        "_id": definition["_id"],
        "queue_inc": definition["queue_inc"],
        "incarnation": definition["incarnation"],
        "paused": paused,
        "next_run_at": next_run_at,
        "fired": 0,
        "skipped": 0,
        "missed": 0,
        "updated_at": now,
    }
    if not paused:
        state["wake_at"] = next_run_at
    return state


def _timing_fields(body: dict[str, Any], now: int, jitter_ms: int) -> Doc:
    """``interval`` (from now) or ``cron`` with ``timezone``: exactly one of them."""
    interval = _get(body, "interval", float, None)
    cron = _get(body, "cron", str, None)
    timezone = _get(body, "timezone", str, None)
    if (interval is None) == (cron is None):
        raise _bad("give either interval (seconds) or cron (5 fields), not both, not neither")
    if cron is None:
        if timezone is not None:
            raise _bad("timezone applies to cron schedules only")
        interval_ms = check_interval(_number(interval))
        if jitter_ms > interval_ms:
            raise _bad("jitter must not be longer than the interval")
        return {"interval_ms": interval_ms, "anchor_ms": now}
    timing = Timing.for_cron(cron, "UTC" if timezone is None else timezone, now)
    return {"cron": timing.cron, "timezone": timing.timezone}


def run_view(run: Doc, outcome: str | None = None) -> dict[str, Any]:
    """A schedule's last run: when it was due and fired, its task, and (when asked for) its
    ``outcome``: the task's state, ``skipped`` (no task: a misfire under ``skip``),
    ``creating`` (its fire's batch is storing it right now) or ``deleted``."""
    view: dict[str, Any] = {
        "due_at": iso(run["due"]),
        "fired_at": iso(run["at"]),
        "late_ms": run["at"] - run["due"],
        "task_id": run.get("task_id"),
        "missed": run["missed"],
        "node": run["node"],
    }
    if run.get("missed_more"):
        view["missed_more"] = True
    if outcome is not None:
        view["outcome"] = outcome
    return view


def task_run_view(task: Doc) -> dict[str, Any]:
    """A run as the task it created shows it (``outcome`` is the task's state)."""
    return {
        "due_at": iso(task["scheduled_for"]),
        "task_id": task["_id"],
        "created_at": iso(task["created_at"]),
        "outcome": task["state"],
        "attempts": task["attempts"],
        "updated_at": iso(task["updated_at"]),
    }


def schedule_view(
    definition: Doc, state: Doc | None, *, detail: bool = True, outcome: str | None = None
) -> dict[str, Any]:
    """A schedule as callers see it (no state: a create or delete cut short, shown paused):
    with ``detail`` its next runs (a cron's cost croniter steps, so a listing leaves them
    out), with ``outcome`` its last run's."""
    view: dict[str, Any] = {
        "schedule_id": definition["schedule_id"],
        "queue_name": definition["queue"],
    }
    if "interval_ms" in definition:
        view["interval"] = definition["interval_ms"] / 1000
    else:
        view.update(cron=definition["cron"], timezone=definition["timezone"])
    state = state or {"paused": True, "fired": 0, "skipped": 0, "missed": 0}
    active = not state["paused"]
    last = state.get("last_run")
    view.update(
        task_type=definition["task_type"],
        task_data=msgspec.Raw(definition["task_data"].encode()),
        misfire=definition["misfire"],
        misfire_grace=definition["grace_ms"] / 1000,
        jitter=definition["jitter_ms"] / 1000,
        state="active" if active else "paused",
        next_run_at=iso(state["next_run_at"]) if active else None,
        last_run=run_view(last, outcome) if last else None,
        fired=state["fired"],
        skipped=state["skipped"],
        missed=state["missed"],
        created_at=iso(definition["created_at"]),
        updated_at=iso(state.get("updated_at", definition["created_at"])),
    )
    if detail:
        timing = timing_of(definition)
        view["next_runs"] = (
            [iso(t) for t in timing.upcoming(state["next_run_at"], NEXT_RUNS)] if active else []
        )
    return view


class Schedules:
    """The schedule operations, on the queues of :class:`Leasing` (which authenticates)."""

    def __init__(
        self,
        leasing: Leasing,
        store: ScheduleStore,
        *,
        clock: Clock,
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.leasing = leasing
        self.store = store
        self.clock = clock
        self.changed = changed  # tells this node's firer to look again
        self.definitions = Definitions(store)

    async def create(self, who: Caller, queue: str, body: dict[str, Any]) -> dict[str, Any]:
        """A new schedule on the queue (201); its id must be new in the queue."""
        ref = await self.leasing.queue_ref(who, queue)
        max_data = self.leasing.settings.max_task_data_size
        definition, state = new_schedule(body, ref, self.clock(), max_data)
        if not await self.store.insert(definition, state):
            raise PeriodicError(
                Kind.ALREADY_EXISTS,
                f"queue {queue!r} already has a schedule {definition['schedule_id']!r}",
            )
        self.changed()
        return schedule_view(definition, state)

    async def list(self, who: Caller, queue: str, after: str, limit: int) -> list[dict[str, Any]]:
        """A page of the queue's schedules by id (without next runs, nor the last run's
        outcome)."""
        ref = await self.leasing.queue_ref(who, queue)
        limit = self.leasing.check_limit(limit)
        found = await self.store.page(ref.inc, after, limit)
        states = await self.store.states_of([d["_id"] for d in found])
        return [schedule_view(d, self._state(d, states.get(d["_id"])), detail=False) for d in found]

    async def get(self, who: Caller, queue: str, schedule_id: str) -> dict[str, Any]:
        """One schedule with its next runs and its last run's outcome."""
        definition, state = await self._find(who, queue, schedule_id)
        return schedule_view(definition, state, outcome=await self._outcome(state))

    async def runs(
        self, who: Caller, queue: str, schedule_id: str, before: int, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        """The runs that created a task, newest first, due before ``before`` (epoch ms); and
        the ``before`` of the next page (None: no more)."""
        definition, _ = await self._find(who, queue, schedule_id)
        limit = self.leasing.check_limit(limit)
        tasks = await self.store.runs(definition["incarnation"], min(before, INT64_MAX), limit)
        following = tasks[-1]["scheduled_for"] if len(tasks) == limit else None
        return [task_run_view(task) for task in tasks], following

    async def pause(self, who: Caller, queue: str, schedule_id: str) -> dict[str, Any]:
        """Stop firing (runs due while paused are not fired later); idempotent.

        A fire may land between reading the schedule and pausing it: the pause only applies
        to the version it read (the same next run), after making sure the task of its last
        fire is stored, and reads again otherwise.
        """
        for _ in range(PAUSE_TRIES):
            definition, state = await self._find(who, queue, schedule_id)
            if state is None or state["paused"]:
                return schedule_view(definition, state)
            await self._finish_last_fire(state)
            now = self.clock()
            if await self.store.pause(state["_id"], state["next_run_at"], now):
                state.update(paused=True, updated_at=now)
                return schedule_view(definition, state)
        raise PeriodicError(
            Kind.UNAVAILABLE, f"schedule {schedule_id!r} kept firing while pausing; try again"
        )

    async def resume(self, who: Caller, queue: str, schedule_id: str) -> dict[str, Any]:
        """Fire again from the next run after now (nothing is caught up); idempotent. A
        schedule left without a state (a create cut short) gets one."""
        definition, state = await self._find(who, queue, schedule_id)
        if state is not None and not state["paused"]:
            return schedule_view(definition, state)
        now = self.clock()
        fresh = new_state(definition, False, now)
        if await self.store.resume(fresh, fresh["next_run_at"], now):
            self.changed()
        return schedule_view(*(await self._find(who, queue, schedule_id)))

    async def delete(self, who: Caller, queue: str, schedule_id: str) -> None:
        """Delete the schedule; the tasks it created stay, ordinary tasks of the queue."""
        definition, state = await self._find(who, queue, schedule_id)
        if state is not None:
            await self._finish_last_fire(state)
        await self.store.delete(definition["_id"])

    async def _find(self, who: Caller, queue: str, schedule_id: str) -> tuple[Doc, Doc | None]:
        """The schedule's definition and state (None: it has none)."""
        ref = await self.leasing.queue_ref(who, queue)
        check_name("schedule_id", schedule_id)
        key = schedule_key(ref.inc, schedule_id)
        definition = await self.store.definition(key)
        if definition is None:
            raise PeriodicError(
                Kind.NOT_FOUND,
                f"queue {queue!r} of service {who.service!r} has no schedule {schedule_id!r}",
            )
        return definition, self._state(definition, await self.store.state(key))

    @staticmethod
    def _state(definition: Doc, state: Doc | None) -> Doc | None:
        """``state`` if it belongs to this incarnation of the schedule."""
        return state if state and state["incarnation"] == definition["incarnation"] else None

    async def _finish_last_fire(self, state: Doc) -> None:
        await finish_open_fires(self.store, self.definitions, [state], self.leasing.clock())

    async def _outcome(self, state: Doc | None) -> str | None:
        """What became of the last run's task (None: no run yet)."""
        last = (state or {}).get("last_run")
        if last is None:
            return None
        task_id = last.get("task_id")
        if task_id is None:
            return "skipped"
        found = (await self.store.task_states([task_id])).get(task_id)
        if found is not None:
            return found
        if await self.store.open_batches([last["token"]]):
            return "creating"
        return "deleted"
