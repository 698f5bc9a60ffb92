"""The embedded broker's arguments from the [nsq] embedded_* settings (daemon and CLI alike)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taskdash.settings import NsqSettings


def broker_kwargs(cfg: NsqSettings, data_dir: Path) -> dict[str, Any]:
    """Keyword arguments for :class:`~taskdash.nsq.broker.Broker`."""
    return {
        "host": cfg.embedded_host,
        "tcp_port": cfg.embedded_tcp_port,
        "http_port": cfg.embedded_http_port,
        "lookupd_http_port": cfg.embedded_lookupd_port,
        "data_dir": data_dir,
        "broadcast_address": cfg.embedded_host,
        "mem_queue_size": cfg.embedded_mem_queue_size,
        "max_bytes_per_file": cfg.embedded_max_bytes_per_file,
        "sync_every": cfg.embedded_sync_every,
        "sync_timeout_ms": round(cfg.embedded_sync_timeout * 1000),
    }
