"""``/readyz`` of a running daemon shows each reader's details, and why one is not ready."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support import daemon_env, free_port, http_get, running_daemon, wait_for


def test_readyz_names_a_reader_cut_off_from_its_nsqd(tmp_path: Path) -> None:
    nsqd = f"127.0.0.1:{free_port()}"  # a configured nsqd that is not there
    env = daemon_env(
        tmp_path,
        TASKDASH_NSQ__NSQD_TCP_ADDRESSES=f'["{nsqd}"]',
        TASKDASH_NSQ__STALL_AFTER=0.5,
        TASKDASH_FETCHER__ENABLED="false",
    )
    with running_daemon(tmp_path, env, ready=False) as daemon:

        def reader_not_ready() -> dict[str, Any] | None:
            status, body = http_get(f"{daemon.web}/readyz")
            if status != 503 or not isinstance(body, dict):
                return None
            reader = body["components"].get("reader:taskdash.heartbeat", {})
            return reader if nsqd in reader.get("reason", "") else None

        reader = wait_for(reader_not_ready, timeout=30, every=0.1)
        assert reader["ready"] is False and reader["connections"] == 0
        for key in ("in_flight", "last_settled_at", "requeued", "dead_lettered"):
            assert key in reader, key
