"""The broker's limits and defaults, named and valued as nsqd v1.3.0 names and values them."""

from __future__ import annotations

import enum
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


# --- TLS, compression and AUTH (nsqd's --tls-*, --deflate, --snappy, --auth-http-address) ------

#: nsqd's --tls-client-auth-policy values ("" = no client certificate asked for)
CLIENT_AUTH_POLICIES = ("", "require", "require-verify")
#: nsqd's --tls-min-version values ("" = the TLS library's default)
TLS_VERSIONS = ("", "tls1.0", "tls1.1", "tls1.2", "tls1.3")


class TLSRequired(enum.IntEnum):
    """nsqd's --tls-required: false, tcp-https (TCP and HTTPS only) or true (HTTP refused too)."""

    NOT_REQUIRED = 0
    EXCEPT_HTTP = 1
    REQUIRED = 2

    @classmethod
    def parse(cls, text: str) -> TLSRequired:
        """nsqd's parsing: ``tcp-https`` or a Go boolean (true/false/1/0/t/f, any case)."""
        value = text.strip().lower()
        if value == "tcp-https":
            return cls.EXCEPT_HTTP
        if value in ("1", "t", "true"):
            return cls.REQUIRED
        if value in ("0", "f", "false"):
            return cls.NOT_REQUIRED
        raise ValueError(f"--tls-required: {text!r} is not true, false or tcp-https")


@dataclass(frozen=True, slots=True)
class SecurityOptions:
    """What nsqd offers a client beyond plain TCP; nsqd's defaults (compression on, no TLS)."""

    tls_cert: str = ""
    tls_key: str = ""
    tls_client_auth_policy: str = ""
    tls_root_ca_file: str = ""
    tls_required: TLSRequired = TLSRequired.NOT_REQUIRED
    tls_min_version: str = ""
    deflate: bool = True
    max_deflate_level: int = 6
    #: None = offered when the snappy library is installed (nsqd always has it)
    snappy: bool | None = None
    auth_http_addresses: tuple[str, ...] = ()
    http_client_connect_timeout: float = 2.0
    http_client_request_timeout: float = 5.0

    def __post_init__(self) -> None:
        """nsqd's start-up checks, each one line naming the flag."""
        if not 1 <= self.max_deflate_level <= 9:
            raise ValueError("--max-deflate-level must be [1,9]")
        if self.tls_client_auth_policy not in CLIENT_AUTH_POLICIES:
            raise ValueError(
                f"--tls-client-auth-policy: {self.tls_client_auth_policy!r} is not "
                "require or require-verify"
            )
        if self.tls_min_version not in TLS_VERSIONS:
            raise ValueError(f"--tls-min-version: unknown version {self.tls_min_version!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            given, missing = ("--tls-cert", "--tls-key")
            if not self.tls_cert:
                given, missing = missing, given
            raise ValueError(f"{given} without {missing}: both are needed for TLS")
        if not self.tls_enabled and self.effective_tls_required != TLSRequired.NOT_REQUIRED:
            raise ValueError("cannot require TLS client connections without TLS key and cert")
        for name in ("http_client_connect_timeout", "http_client_request_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")

    @property
    def tls_enabled(self) -> bool:
        """A certificate is configured: IDENTIFY's tls_v1 is accepted."""
        return bool(self.tls_cert)

    @property
    def effective_tls_required(self) -> TLSRequired:
        """nsqd turns a client-auth policy into TLS required."""
        if self.tls_client_auth_policy and self.tls_required == TLSRequired.NOT_REQUIRED:
            return TLSRequired.REQUIRED
        return self.tls_required

    @property
    def auth_enabled(self) -> bool:
        """IDENTIFY answers auth_required, and PUB/SUB need an AUTH first."""
        return bool(self.auth_http_addresses)
