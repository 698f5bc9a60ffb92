"""An asyncio tcpx client of the TaskDash TCP interface, written from the wire document.

For admins (``taskdash tcp ...``), tests and benchmarks; a Go service would use tcpx itself.
One request at a time per client (replies come back in order); open several clients for
concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any

import msgspec

from taskdash.errors import TaskDashError
from taskdash.tcp.protocol import (
    LENGTH_SIZE,
    REQUEST_ID,
    Frame,
    FrameError,
    decode,
    frame_length,
    heartbeat,
    pack,
)

MAX_REPLY = 1024 * 1024


class ClientError(TaskDashError):
    """The server could not be reached, closed the connection, or answered garbage."""


class TcpClient:
    """``async with TcpClient(host, port) as c: await c.register({...})``."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> TcpClient:
        """Open the connection (ClientError if refused or timed out)."""
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise ClientError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        return self

    async def close(self) -> None:
        """Close the connection. Idempotent."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def __aenter__(self) -> TcpClient:
        return await self.connect()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (tests send broken frames this way)."""
        if self._writer is None:
            raise ClientError("not connected")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            raise ClientError(f"connection lost: {exc}") from None

    async def read_frame(self) -> Frame:
        """The next frame from the server (ClientError if the connection closes first)."""
        if self._reader is None:
            raise ClientError("not connected")
        try:
            async with asyncio.timeout(self.timeout):
                first = await self._reader.readexactly(LENGTH_SIZE)
                rest = await self._reader.readexactly(frame_length(first, MAX_REPLY))
        except (asyncio.IncompleteReadError, OSError) as exc:
            raise ClientError(f"connection closed by the server: {exc}") from None
        except TimeoutError:
            raise ClientError(f"no reply within {self.timeout}s") from None
        except FrameError as exc:
            raise ClientError(f"bad reply frame: {exc}") from None
        frame, _ = decode(first + rest, MAX_REPLY)
        assert frame is not None
        return frame

    async def request(self, name: str, body: Any) -> dict[str, Any]:
        """Send one seed request and return the reply body (``errid``, ``errmsg``...)."""
        await self.send_raw(pack(REQUEST_ID, {"RequestID": name}, body))
        frame = await self.read_frame()
        try:
            header = msgspec.json.decode(frame.header)
            reply = msgspec.json.decode(frame.body)
        except msgspec.DecodeError as exc:
            raise ClientError(f"reply is not JSON: {exc}") from None
        if not isinstance(reply, dict) or header != {"RequestID": f"Resp{name}"}:
            raise ClientError(f"unexpected reply to {name}: {header!r} {reply!r}")
        return reply

    async def register(self, task: dict[str, str]) -> dict[str, Any]:
        """Register (or re-register) a task record."""
        return await self.request("Register", task)

    async def update(self, task: dict[str, str]) -> dict[str, Any]:
        """Update a task record (errid 1002 if the id does not exist)."""
        return await self.request("Update", task)

    async def find(self, task_id: str) -> dict[str, Any]:
        """The task's record flattened next to ``errid`` / ``errmsg``."""
        return await self.request("Find", {"id": task_id})

    async def heartbeat(self) -> None:
        """Tell the server the connection is alive (no reply)."""
        await self.send_raw(heartbeat())
