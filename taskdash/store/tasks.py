"""Harvested tasks, ownership conflicts and each service's last fetch.

Collections:

* ``tasks`` (``_id`` = task id): the TaskMetaData fields, ``service_id`` (the owner, never
  changed once set), ``h`` (a content hash), ``first_seen_at``, ``last_seen_at``, ``gone``,
  ``gone_at``; ``key``, ``id_lc``, ``name_lc`` for the dashboard's listing
  (``store/tasklist.py``); the binding ``assignee`` and ``assignment``
  (``store/assignments.py``), which no fetch ever writes. Times are epoch ms. A task its
  service stops listing is marked gone, never deleted.
  A task registered over TCP (``taskdash/tcp``) has ``service_id`` null (no owner) until a
  service lists it: that service then adopts it, and from then on owns it like any other.
  ``start_time`` / ``stop_time`` (the seed's daily window) are set over TCP only, on any task;
  every write of a status or a window is followed by its verdict (``store/task_windows.py``).
* ``task_conflicts``: a task id listed by a service that does not own it (one document per
  task id and claimant), kept while the claimant keeps listing it.
* ``fetch_results`` (``_id`` = service id): the last fetch of each service, plus the state the
  fetchers share: ``due_at`` (claim / backoff), ``claim``, ``failures``, validators, ``listing``.

Writes are batched over many services (a handful of round trips per batch, not per task), and
only what changed is rewritten: the caller passes what it knows is stored (``Known``: task id ->
content hash, None for gone), from its cache or from :func:`load_known`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from pymongo import InsertOne, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from taskdash.models import TaskMetaData
from taskdash.store.assignments import empty_binding
from taskdash.store.mongo import CHANGED_AT, Doc, Store, duplicates_only, eq, translated
from taskdash.store.task_windows import (
    JUDGED,
    STATE,
    judge_docs,
    judge_tasks,
    judge_windowed,
    record_window_events,
    verdict_on_insert,
    window_minutes,
)
from taskdash.store.tasklist import FIELDS, WINDOW, TaskQuery, every_task, fold
from taskdash.store.tasklist import public_task as public_task  # its former home
from taskdash.store.times import iso

log = structlog.get_logger("taskdash.store.tasks")

#: Ids per ``$in`` list, to stay far below MongoDB's 16 MB command size.
CHUNK = 5000

Known = dict[str, int | None]
"""Task id -> content hash of what is stored for one service; None = stored but gone."""

HARVESTED = ("name", "url", "description", "status")
"""What a fetch writes back: TCP may set these only on a task no service owns."""
_BINDING = tuple(empty_binding())
"""The binding's fields: written by ``store.assignments`` only, never by a fetch."""
_encoder = msgspec.json.Encoder()
_ABSENT = object()


def content_hash(task: TaskMetaData) -> int:
    """A stable 64-bit hash of a record's content (fits a BSON int64)."""
    digest = hashlib.blake2b(_encoder.encode(task), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), CHUNK):
        yield list(ids[start : start + CHUNK])


@dataclass
class ServiceListing:
    """A service's fresh listing, and what the caller knows is stored for it."""

    service_id: str
    tasks: list[TaskMetaData]
    known: Known
    still_listed: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Conflict:
    """``service_id`` lists ``task_id``, which ``owner_service_id`` owns."""

    task_id: str
    service_id: str
    owner_service_id: str


@dataclass
class ApplyResult:
    """What :func:`apply_listings` wrote, and what is stored now per service."""

    inserted: int = 0
    changed: int = 0
    unchanged: int = 0
    gone: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    known: dict[str, Known] = field(default_factory=dict)
    stale: set[str] = field(default_factory=set)
    """Services whose ``known`` may be wrong (someone else wrote): reload them next time."""


async def load_known(store: Store, service_ids: Sequence[str]) -> dict[str, Known]:
    """What is stored for these services (for a cold cache)."""
    known: dict[str, Known] = {sid: {} for sid in service_ids}
    async with translated("load_known"):
        for chunk in _chunks(service_ids):
            cursor = store.tasks.find(
                {"service_id": {"$in": chunk}}, {"service_id": 1, "h": 1, "gone": 1}
            )
            async for doc in cursor:
                known[doc["service_id"]][doc["_id"]] = None if doc.get("gone") else doc.get("h")
    return known


def _keys(task_id: str) -> Doc:
    """The listing's copies of the id (see ``store/tasklist.py``), set once at insert."""
    return {"key": task_id, "id_lc": fold(task_id)}


def _new_doc(task: TaskMetaData, service_id: str, digest: int, now_ms: int) -> Doc:
    return {
        "_id": task.id,
        **_keys(task.id),
        **{name: getattr(task, name) for name in FIELDS},
        "name_lc": fold(task.name),
        **empty_binding(),
        "service_id": service_id,
        "h": digest,
        "first_seen_at": now_ms,
        "last_seen_at": now_ms,
        CHANGED_AT: now_ms,
        "gone": False,
        "gone_at": None,
    }


def _changed(task: TaskMetaData, service_id: str, digest: int, now_ms: int) -> UpdateOne:
    fields = {name: getattr(task, name) for name in FIELDS}
    fields["name_lc"] = fold(task.name)
    return UpdateOne(
        {"_id": task.id, "service_id": service_id},
        {
            "$set": {**fields, "h": digest, "gone": False, "gone_at": None, CHANGED_AT: now_ms},
            "$max": {"last_seen_at": now_ms},
        },
    )


@dataclass
class _Plan:
    ops: list[InsertOne[Doc] | UpdateOne] = field(default_factory=list)
    where: list[tuple[str, str]] = field(default_factory=list)  # (service, task) per op
    updates: int = 0
    bump: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    new_docs: dict[tuple[str, str], Doc] = field(default_factory=dict)  # (service, task) -> insert
    changed: list[str] = field(default_factory=list)  # updated tasks: new statuses to judge


def _plan(listings: Sequence[ServiceListing], now_ms: int, result: ApplyResult) -> _Plan:
    """Diff every listing against what is stored: insert, update, bump or mark gone."""
    plan = _Plan()
    for listing in listings:
        sid = listing.service_id
        after: Known = {}
        for task in listing.tasks:
            digest = content_hash(task)
            before = listing.known.get(task.id, _ABSENT)
            after[task.id] = digest
            if before == digest:
                plan.bump.append(task.id)
                continue
            if before is _ABSENT:
                doc = plan.new_docs[(sid, task.id)] = _new_doc(task, sid, digest, now_ms)
                plan.ops.append(InsertOne(doc))
            else:
                plan.ops.append(_changed(task, sid, digest, now_ms))
                plan.updates += 1
                plan.changed.append(task.id)
            plan.where.append((sid, task.id))
        for task_id, digest in listing.known.items():
            if task_id in after:
                continue
            if digest is not None and task_id not in listing.still_listed:
                plan.vanished.append(task_id)
                after[task_id] = None
            else:
                after[task_id] = digest
        result.known[sid] = after
    return plan


async def apply_listings(
    store: Store, listings: Sequence[ServiceListing], now_ms: int
) -> ApplyResult:
    """Store fresh listings: new tasks inserted, changed ones updated, the rest stamped seen.

    A task id owned by another service is never touched: the insert fails on the unique
    ``_id`` (atomic, also between daemons) and the pair is returned as a conflict.
    """
    result = ApplyResult()
    plan = _plan(listings, now_ms, result)
    duplicates: list[tuple[str, str]] = []
    everyone = {listing.service_id for listing in listings}
    async with translated("apply_listings"):
        if plan.ops:
            try:
                written = await store.tasks.bulk_write(plan.ops, ordered=False)
                matched = written.matched_count
            except BulkWriteError as exc:
                duplicates = [plan.where[err["index"]] for err in duplicates_only(exc)]
                matched = exc.details.get("nMatched", 0)
            if matched < plan.updates:
                result.stale |= everyone
        for chunk in _chunks(plan.bump):
            bumped = await store.tasks.update_many(
                {"_id": {"$in": chunk}}, {"$max": {"last_seen_at": now_ms}}
            )
            if bumped.matched_count < len(chunk):
                result.stale |= everyone
        for chunk in _chunks(plan.vanished):
            await store.tasks.update_many(
                {"_id": {"$in": chunk}, "gone": False},
                {"$set": {"gone": True, "gone_at": now_ms}},
            )
        if duplicates:
            await _sort_duplicates(store, duplicates, result, plan.new_docs, now_ms)
    # new statuses, and tasks that existed when inserted (adopted ones may have a window);
    # a task this fetch inserted has none
    judged = plan.changed + [task_id for _, task_id in duplicates]
    if judged:
        await judge_windowed(store, judged, now_ms)
    result.inserted = len(plan.ops) - plan.updates - len(duplicates)
    result.changed = plan.updates
    result.unchanged = len(plan.bump)
    result.gone = len(plan.vanished)
    return result


async def _sort_duplicates(
    store: Store,
    duplicates: list[tuple[str, str]],
    result: ApplyResult,
    new_docs: dict[tuple[str, str], Doc],
    now_ms: int,
) -> None:
    """A refused insert is a conflict, unless the task is the service's own or has no owner.

    A task without an owner (registered over TCP) is adopted by the service listing it, with
    one conditional update: of two services listing it at once, one adopts, the other sees
    a conflict on its next fetch.
    """
    ids = list({task_id for _, task_id in duplicates})
    owners: dict[str, Any] = {}
    for chunk in _chunks(ids):
        async for doc in store.tasks.find({"_id": {"$in": chunk}}, {"service_id": 1}):
            owners[doc["_id"]] = doc.get("service_id", "")
    adopted: list[str] = []
    for sid, task_id in duplicates:
        result.known[sid].pop(task_id, None)
        owner = owners.get(task_id, _ABSENT)
        if owner is None and await _adopt(store, new_docs[(sid, task_id)], now_ms):
            adopted.append(task_id)
            result.stale.add(sid)  # its ``known`` is reloaded, adopted tasks included
        elif owner in (None, _ABSENT, sid):
            result.stale.add(sid)  # written meanwhile by someone else: reload, retry next time
        else:
            result.conflicts.append(Conflict(task_id, sid, owner))
    if adopted:
        log.info("tasks_adopted", count=len(adopted), task_ids=adopted[:5])


async def _adopt(store: Store, doc: Doc, now_ms: int) -> bool:
    """Give an unowned task to the service listing it; first_seen_at, window, binding stay."""
    kept = ("_id", "first_seen_at", "last_seen_at", *_BINDING)
    fields = {k: v for k, v in doc.items() if k not in kept}
    done = await store.tasks.update_one(
        {"_id": doc["_id"], "service_id": eq(None)},
        {"$set": fields, "$max": {"last_seen_at": now_ms}},
    )
    return done.matched_count == 1


async def record_conflicts(
    store: Store, conflicts: Sequence[Conflict], listed: Sequence[str], now_ms: int, token: str
) -> list[Conflict]:
    """Upsert current conflicts, drop those the ``listed`` services no longer list.

    Returns the conflicts seen for the first time (worth an error in the log).
    """
    coll = store["task_conflicts"]
    ops = [
        UpdateOne(
            {"task_id": c.task_id, "service_id": c.service_id},
            {
                "$set": {"owner_service_id": c.owner_service_id, "last_at": now_ms, "seen": token},
                "$setOnInsert": {"first_at": now_ms},
                "$inc": {"count": 1},
            },
            upsert=True,
        )
        for c in conflicts
    ]
    upserted: dict[int, Any] = {}
    async with translated("record_conflicts"):
        if ops:
            try:
                upserted = (await coll.bulk_write(ops, ordered=False)).upserted_ids or {}
            except BulkWriteError as exc:  # two daemons recording the same new conflict
                duplicates_only(exc)
                upserted = {u["index"]: u["_id"] for u in exc.details.get("upserted", [])}
        for chunk in _chunks(listed):
            await coll.delete_many({"service_id": {"$in": chunk}, "seen": {"$ne": token}})
    return [conflicts[index] for index in sorted(upserted)]


# -- tasks registered over TCP ----------------------------------------------------------------


@dataclass(frozen=True)
class TcpWrite:
    """What a TCP Register/Update did under the ownership rule.

    ``created`` / ``updated``: a task no service owns, written as given. ``owned``: a
    service's task: only the window was applied, ``ignored`` lists the harvested fields sent
    with another value than stored. ``missing``: Update of an id that does not exist.
    """

    outcome: str
    owner: str | None = None
    ignored: tuple[str, ...] = ()


def _tcp_update(
    task_id: str,
    fields: dict[str, str],
    window: dict[str, str],
    now_ms: int,
    create: bool,
    on_insert: Doc | None = None,
) -> Doc:
    named = {"name_lc": fold(fields["name"])} if "name" in fields else {}
    update: Doc = {
        "$set": {
            **fields,
            **named,
            **window,
            **window_minutes(window),
            "updated_at": now_ms,
            CHANGED_AT: now_ms,
        },
        "$max": {"last_seen_at": now_ms},
    }
    if create:
        unset = [k for k in (*FIELDS, *WINDOW) if k not in fields and k not in window]
        update["$setOnInsert"] = {
            **dict.fromkeys(unset, ""),
            **({} if named else {"name_lc": ""}),
            **_keys(task_id),
            **empty_binding(),
            "service_id": None,
            "first_seen_at": now_ms,
            "gone": False,
            "gone_at": None,
            **(on_insert or {}),
        }
    return update


async def write_registered(
    store: Store,
    task_id: str,
    fields: dict[str, str],
    window: dict[str, str],
    *,
    create: bool,
    now_ms: int,
) -> TcpWrite:
    """Register (``create``: insert or update) or Update a task over TCP.

    One conditional write on the common path: it matches only a task no service owns, so a
    service's task is never overwritten, even by a fetch adopting it at the same moment.

    Register's upsert fails with DuplicateKeyError when the id exists and does not match:
    a service owns it, or — on MongoDB — another writer inserted it between this upsert's
    match and its insert (two Registers of a new id at once). The server retries that race
    itself only when the filter is exactly the unique key (SERVER-37124), and ours also says
    "no owner". So the same conditional update is tried once more without upsert: the id
    exists now, a match means updated, and only no match means owned.
    """
    with store.flights.writing():  # a client waits on it (store/flights.py)
        unowned = {"_id": task_id, "service_id": eq(None)}
        given = {**fields, **window}
        state = {"_id": task_id, **{k: given.get(k, "") for k in STATE}}
        on_insert = verdict_on_insert(store, state, now_ms) if create else {}
        update = _tcp_update(task_id, fields, window, now_ms, create, on_insert)
        async with translated("write_registered"):
            try:
                if create:  # nx-27017's find_one_and_update ignores $setOnInsert: update_one
                    done = await store.tasks.update_one(unowned, update, upsert=True)
                    inserted, before = done.upserted_id is not None, None
                    if done.matched_count:  # registered again: what it is now, to judge
                        before = await store.tasks.find_one({"_id": task_id}, JUDGED)
                else:  # the state it had, returned by the write itself
                    before = await store.tasks.find_one_and_update(unowned, update, JUDGED)
                    inserted = False
            except DuplicateKeyError:  # owned, or inserted meanwhile: see the docstring
                retry = _tcp_update(task_id, fields, window, now_ms, create=False)
                before = await store.tasks.find_one_and_update(unowned, retry, JUDGED)
                inserted = False
            if inserted:
                written = TcpWrite("created")
            elif before is not None:
                written = TcpWrite("updated")
            else:
                written = await _owned(store, task_id, fields, window, now_ms)
        await _judge_tcp_write(store, task_id, written, before, given, on_insert, now_ms)
        return written


async def _judge_tcp_write(
    store: Store,
    task_id: str,
    written: TcpWrite,
    before: Doc | None,
    given: dict[str, str],
    on_insert: Doc,
    now_ms: int,
) -> None:
    """The daily-window verdict of what a TCP write left, with as few reads as it can.

    A created task was judged in its insert (only its flag change, if any, is moved to
    ``task_events``); an updated one is judged from its state around the write (``before``,
    the sent fields applied again: the same thing after a re-read), a write following only
    if the verdict changes; a service's task whose window was set is judged from a read.
    """
    if written.outcome == "created":
        if on_insert.get("window_outbox"):
            await record_window_events(store)
    elif before is not None and given.keys() & set(STATE):
        after = {**before, **{k: v for k, v in given.items() if k in STATE}}
        await judge_docs(store, [after], now_ms)
    elif written.outcome == "owned" and given.keys() & {"start_time", "stop_time"}:
        await judge_tasks(store, [task_id], now_ms)


async def _owned(
    store: Store, task_id: str, fields: dict[str, str], window: dict[str, str], now_ms: int
) -> TcpWrite:
    """A service's task (or none): only the window is written; what else differs is named."""
    doc = await store.tasks.find_one({"_id": task_id})
    if doc is None:
        return TcpWrite("missing")
    if window:
        owned_window = {**window, **window_minutes(window), CHANGED_AT: now_ms}
        await store.tasks.update_one({"_id": task_id}, {"$set": owned_window})
    ignored = tuple(k for k, v in fields.items() if doc.get(k, "") != v)
    return TcpWrite("owned", owner=doc.get("service_id"), ignored=ignored)


async def changed_since(
    store: Store, since_ms: int, fields: Sequence[str], limit: int
) -> list[Doc]:
    """Tasks whose ``changed_at`` is ``since_ms`` or later, at most ``limit`` + 1 of them.

    One indexed range query; the caller learns that more changed than it wants to read from
    getting ``limit`` + 1 documents.
    """
    projection = dict.fromkeys(fields, 1)
    async with translated("changed_since"):
        cursor = store.tasks.find({CHANGED_AT: {"$gte": since_ms}}, projection).limit(limit + 1)
        return [doc async for doc in cursor]


async def get_tasks(
    store: Store, task_ids: Sequence[str], fields: Sequence[str] | None = None
) -> dict[str, Doc]:
    """Stored tasks by id, only ``fields`` if given (one round trip for many: Finds batch)."""
    found: dict[str, Doc] = {}
    projection = dict.fromkeys(fields, 1) if fields else None
    async with translated("get_tasks"):
        for chunk in _chunks(task_ids):
            async for doc in store.tasks.find({"_id": {"$in": chunk}}, projection):
                found[doc["_id"]] = doc
    return found


# -- fetch state ------------------------------------------------------------------------------


async def fetchable_services(store: Store) -> list[tuple[str, str]]:
    """(service id, url) of every registered service that is not offline."""
    async with translated("fetchable_services"):
        cursor = store.services.find({"status": {"$ne": "offline"}}, {"url": 1})
        return [(doc["_id"], doc.get("url") or "") async for doc in cursor]


async def claim_due(
    store: Store, service_ids: Sequence[str], *, now_ms: int, until_ms: int, token: str
) -> dict[str, Doc]:
    """Claim the services that are due (``due_at <= now``) until ``until_ms``.

    One conditional ``update_many`` stamps ``token``; each document is updated atomically, so
    of several daemons claiming the same service in one interval exactly one wins. Returns the
    claimed services' state documents (validators, failures, cache token).
    """
    coll = store["fetch_results"]
    claimed: dict[str, Doc] = {}
    stamp = {"due_at": until_ms, "claim": token}
    async with translated("claim_due"):
        for chunk in _chunks(service_ids):
            await coll.update_many(
                {"_id": {"$in": chunk}, "due_at": {"$lte": now_ms}}, {"$set": stamp}
            )
        async for doc in coll.find({"claim": token}):
            claimed[doc["_id"]] = doc
        rest = [sid for sid in service_ids if sid not in claimed]
        existing: set[str] = set()
        for chunk in _chunks(rest):
            existing.update([doc["_id"] async for doc in coll.find({"_id": {"$in": chunk}}, {})])
        fresh = [{"_id": sid, **stamp, "failures": 0} for sid in rest if sid not in existing]
        if fresh:
            lost: set[int] = set()
            try:
                await coll.insert_many(fresh, ordered=False)
            except BulkWriteError as exc:  # another daemon created it first: theirs
                lost = {err["index"] for err in duplicates_only(exc)}
            claimed.update({doc["_id"]: doc for i, doc in enumerate(fresh) if i not in lost})
    return claimed


async def release(store: Store, service_ids: Sequence[str], token: str) -> None:
    """Give back claimed services that were not fetched (stopping), so others may."""
    async with translated("release_claims"):
        for chunk in _chunks(service_ids):
            await store["fetch_results"].update_many(
                {"_id": {"$in": chunk}, "claim": token}, {"$set": {"due_at": 0}}
            )


async def write_fetch_results(store: Store, results: dict[str, Doc]) -> None:
    """Record each service's latest fetch (``service_id -> fields to set``)."""
    if not results:
        return
    ops = [UpdateOne({"_id": sid}, {"$set": doc}, upsert=True) for sid, doc in results.items()]
    async with translated("write_fetch_results"):
        await store["fetch_results"].bulk_write(ops, ordered=False)


# -- reads for the API ------------------------------------------------------------------------


async def list_tasks(
    store: Store,
    *,
    service_id: str | None = None,
    status: str | None = None,
    include_gone: bool = False,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Up to ``limit`` tasks ordered by id, gone ones only when asked (the dashboard's listing
    with every filter and sort is ``store.tasklist.find_tasks``)."""
    query = TaskQuery(service_id=service_id, status=status, gone="show" if include_gone else "hide")
    return await every_task(store, query, limit)


async def get_fetch_result(store: Store, service_id: str) -> dict[str, Any] | None:
    """The last fetch of a service, or None if it was never fetched."""
    async with translated("get_fetch_result"):
        doc = await store["fetch_results"].find_one({"_id": service_id})
    return None if not doc else _fetch_view(doc)


async def get_fetch_results(store: Store, service_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The last fetch of each of these services, by id, in one query (a page of services);
    a service never fetched is left out. ``$in`` on ``_id`` is an index lookup on nx-27017
    too (50 ids among 20,000: ~5 ms, against ~30 ms for 50 concurrent lookups)."""
    if not service_ids:
        return {}
    async with translated("get_fetch_results"):
        cursor = store["fetch_results"].find({"_id": {"$in": list(service_ids)}})
        docs = [doc async for doc in cursor]
    views = ((doc["_id"], _fetch_view(doc)) for doc in docs)
    return {sid: view for sid, view in views if view is not None}


def _fetch_view(doc: Doc) -> dict[str, Any] | None:
    """A ``fetch_results`` document as the API shows it (None: claimed, never fetched)."""
    if "at" not in doc:
        return None
    failures = int(doc.get("failures") or 0)
    return {
        "service_id": doc["_id"],
        "url": doc.get("url", ""),
        "node": doc.get("node", ""),
        "at": iso(doc.get("at")),
        "duration_ms": doc.get("duration_ms"),
        "http_status": doc.get("http_status"),
        "error": doc.get("error", ""),
        "not_modified": bool(doc.get("not_modified")),
        "task_count": doc.get("task_count", 0),
        "bad_count": doc.get("bad_count", 0),
        "bad_errors": doc.get("bad_errors", []),
        "conflict_count": doc.get("conflict_count", 0),
        "failures": failures,
        "retry_at": iso(doc.get("due_at")) if failures else None,
        "listed_at": iso(doc.get("listed_at")),
        "etag": doc.get("etag", ""),
        "last_modified": doc.get("last_modified", ""),
    }


async def list_conflicts(
    store: Store, *, service_id: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Current conflicts (a task id listed by a service that does not own it)."""
    query: Doc = {"service_id": service_id} if service_id else {}
    async with translated("list_conflicts"):
        cursor = store["task_conflicts"].find(query).sort("task_id", 1).limit(limit)
        return [
            {
                "task_id": doc["task_id"],
                "service_id": doc["service_id"],
                "owner_service_id": doc.get("owner_service_id"),
                "first_at": iso(doc.get("first_at")),
                "last_at": iso(doc.get("last_at")),
                "count": doc.get("count", 0),
            }
            async for doc in cursor
        ]
