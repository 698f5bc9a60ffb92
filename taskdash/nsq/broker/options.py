"""The broker's limits and defaults, named and valued as nsqd v1.3.0 names and values them."""

from __future__ import annotations

from dataclasses import dataclass

VERSION = "1.3.0"


@dataclass(frozen=True, slots=True)
class Options:
    """Limits shared by the TCP and HTTP front ends; built once by the Broker, never mutated."""

    max_msg_size: int = 1048576
    max_body_size: int = 5242880
    msg_timeout_ms: int = 60000
    max_msg_timeout_ms: int = 900000
    max_rdy_count: int = 2500
    max_heartbeat_interval_ms: int = 60000
    # nsqd derives the default heartbeat from --client-timeout (60 s) / 2.
    heartbeat_interval_ms: int = 30000
    max_req_timeout_ms: int = 3600000
    output_buffer_size: int = 16384
    output_buffer_timeout_ms: int = 250
    min_output_buffer_timeout_ms: int = 25
    max_output_buffer_timeout_ms: int = 30000
    max_output_buffer_size: int = 65536
    max_deflate_level: int = 6
    # bufio.Reader size in nsqd: a longer command line closes the connection.
    max_line_length: int = 16384

    # --- disk-backed queues (nsqd's --mem-queue-size, --max-bytes-per-file, --sync-every,
    # --sync-timeout; see diskqueue.py) ---
    mem_queue_size: int = 10000
    max_bytes_per_file: int = 104857600
    sync_every: int = 2500
    sync_timeout_ms: int = 2000

    def __post_init__(self) -> None:
        """Refuse non-positive limits, so a typo fails at construction, not at the first client."""
        for name in (
            "max_msg_size",
            "max_body_size",
            "msg_timeout_ms",
            "max_msg_timeout_ms",
            "max_rdy_count",
            "max_heartbeat_interval_ms",
            "heartbeat_interval_ms",
            "max_req_timeout_ms",
            "max_line_length",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        # --- disk-backed queues ---
        if self.mem_queue_size < 0:
            raise ValueError("mem_queue_size must be >= 0")
        for name in ("max_bytes_per_file", "sync_every", "sync_timeout_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
