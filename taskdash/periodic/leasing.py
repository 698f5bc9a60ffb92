"""The task queue on the store: the seed's six operations, the extensions, and their rules.

gRPC and HTTP both call this class, so the rules and the errors are the same on both. Every
operation after registration authenticates the service first; every refusal is a
:class:`PeriodicError` whose message says what to do.

Leasing (``lease``) never sorts-and-modifies one document at a time (that is O(n) on
nx-27017): it reads up to ``limit`` due candidates from an index, claims them with one
conditional ``update_many`` carrying a fresh lease token, and reads back what that token won.
A task another worker claimed in between no longer matches the condition, so no task is ever
held twice; the ones lost to a race are replaced from the next candidates.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NamedTuple

import structlog

from taskdash.periodic.auth import hash_secret, matches, new_secret
from taskdash.periodic.cache import RecentlySeen
from taskdash.periodic.checks import (
    INT64_MAX,
    check_name,
    check_task_data,
    check_task_id,
    check_task_type,
)
from taskdash.periodic.errors import Kind, PeriodicError
from taskdash.periodic.views import iso, item_size, lease_item, task_view
from taskdash.settings import PeriodicSettings
from taskdash.store.periodic import DEAD, DONE, FAILED, LEASED, PENDING, STATES, PeriodicStore
from taskdash.store.times import to_ms, utcnow

log = structlog.get_logger("taskdash.periodic")

DEFAULT_LIMIT = 10  # the seed: limit 0 returns 10 tasks
ID_BLOCK = 100  # task ids reserved per counter update
MAX_ROUNDS = 4  # claim rounds per lease, when other workers win some candidates
CACHE_MS = 1000  # how long a confirmed secret or queue is trusted without asking again

Clock = Callable[[], int]


def now_ms() -> int:
    """The service's own clock in epoch milliseconds (tests pass another)."""
    return to_ms(utcnow())


class Caller(NamedTuple):
    """Who is asking: every call after registration carries both."""

    service: str
    secret: str


class QueueRef(NamedTuple):
    """A queue as the store confirmed it: its names and both incarnations.

    Tasks are read and written by ``inc`` (the queue's incarnation), never by names alone,
    so an answer cached before a deregister or destroy cannot reach a later owner.
    """

    service: str
    service_inc: str
    queue: str
    inc: str


class Leasing:
    """The periodic task service's behaviour, on a store shared by every node."""

    def __init__(
        self,
        store: PeriodicStore,
        settings: PeriodicSettings,
        *,
        node_id: str,
        clock: Clock = now_ms,
    ) -> None:
        self.store = store
        self.settings = settings
        self.node_id = node_id
        self.clock = clock
        # node-local, as the seed says: (service, queue, queue incarnation), so a queue
        # created again under the same names is not started here until someone starts it
        self.started: set[tuple[str, str, str]] = set()
        self.on_start: Callable[[], None] = lambda: None  # the firer looks at once
        self._ids: Iterator[int] = iter(())
        self._ids_lock = asyncio.Lock()
        self._seen = RecentlySeen(CACHE_MS, clock)
        #: leased, lease_expired (a lease that ran out, handed out again), done, failed, dead,
        #: buried (leases that ran out on their last attempt): read by the metrics
        self.counts: Counter[str] = Counter()

    # --- authentication and lookups ----------------------------------------------------

    async def register(self, service: str) -> str:
        """ServiceRegistry: a new name gets a secret, handed out this once."""
        check_name("service_name", service)
        secret = new_secret()
        if await self.store.insert_service(service, hash_secret(secret), self.clock()) is None:
            raise PeriodicError(
                Kind.ALREADY_EXISTS,
                f"service {service!r} is already registered; its secret was handed out at "
                "registration and cannot be fetched again",
            )
        log.info("periodic_service_registered", service=service)
        return secret

    async def authenticate(self, who: Caller) -> str:
        """Refuse unless ``who.secret`` is the secret of ``who.service``; its incarnation."""
        check_name("service_name", who.service)

        async def incarnation() -> str | None:
            found = await self.store.service_auth(who.service)
            if not matches(who.secret, found[0] if found else None):
                return None
            assert found is not None
            return found[1]

        return await self._confirm(
            ("secret", who.service, hash_secret(who.secret)),
            incarnation,
            PeriodicError(Kind.UNAUTHENTICATED, f"unknown service {who.service!r} or wrong secret"),
        )

    async def queue_ref(self, who: Caller, queue: str) -> QueueRef:
        """Authenticate, then require the queue to exist (in this incarnation of the service)."""
        check_name("queue_name", queue)
        service_inc = await self.authenticate(who)
        inc = await self._confirm(
            ("queue", who.service, service_inc, queue),
            lambda: self.store.queue_incarnation(who.service, service_inc, queue),
            PeriodicError(
                Kind.NOT_FOUND, f"service {who.service!r} has no queue {queue!r}; create it first"
            ),
        )
        return QueueRef(who.service, service_inc, queue, inc)

    async def _confirm(
        self,
        key: tuple[str, ...],
        ask: Callable[[], Awaitable[str | None]],
        refusal: PeriodicError,
    ) -> str:
        """The incarnation confirmed for ``key`` lately or by the store now; else ``refusal``."""
        value = self._seen.get(key)
        if value is not None:
            return value
        value = await ask()
        if value is None:
            raise refusal
        self._seen.add(key, value)
        return value

    # --- the seed's operations ---------------------------------------------------------

    async def create_queue(self, who: Caller, queue: str) -> None:
        """CreatePeriodicTaskQueue: queue names are per service."""
        check_name("queue_name", queue)
        service_inc = await self.authenticate(who)
        if await self.store.insert_queue(who.service, service_inc, queue, self.clock()) is None:
            raise PeriodicError(
                Kind.ALREADY_EXISTS, f"service {who.service!r} already has a queue {queue!r}"
            )

    async def start_queue(self, who: Caller, queue: str) -> None:
        """StartPeriodicTaskQueue: this node serves the queue from now on (idempotent)."""
        ref = await self.queue_ref(who, queue)
        self.started.add((who.service, queue, ref.inc))
        self.on_start()
        log.info("periodic_queue_started", service=who.service, queue=queue, node=self.node_id)

    async def create_task(self, who: Caller, queue: str, task_type: str, task_data: str) -> int:
        """CreateTask: a pending task with a new id unique across every node."""
        check_task_type(task_type)
        check_task_data(task_data, self.settings.max_task_data_size)
        ref = await self.queue_ref(who, queue)
        task_id = await self._next_id()
        now = self.clock()
        await self.store.insert_task(
            {
                "_id": task_id,
                "seq": task_id,  # the id again: listing pages are index ranges on it
                "service": who.service,
                "queue": queue,
                "service_inc": ref.service_inc,
                "queue_inc": ref.inc,
                "task_type": task_type,
                "task_data": task_data,
                "size": item_size(task_type, task_data),
                "state": PENDING,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
                "due": now,
            }
        )
        return task_id

    async def lease(self, who: Caller, queue: str, limit: int) -> list[dict[str, Any]]:
        """GetTaskList: lease up to ``limit`` due tasks (0 = 10), longest waiting first."""
        limit = self.check_limit(limit)
        ref = await self.queue_ref(who, queue)
        if (who.service, queue, ref.inc) not in self.started:
            raise PeriodicError(
                Kind.FAILED_PRECONDITION,
                f"queue {queue!r} of service {who.service!r} is not started on this node "
                f"({self.node_id}); call StartPeriodicTaskQueue on this node first (nodes do "
                "not share which queues they started)",
            )
        won: list[dict[str, Any]] = []
        budget = self.settings.max_reply_size - 2  # the array's brackets
        for _ in range(MAX_ROUNDS):
            wanted = limit - len(won)
            left = budget - sum(self._size(doc) for doc in won)
            round_won, exhausted, full = await self._claim_round(ref, wanted, left, not won)
            won.extend(round_won)
            if exhausted or full or len(won) >= limit:
                break
        won.sort(key=lambda doc: (doc["created_at"], doc["_id"]))
        self.counts["leased"] += len(won)
        return [lease_item(doc) for doc in won]

    async def _claim_round(
        self, ref: QueueRef, wanted: int, left: int, first: bool
    ) -> tuple[list[dict[str, Any]], bool, bool]:
        """One read-claim-read pass: (tasks won, whether the queue had no more candidates,
        whether the reply is full).

        Only candidates that fit in ``left`` bytes of reply are claimed, so a client never
        gets a reply over its limit with every task in it leased (and one attempt spent).
        When nothing is won yet (``first``), the first candidate is claimed whatever its
        size, so a task larger than the budget still goes out, alone.
        """
        now = self.clock()
        candidates = await self.store.candidates(ref.inc, now, wanted)
        max_attempts = self.settings.max_attempts
        spent = [c["_id"] for c in candidates if c["attempts"] >= max_attempts]
        live: list[int] = []
        full = False
        for c in candidates:
            if c["attempts"] >= max_attempts:
                continue
            size = self._size(c)
            if size > left and not (first and not live):
                full = True
                break
            live.append(c["_id"])
            left -= size
        if spent:
            buried = await self.store.bury(spent, now=now, max_attempts=max_attempts)
            self.counts["buried"] += buried
            if buried:
                log.warning(
                    "periodic_tasks_dead", service=ref.service, queue=ref.queue, count=buried
                )
        won: list[dict[str, Any]] = []
        if live:
            token = secrets.token_hex(16)
            until = now + int(self.settings.visibility_timeout * 1000)
            await self.store.claim(
                live, now=now, until=until, token=token, max_attempts=max_attempts
            )
            won = await self.store.leased_to(token)
            ran_out = {c["_id"] for c in candidates if c.get("state") == LEASED}
            self.counts["lease_expired"] += sum(doc["_id"] in ran_out for doc in won)
        return won, len(candidates) < wanted, full

    async def complete(self, who: Caller, queue: str, task_id: int, success: bool) -> str:
        """CompleteTask: done on success; failed (handed out again) or dead on failure.

        Each outcome is one conditional update; only when it matches nothing is the task
        read, to say why (unknown, not leased, lease expired).
        """
        check_task_id(task_id)
        ref = await self.queue_ref(who, queue)
        self._require_storable(ref, task_id)
        now, max_attempts = self.clock(), self.settings.max_attempts
        if success:
            outcomes = [(DONE, {"state": DONE, "due": None}, None)]
        else:
            outcomes = [
                (FAILED, {"state": FAILED, "due": now}, {"$lt": max_attempts}),
                (DEAD, {"state": DEAD, "due": None}, {"$gte": max_attempts}),
            ]
        for state, changes, attempts in outcomes:
            if await self.store.settle(ref.inc, task_id, now, changes, attempts):
                self.counts[state] += 1
                return state
        raise await self._why_not_leased(ref, task_id)

    # --- extensions (HTTP) -------------------------------------------------------------

    async def extend(self, who: Caller, queue: str, task_id: int, seconds: float) -> int:
        """Keep a lease for ``seconds`` more from now; returns the new end (epoch ms)."""
        if not 0 < seconds <= 43200:
            raise PeriodicError(
                Kind.INVALID_ARGUMENT, f"seconds must be > 0 and <= 43200, got {seconds}"
            )
        check_task_id(task_id)
        ref = await self.queue_ref(who, queue)
        self._require_storable(ref, task_id)
        now = self.clock()
        until = now + int(seconds * 1000)
        changes = {"lease_until": until, "due": until}
        if not await self.store.settle(ref.inc, task_id, now, changes):
            raise await self._why_not_leased(ref, task_id)
        return until

    async def stop_queue(self, who: Caller, queue: str) -> bool:
        """This node stops serving the queue; False if it was not serving it."""
        ref = await self.queue_ref(who, queue)
        key = (who.service, queue, ref.inc)
        was_started = key in self.started
        self.started.discard(key)
        return was_started

    async def destroy_queue(self, who: Caller, queue: str) -> None:
        """Delete the queue and every task in it."""
        ref = await self.queue_ref(who, queue)
        self.started.discard((who.service, queue, ref.inc))
        self._seen.forget(lambda key: key[0] == "queue" and key[1:] == ref[:3])
        await self.store.delete_queue(who.service, ref.service_inc, queue, ref.inc)
        log.info("periodic_queue_destroyed", service=who.service, queue=queue)

    async def deregister(self, who: Caller) -> None:
        """Delete the service with its queues and tasks; its secret stops working."""
        service_inc = await self.authenticate(who)
        self.started = {key for key in self.started if key[0] != who.service}
        self._seen.forget(lambda key: key[1] == who.service)
        await self.store.delete_service(who.service, service_inc)
        log.info("periodic_service_deregistered", service=who.service)

    async def list_queues(self, who: Caller) -> list[dict[str, Any]]:
        """The service's queues, each with whether this node serves it."""
        service_inc = await self.authenticate(who)
        queues = await self.store.list_queues(who.service, service_inc)
        return [
            {
                "queue_name": q["queue"],
                "created_at": iso(q["created_at"]),
                "started_here": (who.service, q["queue"], q["incarnation"]) in self.started,
            }
            for q in queues
        ]

    async def list_tasks(
        self, who: Caller, queue: str, *, state: str | None, after: int, limit: int
    ) -> list[dict[str, Any]]:
        """A page of the queue's tasks (any state, or one), by id after ``after``."""
        if state is not None and state not in STATES:
            raise PeriodicError(
                Kind.INVALID_ARGUMENT, f"state must be one of {', '.join(STATES)}, got {state!r}"
            )
        limit = self.check_limit(limit)
        ref = await self.queue_ref(who, queue)
        after = min(after, INT64_MAX)  # no id is larger (and the store takes no larger int)
        docs = await self.store.list_tasks(ref.inc, state=state, after=after, limit=limit)
        now = self.clock()
        return [task_view(doc, now) for doc in docs]

    async def get_task(self, who: Caller, queue: str, task_id: int) -> dict[str, Any]:
        """One task of the queue, as the listing shows it."""
        check_task_id(task_id)
        ref = await self.queue_ref(who, queue)
        self._require_storable(ref, task_id)
        doc = await self.store.get_task(task_id)
        if not self._in_queue(doc, ref):
            raise self._not_found(ref, task_id)
        assert doc is not None
        return task_view(doc, self.clock())

    async def delete_task(self, who: Caller, queue: str, task_id: int) -> None:
        """Delete one task, whatever its state."""
        check_task_id(task_id)
        ref = await self.queue_ref(who, queue)
        self._require_storable(ref, task_id)
        if not await self.store.delete_task(ref.inc, task_id):
            raise self._not_found(ref, task_id)

    async def redrive(self, who: Caller, queue: str, task_id: int | None) -> int:
        """Dead tasks (all of the queue's, or one) become pending with attempts reset."""
        if task_id is not None:
            check_task_id(task_id)
        ref = await self.queue_ref(who, queue)
        if task_id is not None:
            self._require_storable(ref, task_id)
        count = await self.store.redrive(ref.inc, self.clock(), task_id)
        if task_id is not None and not count:
            doc = await self.store.get_task(task_id)
            if not self._in_queue(doc, ref):
                raise self._not_found(ref, task_id)
            raise PeriodicError(
                Kind.FAILED_PRECONDITION, f"task {task_id} is not dead (it is {doc['state']})"
            )
        return count

    async def list_services(self, after: str, limit: int) -> list[dict[str, Any]]:
        """Registered services by name (the caller checked the admin token)."""
        docs = await self.store.list_services(after, self.check_limit(limit))
        return [{"service_name": d["_id"], "created_at": iso(d["created_at"])} for d in docs]

    # --- helpers -----------------------------------------------------------------------

    def check_limit(self, limit: int) -> int:
        if limit == 0:
            return DEFAULT_LIMIT
        if not 1 <= limit <= self.settings.max_limit:
            raise PeriodicError(
                Kind.INVALID_ARGUMENT,
                f"limit must be between 0 (meaning {DEFAULT_LIMIT}) and "
                f"{self.settings.max_limit} ([periodic] max_limit), got {limit}",
            )
        return limit

    def _size(self, doc: dict[str, Any]) -> int:
        """A task's bytes in a reply (tasks stored before sizes were: the largest possible)."""
        return int(doc.get("size") or self.settings.max_task_data_size + 2048)

    async def _next_id(self) -> int:
        """The next id of this node's reserved block (a new block when it runs out)."""
        [task_id] = await self.take_ids(1)
        return task_id

    async def take_ids(self, count: int) -> list[int]:
        """``count`` new task ids: the rest of this node's block, then one more reservation
        (at least a block) for whatever is missing."""
        async with self._ids_lock:
            ids = list(itertools.islice(self._ids, count))
            missing = count - len(ids)
            if missing:
                size = max(missing, ID_BLOCK)
                last = await self.store.reserve_ids(size)
                self._ids = iter(range(last - size + 1, last + 1))
                ids += itertools.islice(self._ids, missing)
            return ids

    @staticmethod
    def _in_queue(doc: dict[str, Any] | None, ref: QueueRef) -> bool:
        """Whether ``doc`` is a task of this incarnation of the queue (not just its names)."""
        return doc is not None and doc.get("queue_inc") == ref.inc

    @classmethod
    def _require_storable(cls, ref: QueueRef, task_id: int) -> None:
        """A valid uint64 above int64 names no task: NOT_FOUND, without asking the store
        (BSON holds int64 only; encoding such an id raises OverflowError)."""
        if task_id > INT64_MAX:
            raise cls._not_found(ref, task_id)

    @staticmethod
    def _not_found(ref: QueueRef, task_id: int) -> PeriodicError:
        return PeriodicError(
            Kind.NOT_FOUND,
            f"no task {task_id} in queue {ref.queue!r} of service {ref.service!r}",
        )

    async def _why_not_leased(self, ref: QueueRef, task_id: int) -> PeriodicError:
        """The error for an answer about a task that is not currently leased in this queue."""
        doc = await self.store.get_task(task_id)
        if not self._in_queue(doc, ref):
            return self._not_found(ref, task_id)
        assert doc is not None
        if doc["state"] != LEASED:
            return PeriodicError(
                Kind.FAILED_PRECONDITION,
                f"task {task_id} is not leased (it is {doc['state']}); only a task handed out "
                "by GetTaskList and not yet completed can be completed or extended",
            )
        if doc["lease_until"] > self.clock():  # handed out again meanwhile
            return PeriodicError(
                Kind.FAILED_PRECONDITION,
                f"task {task_id} was handed out again while answering; the answer was not applied",
            )
        return PeriodicError(
            Kind.FAILED_PRECONDITION,
            f"the lease of task {task_id} expired at {iso(doc['lease_until'])}; the task "
            "will be handed out again",
        )
