"""What each request does to the store, and the reply frame it gets.

Register and Update write the task under the ownership rule (``store.tasks``), then the
seed's TaskManager binding in the same document (``store.assignments``, source "tcp"); Find
reads both with one query, through the read cache (:mod:`taskdash.tcp.cache`). Every write
invalidates the task's cache entry, so a client that writes then reads sees its write. Any
store failure is errid 1001: the request may be partly applied, and both writes are
idempotent, so the client's retry completes it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

import structlog

from taskdash.errors import StoreError
from taskdash.logs import RateLimitedLog
from taskdash.store import Store
from taskdash.store.assignments import set_assignment
from taskdash.store.tasks import HARVESTED, WINDOW, TcpWrite, write_registered
from taskdash.store.times import to_ms, utcnow
from taskdash.tcp.cache import MISS, Fields, FindCache
from taskdash.tcp.lookup import FindBatcher
from taskdash.tcp.requests import (
    REQUESTS,
    UNKNOWN,
    BadRequest,
    ErrId,
    FindBody,
    Request,
    TaskRecord,
    reply,
)

log = structlog.get_logger("taskdash.tcp")

Now = Callable[[], int]


def _now_ms() -> int:
    return to_ms(utcnow())


class RequestHandler:
    """Turns one decoded request into its reply frame; never raises for a client's input."""

    def __init__(
        self, store: Store, cache: FindCache, *, now_ms: Now = _now_ms, lookback: float = 5.0
    ) -> None:
        self.store = store
        self.now_ms = now_ms
        self.finder = FindBatcher(store, cache, now_ms=now_ms, lookback=lookback)
        self.store_failures = 0
        #: replies by (request, errid); a name outside REQUESTS counts as Unknown (bounded)
        self.replies: Counter[tuple[str, int]] = Counter()
        self._bad_log = RateLimitedLog(log, "tcp_bad_request")
        self._store_log = RateLimitedLog(log, "tcp_store_failed")
        self._ignored_log = RateLimitedLog(log, "tcp_owned_fields_ignored")

    def answer_now(self, request: Request | BadRequest, peer: str) -> bytes | None:
        """The reply if it needs no store (a bad request, a Find the cache holds), else None."""
        if isinstance(request, BadRequest):
            return self._bad(request, peer)
        if isinstance(request.body, FindBody):
            cached = self.finder.cache.get(request.id, count_miss=False)
            if cached is not MISS:
                return self._found(request, cached)
        return None

    def _bad(self, request: BadRequest, peer: str) -> bytes:
        self._bad_log(peer=peer, request=request.name, reason=request.reason[:200])
        return self._reply(request.name, request.message_id, request.task_id, ErrId.BAD_REQUEST)

    async def handle(self, request: Request | BadRequest, peer: str) -> bytes:
        """The reply to ``request`` (errid 1000 for a bad one, 1001 if the store failed)."""
        if isinstance(request, BadRequest):
            return self._bad(request, peer)
        try:
            if isinstance(request.body, FindBody):
                return await self._find(request)
            try:
                return await self._write(request, request.body, peer)
            finally:  # also after a failure: a 1001 may have applied part of the write
                self.finder.invalidate(request.id)
        except StoreError as exc:
            self.store_failures += 1
            self._store_log(peer=peer, request=request.name, task_id=request.id, error=str(exc))
            return self._reply(request.name, request.message_id, request.id, ErrId.STORE_FAILED)

    def _reply(
        self, name: str, message_id: int, task_id: str, errid: ErrId,
        fields: Mapping[str, str] | None = None,
    ) -> bytes:  # fmt: skip
        """:func:`reply`, counted (the metrics' requests by type and errid)."""
        self.replies[name if name in REQUESTS else UNKNOWN, int(errid)] += 1
        return reply(name, message_id, task_id, errid, fields)

    async def _find(self, request: Request) -> bytes:
        return self._found(request, await self.finder.find(request.id))

    def _found(self, request: Request, fields: Fields | None) -> bytes:
        if fields is None:
            return self._reply(request.name, request.message_id, request.id, ErrId.NO_SUCH_TASK)
        return self._reply(request.name, request.message_id, request.id, ErrId.OK, fields)

    async def _write(self, request: Request, record: TaskRecord, peer: str) -> bytes:
        now = self.now_ms()
        written = await write_registered(
            self.store,
            record.id,
            record.given(HARVESTED),
            record.given(WINDOW),
            create=request.name == "Register",
            now_ms=now,
        )
        if written.outcome == "missing":
            return self._reply(request.name, request.message_id, record.id, ErrId.NO_SUCH_TASK)
        binding = record.given(("user", "group_id"))
        if binding:
            await self._bind(record.id, binding, now, peer)
        self._log_write(request, written, peer)
        return self._reply(request.name, request.message_id, record.id, ErrId.OK)

    async def _bind(self, task_id: str, binding: dict[str, str], now: int, peer: str) -> None:
        """Set the TaskManager binding; a key not sent keeps its stored value.

        The task exists: it was written just before (a task deleted in between does not
        happen: tasks are marked gone, never deleted).
        """
        await set_assignment(
            self.store,
            task_id,
            user=binding.get("user"),
            group_id=binding.get("group_id"),
            source="tcp",
            by=f"tcp:{peer}",
            now_ms=now,
        )

    def _log_write(self, request: Request, written: TcpWrite, peer: str) -> None:
        if written.ignored:
            self._ignored_log(
                peer=peer,
                request=request.name,
                task_id=request.id,
                owner_service_id=written.owner,
                fields=list(written.ignored),
                note="the owning service's fetch writes these; the window and binding applied",
            )
        log.debug("tcp_task_written", request=request.name, task_id=request.id, **vars(written))
