"""Tasks registered over the TCP interface (tcpx frames, docs/tcp.md), with daily windows.

Two tasks, their windows placed around the current time (UTC) so both verdicts show: one
running inside its window, one running outside it. Every few seconds the first one's status
flips between running and finish over ``Update``, so it is also seen idle inside its window.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import structlog

from taskdash.background import Background
from taskdash.demo.config import HOST
from taskdash.logs import RateLimitedLog
from taskdash.tcp.client import ClientError, TcpClient

log = structlog.get_logger("taskdash.demo.tcp_tasks")

SYNC, BACKUP = "demo-tcp-sync", "demo-tcp-backup"


def _clock(moment: datetime) -> str:
    return f"{moment.hour:02d}:{moment.minute:02d}"


def tcp_tasks(now: datetime) -> list[dict[str, str]]:
    """The two records, windows relative to ``now`` (pure)."""
    return [
        {
            "id": SYNC,
            "name": "sync inside its window",
            "status": "running",
            "description": "registered over TCP; its window is open now",
            "start_time": _clock(now - timedelta(hours=1)),
            "stop_time": _clock(now + timedelta(hours=2)),
        },
        {
            "id": BACKUP,
            "name": "backup outside its window",
            "status": "running",
            "description": "registered over TCP; running although its window is closed",
            "start_time": _clock(now + timedelta(hours=3)),
            "stop_time": _clock(now + timedelta(hours=5)),
        },
    ]


class TcpTasks:
    """Registers the tasks, then flips one's status every ``every`` seconds."""

    def __init__(self, port: int, every: float) -> None:
        self.port = port
        self.every = every
        self.updates = 0
        self._loop = Background("demo_tcp_tasks", self._flip)
        self._failed = RateLimitedLog(log, "demo_tcp_failed")

    async def start(self) -> None:
        async with TcpClient(HOST, self.port) as client:
            for task in tcp_tasks(datetime.now(UTC)):
                reply = await client.register(task)
                log.info("demo_tcp_registered", task_id=task["id"], errid=reply.get("errid"))
        await self._loop.start()

    async def _flip(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            self.updates += 1
            status = "finish" if self.updates % 2 else "running"
            try:
                async with TcpClient(HOST, self.port) as client:
                    await client.update({"id": SYNC, "status": status})
            except ClientError as exc:
                self._failed(error=str(exc))

    async def stop(self) -> None:
        await self._loop.stop()
