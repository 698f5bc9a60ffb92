"""The broker's live state shared by TCP and HTTP: topics, connected clients, message ids."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import structlog

from taskdash.nsq.broker.diskqueue import DiskOptions, Storage
from taskdash.nsq.broker.message import IdFactory, Message
from taskdash.nsq.broker.options import Options
from taskdash.nsq.broker.persist import Snapshot, StoredMessage
from taskdash.nsq.broker.protocol import is_valid_name
from taskdash.nsq.broker.topic import Topic

log = structlog.get_logger("taskdash.nsq.broker")


class Connection(Protocol):
    """What the registry needs from a TCP client: stats, and a way to drop it."""

    id: int

    @property
    def is_producer(self) -> bool:
        """Has published at least once (nsqd lists those as producers)."""
        ...

    def stats(self, topic: str) -> dict[str, Any]:
        """nsqd's ClientV2Stats as a JSON-ready dict."""
        ...

    def close(self) -> None:
        """Drop the connection."""
        ...


class Registry:
    """Topics and connections; the one place that creates and deletes topics."""

    def __init__(self, options: Options, data_dir: Path | None = None) -> None:
        self.options = options
        self.storage = Storage(
            data_dir,
            options.mem_queue_size,
            DiskOptions(
                max_bytes_per_file=options.max_bytes_per_file,
                sync_every=options.sync_every,
                sync_timeout=options.sync_timeout_ms / 1000,
            ),
        )
        self.topics: dict[str, Topic] = {}
        self.connections: dict[int, Connection] = {}
        self.ids = IdFactory()
        self.closing = False
        # --- nsqlookupd registration: told (registered?, topic, channel or "") of every change
        self.listeners: list[Callable[[bool, str, str], None]] = []

    def get_topic(self, name: str) -> Topic:
        """The topic, created on first use (PUB, SUB, /pub, /topic/create)."""
        topic = self.topics.get(name)
        if topic is None:
            topic = Topic(
                name,
                max_msg_timeout=self.options.max_msg_timeout_ms / 1000,
                on_empty=self._topic_empty,
                storage=self.storage,
                on_channel=self._notify,
            )
            self.topics[name] = topic
            log.info("topic_created", topic=name)
            self._notify(True, name, "")
        return topic

    def publish(self, topic_name: str, bodies: list[bytes], defer_ms: int = 0) -> None:
        """Stamp ids and timestamps, then hand the messages to the topic in one go; raises
        OSError when the disk refuses them (the publisher gets an error, not OK)."""
        now = time.time_ns()
        messages = [Message(self.ids.next(), body, now, defer_ms=defer_ms) for body in bodies]
        self.get_topic(topic_name).publish(messages)

    def delete_topic(self, name: str) -> bool:
        """Remove a topic with its channels, messages and consumers' connections."""
        topic = self.topics.pop(name, None)
        if topic is None:
            return False
        topic.delete()
        for channel in topic.channels.values():
            for client in list(channel.clients.values()):
                client.close()
        log.info("topic_deleted", topic=name)
        self._notify(False, name, "")
        return True

    def close(self) -> None:
        """Stop every timer; the messages stay for :meth:`snapshot`."""
        self.closing = True
        for topic in self.topics.values():
            topic.close()

    def freeze(self) -> None:
        """Refuse intake and stop deliveries with flags only: safe from any thread."""
        self.closing = True
        for topic in list(self.topics.values()):
            for channel in list(topic.channels.values()):
                channel.freeze()

    def snapshot(self, now: float, passes: int = 1) -> Snapshot:
        """Durable topics/channels and their unfinished messages (ephemeral ones die, as nsqd).

        ``now`` is the loop's clock (deferrals are kept as wall-clock due times). From another
        thread (the watchdog, while the loop may still run) take two passes: their union holds
        any message that moved between containers during the first.
        """
        # Deferred messages keep their due time; nsqd would make them deliverable at restart.
        wall_ns = time.time_ns()
        snap = Snapshot()
        seen: set[tuple[str, str | None, bytes]] = set()
        for _ in range(passes):
            for topic in list(self.topics.values()):
                if topic.ephemeral:
                    continue
                durable = [ch for ch in list(topic.channels.values()) if not ch.ephemeral]
                snap.topics.setdefault(topic.name, [ch.name for ch in durable])
                found = [(None, msg, None) for msg in topic.backlog.memory_messages()]
                for ch in durable:
                    found += [(ch.name, msg, due) for msg, due in ch.unfinished(now)]
                for channel, msg, due_in in found:
                    if (topic.name, channel, msg.id) not in seen:
                        seen.add((topic.name, channel, msg.id))
                        snap.messages.append(_stored(topic.name, channel, msg, due_in, wall_ns))
        return snap

    def restore(self, snap: Snapshot) -> int:
        """Recreate durable topics/channels and re-queue their messages; returns the count.

        Saved messages were in memory at the stop: older than what the disk queues hold, so
        they go in front of them, in their saved order.
        """
        wall_ns = time.time_ns()
        for topic_name, channels in snap.topics.items():
            topic = self.get_topic(topic_name)
            for name in channels:
                topic.get_channel(name)
        backlogs: dict[str, list[Message]] = {}
        queued: dict[tuple[str, str], list[tuple[Message, float | None]]] = {}
        for stored in snap.messages:
            self.ids.observe(stored.id)
            msg = Message(stored.id, stored.body, stored.timestamp, stored.attempts)
            if stored.channel is None:
                msg.defer_ms = stored.defer_ms
                backlogs.setdefault(stored.topic, []).append(msg)
                continue
            due_in = None
            if stored.due_ns is not None:
                due_in = (stored.due_ns - wall_ns) / 1e9
            queued.setdefault((stored.topic, stored.channel), []).append((msg, due_in))
        for (topic_name, channel), saved in queued.items():
            self.get_topic(topic_name).get_channel(channel).restore(saved)
        for topic_name, messages in backlogs.items():
            self.get_topic(topic_name).restore_backlog(messages)
        return len(snap.messages)

    # --- disk-backed queues -------------------------------------------------------------------

    def load_queues(self) -> int:
        """Recreate the topics and channels whose queues are in the data dir (their records
        stay on disk, read as consumers ask); returns how many queues were found."""
        names = self.storage.names()
        for name in names:
            topic_name, _, channel = name.partition(":")
            if not is_valid_name(topic_name) or (channel and not is_valid_name(channel)):
                log.error("diskqueue_bad_name", queue=name, why="not a valid topic/channel name")
                continue
            topic = self.get_topic(topic_name)
            if channel:
                topic.get_channel(channel)
        return len(names)

    def close_queues(self) -> None:
        """Sync and close every disk queue (the stop, after the snapshot); errors logged."""
        for topic in list(self.topics.values()):
            for queue in topic.queues():
                try:
                    queue.close()
                except OSError as exc:
                    log.error("diskqueue_close_failed", topic=topic.name, error=str(exc))

    def _notify(self, registered: bool, topic: str, channel: str) -> None:
        """Tell the listeners (lookupd registration) a topic or channel came or went."""
        for listener in self.listeners:
            listener(registered, topic, channel)

    def _topic_empty(self, topic: Topic) -> None:
        """An ephemeral topic lost its last channel: it goes away, as in nsqd."""
        if self.topics.get(topic.name) is topic:
            self.delete_topic(topic.name)


def _stored(
    topic: str, channel: str | None, msg: Message, due_in: float | None, wall_ns: int
) -> StoredMessage:
    """One message as persist.py writes it; deferral kept as a wall-clock due time."""
    due_ns = None if due_in is None else wall_ns + int(due_in * 1e9)
    return StoredMessage(
        topic=topic,
        channel=channel,
        id=msg.id,
        body=msg.body,
        timestamp=msg.timestamp,
        attempts=msg.attempts,
        defer_ms=msg.defer_ms if channel is None else 0,
        due_ns=due_ns,
    )
