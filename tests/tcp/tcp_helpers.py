"""Shared by the TCP tests: a real server on a loopback port, real clients, raw sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from taskdash.settings import TcpSettings
from taskdash.store import Store
from taskdash.tcp.client import TcpClient
from taskdash.tcp.protocol import Frame, FrameDecoder
from taskdash.tcp.server import TcpServer

#: The seed's example record (section 二).
RECORD = {
    "id": "1234567",
    "name": "abc",
    "url": "http://localhost:8080/v1/task",
    "user": "wsg",
    "group_id": "mx",
    "description": "add data",
    "status": "running",
    "start_time": "12:00",
    "stop_time": "18:00",
}
OK = {"errid": 0, "errmsg": "正确"}
BAD = {"errid": 1000, "errmsg": "请求格式不正确"}
STORE_FAILED = {"errid": 1001, "errmsg": "数据库存储失败"}
NO_SUCH = {"errid": 1002, "errmsg": "不存在该任务id"}


class ManualClock:
    """The Find cache's clock in tests: time moves only when :meth:`advance` says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@asynccontextmanager
async def serving(
    store: Store, *, clock: ManualClock | None = None, **overrides: Any
) -> AsyncIterator[TcpServer]:
    """A started TcpServer on a free loopback port, stopped afterwards.

    With ``clock``, the Find cache's entries expire only when the test advances it.
    """
    extra: dict[str, Any] = {"clock": clock, "look_for_changes": False} if clock is not None else {}
    server = TcpServer(store, TcpSettings(port=0, **overrides), drain_timeout=5, **extra)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def client(server: TcpServer) -> TcpClient:
    """A connected client of ``server``."""
    assert server.port is not None
    return await TcpClient("127.0.0.1", server.port, timeout=20).connect()


async def read_to_eof(
    reader: asyncio.StreamReader, timeout: float = 30.0
) -> tuple[list[Frame], bytes]:
    """Everything the server sends until it closes: (frames, bytes left over)."""
    data = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            data += chunk
    decoder = FrameDecoder(16 * 1024 * 1024)
    frames, error = decoder.feed(data)
    assert error is None
    return frames, data[len(data) - decoder.buffered :] if decoder.buffered else b""


def reply_of(found: dict[str, Any], task_id: str, outcome: dict[str, Any]) -> dict[str, Any]:
    """The exact reply body expected: id, then the fields, then errid/errmsg."""
    return {"id": task_id, **found, **outcome}
