"""The MongoDB connection, its collections and indexes: the only place that imports pymongo."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pymongo
import structlog
from pymongo import ASCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError

from taskdash.errors import StoreError, StoreUnavailable
from taskdash.store.credcache import CredentialCache
from taskdash.store.flights import Flights
from taskdash.windows import Rules
from taskdash.zones import machine_zone

log = structlog.get_logger("taskdash.store")

Doc = dict[str, Any]

DUPLICATE_KEY = 11000

#: a task's change stamp (ms, the writer's clock), set by every write of what TCP Find returns
#: (``store.tasks``, ``store.assignments``): the feed that keeps Find's cache confirmed
#: (``taskdash.tcp.cache``)
CHANGED_AT = "changed_at"


def duplicates_only(exc: BulkWriteError) -> list[Doc]:
    """The write errors of an unordered bulk write; re-raise unless every one is a duplicate key.

    For writes where "someone stored it first" is success (several daemons, or a retry).
    """
    errors: list[Doc] = exc.details.get("writeErrors", [])
    if any(err.get("code") != DUPLICATE_KEY for err in errors):
        raise exc
    return errors


def eq(value: Any) -> Doc:
    """An equality condition an index can answer on nx-27017 as on MongoDB.

    MongoDB treats ``{"f": v}`` and ``{"f": {"$eq": v}}`` alike. nx-27017 does not: a bare
    value on a field without a single-field index becomes SQL that also looks inside arrays,
    which no index answers, so the query scans the collection (30 ms at 20,000 services);
    ``$eq`` becomes a plain comparison and an index seek (0.1 ms). ``$in`` scans too. Use it
    on hot queries.
    """
    return {"$eq": value}


#: Collection name -> the indexes it needs. Creating them is idempotent.
INDEXES: dict[str, list[IndexModel]] = {
    "services": [
        IndexModel([("status", ASCENDING), ("alive_at", ASCENDING)], name="status_alive_at"),
        IndexModel([("status", ASCENDING), ("beats", ASCENDING)], name="status_beats"),
        IndexModel([("outbox_pending", ASCENDING)], name="outbox_pending"),
    ],
    # the dashboard's listing (store/tasklist.py): every sort on (field, key), ``key`` being a
    # copy of _id (nx-27017 scans for a range on _id and refuses _id in a compound index); an
    # equality on the first field of one of these comes in ``key`` order. Each index costs
    # every write of a task (nx-27017 rebuilds all of a document's index entries on update).
    "tasks": [
        IndexModel([("key", ASCENDING)], name="key"),
        IndexModel([("id_lc", ASCENDING)], name="id_lc"),
        IndexModel([("name_lc", ASCENDING), ("key", ASCENDING)], name="name_key"),
        IndexModel([("status", ASCENDING), ("key", ASCENDING)], name="status_key"),
        IndexModel([("service_id", ASCENDING), ("key", ASCENDING)], name="service_key"),
        IndexModel([("assignee", ASCENDING), ("key", ASCENDING)], name="assignee_key"),
        IndexModel([("last_seen_at", ASCENDING), ("key", ASCENDING)], name="seen_key"),
        IndexModel([(CHANGED_AT, ASCENDING)], name=CHANGED_AT),
        # daily windows (store/task_windows.py): the listing's filter, the minutes a window
        # opens and closes at (the re-judge loop), flag changes waiting to become events
        IndexModel([("out_of_window", ASCENDING), ("key", ASCENDING)], name="flag_key"),
        IndexModel([("window_start", ASCENDING)], name="window_start"),
        IndexModel([("window_stop", ASCENDING)], name="window_stop"),
        IndexModel([("window_outbox_pending", ASCENDING)], name="window_outbox"),
    ],
    # a task's daily-window flag changes (store/task_windows.py), shaped like service_events
    "task_events": [
        IndexModel([("task_id", ASCENDING), ("at", ASCENDING)], name="task_at"),
        IndexModel([("published", ASCENDING), ("claim_until", ASCENDING)], name="outbox"),
        IndexModel([("alerted", ASCENDING)], name="alerted"),  # taskdash/alerts/windows.py
    ],
    "fetch_results": [
        IndexModel([("claim", ASCENDING)], name="claim"),
        IndexModel([("due_at", ASCENDING)], name="due_at"),
    ],
    "task_conflicts": [
        IndexModel(
            [("task_id", ASCENDING), ("service_id", ASCENDING)], name="task_service", unique=True
        ),
        IndexModel([("service_id", ASCENDING)], name="service_id"),
    ],
    "assignment_history": [
        IndexModel([("task_id", ASCENDING), ("version", ASCENDING)], name="task_version")
    ],
    "users": [IndexModel([("role", ASCENDING)], name="role")],
    "dead_letters": [
        IndexModel([("topic", ASCENDING), ("received_at", ASCENDING)], name="topic_received")
    ],
    "service_events": [
        IndexModel([("service_id", ASCENDING), ("at", ASCENDING)], name="service_at"),
        IndexModel([("published", ASCENDING), ("claim_until", ASCENDING)], name="outbox"),
        IndexModel([("claim", ASCENDING)], name="claim"),
    ],
    "nodes": [IndexModel([("seen_at", ASCENDING)], name="seen_at")],
    # the periodic task service (taskdash/store/periodic.py): tasks are found by their
    # queue's incarnation (queue_inc), never by names; nx-27017 refuses _id in a compound
    # index, so ties in the lease order come in index order
    "periodic_queues": [
        IndexModel([("service", ASCENDING)], name="service"),
        IndexModel([("incarnation", ASCENDING)], name="incarnation"),
    ],
    "periodic_tasks": [
        IndexModel([("queue_inc", ASCENDING), ("due", ASCENDING)], name="queue_due"),
        # listing pages by id (seq, a copy of _id: see store/periodic.py list_filter)
        IndexModel([("queue_inc", ASCENDING), ("seq", ASCENDING)], name="queue_seq"),
        IndexModel(
            [("queue_inc", ASCENDING), ("state", ASCENDING), ("seq", ASCENDING)],
            name="queue_state_seq",
        ),
        IndexModel([("service_inc", ASCENDING)], name="service_inc"),
        IndexModel([("lease", ASCENDING)], name="lease"),
        # /metadata's per-state sample: without it every fetch scans the whole collection
        IndexModel([("state", ASCENDING)], name="by_state"),
        # the runs of a schedule: only tasks a schedule created (on MongoDB; nx-27017 ignores
        # the filter, and measured no cost for tasks without the fields)
        IndexModel(
            [("schedule_inc", ASCENDING), ("scheduled_for", ASCENDING)],
            name="schedule_runs",
            partialFilterExpression={"schedule_inc": {"$exists": True}},
        ),
    ],
    # schedules (taskdash/store/schedules.py): definitions listed by id; states by what is
    # due per queue and by the batch of fires that won them (every index on states costs
    # each fire); batches left open by a node that died
    "periodic_schedules": [
        IndexModel([("queue_inc", ASCENDING), ("schedule_id", ASCENDING)], name="queue_schedule"),
    ],
    "periodic_schedule_state": [
        IndexModel([("queue_inc", ASCENDING), ("wake_at", ASCENDING)], name="queue_wake"),
        IndexModel([("last_run.token", ASCENDING)], name="run_token"),
    ],
    "periodic_fire_batches": [IndexModel([("at", ASCENDING)], name="at")],
}


#: The logins' collections (docs/users.md): sessions and tokens by user, login failures by
#: throttle key, the audit log by time, actor, action; each also has a TTL index on
#: ``expires_at`` (:data:`ACCOUNT_TTL`). Made by :meth:`Store.ensure_account_indexes`, which
#: the daemon calls after its first-admin step rather than with :data:`INDEXES` at the store's
#: first readiness: that step waits for readiness, and its argon2 hash must not wait for these.
ACCOUNT_INDEXES: dict[str, list[IndexModel]] = {
    "sessions": [IndexModel([("user", ASCENDING)], name="user")],
    "api_tokens": [IndexModel([("user", ASCENDING)], name="user")],
    "login_failures": [IndexModel([("key", ASCENDING), ("at", ASCENDING)], name="key_at")],
    "audit": [
        IndexModel([("at", ASCENDING)], name="at"),
        IndexModel([("actor", ASCENDING), ("at", ASCENDING)], name="actor_at"),
        IndexModel([("action", ASCENDING), ("at", ASCENDING)], name="action_at"),
    ],
}
ACCOUNT_TTL = IndexModel([("expires_at", ASCENDING)], name="ttl", expireAfterSeconds=0)


async def insert_new(collection: AsyncCollection[Doc], doc: Doc) -> bool:
    """Insert ``doc``; False when its ``_id`` (or another unique key) is taken already.

    For "create unless it exists" answered by the database, so that two nodes racing to
    create the same name cannot both succeed.
    """
    try:
        await collection.insert_one(doc)
    except DuplicateKeyError:
        return False
    return True


async def count_matching(collection: AsyncCollection[Doc], query: Doc) -> int:
    """How many documents of ``collection`` match ``query``: the server's ``count`` command.

    Not ``count_documents``: that is an aggregation, which nx-27017 answers by reading every
    document (2.4 s at 90,000 services, against 15 ms for ``count`` on an index range).
    """
    reply = await collection.database.command("count", collection.name, query=query)
    return int(reply["n"])


@contextlib.asynccontextmanager
async def translated(operation: str) -> AsyncIterator[None]:
    """Re-raise driver errors as ours: unreachable/timed out -> StoreUnavailable, else StoreError.

    A timeout (a frozen server, a :func:`deadline` that ran out) is unavailability too: the same
    operation may well succeed later, so callers retry it rather than give up on the data.
    """
    try:
        yield
    except ConnectionFailure as exc:
        raise StoreUnavailable(f"{operation}: MongoDB unreachable: {exc}") from exc
    except PyMongoError as exc:
        if exc.timeout:
            raise StoreUnavailable(f"{operation}: MongoDB timed out: {exc}") from exc
        raise StoreError(f"{operation}: {exc}") from exc


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Bound every MongoDB operation in the block (server selection included) to ``seconds``.

    The driver's own timeouts are sized for writes under load; a health probe or an HTTP
    request must give up much sooner. Expiry surfaces through :func:`translated` as
    StoreUnavailable.
    """
    with pymongo.timeout(seconds):
        yield


class Store:
    """Holds the client and names every collection TaskDash uses."""

    def __init__(
        self,
        uri: str,
        database: str,
        *,
        server_selection_timeout: float = 5.0,
        history_ttl_days: float = 30.0,
        window_rules: Rules | None = None,
        share_reads: bool = True,
    ) -> None:
        timeout_ms = int(server_selection_timeout * 1000)
        self.client: AsyncMongoClient[Doc] = AsyncMongoClient(
            uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=max(timeout_ms * 4, 10000),
            tz_aware=True,
            appname="taskdash",
            retryWrites=True,
        )
        self.db = self.client[database]
        self.history_ttl_seconds = int(history_ttl_days * 86400)
        self.indexes_ready = False
        #: sessions and tokens verified lately (store/credcache.py), emptied by their changes
        self.credentials = CredentialCache()
        #: listing reads on their way, shared by identical requests (store/flights.py)
        self.flights = Flights(enabled=share_reads)
        #: how every write of a status or window judges it (``[tasks]``; store/task_windows.py)
        self.window_rules = window_rules or Rules(machine_zone())

    def __getitem__(self, name: str) -> AsyncCollection[Doc]:
        return self.db[name]

    @property
    def services(self) -> AsyncCollection[Doc]:
        """TaskService registrations and their heartbeat state (``_id`` = service id)."""
        return self.db["services"]

    @property
    def tasks(self) -> AsyncCollection[Doc]:
        """TaskMetaData harvested from service URLs or registered over TCP, each with its
        TaskManager binding (``_id`` = task id)."""
        return self.db["tasks"]

    @property
    def users(self) -> AsyncCollection[Doc]:
        """Dashboard accounts (``_id`` = user name)."""
        return self.db["users"]

    @property
    def audit(self) -> AsyncCollection[Doc]:
        """Who did what, when (claims, assignments, logins)."""
        return self.db["audit"]

    @property
    def dead_letters(self) -> AsyncCollection[Doc]:
        """Messages that can never succeed, kept with the reason for inspection."""
        return self.db["dead_letters"]

    @property
    def service_events(self) -> AsyncCollection[Doc]:
        """Per-service state-change history (TTL)."""
        return self.db["service_events"]

    @property
    def nodes(self) -> AsyncCollection[Doc]:
        """One heartbeat document per running daemon."""
        return self.db["nodes"]

    async def ping(self, timeout: float | None = None) -> None:
        """Raise StoreUnavailable unless MongoDB answers within ``timeout`` (default: driver's).

        A frozen server accepts nothing and refuses nothing; only a short timeout tells.
        """
        async with translated("ping"):
            if timeout is None:
                await self.client.admin.command("ping")
                return
            with deadline(timeout):
                await self.client.admin.command("ping")

    async def ensure_indexes(self) -> None:
        """Create every index (idempotent; safe with several daemons starting at once)."""
        async with translated("ensure_indexes"):
            for name, models in INDEXES.items():
                await self.db[name].create_indexes(models)
            for ttl in (self.service_events, self.dead_letters, self.db["task_events"]):
                await ttl.create_index(
                    [("expires_at", ASCENDING)], name="ttl", expireAfterSeconds=0
                )
        self.indexes_ready = True
        log.info("store_indexes_ready", collections=len(INDEXES))

    async def ensure_account_indexes(self) -> None:
        """Create the logins' indexes, TTLs included (:data:`ACCOUNT_INDEXES`; idempotent)."""
        async with translated("ensure_account_indexes"):
            for name, models in ACCOUNT_INDEXES.items():
                await self.db[name].create_indexes([*models, ACCOUNT_TTL])

    async def close(self) -> None:
        """Close the client. Idempotent."""
        await self.client.close()
