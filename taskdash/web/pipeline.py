"""The Pipeline page's figures: what NSQ holds, and what TaskDash does with it.

What an nsqadmin user looks at first (each nsqd's topics and channels: depth, in flight),
next to what this daemon's readers did with the messages (received, stored, absorbed,
requeued, dead-lettered, with rates over the last minutes), the checker's mode, the fetcher's
last sweep and the other daemons sharing the store.

The running components are handed over by the daemon in ``WebContext.extra["pipeline"]`` (a
:class:`Pipeline`), never looked up globally; a component that is absent is not running in
this process and its part of the page says so. Components are seen through their public
``check()`` (the same figures as ``/readyz``), so the web layer imports none of them.

Each nsqd is asked over its own HTTP API (``/stats?format=json``), with a short timeout and a
bounded answer: only addresses the daemon was configured with, or that a configured
nsqlookupd lists as producers (``/nodes``), are ever fetched.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import tornado.httpclient

from taskdash.background import Background
from taskdash.store import Store, nodes

#: The reader figures the page shows, in order; ``absorbed`` is the heartbeat reader's
#: beats finished without a write of their own (see taskdash/nsq/readers.py).
READER_FIELDS = ("received", "stored", "absorbed", "requeued", "dead_lettered")
#: Rate windows shown (seconds).
WINDOWS = (60, 300)
#: How often the rate ring takes a sample, and how many it keeps (a little over 5 minutes).
SAMPLE_EVERY = 5.0
RING_SIZE = 64
#: One nsqd or nsqlookupd answer: how long to wait and how much to read at most.
NSQ_TIMEOUT = 2.0
NSQ_MAX_BODY = 4 * 1024 * 1024

Details = dict[str, Any]


class Checked(Protocol):
    """A running component: its readiness and details, as ``/readyz`` shows them."""

    def check(self) -> tuple[bool, Details]: ...


class Reader(Checked, Protocol):
    """An NSQ reader (taskdash.nsq.consumer.Consumer), seen from the page."""

    topic: str
    channel: str


def reader_counts(details: Details) -> dict[str, int]:
    """A reader's counters from its readiness details (absorbed beats are an extra)."""
    counts = {name: int(details.get(name) or 0) for name in READER_FIELDS}
    counts["absorbed"] = int(details.get("absorbed_heartbeats") or 0)
    return counts


@dataclass(frozen=True)
class Sample:
    """Every reader's counters at one moment (monotonic seconds)."""

    at: float
    counts: dict[str, dict[str, int]]


class RateRing:
    """The last few samples of the readers' counters, for rates over the last minutes.

    A rate over a window compares the newest counters with the oldest sample inside the
    window, over the time between them; while the ring holds less than the window (a daemon
    just started) the rate covers what it has and says over how long (``span``).
    """

    def __init__(self, size: int = RING_SIZE) -> None:
        self.samples: deque[Sample] = deque(maxlen=size)

    def add(self, at: float, counts: dict[str, dict[str, int]]) -> None:
        """Keep one sample (the oldest drops out once the ring is full)."""
        self.samples.append(Sample(at, counts))

    def rates(
        self, topic: str, now: float, counts: dict[str, int], window: float
    ) -> tuple[float, dict[str, float]] | None:
        """(span in seconds, per-second rate of each counter) over ``window``, or None.

        None while no sample of ``topic`` lies inside the window at least a second before
        ``now``: one point gives no rate.
        """
        base = next((s for s in self.samples if s.at >= now - window and topic in s.counts), None)
        if base is None or now - base.at < 1.0:
            return None
        span = now - base.at
        before = base.counts[topic]
        return span, {k: max(v - before.get(k, 0), 0) / span for k, v in counts.items()}


@dataclass
class Pipeline:
    """What the daemon hands to the Pipeline page; filled in as its parts start.

    ``sample()`` runs every ``sample_every`` seconds once started (a component like any
    other: ``start()`` and an idempotent ``stop()``), so rates exist before anyone opens the
    page.
    """

    node_id: str = ""
    readers: list[Reader] = field(default_factory=list)
    checker: Checked | None = None
    fetcher: Checked | None = None
    #: nsqd HTTP addresses from the configuration (or the embedded broker's)
    nsqd_http: list[str] = field(default_factory=list)
    #: nsqlookupd HTTP addresses: every producer they list is asked for its stats too
    lookupd_http: list[str] = field(default_factory=list)
    ring: RateRing = field(default_factory=RateRing)
    sample_every: float = SAMPLE_EVERY
    clock: Callable[[], float] = time.monotonic
    _sampler: Background | None = field(default=None, init=False, repr=False)
    _http: tornado.httpclient.AsyncHTTPClient | None = field(default=None, init=False, repr=False)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Sample the readers' counters in the background."""
        self._sampler = Background("pipeline_rates", self._sample_loop)
        await self._sampler.start()

    async def stop(self) -> None:
        """Stop sampling and close the HTTP client. Idempotent."""
        if self._sampler is not None:
            await self._sampler.stop()
        if self._http is not None:
            self._http.close()
            self._http = None

    async def _sample_loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.sample_every)

    def sample(self) -> None:
        """Keep the readers' counters now, for the rates."""
        counts = {r.topic: reader_counts(r.check()[1]) for r in self.readers}
        self.ring.add(self.clock(), counts)

    # -- what the page shows ---------------------------------------------------------------

    def reader_rows(self) -> list[Details]:
        """Each reader: topic, channel, readiness, counters, and rates per window."""
        now = self.clock()
        rows = []
        for reader in self.readers:
            ready, details = reader.check()
            counts = reader_counts(details)
            rates = {}
            for window in WINDOWS:
                found = self.ring.rates(reader.topic, now, counts, window)
                rates[window] = None if found is None else {"span": found[0], "per_s": found[1]}
            rows.append(
                {
                    "topic": reader.topic,
                    "channel": reader.channel,
                    "ready": ready,
                    "reason": details.get("reason", ""),
                    "connections": details.get("connections", 0),
                    "in_flight": details.get("in_flight", 0),
                    "counts": counts,
                    "rates": rates,
                }
            )
        return rows

    def checker_view(self) -> Details | None:
        """The checker's mode (and why), passes, last pass time, watching since; None if off."""
        return None if self.checker is None else self.checker.check()[1]

    def fetcher_view(self) -> Details | None:
        """The fetcher's share and its last sweep; None if the fetcher is off."""
        return None if self.fetcher is None else self.fetcher.check()[1]

    def _client(self) -> tornado.httpclient.AsyncHTTPClient:
        if self._http is None:
            self._http = tornado.httpclient.AsyncHTTPClient(
                force_instance=True, max_body_size=NSQ_MAX_BODY
            )
        return self._http

    async def _get_json(self, url: str) -> Any:
        """GET ``url`` within :data:`NSQ_TIMEOUT`; ValueError with a short reason on failure."""
        try:
            response = await self._client().fetch(
                url,
                connect_timeout=NSQ_TIMEOUT,
                request_timeout=NSQ_TIMEOUT,
                follow_redirects=False,
                raise_error=False,
            )
        except OSError as exc:  # refused, unreachable, name not resolved
            raise ValueError(f"unreachable: {exc.strerror or exc}") from None
        if response.code == 599:
            raise ValueError(f"unreachable: {response.error}")
        if response.code != 200:
            raise ValueError(f"HTTP {response.code}")
        try:
            return json.loads(response.body)
        except ValueError:
            raise ValueError("not JSON") from None

    async def nsqd_addresses(self) -> tuple[list[str], list[Details]]:
        """Configured nsqd addresses plus every producer the lookupds list; lookupd errors."""
        found = list(dict.fromkeys(self.nsqd_http))
        errors: list[Details] = []
        for lookupd in self.lookupd_http:
            try:
                body = await self._get_json(f"{lookupd.rstrip('/')}/nodes")
                found.extend(producer_addresses(body))
            except ValueError as exc:
                errors.append({"address": lookupd, "error": str(exc)})
        return list(dict.fromkeys(found)), errors

    async def nsqd_rows(self) -> list[Details]:
        """Each nsqd's topics and channels from its ``/stats``, fetched concurrently."""
        addresses, errors = await self.nsqd_addresses()
        rows = await asyncio.gather(*(self._nsqd_row(a) for a in addresses))
        return [*errors, *rows]

    async def _nsqd_row(self, address: str) -> Details:
        url = f"{address.rstrip('/')}/stats?format=json&include_clients=false&include_mem=false"
        try:
            return {"address": address, "topics": topic_rows(await self._get_json(url))}
        except ValueError as exc:
            return {"address": address, "error": str(exc)}


def producer_addresses(body: Any) -> list[str]:
    """nsqlookupd ``/nodes`` -> each producer's nsqd HTTP address (``http://host:port``)."""
    out = []
    for producer in (body or {}).get("producers") or []:
        host, port = producer.get("broadcast_address"), producer.get("http_port")
        if isinstance(host, str) and host and isinstance(port, int) and 0 < port < 65536:
            out.append(f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
    return out


_CHANNEL_KEYS = (
    "depth", "in_flight_count", "deferred_count", "requeue_count", "timeout_count",
    "message_count", "client_count",
)  # fmt: skip


def topic_rows(stats: Any) -> list[Details]:
    """nsqd ``/stats?format=json`` -> topics (name, depth, messages) and their channels."""
    rows = []
    for topic in (stats or {}).get("topics") or []:
        channels = [
            {
                "name": str(ch.get("channel_name", "")),
                **{k: int(ch.get(k) or 0) for k in _CHANNEL_KEYS},
            }
            for ch in topic.get("channels") or []
        ]
        rows.append(
            {
                "name": str(topic.get("topic_name", "")),
                "depth": int(topic.get("depth") or 0),
                "message_count": int(topic.get("message_count") or 0),
                "channels": channels,
            }
        )
    return rows


async def node_rows(
    store: Store, *, node_id: str, now_ms: int, live_within_ms: int
) -> list[Details]:
    """The daemons sharing the store (``nodes``): this one marked, each live or not."""
    rows = []
    for doc in await nodes.all_nodes(store):
        seen = int(doc.get("seen_at") or 0)
        rows.append(
            {
                "id": doc["_id"],
                "this": doc["_id"] == node_id,
                "live": now_ms - seen <= live_within_ms,
                "seen_at": seen,
                "started_at": int(doc.get("started_at") or 0),
            }
        )
    return rows
