"""The dashboard's task listing: filters, search, sort and keyset pages, indexed at 100,000 tasks.

What a listing can ask (:class:`TaskQuery`): ``status``, ``service_id``, ``assignee`` ("" =
unassigned), ``out_of_window`` (the daily-window flag, ``store/task_windows.py``), gone tasks
hidden / shown / only, ``q`` (the id or the name starts with it, case-insensitively:
indexed), ``description`` (the description contains it, case-insensitively: a scan of what
the other filters leave), a sort (id, name, status,
service, assignee, last seen; ascending or descending) and a page of 1-200 tasks after or
before a cursor. There is no total count: counting 100,000 tasks is a scan.

How it stays fast, on MongoDB and on nx-27017 (whose limits shape it; see
``store/mongo.py``):

* Each task carries ``key`` (a copy of ``_id``: nx-27017 answers a range on ``_id`` with a
  scan of the whole collection), ``id_lc`` and ``name_lc`` (casefolded, for the
  case-insensitive search and the name order). Every sort is on an index ``(field, key)``.
* Pages are keyset pages: the cursor holds the last (sort value, key) seen, and the next page
  is "after it" in that order, never a skip. "After (v, k)" is an ``$or`` on MongoDB; nx-27017
  scans for any ``$or``, so it is run as its parts in order: the ties ``field == v and key > k``
  first, then ``field > v`` (and ``null`` last in a descending order of a nullable field).
  Likewise the search "id or name starts with q" is two queries merged in sort order. Both
  pairs are asked at once when that costs nothing (the search's branches always; a cursor's
  ties and the rest when few tasks on its page shared its value, :attr:`Cursor.ties`): with
  the store busy, each query a request waits for is a wait in its queue.
* SQLite, under nx-27017, picks indexes without statistics: for an equality on an indexed
  field it takes that index, even when half the tasks match and the page must then be sorted
  from all of them. So a filter is written so that only the right index can serve it: as an
  equality (``$eq``, a range) when its own index also gives the sort order, or when it matches
  at most :data:`SMALL` tasks (counted in its index first, remembered a while); otherwise as
  an ``$in`` of one value or an anchored ``$regex``, which SQLite does not serve from an
  index, so it walks the sort index and stops at the end of the page. MongoDB's planner
  picks as well either way.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import re
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import msgspec
import structlog

from taskdash.store.assignments import Assignment
from taskdash.store.mongo import Doc, Store, count_matching, eq, translated
from taskdash.store.times import iso

T = TypeVar("T")
log = structlog.get_logger("taskdash.store.tasklist")
Gone = Literal["hide", "show", "only"]
GONE: tuple[Gone, ...] = ("hide", "show", "only")
#: the API's sort names -> the stored field, ordered with ``key`` on ties
SORTS = {
    "id": "key",
    "name": "name_lc",
    "status": "status",
    "service": "service_id",
    "assignee": "assignee",
    "last_seen": "last_seen_at",
}
NULLABLE = frozenset({"service_id"})  # a task registered over TCP has no service
#: fields with an index ``(field, key)``: an equality on them comes in ``key`` order
KEYED = frozenset({"status", "service_id", "assignee", "name_lc", "last_seen_at", "out_of_window"})
MAX_PAGE = 200
MAX_SEARCH = 64
MAX_CURSOR = 1024
#: a filter matching at most this many tasks is served from its own index, then sorted
SMALL = 2000
_TOP = "\U0010ffff"  # sorts after every other character: the end of a prefix range

FIELDS = ("name", "url", "description", "status", "reserved")
"""The TaskMetaData fields stored as they come."""
WINDOW = ("start_time", "stop_time")


def fold(text: str) -> str:
    """The case-insensitive form stored in ``id_lc``/``name_lc`` and searched with."""
    return text.casefold()


class BadQuery(ValueError):
    """A listing parameter that cannot be served; ``field`` names it."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Cursor:
    """A position in one order: the last (sort value, key) on a page.

    ``ties`` is a hint, never part of the answer: False when few tasks on the page shared
    this one's sort value (a name: a few at most; a status: the whole page), so that few are
    likely left after it. The page after it then asks for those ties and for the rest at
    once (one wait in the store's queue, not two); were it wrong, both answers are used all
    the same, in order, and only the second query was spent for nothing. True (and every
    cursor from before the hint): the ties first, the rest only if they do not fill the page.
    """

    sort: str
    descending: bool
    value: str | int | None
    key: str
    ties: bool = True

    def encode(self) -> str:
        """Opaque text for the client (URL-safe)."""
        value = int(self.value) if isinstance(self.value, int) else self.value  # bson's Int64
        fields = [self.sort, self.descending, value, self.key, *([] if self.ties else [False])]
        raw = msgspec.json.encode(fields)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, name: str) -> Cursor:
        """A cursor from :meth:`encode`; BadQuery naming the parameter otherwise."""
        if len(text) > MAX_CURSOR:
            raise BadQuery(f"{name} is longer than {MAX_CURSOR} characters", name)
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            try:
                sort, descending, value, key = msgspec.json.decode(raw, type=_CURSOR)
                ties = True
            except msgspec.ValidationError:
                sort, descending, value, key, ties = msgspec.json.decode(raw, type=_HINTED)
        except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
            raise BadQuery(f"{name} is not a cursor this API gave", name) from None
        if sort not in SORTS:
            raise BadQuery(f"{name} is not a cursor this API gave", name)
        return cls(sort, descending, value, key, ties)


_CURSOR = tuple[str, bool, str | int | None, str]
_HINTED = tuple[str, bool, str | int | None, str, bool]


@dataclass(frozen=True)
class TaskQuery:
    """What a listing asks for (checked by :meth:`checked`)."""

    status: str | None = None
    service_id: str | None = None
    assignee: str | None = None
    out_of_window: bool | None = None
    gone: Gone = "hide"
    q: str = ""
    description: str = ""
    sort: str = "id"
    descending: bool = False
    limit: int = 50
    after: Cursor | None = None
    before: Cursor | None = None

    def checked(self) -> TaskQuery:
        """Itself, or BadQuery naming the first parameter out of bounds."""
        if self.sort not in SORTS:
            raise BadQuery(f"sort must be one of {', '.join(SORTS)}", "sort")
        if self.gone not in GONE:
            raise BadQuery(f"gone must be one of {', '.join(GONE)}", "gone")
        if not 1 <= self.limit <= MAX_PAGE:
            raise BadQuery(f"limit must be between 1 and {MAX_PAGE}", "limit")
        for name in ("q", "description"):
            if len(getattr(self, name)) > MAX_SEARCH:
                raise BadQuery(f"{name} is longer than {MAX_SEARCH} characters", name)
        if self.after and self.before:
            raise BadQuery("give after or before, not both", "before")
        for name in ("after", "before"):
            cursor: Cursor | None = getattr(self, name)
            if cursor and (cursor.sort, cursor.descending) != (self.sort, self.descending):
                raise BadQuery(f"{name} belongs to another sort order", name)
        return self


@dataclass
class TaskPage:
    """One page and the cursors around it (None: nothing there)."""

    tasks: list[dict[str, Any]]
    next: str | None = None
    prev: str | None = None


@functools.lru_cache(maxsize=4096)
def _iso_of_ms(ms: int) -> object:
    return iso(ms)


def _time(value: object) -> object:
    """:func:`iso`, remembered for epoch ms: the tasks of one listing share their times (a
    fetch stores them at one moment), and a page of 50 converted them 100 times."""
    if isinstance(value, int) and not isinstance(value, bool):  # BSON int64 comes as Int64
        return _iso_of_ms(int(value))
    return iso(value)


def public_task(doc: Doc) -> dict[str, Any]:
    """A stored task as the API shows it, its binding included."""
    out: dict[str, Any] = {"id": doc["_id"]}
    for key in FIELDS:
        out[key] = doc.get(key, "")
    out["service_id"] = doc.get("service_id")
    for key in WINDOW:
        out[key] = doc.get(key, "")
    out["window"] = window_view(doc)
    out["first_seen_at"] = _time(doc.get("first_seen_at"))
    out["last_seen_at"] = _time(doc.get("last_seen_at"))
    out["gone"] = bool(doc.get("gone"))  # nx-27017 returns a bool set by an update as 0/1
    out["gone_at"] = _time(doc.get("gone_at"))
    binding = Assignment.from_doc(doc)
    out["assignee"] = binding.user
    out["assignment"] = binding.public()
    return out


def window_view(doc: Doc) -> dict[str, Any] | None:
    """The daily window and its stored verdict; None when the task has no window."""
    start, stop = doc.get("window_start"), doc.get("window_stop")
    if not isinstance(start, int) or not isinstance(stop, int) or start == stop:
        return None
    return {
        "start": doc.get("start_time", ""),
        "stop": doc.get("stop_time", ""),
        "verdict": doc.get("window_verdict"),
        "out_of_window": bool(doc.get("out_of_window")),
        "since": _time(doc.get("window_since")),
    }


# -- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cond:
    """One filter, in the form an index serves (``seek``) and the form it does not (``scan``)."""

    field: str
    seek: Doc
    scan: Doc
    equality: bool  # an equality on a KEYED field comes in ``key`` order; a range does not


def _equal(name: str, value: str | bool) -> _Cond:
    return _Cond(name, {name: eq(value)}, {name: {"$in": [value]}}, equality=True)


def _prefix(name: str, text: str) -> _Cond:
    folded = fold(text)
    return _Cond(
        name,
        {name: {"$gte": folded, "$lt": folded + _TOP}},
        {name: {"$regex": "^" + re.escape(folded)}},
        equality=False,
    )


@dataclass
class _Plan:
    """The filters every part of the query shares, and the search alternatives."""

    fixed: Doc = field(default_factory=dict)  # never index-served (gone, description)
    conds: list[_Cond] = field(default_factory=list)
    branches: list[_Cond | None] = field(default_factory=lambda: [None])


def _plan(query: TaskQuery) -> _Plan:
    plan = _Plan()
    if query.gone != "show":
        plan.fixed["gone"] = eq(query.gone == "only")
    if query.description:
        plan.fixed["description"] = {"$regex": "(?i)" + re.escape(query.description)}
    for name in ("status", "service_id", "assignee"):
        value = getattr(query, name)
        if value is not None:
            plan.conds.append(_equal(name, value))
    if query.out_of_window:
        plan.conds.append(_equal("out_of_window", True))
    elif query.out_of_window is False:  # never judged tasks have no flag at all: not an index
        plan.fixed["out_of_window"] = {"$ne": True}
    if query.q:
        plan.branches = [_prefix("id_lc", query.q), _prefix("name_lc", query.q)]
    return plan


#: how long a filter's count steers the plan before it is counted again; a count only picks an
#: index, so an old one can cost time, never a wrong answer
SIZES_TTL = 30.0
_SIZES_MAX = 4096
_sizes: dict[tuple[str, str, int], tuple[float, int]] = {}


async def _small(store: Store, cond: _Cond) -> int | None:
    """How many tasks ``cond`` matches if at most :data:`SMALL` (None: more), counted, or
    remembered.

    Counted with the ``count`` command on the seek form: both servers count the entries of
    the filter's index range without reading a task (nx-27017: ~0.6 ms for a service's 100
    tasks, ~4 ms for 40,000). A ``limit`` would bound it on MongoDB, but nx-27017 then reads
    every task it counts (~100 ms for 2,000), and an aggregation's ``$limit`` + ``$count``
    costs ~5 ms there whatever it matches (it counts the whole collection first).

    Only a filter never counted in this process waits for its count. One counted more than
    :data:`SIZES_TTL` ago is used as it was while it is counted again in the background: the
    count was the second wait of such a request (a service's page, a search), and the slowest
    requests of the benchmark were those (docs/web-performance.md).
    """
    key = (store.db.name, repr(cond.seek), SMALL)
    remembered = _sizes.get(key)
    if remembered is None:
        n = await _remember_size(store, key, cond)
    else:
        expires, n = remembered
        if expires <= time.monotonic():  # one recount at a time: a flight of its own
            store.flights.launch(("recount", key), lambda: _recount(store, key, cond))
    return n if n <= SMALL else None


async def _remember_size(store: Store, key: tuple[str, str, int], cond: _Cond) -> int:
    n = await store.flights.share(key, lambda: count_matching(store.tasks, cond.seek))
    if len(_sizes) >= _SIZES_MAX:
        _sizes.clear()
    _sizes[key] = (time.monotonic() + SIZES_TTL, n)
    return n


async def _recount(store: Store, key: tuple[str, str, int], cond: _Cond) -> None:
    """A remembered size counted again; if that fails (the store is down, or anything else),
    the old size stays and the next request after it tries again."""
    try:
        async with translated("count_tasks"):
            await _remember_size(store, key, cond)
    except Exception as exc:  # a size only steers the plan: never fatal
        log.info("task_filter_recount_failed", error=str(exc), error_type=type(exc).__name__)


def _aligned(cond: _Cond, sort_field: str) -> bool:
    """Whether the filter's own index also gives the sort order."""
    if cond.field == sort_field:
        return True
    return sort_field == "key" and cond.equality and cond.field in KEYED


async def _filter(store: Store, conds: Sequence[_Cond], sort_field: str) -> Doc:
    """The conditions written so that SQLite serves them from the right index (module doc).

    At most one is an index seek: a lone filter in sort order needs no count; otherwise the
    smallest filter under :data:`SMALL`, else one in sort order, else none (the sort index is
    walked, filtering, until the page is full).
    """
    chosen: _Cond | None = None
    if len(conds) == 1 and _aligned(conds[0], sort_field):
        chosen = conds[0]
    elif conds:
        counted = [(n, i) for i, c in enumerate(conds) if (n := await _small(store, c)) is not None]
        aligned = [c for c in conds if _aligned(c, sort_field)]
        chosen = conds[min(counted)[1]] if counted else (aligned[0] if aligned else None)
    out: Doc = {}
    for cond in conds:
        out.update(cond.seek if cond is chosen else cond.scan)
    return out


def _after(sort_field: str, cursor: Cursor, descending: bool) -> list[Doc]:
    """Where "after ``cursor``" is in this order: conditions whose results follow each other.

    The first is the ties (same sort value, later key), read in ``key`` order alone: the same
    order there, and one SQLite serves from an index far better.
    """
    later = "$lt" if descending else "$gt"
    ties = {sort_field: eq(cursor.value), "key": {later: cursor.key}}
    if sort_field == "key":
        return [{"key": {later: cursor.key}}]
    if cursor.value is None:  # null comes first ascending, last descending
        return [ties] if descending else [ties, {sort_field: {"$ne": None}}]
    parts = [ties, {sort_field: {later: cursor.value}}]
    if descending and sort_field in NULLABLE:
        parts.append({sort_field: eq(None)})
    return parts


def _both(base: Doc, part: Doc) -> Doc | None:
    """``base`` and ``part`` at once (None: they contradict, nothing matches).

    Without ``$and``, which nx-27017 answers with a scan: conditions on one field are merged
    into one operator document, the tighter bound kept where both give one.
    """
    out = dict(base)
    for name, ops in part.items():
        merged = dict(out.get(name, {}))
        for op, value in ops.items():
            if op not in merged:
                merged[op] = value
            elif op in ("$lt", "$gt"):
                tighter = min if op == "$lt" else max
                merged[op] = tighter(merged[op], value)
            elif merged[op] != value:
                return None
        out[name] = merged
    return out


def _order_key(doc: Doc, sort_field: str) -> tuple[Any, ...]:
    value = doc.get(sort_field)
    return (0, "") if value is None else (1, value), doc.get("key", doc["_id"])


async def _branch(
    store: Store,
    base: Doc,
    parts: list[Doc],
    sort_field: str,
    descending: bool,
    limit: int,
    *,
    at_once: bool = False,
) -> list[Doc]:
    """Up to ``limit`` tasks matching ``base``, from each part in turn (they are in order):
    one after the other, each asked only for what the earlier left to find, or ``at_once``
    (each asked for ``limit``; see :attr:`Cursor.ties`)."""
    direction = -1 if descending else 1

    async def read(condition: Doc, part: Doc, wanted: int) -> list[Doc]:
        ties = "$eq" in part.get(sort_field, {})
        order = [("key", direction)] if ties else [(sort_field, direction), ("key", direction)]
        cursor = store.tasks.find(condition).sort(order).limit(wanted)
        return await cursor.to_list()  # one batch (the limit), not a coroutine per task

    todo = [(c, part) for part in parts if (c := _both(base, part)) is not None]
    if at_once:
        pages = await _at_once([read(c, part, limit) for c, part in todo])
        return [doc for page in pages for doc in page][:limit]
    found: list[Doc] = []
    for condition, part in todo:
        found.extend(await read(condition, part, limit - len(found)))
        if len(found) >= limit:
            break
    return found


async def _at_once(steps: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Independent queries (the search's id and name branches) asked at once: with the store
    busy, a request then waits in its queue once, not once per query (scripts/bench_web.py:
    a search's p95 was the slowest). The first failure cancels the others and is raised as
    it is (no ExceptionGroup: :func:`translated` must see the driver's error)."""
    if len(steps) == 1:
        return [await steps[0]]
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


async def find_tasks(store: Store, query: TaskQuery) -> TaskPage:
    """One page of tasks (see the module docstring); BadQuery for a parameter out of bounds.

    The same page asked while its read is on its way shares that read (store/flights.py):
    the page is the callers' to show, not to change."""
    query = query.checked()
    return await store.flights.share(("find_tasks", query), lambda: _find_tasks(store, query))


async def _find_tasks(store: Store, query: TaskQuery) -> TaskPage:
    sort_field = SORTS[query.sort]
    backwards = query.before is not None
    descending = query.descending != backwards  # a page before the cursor is read in reverse
    cursor = query.before or query.after
    parts = _after(sort_field, cursor, descending) if cursor else [{}]
    plan = _plan(query)
    want = query.limit + 1  # one more tells whether there is a next page
    at_once = cursor is not None and not cursor.ties

    async def branch_docs(branch: _Cond | None) -> list[Doc]:
        conds = [*plan.conds, *([branch] if branch else [])]
        base = {**plan.fixed, **await _filter(store, conds, sort_field)}
        return await _branch(store, base, parts, sort_field, descending, want, at_once=at_once)

    merged: dict[str, Doc] = {}
    async with translated("find_tasks"):
        for found in await _at_once([branch_docs(b) for b in plan.branches]):
            for doc in found:
                merged.setdefault(doc["_id"], doc)
    docs = sorted(merged.values(), key=lambda d: _order_key(d, sort_field), reverse=descending)
    more = len(docs) > query.limit
    ties = more and _long_run(docs, sort_field, query.limit)
    docs = docs[: query.limit]
    if backwards:
        docs.reverse()
    return _page(query, docs, sort_field, more, ties)


def _long_run(docs: list[Doc], sort_field: str, limit: int) -> bool:
    """Whether the tasks sharing the sort value of the page's edge (``docs[limit - 1]``, the
    one read after it included) fill half the page or more: then the next page's ties may
    well fill it too, and are read first (:attr:`Cursor.ties`)."""
    value = docs[limit - 1].get(sort_field)
    run = sum(1 for doc in docs[limit // 2 : limit + 1] if doc.get(sort_field) == value)
    return run > limit - limit // 2


def _page(query: TaskQuery, docs: list[Doc], sort_field: str, more: bool, ties: bool) -> TaskPage:
    page = TaskPage([public_task(doc) for doc in docs])
    if not docs:
        return page

    def at(doc: Doc, hint: bool = True) -> str:
        value, key = doc.get(sort_field), doc.get("key", doc["_id"])
        return Cursor(query.sort, query.descending, value, key, ties=hint).encode()

    backwards = query.before is not None
    forward_more = more if not backwards else True
    backward_more = more if backwards else query.after is not None
    page.next = at(docs[-1], backwards or ties) if forward_more else None
    page.prev = at(docs[0], not backwards or ties) if backward_more else None
    return page


async def every_task(store: Store, query: TaskQuery, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` tasks, following the cursors page by page (for tools and tests)."""
    tasks: list[dict[str, Any]] = []
    page_query = replace(query, limit=min(MAX_PAGE, limit))
    while len(tasks) < limit:
        page = await find_tasks(store, page_query)
        tasks.extend(page.tasks)
        if page.next is None:
            break
        page_query = replace(page_query, after=Cursor.decode(page.next, "after"))
    return tasks[:limit]


async def get_task(store: Store, task_id: str) -> dict[str, Any] | None:
    """One task as the API shows it (gone or not), or None."""
    async with translated("get_task"):
        doc = await store.tasks.find_one({"_id": task_id})
    return public_task(doc) if doc else None
