"""A topic: fans each message out to every channel, or keeps it until the first channel exists."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import structlog

from taskdash.nsq.broker.channel import Channel
from taskdash.nsq.broker.message import Message
from taskdash.nsq.broker.protocol import is_ephemeral

log = structlog.get_logger("taskdash.nsq.broker")


class Topic:
    """Every channel gets its own copy of every message published here."""

    def __init__(
        self, name: str, *, max_msg_timeout: float, on_empty: Callable[[Topic], None]
    ) -> None:
        self.name = name
        self.ephemeral = is_ephemeral(name)
        self.channels: dict[str, Channel] = {}
        self.backlog: deque[Message] = deque()
        self.message_count = 0
        self.message_bytes = 0
        self._max_msg_timeout = max_msg_timeout
        self._on_empty = on_empty

    @property
    def depth(self) -> int:
        """Messages waiting for a first channel."""
        return len(self.backlog)

    def get_channel(self, name: str) -> Channel:
        """The channel, created on first use; a new first channel receives the backlog."""
        channel = self.channels.get(name)
        if channel is not None:
            return channel
        channel = Channel(
            self.name, name, max_msg_timeout=self._max_msg_timeout, on_empty=self._channel_empty
        )
        self.channels[name] = channel
        log.info("channel_created", topic=self.name, channel=name)
        while self.backlog:
            self._fan_out(self.backlog.popleft())
        return channel

    def publish(self, messages: list[Message]) -> None:
        """Accept messages (all of them: callers validated everything first)."""
        self.message_count += len(messages)
        self.message_bytes += sum(len(msg.body) for msg in messages)
        for msg in messages:
            if self.channels:
                self._fan_out(msg)
            else:
                self.backlog.append(msg)

    def restore_backlog(self, msg: Message) -> None:
        """A backlog message loaded from disk (not counted again as published)."""
        if self.channels:
            self._fan_out(msg)
        else:
            self.backlog.append(msg)

    def delete_channel(self, name: str) -> bool:
        """Remove a channel, its messages and its consumers' connections."""
        channel = self.channels.pop(name, None)
        if channel is None:
            return False
        channel.close()
        for client in list(channel.clients.values()):
            client.close()
        log.info("channel_deleted", topic=self.name, channel=name)
        if not self.channels and self.ephemeral:
            self._on_empty(self)
        return True

    def close(self) -> None:
        """Stop every channel's timers (broker shutdown or topic deletion)."""
        for channel in self.channels.values():
            channel.close()

    def _channel_empty(self, channel: Channel) -> None:
        """An ephemeral channel lost its last consumer: it goes away, as in nsqd."""
        if self.channels.get(channel.name) is channel:
            self.delete_channel(channel.name)

    def _fan_out(self, msg: Message) -> None:
        """One copy per channel, same id and timestamp; DPUB delay applies from now."""
        for channel in list(self.channels.values()):
            copy = msg.copy_for_channel()
            if msg.defer_ms:
                channel.put_deferred(copy, msg.defer_ms)
            else:
                channel.put(copy)
