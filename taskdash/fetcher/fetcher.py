"""The metadata fetcher: fetch this node's share of services every interval and store tasks.

A sweep starts on every interval boundary (and at once when the live nodes change): heartbeat,
read the services that are not offline, keep this node's rendezvous share, claim those that are
due (one conditional update: exactly one daemon per service), fetch them with at most
``concurrency`` requests in flight, and hand the answers to one writer that stores them in
batches. Sweeps do not wait for each other: a slow or dead service keeps only itself busy, the
next sweep starts on time and skips what is still in flight. When a service is due again is
:mod:`.schedule`'s arithmetic; failures back off exponentially, with jitter, in ``fetch_results``
so that it survives a change of daemon.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from taskdash.background import Background
from taskdash.errors import StoreError
from taskdash.fetcher.client import HttpClient
from taskdash.fetcher.errors import FetchError
from taskdash.fetcher.outcome import Outcome, SweepLog, SweepResult, backoff_ms, result_fields
from taskdash.fetcher.parse import parse_listing
from taskdash.fetcher.schedule import hold_until, next_boundary, next_due
from taskdash.fetcher.sharding import share
from taskdash.settings import FetcherSettings
from taskdash.store import Store, nodes
from taskdash.store.mongo import Doc
from taskdash.store.tasks import (
    ApplyResult,
    Known,
    ServiceListing,
    apply_listings,
    claim_due,
    fetchable_services,
    load_known,
    record_conflicts,
    release,
    write_fetch_results,
)
from taskdash.store.times import Clock, to_ms, utcnow

log = structlog.get_logger("taskdash.fetcher")

#: Most answers stored in one batch of writes.
WRITE_BATCH = 500
#: Dead nodes' documents are deleted after this many node timeouts (and at least an hour).
PRUNE_AFTER_TIMEOUTS = 10


@dataclass
class _Claim:
    """What one sweep claimed: its token, when the services are due again, and their state."""

    token: str
    due_ms: int
    services: dict[str, Doc]
    urls: dict[str, str]
    unsettled: set[str] = field(default_factory=set)
    """Claimed and not stored yet: this sweep's part of the fetcher's in-flight set."""

    def settle(self, service_ids: Iterable[str], in_flight: set[str]) -> None:
        """These are stored (or given up): later sweeps may claim them again."""
        done = self.unsettled.intersection(service_ids)
        self.unsettled -= done
        in_flight.difference_update(done)


class Fetcher:
    """Harvests TaskMetaData from every service URL; see the module docstring."""

    def __init__(
        self,
        store: Store,
        settings: FetcherSettings,
        *,
        node_id: str,
        clock: Clock = utcnow,
        rng: random.Random | None = None,
        summary_threshold: int = 20,
    ) -> None:
        self.store = store
        self.settings = settings
        self.node_id = node_id
        self.clock = clock
        self.rng = rng or random.Random()
        self.summary_threshold = summary_threshold
        self.http = HttpClient(settings)
        self.live: list[str] = []
        self.my_share = 0
        self.sweeps = 0
        self.last_sweep: SweepResult | None = None
        self.last_error = ""
        self.on_fetch: Callable[[Outcome], None] | None = None  # the metrics hear every fetch
        self._known: dict[str, tuple[str, Known]] = {}  # service -> (listing token, stored)
        self._plan_lock = asyncio.Lock()  # one sweep at a time reads the share and claims
        self._planning = 0  # sweeps started that have not claimed yet
        self._in_flight: set[str] = set()  # claimed by a sweep of ours, result not stored yet
        self._slots = asyncio.Semaphore(settings.concurrency)  # requests in flight, all sweeps
        self._running: set[asyncio.Task[None]] = set()  # sweeps started by the loop
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = False
        self._sweeper = Background("fetcher", self._sweep_loop)
        self._beater = Background("fetcher_heartbeat", self._heartbeat_loop)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start sweeping in the background (returns at once)."""
        if not self.settings.enabled:
            log.info("fetcher_disabled", node_id=self.node_id)
            return
        if self.settings.node_timeout > self.settings.fetch_interval:
            log.warning(
                "fetcher_node_timeout_long",
                note="a dead daemon's services move after node_timeout + one fetch_interval",
                node_timeout=self.settings.node_timeout,
                fetch_interval=self.settings.fetch_interval,
            )
        await self._beater.start()
        await self._sweeper.start()
        log.info("fetcher_started", node_id=self.node_id, interval=self.settings.fetch_interval)

    async def stop(self, grace: float | None = None) -> None:
        """Stop intake, let in-flight fetches finish briefly, cancel, leave the node set."""
        if self._stopped:
            return
        self._stopped = self._stopping = True
        self._wake.set()
        await self._beater.stop()
        await self._sweeper.stop()
        if grace is None:
            grace = min(self.settings.request_timeout, 5.0)
        await self._finish_sweeps(grace)
        try:
            await nodes.remove(self.store, self.node_id)
        except StoreError as exc:
            log.warning("fetcher_node_not_removed", node_id=self.node_id, error=str(exc))
        self.http.close()
        log.info("fetcher_stopped", node_id=self.node_id)

    async def _finish_sweeps(self, grace: float) -> None:
        """Give running sweeps ``grace`` seconds to store what is in flight, then cancel them.

        Cancelled again every second until they end, like :class:`Background`: one lost
        cancellation must not hang the daemon's stop.
        """
        running = set(self._running)
        if running:
            _, late = await asyncio.wait(running, timeout=grace)
            while late:
                for task in late:
                    task.cancel()
                _, late = await asyncio.wait(late, timeout=1.0)

    def check(self) -> tuple[bool, dict[str, Any]]:
        """Readiness details; the fetcher never blocks readiness (failures are per service)."""
        details: dict[str, Any] = {
            "node_id": self.node_id,
            "live_nodes": len(self.live),
            "my_share": self.my_share,
            "sweeps": self.sweeps,
        }
        if self.last_sweep is not None:
            details["last_sweep"] = self.last_sweep.summary()
        if self._in_flight:
            details["in_flight"] = len(self._in_flight)
        if self.last_error:
            details["error"] = self.last_error
        return True, details

    async def _sweep_loop(self) -> None:
        """Start a sweep at once, then on every boundary or wake-up, never waiting for the last."""
        scheduled: int | None = None
        interval_ms = int(self.settings.fetch_interval * 1000)
        while not self._stopping:
            self._wake.clear()
            self._launch(scheduled)
            now_ms = to_ms(self.clock())
            boundary = next_boundary(now_ms, interval_ms)
            try:
                await asyncio.wait_for(self._wake.wait(), (boundary - now_ms) / 1000)
                scheduled = None  # woken: the share may have grown, sweep what is due now
            except TimeoutError:
                scheduled = boundary

    def _launch(self, scheduled_ms: int | None) -> None:
        """Start one sweep as its own task, unless one is already waiting to claim.

        Two at most (one claiming, one queued): with the store slow or down, sweeps must not
        pile up behind each other, and the queued one claims whatever is due when it runs.
        """
        if self._planning > 1:
            log.debug("fetch_sweep_skipped", node_id=self.node_id, planning=self._planning)
            return
        task = asyncio.create_task(self._guarded_sweep(scheduled_ms), name="fetch_sweep")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _guarded_sweep(self, scheduled_ms: int | None) -> None:
        """One sweep of the loop: a failure is logged (a store outage once), never raised."""
        try:
            await self.sweep(scheduled_ms)
        except StoreError as exc:
            if str(exc) != self.last_error:  # once per outage, not once per interval
                log.error("fetch_sweep_failed", error=str(exc))
            self.last_error = str(exc)
        except Exception as exc:
            log.exception("fetch_sweep_crashed")
            self.last_error = repr(exc)

    async def _heartbeat_loop(self) -> None:
        timeout = self.settings.node_timeout
        keep_ms = int(max(3600.0, timeout * PRUNE_AFTER_TIMEOUTS) * 1000)
        while True:
            await asyncio.sleep(self.settings.node_heartbeat_interval)
            try:
                if await self.heartbeat():
                    self._wake.set()  # the share may have grown: sweep what is still due
                await nodes.prune(self.store, to_ms(self.clock()) - keep_ms)
            except StoreError as exc:
                log.warning("fetcher_heartbeat_failed", node_id=self.node_id, error=str(exc))

    async def heartbeat(self) -> bool:
        """Refresh this node's document and the live node list; True if the list changed."""
        now_ms = to_ms(self.clock())
        await nodes.heartbeat(self.store, self.node_id, now_ms)
        found = await nodes.live_nodes(self.store, now_ms, int(self.settings.node_timeout * 1000))
        live = sorted({*found, self.node_id})
        changed, self.live = live != self.live, live
        if changed:
            log.info("fetch_nodes_changed", node_id=self.node_id, live_nodes=live)
        return changed

    # -- one sweep ------------------------------------------------------------------------

    async def sweep(self, scheduled_ms: int | None = None) -> SweepResult:
        """Fetch every due service of this node's share once; returns when all are stored.

        ``scheduled_ms`` is the interval boundary the loop woke up for (the clock may read a
        little earlier or later); without it the sweep counts from now, as after a wake-up.
        """
        started = time.perf_counter()
        self._planning += 1
        try:
            async with self._plan_lock:
                result = SweepResult(started_at=self.clock())
                claim = await self._plan(result, scheduled_ms)
        finally:
            self._planning -= 1
        if claim.services:
            events = SweepLog()
            try:
                await self._run(claim, result, events)
            finally:
                events.emit(self.summary_threshold)
        result.seconds = time.perf_counter() - started
        self.last_error = result.error  # a sweep that stored everything clears the last error
        self.sweeps += 1
        self.last_sweep = result
        log.debug("fetch_sweep_done", **result.summary())
        return result

    async def _plan(self, result: SweepResult, scheduled_ms: int | None) -> _Claim:
        """Find this node's share and claim what is due and not still in flight here."""
        await self.heartbeat()
        now_ms = to_ms(result.started_at)
        base_ms = now_ms if scheduled_ms is None else scheduled_ms
        now_ms = max(now_ms, base_ms)  # a timer that fired a little early still claims its due
        services = dict(await fetchable_services(self.store))
        mine = share(sorted(services), self.live, self.node_id)
        if len(mine) != self.my_share:
            log.info("fetch_share_changed", node_id=self.node_id, my_share=len(mine))
        self.my_share = len(mine)
        result.live_nodes, result.share = len(self.live), len(mine)
        keep = set(mine)
        self._known = {sid: entry for sid, entry in self._known.items() if sid in keep}
        with_url = [sid for sid in mine if services[sid]]
        result.no_url = len(mine) - len(with_url)
        idle = [sid for sid in with_url if sid not in self._in_flight]
        result.in_flight = len(with_url) - len(idle)
        due_ms = next_due(base_ms, int(self.settings.fetch_interval * 1000))
        token = uuid.uuid4().hex
        until_ms = hold_until(self.settings, now_ms, due_ms)
        claimed = await claim_due(self.store, idle, now_ms=now_ms, until_ms=until_ms, token=token)
        self._in_flight.update(claimed)
        result.claimed = len(claimed)
        urls = {sid: services[sid] for sid in claimed}
        return _Claim(token, due_ms, claimed, urls, unsettled=set(claimed))

    async def _run(self, claim: _Claim, result: SweepResult, events: SweepLog) -> None:
        """Fetch with a bounded pool of workers; one writer stores what they bring."""
        pending = deque(claim.services.items())
        queue: asyncio.Queue[Outcome | None] = asyncio.Queue(maxsize=WRITE_BATCH * 2)

        async def worker() -> None:
            while pending and not self._stopping:
                async with self._slots:  # shared with the other sweeps still running
                    if not pending or self._stopping:
                        return
                    sid, state = pending.popleft()
                    outcome = await self._fetch_one(sid, claim.urls[sid], state)
                await queue.put(outcome)

        size = min(self.settings.concurrency, len(pending))
        workers = [asyncio.create_task(worker()) for _ in range(size)]
        writer = asyncio.create_task(self._writer(queue, claim, result, events))
        try:
            await asyncio.gather(*workers)
            await queue.put(None)
            await writer
            if pending:  # stopping: give back what was claimed but not fetched
                await release(self.store, [sid for sid, _ in pending], claim.token)
        finally:
            for task in (*workers, writer):
                task.cancel()
            claim.settle(claim.services, self._in_flight)

    async def _fetch_one(self, service_id: str, url: str, state: Doc) -> Outcome:
        """Fetch and parse one service; every failure ends up in the outcome, never raised."""
        outcome = Outcome(service_id, url, state, to_ms(self.clock()))
        started = time.perf_counter()
        same_url = state.get("validator_url") == url
        try:
            outcome.response = await self.http.fetch(
                url,
                service_id=service_id,
                etag=state.get("etag", "") if same_url else "",
                last_modified=state.get("last_modified", "") if same_url else "",
            )
            if outcome.response.status != 304:
                outcome.listing = parse_listing(outcome.response.body)
        except FetchError as exc:
            if exc.status is None and outcome.response is not None:
                exc.status = outcome.response.status
            outcome.error = exc
        except Exception as exc:  # a bug must cost one service its fetch, not the sweep
            log.exception("fetch_crashed", service_id=service_id, url=url)
            outcome.error = FetchError(f"internal error: {exc!r}", reason="internal")
        outcome.duration_ms = (time.perf_counter() - started) * 1000
        if self.on_fetch is not None:
            self.on_fetch(outcome)
        return outcome

    # -- storing --------------------------------------------------------------------------

    async def _writer(
        self, queue: asyncio.Queue[Outcome | None], claim: _Claim, result: SweepResult,
        events: SweepLog,
    ) -> None:  # fmt: skip
        """Store outcomes in batches of whatever has arrived, until the end marker."""
        while True:
            item = await queue.get()
            batch: list[Outcome] = []
            while item is not None:
                batch.append(item)
                if queue.empty() or len(batch) >= WRITE_BATCH:
                    break
                item = queue.get_nowait()
            if batch:
                await self._store_batch(batch, claim, result, events)
            if item is None:
                return

    async def _store_batch(
        self, batch: list[Outcome], claim: _Claim, result: SweepResult, events: SweepLog
    ) -> None:
        """Write one batch; a failure is logged and never stops the writer (workers would block)."""
        try:
            await self._write(batch, claim, result, events)
        except Exception as exc:
            if isinstance(exc, StoreError):
                log.error("fetch_results_not_stored", services=len(batch), error=str(exc))
            else:
                log.exception("fetch_results_crashed", services=len(batch))
            result.error = str(exc)
            for outcome in batch:
                self._known.pop(outcome.service_id, None)
        finally:  # its result is stored (or the claim's hold will expire): fetchable again
            claim.settle([o.service_id for o in batch], self._in_flight)

    async def _write(
        self, batch: list[Outcome], claim: _Claim, result: SweepResult, events: SweepLog
    ) -> None:
        now_ms = to_ms(self.clock())
        token = claim.token
        listed = [o for o in batch if o.listing is not None and o.error is None]
        applied = ApplyResult()
        if listed:
            try:
                applied = await self._apply(listed, token, now_ms)
            except StoreError as exc:
                log.error("fetch_tasks_not_stored", services=len(listed), error=str(exc))
                result.error = str(exc)
                for outcome in listed:
                    outcome.store_error = f"store failed: {exc}"
                    self._known.pop(outcome.service_id, None)
        conflicts = Counter(c.service_id for c in applied.conflicts)
        fields: dict[str, Doc] = {}
        for o in batch:
            retry_ms = claim.due_ms
            if o.error is not None:
                failures = int(o.state.get("failures") or 0) + 1
                retry_ms = max(retry_ms, o.at_ms + backoff_ms(self.settings, failures, self.rng))
            events.add(o, retry_ms)
            fields[o.service_id] = result_fields(
                o,
                node_id=self.node_id,
                conflicts=conflicts[o.service_id],
                token=token,
                now_ms=now_ms,
                retry_ms=retry_ms,
            )
        try:
            await write_fetch_results(self.store, fields)
        except StoreError:
            for outcome in listed:
                self._known.pop(outcome.service_id, None)
            raise
        for sid, known in applied.known.items():
            if sid in applied.stale:
                self._known.pop(sid, None)
            else:
                self._known[sid] = (token, known)
        result.add(batch, applied)

    async def _apply(self, listed: list[Outcome], token: str, now_ms: int) -> ApplyResult:
        """Diff against what is stored (cache, else MongoDB), write, record conflicts."""
        # taken before the first await: an overlapping sweep's plan may prune the cache meanwhile
        cached = {o.service_id: known for o in listed if (known := self._cached(o)) is not None}
        cold = [o.service_id for o in listed if o.service_id not in cached]
        loaded = await load_known(self.store, cold) if cold else {}
        listings = []
        for o in listed:
            assert o.listing is not None
            known = cached[o.service_id] if o.service_id in cached else loaded[o.service_id]
            listings.append(
                ServiceListing(o.service_id, o.listing.tasks, known, o.listing.still_listed)
            )
        applied = await apply_listings(self.store, listings, now_ms)
        listed_ids = [o.service_id for o in listed]
        for c in await record_conflicts(self.store, applied.conflicts, listed_ids, now_ms, token):
            log.error(
                "task_id_conflict",
                task_id=c.task_id,
                service_id=c.service_id,
                owner_service_id=c.owner_service_id,
                note="the task keeps its owner; the other service's record is ignored",
            )
        return applied

    def _cached(self, outcome: Outcome) -> Known | None:
        """What is stored, from our cache: valid iff the last listing stored was ours."""
        entry = self._known.get(outcome.service_id)
        if entry is None or entry[0] != outcome.state.get("listing"):
            return None
        return entry[1]
