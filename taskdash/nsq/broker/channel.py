"""A channel: queued, in-flight and deferred messages, their timers, delivery to consumers."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import structlog

from taskdash.nsq.broker.diskqueue import MessageQueue
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
        queue: MessageQueue | None = None,
    ) -> None:
        self.topic_name = topic_name
        self.name = name
        self.ephemeral = is_ephemeral(name)
        # memory up to mem_queue_size, the rest on disk (see diskqueue.py)
        self.queue = queue if queue is not None else MessageQueue(0, drop_overflow=False)
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
        self.put_many((msg,))

    def put_many(self, messages: Iterable[Message]) -> None:
        """New messages in one write (memory, or disk beyond mem_queue_size); raises OSError."""
        batch = list(messages)
        self.queue.extend(batch)
        self.message_count += len(batch)
        self._pump_later()

    def put_deferred(self, msg: Message, delay_ms: int) -> None:
        """A DPUB message: held until its delay has passed (on disk first at mem_queue_size 0)."""
        if self.queue.disk is not None and self.queue.mem_size == 0:
            msg.due_wall_ns = time.time_ns() + delay_ms * 1_000_000
            self.queue.append(msg)  # the pump defers it when it reads it back
            self.message_count += 1
            self._pump_later()
            return
        self.message_count += 1
        self._defer(msg, delay_ms)

    def restore(self, saved: Iterable[tuple[Message, float | None]]) -> None:
        """Messages saved at the last stop: in front of the queue (they are older than what
        the disk holds), or deferred for what was left of their delay. At mem_queue_size 0
        they go to disk first, like every message."""
        front = []
        for msg, due_in in saved:
            if due_in is None or due_in <= 0:
                front.append(msg)
            else:
                self._defer(msg, int(due_in * 1000))
        if self.queue.disk is not None and self.queue.mem_size == 0:
            self.queue.extend(front)
        else:
            self.queue.push_front(front)

    def adopt_front(self, messages: list[Message]) -> None:
        """A topic's in-memory backlog, older than the disk queue just handed over."""
        self.queue.push_front(messages)
        self.message_count += len(messages)

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
        """FIN: the message is done for this channel (its disk record may go)."""
        msg = self._pop_in_flight(client_id, msg_id)
        self.queue.release(msg)
        return msg

    def requeue(self, client_id: int, msg_id: bytes, delay_ms: int) -> None:
        """REQ: back to the queue now (0) or after ``delay_ms``."""
        msg = self._pop_in_flight(client_id, msg_id)
        self.requeue_count += 1
        if delay_ms == 0:
            self._back_to_queue(msg)
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
                if msg is None:
                    break
                if msg.id in self.in_flight or msg.id in self.deferred:
                    # a second copy read back after a crash (a record written again before the
                    # metadata caught up): the live one stands for both
                    self.queue.release(msg)
                    continue
                delay_ms = _pending_delay(msg)
                if delay_ms:
                    self._defer(msg, delay_ms)  # a deferred record read back from disk
                    continue
                rate = client.sample_rate
                if rate and random.randrange(100) > rate:
                    self.queue.release(msg)
                    continue  # nsqd drops what a sampling client does not sample
                self._deliver(client, msg)
        finally:
            self._pumping = False

    # --- inspection and shutdown ------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Queued messages only (not in flight, not deferred), as nsqd's stats count them."""
        return len(self.queue)

    @property
    def backend_depth(self) -> int:
        """Queued messages on disk."""
        return self.queue.backend_depth

    def unfinished(self, now: float) -> list[tuple[Message, float | None]]:
        """Every message not FINished, with seconds left of deferral (None = deliverable now).

        ``now`` is the loop's clock, passed in so the watchdog thread can call this too. Each
        container is copied in one C-level step (atomic under the GIL), in the order messages
        move while the broker is frozen (in flight -> deferred -> queue): a message moving
        during the copy is seen twice (at worst delivered again), never missed.
        """
        in_flight = list(self.in_flight.values())
        deferred = list(self.deferred.values())
        queue = self.queue.memory_messages()
        # messages with a disk record come back from the disk queue (its metadata lists them)
        return [
            *((msg, None) for msg in queue if msg.disk_seq < 0),
            *((msg, None) for msg in in_flight if msg.disk_seq < 0),
            *((msg, max(0.0, msg.due - now)) for msg in deferred if msg.disk_seq < 0),
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

    def _pump_later(self) -> None:
        """Deliver on the next loop turn."""
        if self._pump_soon is None and not self.closed:
            self._pump_soon = asyncio.get_running_loop().call_soon(self._scheduled_pump)

    def _back_to_queue(self, msg: Message) -> None:
        """REQ 0, a timeout, a deferral ending: to the end of the queue (a new disk record
        when the queue is on disk, written before the old one is released)."""
        old = msg.disk_seq
        msg.disk_seq, msg.due_wall_ns = -1, 0
        try:
            self.queue.append(msg)
        except OSError as exc:
            log.error(
                "diskqueue_write_failed", topic=self.topic_name, channel=self.name, error=str(exc)
            )
            msg.disk_seq = old
            self.queue.memory.append(msg)  # kept in memory; its old record still holds it
            return
        if old >= 0 and self.queue.disk is not None:
            self.queue.disk.release(old)

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
        msg.due_wall_ns = time.time_ns() + delay_ms * 1_000_000
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
                self._back_to_queue(msg)
                continue
            msg = self.deferred.get(msg_id)
            if msg is not None and msg.token == token:
                del self.deferred[msg_id]
                self._back_to_queue(msg)
        self._arm()
        self.pump()


def _pending_delay(msg: Message) -> int:
    """ms a message read back from a queue must still wait (a DPUB delay or a deferral)."""
    if msg.defer_ms:
        delay, msg.defer_ms = msg.defer_ms, 0
        return delay
    if msg.due_wall_ns:
        left = (msg.due_wall_ns - time.time_ns()) // 1_000_000
        msg.due_wall_ns = 0
        return max(0, left)
    return 0
