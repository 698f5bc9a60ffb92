"""Publishes recorded service state changes to NSQ (``taskdash.service_status``).

An outbox: events are stored first (by the checker), then claimed, sent with nsqd's HTTP
``/mpub`` and marked published. A broker that is away delays events, never loses them; a daemon
that dies after sending and before marking may send an event twice (at-least-once, like NSQ).

A claim is a lease (``lease`` seconds) that keeps other daemons off a batch while it is being
sent. A batch whose send failed is still ours until the lease ends: it is sent again first, as
it is, so a broker that comes back gets it at once rather than after the lease. Once too little
of the lease is left to finish a request, the batch is let go and claimed anew when it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from typing import Any

import structlog
import tornado.httpclient

from taskdash.background import Background
from taskdash.errors import StoreError
from taskdash.nsq.tls import client_context
from taskdash.settings import NsqSettings
from taskdash.store import Store
from taskdash.store.status import claim_unpublished, mark_published
from taskdash.store.times import Clock, to_ms, utcnow

log = structlog.get_logger("taskdash.nsq.publisher")


def https_context(settings: NsqSettings, nsqd_http: str) -> ssl.SSLContext | None:
    """For an https:// nsqd: [nsq]'s CA, client certificate and name check, as the readers'."""
    if not nsqd_http.startswith("https://"):
        return None
    return client_context(**settings.tls_files())


def status_message(event: dict[str, Any]) -> bytes:
    """The JSON body other systems receive for one state change."""
    return json.dumps(
        {
            "id": event["service_id"],
            "from": event["from"],
            "to": event["to"],
            "at": event["at"].isoformat(),
            "reason": event["reason"],
            "node": event["node"],
        },
        ensure_ascii=False,
    ).encode()


class StatusPublisher:
    """Drains the outbox on demand (:meth:`kick`) and every ``interval`` seconds."""

    #: Seconds one ``/mpub`` may take (connecting included); a held batch needs this much lease.
    request_timeout = 10.0

    def __init__(
        self,
        store: Store,
        *,
        nsqd_http: str,
        topic: str,
        interval: float = 2.0,
        batch: int = 500,
        lease: float = 30.0,
        clock: Clock = utcnow,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.store = store
        self.url = f"{nsqd_http.rstrip('/')}/mpub?topic={topic}"
        self.interval = interval
        self.batch = batch
        self.lease = lease
        self.clock = clock
        self.tls = tls  # for an https:// nsqd (https_context); None: the system's defaults
        self.published = 0
        self.last_error = ""
        self._held: list[dict[str, Any]] = []  # claimed by us, send failed: retried first
        self._kick = asyncio.Event()
        self._loop_task = Background("status_publisher", self._loop)
        self._client = tornado.httpclient.AsyncHTTPClient()

    async def kick(self) -> None:
        """New events were recorded: publish soon."""
        self._kick.set()

    async def publish_pending(self) -> int:
        """Publish what is waiting; returns how many events went out."""
        sent = 0
        while True:
            events = await self._next_batch()
            if not events:
                return sent
            self._held = events
            body = b"\n".join(status_message(e) for e in events)
            await self._client.fetch(
                self.url,
                method="POST",
                body=body,
                request_timeout=self.request_timeout,
                connect_timeout=self.request_timeout / 2,
                ssl_options=self.tls,
            )
            self._held = []
            await mark_published(self.store, [e["_id"] for e in events])
            sent += len(events)
            self.published += len(events)

    async def _next_batch(self) -> list[dict[str, Any]]:
        """The batch whose send failed while its lease still covers a request, else a new claim."""
        now = self.clock()
        if self._held:
            lease_left_ms = min(e["claim_until"] for e in self._held) - to_ms(now)
            if lease_left_ms > self.request_timeout * 1000:
                return self._held
            self._held = []  # others may claim it once the lease ends; so may we
        return await claim_unpublished(self.store, now, lease=self.lease, limit=self.batch)

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.interval)
            self._kick.clear()
            try:
                await self.publish_pending()
                if self.last_error:
                    log.info("status_publishing_resumed")
                self.last_error = ""
            except (StoreError, OSError, tornado.httpclient.HTTPError) as exc:
                if not self.last_error:
                    log.error("status_publish_failed", error=str(exc), url=self.url)
                self.last_error = str(exc)
            except Exception as exc:  # a bug must not end publishing for the daemon's lifetime
                log.exception("status_publish_crashed", url=self.url)
                self.last_error = repr(exc)

    def check(self) -> tuple[bool, dict[str, Any]]:
        """Readiness details; a broker outage delays events but does not make us unready."""
        details: dict[str, Any] = {"published": self.published}
        if self.last_error:
            details["error"] = self.last_error
        return True, details

    async def start(self) -> None:
        """Start draining in the background."""
        await self._loop_task.start()

    async def stop(self) -> None:
        """Stop. Idempotent; unpublished events stay in the outbox for the next start."""
        await self._loop_task.stop()
