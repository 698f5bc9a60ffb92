"""A topic: fans each message out to every channel, or keeps it until the first channel exists."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from taskdash.nsq.broker.channel import Channel
from taskdash.nsq.broker.diskqueue import DiskOptions, DiskQueue, MessageQueue, Storage
from taskdash.nsq.broker.message import Message
from taskdash.nsq.broker.protocol import is_ephemeral

log = structlog.get_logger("taskdash.nsq.broker")

#: messages moved per step when a topic's disk backlog is copied into its channels
_DRAIN_BATCH = 1000


def channel_queue_name(topic: str, channel: str) -> str:
    """nsqd's backend name for a channel's queue."""
    return f"{topic}:{channel}"


class Topic:
    """Every channel gets its own copy of every message published here."""

    def __init__(
        self,
        name: str,
        *,
        max_msg_timeout: float,
        on_empty: Callable[[Topic], None],
        storage: Storage | None = None,
        on_channel: Callable[[bool, str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.ephemeral = is_ephemeral(name)
        self.channels: dict[str, Channel] = {}
        self._storage = storage or Storage(None, 0, DiskOptions())
        # kept until the first channel: memory up to mem_queue_size, the rest on disk
        self.backlog: MessageQueue = self._storage.queue(name, ephemeral=self.ephemeral)
        self.message_count = 0
        self.message_bytes = 0
        self._max_msg_timeout = max_msg_timeout
        self._on_empty = on_empty
        self._on_channel = on_channel or (lambda registered, topic, channel: None)

    @property
    def depth(self) -> int:
        """Messages waiting for a first channel."""
        return len(self.backlog)

    @property
    def backend_depth(self) -> int:
        """Of which on disk."""
        return self.backlog.backend_depth

    def get_channel(self, name: str) -> Channel:
        """The channel, created on first use; a new first channel receives the backlog."""
        channel = self.channels.get(name)
        if channel is not None:
            return channel
        # a channel of an ephemeral topic dies with it: memory only, like an ephemeral channel
        queue = self._storage.queue(
            channel_queue_name(self.name, name), ephemeral=self.ephemeral or is_ephemeral(name)
        )
        channel = Channel(
            self.name,
            name,
            max_msg_timeout=self._max_msg_timeout,
            on_empty=self._channel_empty,
            queue=queue,
        )
        first = not self.channels
        self.channels[name] = channel
        log.info("channel_created", topic=self.name, channel=name)
        if first and self.backlog:
            self._hand_backlog_to(channel)
        self._on_channel(True, self.name, name)
        return channel

    def publish(self, messages: list[Message]) -> None:
        """Accept messages (all of them: callers validated everything first); raises OSError
        when the disk refuses them (nothing is acknowledged then)."""
        if self.channels:
            self._fan_out(messages)
        else:
            self.backlog.extend(messages)
        self.message_count += len(messages)
        self.message_bytes += sum(len(msg.body) for msg in messages)

    def restore_backlog(self, messages: list[Message]) -> None:
        """Backlog messages saved at the last stop (not counted again as published)."""
        if self.channels:
            self._fan_out(messages)
        elif self.backlog.disk is not None and self.backlog.mem_size == 0:
            self.backlog.extend(messages)
        else:
            self.backlog.push_front(messages)

    def delete_channel(self, name: str) -> bool:
        """Remove a channel, its messages (files included) and its consumers' connections."""
        channel = self.channels.pop(name, None)
        if channel is None:
            return False
        channel.close()
        channel.queue.delete()
        for client in list(channel.clients.values()):
            client.close()
        log.info("channel_deleted", topic=self.name, channel=name)
        self._on_channel(False, self.name, name)
        if not self.channels and self.ephemeral:
            self._on_empty(self)
        return True

    def close(self) -> None:
        """Stop every channel's timers (broker shutdown or topic deletion)."""
        for channel in self.channels.values():
            channel.close()

    def delete(self) -> None:
        """The topic is deleted: its files and its channels' go too."""
        self.close()
        self.backlog.delete()
        for channel in self.channels.values():
            channel.queue.delete()

    def queues(self) -> list[MessageQueue]:
        """The topic's queue and its channels' (to sync and close them at stop)."""
        return [self.backlog, *(channel.queue for channel in self.channels.values())]

    def _channel_empty(self, channel: Channel) -> None:
        """An ephemeral channel lost its last consumer: it goes away, as in nsqd."""
        if self.channels.get(channel.name) is channel:
            self.delete_channel(channel.name)

    def _fan_out(self, messages: list[Message]) -> None:
        """One copy per channel, same id and timestamp; DPUB delay applies from now."""
        for channel in list(self.channels.values()):
            now = [msg.copy_for_channel() for msg in messages if not msg.defer_ms]
            if now:
                channel.put_many(now)
            for msg in messages:
                if msg.defer_ms:
                    channel.put_deferred(msg.copy_for_channel(), msg.defer_ms)

    def _hand_backlog_to(self, channel: Channel) -> None:
        """The first channel gets the backlog: the disk part by renaming its files (no copy,
        however large), the memory part in front of it; else (rare) copied over."""
        memory = self.backlog.memory_messages()
        self.backlog.memory.clear()
        disk, target = self.backlog.disk, channel.queue.disk
        if (
            disk is not None
            and target is not None
            and disk.depth
            and not disk.outstanding
            and not channel.queue
            and not target.outstanding
        ):
            depth = disk.depth
            target.delete()
            disk.rename(target.name)
            channel.queue.disk = disk
            channel.message_count += depth
            replacement = DiskQueue(disk.directory, self.name, disk.options)
            replacement.create()
            self.backlog.disk = replacement
            log.info("backlog_handed_over", topic=self.name, channel=channel.name, on_disk=depth)
            if memory:
                channel.adopt_front(memory)
            return
        self._fan_out(memory)
        while self.backlog.disk is not None and self.backlog.disk.depth:
            batch = []
            while len(batch) < _DRAIN_BATCH and (msg := self.backlog.popleft()) is not None:
                batch.append(msg)
            if not batch:
                break
            self._fan_out(batch)
            for msg in batch:
                self.backlog.release(msg)
