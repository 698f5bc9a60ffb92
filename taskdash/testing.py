"""Helpers for tests and scripts that check what TaskDash published to NSQ.

Not used by the daemon. It lives in the package (not under ``tests/``) so that scripts can use
it without reaching into the test directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from typing import Any

from taskdash.nsq.broker.protocol import FRAME_ERROR, FRAME_MESSAGE, MAGIC_V2

#: Message frame layout: 8-byte timestamp, 2-byte attempts, 16-byte id, then the body.
_BODY_OFFSET = 26


class Subscriber:
    """A minimal NSQ V2 consumer that takes messages without finishing them.

    Messages stay in flight to this connection, so after :meth:`take` the channel's counts say
    whether anything else was ever published: a downstream system's view of a topic.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(
        cls, port: int, topic: str, channel: str, *, host: str = "127.0.0.1", ready: int = 2500
    ) -> Subscriber:
        """Connect to nsqd's TCP port, SUB to ``topic``/``channel`` and announce ``ready``."""
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(MAGIC_V2 + f"SUB {topic} {channel}\nRDY {ready}\n".encode())
        await writer.drain()
        return cls(reader, writer)

    async def take(self, count: int, timeout: float = 15.0) -> list[bytes]:
        """The next ``count`` message bodies (heartbeats and OKs skipped; an error fails)."""
        bodies: list[bytes] = []
        async with asyncio.timeout(timeout):
            while len(bodies) < count:
                size, frame_type = struct.unpack(">ii", await self._reader.readexactly(8))
                data = await self._reader.readexactly(size - 4)
                if frame_type == FRAME_ERROR:
                    raise RuntimeError(f"nsqd answered {data.decode(errors='replace')}")
                if frame_type == FRAME_MESSAGE:
                    bodies.append(data[_BODY_OFFSET:])
        return bodies

    async def take_json(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Like :meth:`take`, each body parsed as JSON."""
        return [json.loads(body) for body in await self.take(count, timeout)]

    async def close(self) -> None:
        """Close the connection; nsqd requeues what was in flight."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
