"""A channel: queued, in-flight and deferred messages, their timers, delivery to consumers."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from taskdash.nsq.broker.message import Message
from taskdash.nsq.broker.protocol import is_ephemeral

log = structlog.get_logger("taskdash.nsq.broker")


class MessageStateError(Exception):
    """FIN/REQ/TOUCH named a message this client does not hold (nsqd's wording as text)."""


class Consumer(Protocol):
    """What a channel needs from a subscribed connection."""

    id: int

    @property
    def msg_timeout(self) -> float:
        """Seconds a delivered message may stay in flight."""
        ...

    @property
    def sample_rate(self) -> int:
        """0 = every message, else the IDENTIFY sample_rate (1..99)."""
        ...

    def ready_for_message(self) -> bool:
        """True while the client's in-flight count is below its RDY."""
        ...

    def send_message(self, msg: Message) -> None:
        """Write the message frame and count it in flight."""
        ...

    def timed_out(self) -> None:
        """One of the client's messages went back to the queue on timeout."""
        ...

    def close(self) -> None:
        """Drop the connection (the channel is being deleted)."""
        ...

    def stats(self, topic: str) -> dict[str, Any]:
        """nsqd's ClientV2Stats for /stats."""
        ...


class Channel:
    """Each message goes to one ready consumer; unfinished ones come back on REQ or timeout."""

    def __init__(
        self,
        topic_name: str,
        name: str,
        *,
        max_msg_timeout: float,
        on_empty: Callable[[Channel], None],
    ) -> None:
        self.topic_name = topic_name
        self.name = name
        self.ephemeral = is_ephemeral(name)
        self.queue: deque[Message] = deque()
        self.in_flight: dict[bytes, Message] = {}
        self.deferred: dict[bytes, Message] = {}
        self.clients: dict[int, Consumer] = {}
        self.message_count = 0
        self.requeue_count = 0
        self.timeout_count = 0
        self.closed = False
        self._max_msg_timeout = max_msg_timeout
        self._on_empty = on_empty
        self._heap: list[tuple[float, int, bytes]] = []
        self._tokens = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._next_client = 0
        self._pumping = False
        self._pump_soon: asyncio.Handle | None = None

    # --- intake -----------------------------------------------------------------------------

    def put(self, msg: Message) -> None:
        """A new message, delivered next loop turn: the publisher's OK goes first, as in nsqd."""
        self.message_count += 1
        self.queue.append(msg)
        if self._pump_soon is None and not self.closed:
            self._pump_soon = asyncio.get_running_loop().call_soon(self._scheduled_pump)

    def put_deferred(self, msg: Message, delay_ms: int) -> None:
        """A DPUB message: held until its delay has passed."""
        self.message_count += 1
        self._defer(msg, delay_ms)

    def restore(self, msg: Message, due_in: float | None) -> None:
        """A message loaded from disk: queued, or deferred for what was left of its delay."""
        if due_in is None or due_in <= 0:
            self.queue.append(msg)
        else:
            self._defer(msg, int(due_in * 1000))

    # --- consumers --------------------------------------------------------------------------

    def add_client(self, client: Consumer) -> None:
        """A SUB: the client starts at RDY 0, so nothing is sent until it raises RDY."""
        self.clients[client.id] = client

    def remove_client(self, client_id: int) -> None:
        """A consumer left; its in-flight messages stay until they time out, as in nsqd."""
        if self.clients.pop(client_id, None) is None or self.closed:
            return
        if not self.clients and self.ephemeral:
            self._on_empty(self)

    def finish(self, client_id: int, msg_id: bytes) -> Message:
        """FIN: the message is done for this channel."""
        return self._pop_in_flight(client_id, msg_id)

    def requeue(self, client_id: int, msg_id: bytes, delay_ms: int) -> None:
        """REQ: back to the queue now (0) or after ``delay_ms``."""
        msg = self._pop_in_flight(client_id, msg_id)
        self.requeue_count += 1
        if delay_ms == 0:
            self.queue.append(msg)
            self.pump()
        else:
            self._defer(msg, delay_ms)

    def touch(self, client_id: int, msg_id: bytes, msg_timeout: float) -> None:
        """TOUCH: a fresh timeout, never past delivery + max_msg_timeout."""
        msg = self._owned(client_id, msg_id)
        loop = asyncio.get_running_loop()
        due = min(loop.time() + msg_timeout, msg.delivered_at + self._max_msg_timeout)
        self._schedule(msg, due)

    def pump(self) -> None:
        """Hand queued messages to ready consumers until one side runs out."""
        if self._pumping or self.closed:
            return
        self._pumping = True
        try:
            while self.queue:
                client = self._pick_client()
                if client is None:
                    break
                msg = self.queue.popleft()
                rate = client.sample_rate
                if rate and random.randrange(100) > rate:
                    continue  # nsqd drops what a sampling client does not sample
                self._deliver(client, msg)
        finally:
            self._pumping = False

    # --- inspection and shutdown ------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Queued messages only (not in flight, not deferred), as nsqd's stats count them."""
        return len(self.queue)

    def unfinished(self, now: float) -> list[tuple[Message, float | None]]:
        """Every message not FINished, with seconds left of deferral (None = deliverable now).

        ``now`` is the loop's clock, passed in so the watchdog thread can call this too. Each
        container is copied in one C-level step (atomic under the GIL), in the order messages
        move while the broker is frozen (in flight -> deferred -> queue): a message moving
        during the copy is seen twice (at worst delivered again), never missed.
        """
        in_flight = list(self.in_flight.values())
        deferred = list(self.deferred.values())
        queue = list(self.queue)
        return [
            *((msg, None) for msg in queue),
            *((msg, None) for msg in in_flight),
            *((msg, max(0.0, msg.due - now)) for msg in deferred),
        ]

    def freeze(self) -> None:
        """No more deliveries or timer re-arming; a flag only, so safe from any thread."""
        self.closed = True

    def close(self) -> None:
        """Stop timers and delivery; messages stay readable for persistence."""
        self.closed = True
        if self._pump_soon is not None:
            self._pump_soon.cancel()
            self._pump_soon = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- internals --------------------------------------------------------------------------

    def _scheduled_pump(self) -> None:
        """The deferred pump requested by :meth:`put`."""
        self._pump_soon = None
        self.pump()

    def _pick_client(self) -> Consumer | None:
        """Round-robin over consumers whose RDY allows one more message."""
        clients = list(self.clients.values())
        for offset in range(len(clients)):
            index = (self._next_client + offset) % len(clients)
            if clients[index].ready_for_message():
                self._next_client = index + 1
                return clients[index]
        return None

    def _deliver(self, client: Consumer, msg: Message) -> None:
        """attempts + 1, in flight until the client's msg_timeout, then send."""
        now = asyncio.get_running_loop().time()
        msg.attempts += 1
        msg.client_id = client.id
        msg.delivered_at = now
        self.in_flight[msg.id] = msg
        self._schedule(msg, now + client.msg_timeout)
        client.send_message(msg)

    def _owned(self, client_id: int, msg_id: bytes) -> Message:
        """The in-flight message if this client holds it, else nsqd's error text."""
        msg = self.in_flight.get(msg_id)
        if msg is None:
            raise MessageStateError("ID not in flight")
        if msg.client_id != client_id:
            raise MessageStateError("client does not own message")
        return msg

    def _pop_in_flight(self, client_id: int, msg_id: bytes) -> Message:
        """Take an owned message out of flight and cancel its timeout."""
        msg = self._owned(client_id, msg_id)
        del self.in_flight[msg_id]
        msg.token = 0
        return msg

    def _defer(self, msg: Message, delay_ms: int) -> None:
        """Hold a message until ``delay_ms`` from now."""
        self.deferred[msg.id] = msg
        self._schedule(msg, asyncio.get_running_loop().time() + delay_ms / 1000)

    def _schedule(self, msg: Message, due: float) -> None:
        """(Re)arm the message's timer; older heap entries go stale through the token."""
        msg.due = due
        msg.token = next(self._tokens)
        heapq.heappush(self._heap, (due, msg.token, msg.id))
        live = len(self.in_flight) + len(self.deferred)
        if len(self._heap) > 64 and len(self._heap) > 4 * live:
            self._compact()
        self._arm()

    def _compact(self) -> None:
        """Drop stale heap entries left behind by FIN, REQ and TOUCH."""
        self._heap = [
            (msg.due, msg.token, msg.id)
            for msg in itertools.chain(self.in_flight.values(), self.deferred.values())
        ]
        heapq.heapify(self._heap)

    def _arm(self) -> None:
        """One loop timer per channel, at the earliest due entry."""
        if self.closed or not self._heap:
            return
        at = self._heap[0][0]
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(at, self._on_timer)
        self._timer_at = at

    def _on_timer(self) -> None:
        """Expired in-flight messages time out; due deferred messages become deliverable."""
        self._timer = None
        now = asyncio.get_running_loop().time()
        while self._heap and self._heap[0][0] <= now:
            _, token, msg_id = heapq.heappop(self._heap)
            msg = self.in_flight.get(msg_id)
            if msg is not None and msg.token == token:
                del self.in_flight[msg_id]
                self.timeout_count += 1
                log.debug(
                    "msg_timeout",
                    topic=self.topic_name,
                    channel=self.name,
                    msg_id=msg_id.decode(),
                    client=msg.client_id,
                )
                client = self.clients.get(msg.client_id)
                if client is not None:
                    client.timed_out()
                self.queue.append(msg)
                continue
            msg = self.deferred.get(msg_id)
            if msg is not None and msg.token == token:
                del self.deferred[msg_id]
                self.queue.append(msg)
        self._arm()
        self.pump()
