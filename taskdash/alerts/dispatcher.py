"""The daemon's alerts part: new state changes -> events -> deliveries -> HTTP attempts.

Every daemon with webhooks runs one; they share the work through the store without a lock
server: events and deliveries are claimed with conditional updates and a lease
(:mod:`taskdash.store.alerts`), so each attempt is made by exactly one daemon, and a daemon
that dies mid-attempt only delays it by ``claim_lease``. A receiver may still get a delivery
twice (an answer lost on the way back is retried): delivery is at least once, and each
carries its event ``id`` to deduplicate on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from taskdash.alerts import intake, payloads, windows
from taskdash.alerts.fanout import FanOut
from taskdash.alerts.sender import DELIVERED, FAILED, REFUSED, RETRY, Result, Sender
from taskdash.background import Background, store_round
from taskdash.fetcher.rules import Rules
from taskdash.settings import AlertsSettings, WebhookSettings
from taskdash.store import Store
from taskdash.store import alerts as outbox
from taskdash.store.mongo import Doc
from taskdash.store.times import Clock, to_ms, utcnow

log = structlog.get_logger("taskdash.alerts")

#: delivery state after an attempt's outcome (a retry that has attempts left stays pending)
FINAL = {DELIVERED: outbox.DELIVERED, FAILED: outbox.FAILED, REFUSED: outbox.REFUSED}


def backoff_ms(settings: AlertsSettings, attempt: int) -> int:
    """Wait after failed attempt number ``attempt`` (1-based): doubling, capped."""
    seconds = settings.backoff_initial * 2 ** min(attempt - 1, 32)
    return int(min(seconds, settings.backoff_max) * 1000)


class Dispatcher:
    """Runs :meth:`once` every ``poll_interval``."""

    def __init__(
        self,
        store: Store,
        settings: AlertsSettings,
        rules: Rules,
        *,
        node_id: str,
        clock: Clock = utcnow,
    ) -> None:
        self.store = store
        self.settings = settings
        self.node_id = node_id
        self.clock = clock
        self.hooks = {hook.name: hook for hook in settings.webhooks}
        self.secrets = {hook.name: hook.signing_secret() for hook in settings.webhooks}
        self.sender = Sender(settings, rules)
        self.fan_out = FanOut(store, settings)
        self.counts = {DELIVERED: 0, RETRY: 0, FAILED: 0, REFUSED: 0}
        self.last_error = ""
        #: hears every attempt's webhook and result (the metrics)
        self.on_attempt: Callable[[str, Result], None] | None = None
        self._indexes = False
        self._limit = asyncio.Semaphore(settings.concurrency)
        self._loop_task = Background("alerts", self._loop)

    async def once(self) -> int:
        """One round: intake, fan-out, attempts of what is due; how many attempts were made."""
        if not self._indexes:
            await outbox.ensure_indexes(self.store)
            self._indexes = True
        now = to_ms(self.clock())
        await intake.service_changes(self.store, self.settings, now)
        await windows.window_changes(self.store, self.settings, now)
        await self.fan_out.once(now)
        until = now + int(self.settings.claim_lease * 1000)
        claimed = await outbox.claim_deliveries(
            self.store, now, until, self.settings.batch_size, list(self.hooks)
        )
        await asyncio.gather(*(self._attempt(d) for d in claimed))
        return len(claimed)

    async def _attempt(self, delivery: Doc) -> None:
        async with self._limit:
            hook = self.hooks[delivery["webhook"]]
            if delivery["kind"] == payloads.SUMMARY:
                await self._write_summary(delivery)
            number = delivery["attempts"]
            result = await self.sender.post(
                hook.url,
                payloads.body(hook.format, delivery),
                secret=self.secrets[hook.name],
                headers={
                    "X-TaskDash-Event": delivery["kind"],
                    "X-TaskDash-Delivery": delivery["_id"],
                    "X-TaskDash-Attempt": str(number),
                },
                now=time.time(),
            )
            await self._settle(delivery, hook, number, result)

    async def _write_summary(self, delivery: Doc) -> None:
        """A summary says how many its window held back, once the window is over."""
        details = delivery["details"]
        window = await outbox.window(self.store, details["window"]) or {}
        details["suppressed"] = max(0, int(window.get("count", 0)) - details["limit"])
        details["last_kind"] = window.get("last_kind", "")
        details["last_title"] = window.get("last_title", "")
        delivery["title"] = payloads.title(payloads.SUMMARY, delivery["subject"], details)

    async def _settle(
        self, delivery: Doc, hook: WebhookSettings, number: int, result: Result
    ) -> None:
        now = to_ms(self.clock())
        due: int | None = None
        if result.outcome == RETRY and number <= self.settings.retries:
            state, due = outbox.PENDING, now + backoff_ms(self.settings, number)
        else:
            state = FINAL.get(result.outcome, outbox.FAILED)
        self.counts[result.outcome] += 1
        if self.on_attempt is not None:
            self.on_attempt(hook.name, result)
        await outbox.record_attempt(
            self.store,
            {
                "delivery": delivery["_id"],
                "event": delivery["event"],
                "webhook": hook.name,
                "subject": delivery["subject"],
                "attempt": number,
                "outcome": result.outcome,
                "code": result.code,
                "error": result.error,
                "at": now,
                "ms": round(result.seconds * 1000, 1),
                "node": self.node_id,
            },
            self.settings.keep_days,
        )
        kept = await outbox.settle_delivery(
            self.store,
            delivery,
            state=state,
            due=due,
            code=result.code,
            error=result.error,
            now=now,
        )
        event = "alert_delivered" if result.outcome == DELIVERED else "alert_attempt_failed"
        (log.info if result.outcome == DELIVERED else log.warning)(
            event,
            delivery=delivery["_id"],
            webhook=hook.name,
            subject=delivery["subject"],
            kind=delivery["kind"],
            attempt=number,
            state=state,
            code=result.code,
            error=result.error or None,
            lost_claim=not kept or None,
        )

    def check(self) -> tuple[bool, dict[str, Any]]:
        """Readiness details: attempts by outcome since start, the last store error."""
        details: dict[str, Any] = {"webhooks": len(self.hooks), "attempts": dict(self.counts)}
        if self.last_error:
            details["error"] = self.last_error
        return True, details

    async def _loop(self) -> None:
        while True:
            self.last_error = await store_round(
                self.once,
                self.last_error,
                logger=log,
                failed="alerts_round_failed",
                crashed="alerts_round_crashed",
            )
            await asyncio.sleep(self.settings.poll_interval)

    async def start(self) -> None:
        """Start in the background."""
        await self._loop_task.start()

    async def stop(self) -> None:
        """Stop; an attempt in flight is abandoned (its claim runs out). Idempotent."""
        await self._loop_task.stop()
        self.sender.close()
