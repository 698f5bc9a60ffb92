"""The one configuration object: a TOML file plus ``TASKDASH_<SECTION>__<KEY>`` overrides.

Settings are loaded and validated once, at start, and passed down; no other module reads the
environment. Every mistake (unknown key, wrong type, impossible value, a MongoDB URI the driver
would refuse) is reported as one :class:`~taskdash.errors.ConfigError` line naming the key,
where it came from and, for an unknown key, the nearest known one. A ``TASKDASH_`` variable
without ``__`` is not an override at all: :func:`env_warnings` lists those for the CLI to warn.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.util
import ipaddress
import os
import re
import socket
import tomllib
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import msgspec

from taskdash.errors import ConfigError, ValidationError
from taskdash.windows import Rules
from taskdash.zones import machine_zone, zone

ENV_PREFIX = "TASKDASH_"
DEFAULTS = "built-in defaults"  # where a value came from when neither file nor variable set it
# variables of the test suite (e.g. TASKDASH_TEST_MONGODB_URI): not settings, never warned about
ENV_NOT_SETTINGS_PREFIX = "TASKDASH_TEST_"

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every section: unknown keys are errors, never silently ignored.

    A check in ``__post_init__`` raises ``ValueError("<key> <problem>")``, a sentence that
    starts with the key, so that the error line names it (``web.host: must not be empty``)
    and the variable or file it came from.
    """

    def _require_host(self, name: str) -> None:
        """An empty host would make the server listen on every interface, or fail obscurely."""
        if not getattr(self, name).strip():
            raise ValueError(f"{name} must not be empty")


HTTP_URL = "http(s)://host[:port]"


def http_url_error(url: str) -> str | None:
    """Why ``url`` cannot be an nsqd or nsqlookupd HTTP address (None if it can).

    Checked at load (and for ``publish --nsqd-http``) so that ``nsqd:4151`` or ``http://``
    is one config line, not a ``requests`` error at the first publish.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check: a bad one raises ValueError
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https"):
        return "not an http:// or https:// URL"
    if not parts.hostname:
        return "no host"
    return None


def _uri_validator(uri: str, *, private: bool = True) -> Callable[..., dict[str, Any]] | None:
    """PyMongo's validation step; its public parser where that helper is gone (it is private).

    The public ``parse_uri`` does no DNS lookup for ``mongodb://``, so it can stand in there;
    for ``mongodb+srv://`` it would resolve the name, so there is no stand-in (None).
    """
    if private:
        try:
            from pymongo.uri_parser_shared import _validate_uri

            return _validate_uri  # type: ignore[no-any-return]
        except ImportError:
            pass
    if uri.startswith("mongodb+srv://"):
        return None
    from pymongo.uri_parser import parse_uri

    return parse_uri


def mongodb_uri_error(uri: str) -> str | None:
    """Why the driver would refuse ``uri`` (None if it would not), without any network I/O.

    Runs PyMongo's own URI validation, the one its client runs at construction, so that a
    malformed URI is a config error at load instead of a traceback when the store starts.
    The public ``pymongo.uri_parser.parse_uri`` would also resolve a ``mongodb+srv://`` name
    through DNS, which ``check-config`` must not need; the validation step alone is what the
    client calls before any lookup. This is the one pymongo import outside ``store/``: parsing
    text is not talking to MongoDB, and settings must not depend on the store layer.
    Unknown URI options are refused (the client would only warn and ignore them), like
    unknown config keys. The reason never includes the URI, which may hold a password.
    """
    from pymongo.errors import PyMongoError

    validate = _uri_validator(uri)
    if validate is None:
        return None  # mongodb+srv:// without the private helper: the client checks it at start
    try:
        parsed = validate(uri, validate=True, warn=False)
    except (PyMongoError, ValueError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if any(not host for host, _port in parsed["nodelist"]):
        return "Empty host"
    return None


def read_secret_file(key: str, name: str) -> str:
    """A secret kept in a file: readable, private to its owner, not empty; stripped.

    Raises ``ValueError("<key> ...")`` so that the error line names the key that points at it.
    """
    path = Path(name)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ValueError(f"{key} cannot be read: {path}: {reason}") from None
    if mode & 0o077:
        raise ValueError(
            f"{key} {path} is readable by others (mode {mode & 0o777:o}): chmod 600 it"
        )
    secret = text.strip()
    if not secret:
        raise ValueError(f"{key} {path} is empty")
    return secret


class DaemonSettings(_Section):
    """Process-wide settings."""

    node_id: str = ""
    data_dir: str = "var"
    shutdown_timeout: Seconds = 10.0

    def node_name(self) -> str:
        """This daemon's id among several sharing one MongoDB: configured, else host:pid."""
        return self.node_id or f"{socket.gethostname()}:{os.getpid()}"


class LogSettings(_Section):
    """Where and how structured logs are written."""

    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"
    file: str = ""
    # events that can come by the thousand (status changes, registrations, fetch failures) are
    # logged one line each up to this many per pass or sweep, then as one summary line
    summary_threshold: Annotated[int, msgspec.Meta(ge=0, le=100000)] = 20


class MongoSettings(_Section):
    """MongoDB: a real server when ``uri`` is set, else an embedded nx-27017 child."""

    uri: str = ""
    database: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,63}$")] = "taskdash"
    server_selection_timeout: Seconds = 5.0
    retry_initial: Seconds = 0.5
    retry_max: Seconds = 30.0
    probe_interval: Seconds = 1.0
    embedded_host: str = "127.0.0.1"
    embedded_port: Port = 27017
    embedded_data_dir: str = ""

    def __post_init__(self) -> None:
        if self.uri:
            if not self.uri.startswith(("mongodb://", "mongodb+srv://")):
                raise ValueError("uri must start with mongodb:// or mongodb+srv://")
            problem = mongodb_uri_error(self.uri)
            if problem:
                raise ValueError(f"uri is not a valid MongoDB URI: {problem}")
        self._require_host("embedded_host")
        if self.retry_max < self.retry_initial:
            raise ValueError("retry_max must be >= retry_initial")


#: up to 30 days: a longer session or lock is a setting mistake more likely than a wish
LongSeconds = Annotated[float, msgspec.Meta(gt=0, le=30 * 86400)]
Count = Annotated[int, msgspec.Meta(ge=1, le=1000)]
#: what a cookie secret must have at least when configured (a generated one has 64)
COOKIE_SECRET_MIN = 32


class WebSettings(_Section):
    """The HTTP server (dashboard, API, health), its logins and its audit log."""

    host: str = "127.0.0.1"
    port: Port = 8080
    # signs the session cookie; "" = generated once into <data_dir>/cookie_secret (mode 0600).
    # Every daemon behind one address needs the same secret.
    cookie_secret: str = ""
    # mark cookies Secure on plain HTTP too (TLS ends at a proxy in front of TaskDash)
    secure_cookies: bool = False
    # trust X-Real-IP / X-Forwarded-For and X-Forwarded-Proto from a reverse proxy (the client's
    # address for the audit log and the login throttle); only behind a proxy that sets them
    xheaders: bool = False
    session_ttl: LongSeconds = 43200.0
    session_idle_timeout: LongSeconds = 3600.0
    # failed logins within this long count towards the delay and the lock
    login_window: LongSeconds = 900.0
    login_user_delay_after: Count = 3
    login_user_lock_after: Count = 10
    login_address_delay_after: Count = 10
    login_address_lock_after: Count = 50
    login_delay_initial: Seconds = 1.0
    login_delay_max: Seconds = 60.0
    login_lock_time: LongSeconds = 900.0
    audit_ttl_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 90.0
    # a session or token found live is not read again for this long (store/credcache.py):
    # a revocation made on this daemon counts at once, one made on another within this. 0 = off
    credential_cache_ttl: Annotated[float, msgspec.Meta(ge=0, le=60)] = 5.0
    # a task page asked while the same page's read is on its way shares that read
    # (store/flights.py); false = every request reads on its own
    share_reads: bool = True

    def __post_init__(self) -> None:
        self._require_host("host")
        if self.cookie_secret and len(self.cookie_secret) < COOKIE_SECRET_MIN:
            raise ValueError(
                f"cookie_secret must be at least {COOKIE_SECRET_MIN} characters (or empty: "
                "generated under data_dir)"
            )
        if self.session_idle_timeout > self.session_ttl:
            raise ValueError("session_idle_timeout must be at most session_ttl")
        if self.login_delay_max < self.login_delay_initial:
            raise ValueError("login_delay_max must be >= login_delay_initial")
        for kind in ("user", "address"):
            if getattr(self, f"login_{kind}_lock_after") < getattr(
                self, f"login_{kind}_delay_after"
            ):
                raise ValueError(f"login_{kind}_lock_after must be >= login_{kind}_delay_after")


class TcpSettings(_Section):
    """The tcpx interface (Register / Update / Find / Heartbeat frames of seed 002)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 8090
    # a connection that sends nothing, not even a heartbeat, for this long is closed
    idle_timeout: Seconds = 90.0
    # the largest frame accepted, the 4-byte length field included; a larger one closes the
    # connection (a frame's length cannot be trusted once it lies)
    max_frame_size: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=100000)] = 1000
    # replies a client has not read yet; past this the client is dropped, not buffered forever
    max_write_buffer: Annotated[int, msgspec.Meta(ge=1024, le=256 * 1024 * 1024)] = 4 * 1024 * 1024
    # Find answers from an in-process cache: changes by other writers (web, fetcher, another
    # daemon) are seen this many seconds late at most; this server's own writes at once. 0 = off
    find_cache_ttl: Annotated[float, msgspec.Meta(ge=0, le=300)] = 1.0
    # entries (tasks, or ids known not to exist) in that cache, least recently used evicted
    find_cache_size: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 100_000
    # every ttl/2 the server reads the tasks changed since its last look (each write stamps
    # ``changed_at``): an entry nobody changed stays valid, read again only every max_age.
    # The look reaches this far back: how far a daemon's clock may lag the writers' clocks
    find_cache_lookback: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 5.0
    find_cache_max_age: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 60.0

    def __post_init__(self) -> None:
        self._require_host("host")


class NsqSettings(_Section):
    """NSQ: real nsqd/nsqlookupd when addresses are given, else an embedded broker."""

    nsqd_tcp_addresses: list[str] = []
    lookupd_http_addresses: list[str] = []
    nsqd_http_address: str = ""
    service_topic: str = "taskdash.service"
    heartbeat_topic: str = "taskdash.heartbeat"
    status_topic: str = "taskdash.service_status"
    channel: str = "taskdash"
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=2500)] = 500
    requeue_delay: Seconds = 1.0
    # nsqd refuses a REQ delay above its --max-req-timeout (1 h)
    requeue_delay_max: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    max_message_size: Annotated[int, msgspec.Meta(ge=64, le=16 * 1024 * 1024)] = 65536
    heartbeat_batch_size: Annotated[int, msgspec.Meta(ge=1, le=100000)] = 1000
    # well under nsqd's message timeout (60 s), or batched messages would be redelivered
    heartbeat_flush_interval: Annotated[float, msgspec.Meta(gt=0, le=10)] = 0.25
    heartbeat_resolution: Annotated[float, msgspec.Meta(ge=0, le=60)] = 1.0
    dead_letter_ttl_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 30.0
    # an unexpected error applying a message (a bug, a write the store refuses) dead-letters it
    # once nsqd has delivered it this many times (max_attempts - 1 retries; deliveries requeued
    # during an outage count); only an unavailable store is retried without limit
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 5
    # a reader with messages in flight that settles none, or without a connection, this long
    # is not ready
    stall_after: Seconds = 30.0
    # with lookupd_http_addresses: how often the readers ask nsqlookupd for the topic's
    # producers (a new nsqd is found within this, plus pynsq's jitter of up to 30 %)
    lookupd_poll_interval: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 15  # whole seconds
    embedded_host: str = "127.0.0.1"
    embedded_tcp_port: Port = 4150
    embedded_http_port: Port = 4151
    embedded_lookupd_port: Port = 4161
    # --- embedded broker: disk-backed queues (nsqd's --mem-queue-size, --max-bytes-per-file,
    # --sync-every, --sync-timeout; what each guarantees after a crash: docs/nsq-broker.md) ---
    embedded_mem_queue_size: Annotated[int, msgspec.Meta(ge=0, le=100_000_000)] = 10000
    embedded_max_bytes_per_file: Annotated[int, msgspec.Meta(ge=4096, le=2**40)] = 104857600
    embedded_sync_every: Annotated[int, msgspec.Meta(ge=1, le=100_000_000)] = 2500
    embedded_sync_timeout: Seconds = 2.0
    # --- toward nsqd: TLS, AUTH, compression, connection (pynsq's options; docs/nsq-security.md)
    tls: bool = False
    tls_ca_file: str = ""  # CA bundle nsqd's certificate must chain to ("" = the system's)
    tls_cert_file: str = ""  # client certificate, for nsqd's --tls-client-auth-policy
    tls_key_file: str = ""
    tls_verify: bool = True  # check nsqd's name (and, without tls_ca_file, its certificate)
    auth_secret: str = ""  # prefer TASKDASH_NSQ__AUTH_SECRET or auth_secret_file; never logged
    auth_secret_file: str = ""
    compression: Literal["none", "deflate", "snappy"] = "none"
    deflate_level: Annotated[int, msgspec.Meta(ge=1, le=9)] = 6
    msg_timeout: Annotated[float, msgspec.Meta(ge=0, le=900)] = 0.0  # 0 = nsqd's --msg-timeout
    heartbeat_interval: Annotated[int, msgspec.Meta(ge=1, le=60)] = 30
    user_agent: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "taskdash"

    def __repr__(self) -> str:
        """Never the secret, whoever prints the settings."""
        fields = {f: getattr(self, f) for f in self.__struct_fields__}
        if fields["auth_secret"]:
            fields["auth_secret"] = "***"
        return "NsqSettings(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"

    def __post_init__(self) -> None:
        self._check_names_and_addresses()
        self._check_connection()

    def _check_names_and_addresses(self) -> None:
        for name in ("service_topic", "heartbeat_topic", "status_topic", "channel"):
            if not re.fullmatch(r"[.a-zA-Z0-9_-]{1,64}", getattr(self, name)):
                raise ValueError(f"{name} is not a valid NSQ name ([.a-zA-Z0-9_-], 1-64 chars)")
        for address in self.nsqd_tcp_addresses:
            if not re.fullmatch(r"[^\s:/]+:\d{1,5}", address):
                raise ValueError(f"nsqd_tcp_addresses entry {address!r} is not host:port")
        for url in self.lookupd_http_addresses:
            if http_url_error(url):
                raise ValueError(f"lookupd_http_addresses entry {url!r} is not an {HTTP_URL} URL")
        if self.nsqd_http_address and http_url_error(self.nsqd_http_address):
            raise ValueError(f"nsqd_http_address must be an {HTTP_URL} URL")
        if self.requeue_delay_max < self.requeue_delay:
            raise ValueError("requeue_delay_max must be >= requeue_delay")
        self._require_host("embedded_host")
        self._require_distinct_ports()

    def _check_connection(self) -> None:
        """Impossible combinations of the options toward nsqd, each refused in one line."""
        if self.tls_key_file and not self.tls_cert_file:
            raise ValueError("tls_key_file needs tls_cert_file (a client certificate and its key)")
        uses_tls = self.tls or self.nsqd_http_address.startswith("https://")
        if not uses_tls:
            for name in ("tls_ca_file", "tls_cert_file"):
                if getattr(self, name):
                    raise ValueError(
                        f"{name} has no use without TLS: set tls = true (or an https:// "
                        "nsqd_http_address)"
                    )
        if self.embedded and (self.tls or self.auth_secret or self.auth_secret_file):
            what = "tls" if self.tls else "auth_secret"
            raise ValueError(
                f"{what} needs a real nsqd: the embedded broker has neither TLS nor AUTH "
                "(set nsqd_tcp_addresses or lookupd_http_addresses)"
            )
        if uses_tls:
            from taskdash.nsq.tls import client_context

            client_context(**self.tls_files())
        if self.compression == "snappy" and importlib.util.find_spec("snappy") is None:
            raise ValueError(
                "compression snappy needs python-snappy: pip install 'taskdash[snappy]'"
            )
        if 0 < self.msg_timeout < 1:
            raise ValueError("msg_timeout must be 0 (nsqd's default) or 1 to 900 seconds")
        if self.msg_timeout and self.msg_timeout <= 2 * self.heartbeat_flush_interval:
            raise ValueError(
                "msg_timeout must be more than twice heartbeat_flush_interval, or batched "
                "messages are redelivered before they are settled"
            )
        if self.auth_secret and self.auth_secret_file:
            raise ValueError("auth_secret must be empty when auth_secret_file is set (keep one)")
        if self.auth_secret_file:
            self.secret()  # readable, private, not empty

    def tls_files(self) -> dict[str, Any]:
        """The TLS keys as :func:`taskdash.nsq.tls.client_context` takes them."""
        return {
            "ca_file": self.tls_ca_file,
            "cert_file": self.tls_cert_file,
            "key_file": self.tls_key_file,
            "verify": self.tls_verify,
        }

    def secret(self) -> str:
        """The AUTH secret: ``auth_secret``, else the first line of ``auth_secret_file``."""
        if not self.auth_secret_file:
            return self.auth_secret
        return read_secret_file("auth_secret_file", self.auth_secret_file)

    def _require_distinct_ports(self) -> None:
        """Two embedded servers on one port: the second bind would fail at start."""
        seen: dict[int, str] = {}
        for name in ("embedded_tcp_port", "embedded_http_port", "embedded_lookupd_port"):
            port = getattr(self, name)
            if port and port in seen:
                raise ValueError(f"{name} is the same port as {seen[port]} ({port})")
            seen[port] = name

    @property
    def embedded(self) -> bool:
        """No external nsqd or nsqlookupd configured: run our own broker in-process."""
        return not self.nsqd_tcp_addresses and not self.lookupd_http_addresses


class CheckerSettings(_Section):
    """The heartbeat checker: online -> stale -> offline, with damping and self-preservation."""

    enabled: bool = True
    check_interval: Seconds = 2.0
    stale_after: Seconds = 15.0
    offline_after: Seconds = 60.0
    recover_beats: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 2
    self_preservation: bool = True
    self_preservation_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    self_preservation_min: Positive = 5
    # after this long in the mode, silence is trusted again (0 = the mode may last forever)
    self_preservation_max: Annotated[float, msgspec.Meta(ge=0, le=86400 * 7)] = 600.0
    history_ttl_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 30.0

    def __post_init__(self) -> None:
        if self.offline_after <= self.stale_after:
            raise ValueError("offline_after must be greater than stale_after")


class FetcherSettings(_Section):
    """The metadata fetcher: GET/POST every service URL, with SSRF allow-rules."""

    enabled: bool = True
    fetch_interval: Seconds = 30.0
    method: Literal["GET", "POST"] = "GET"
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 64
    connect_timeout: Seconds = 5.0
    request_timeout: Seconds = 10.0
    max_body_size: Annotated[int, msgspec.Meta(ge=1024, le=256 * 1024 * 1024)] = 8 * 1024 * 1024
    backoff_initial: Seconds = 5.0
    backoff_max: Seconds = 600.0
    max_redirects: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3
    allowed_schemes: list[Literal["http", "https"]] = msgspec.field(
        default_factory=lambda: ["http", "https"]
    )
    allowed_hosts: list[str] = []
    allowed_cidrs: list[str] = []
    refused_cidrs: list[str] = msgspec.field(
        default_factory=lambda: [
            "169.254.0.0/16",
            "fe80::/10",
            "100.100.100.200/32",
            "fd00:ec2::254/128",
        ]
    )
    node_heartbeat_interval: Seconds = 5.0
    node_timeout: Seconds = 15.0

    def __post_init__(self) -> None:
        for name in ("allowed_cidrs", "refused_cidrs"):
            for cidr in getattr(self, name):
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise ValueError(f"{name} entry {cidr!r} is not a CIDR") from None
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must be >= backoff_initial")
        if self.node_timeout <= self.node_heartbeat_interval:
            raise ValueError("node_timeout must be greater than node_heartbeat_interval")


class TasksSettings(_Section):
    """Tasks' daily windows (docs/windows.md): the zone they are read in, what is running."""

    # an IANA zone name (Europe/Paris); "" = this machine's zone (/etc/localtime)
    window_timezone: str = ""
    # statuses that mean running (compared stripped and casefolded); the others are not
    running_statuses: list[Annotated[str, msgspec.Meta(min_length=1, max_length=64)]] = (
        msgspec.field(default_factory=lambda: ["running"])
    )
    # how often the clock is checked for windows opening or closing
    window_check_interval: Annotated[float, msgspec.Meta(gt=0, le=60)] = 15.0

    def __post_init__(self) -> None:
        if self.window_timezone:
            try:
                zone(self.window_timezone)
            except ValidationError as exc:
                raise ValueError(f"window_timezone {exc}") from None
        if not any(s.strip() for s in self.running_statuses):
            raise ValueError("running_statuses must name at least one status")

    def window_rules(self) -> Rules:
        """How windows are judged, from these settings."""
        where = zone(self.window_timezone) if self.window_timezone else machine_zone()
        running = frozenset(s.strip().casefold() for s in self.running_statuses if s.strip())
        return Rules(where, running)


class PeriodicSettings(_Section):
    """The periodic task service (``taskdash periodic``): gRPC + HTTP task queue with leases."""

    node_id: str = ""  # "" = [daemon] node_id, else host:pid
    grpc_host: str = "127.0.0.1"
    grpc_port: Port = 50051
    http_host: str = "127.0.0.1"
    http_port: Port = 8081
    visibility_timeout: Annotated[float, msgspec.Meta(gt=0, le=43200)] = 300.0
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    # GetTaskList's limit 0 means 10, so the maximum cannot be lower
    max_limit: Annotated[int, msgspec.Meta(ge=10, le=100000)] = 1000
    max_task_data_size: Annotated[int, msgspec.Meta(ge=2, le=16 * 1024 * 1024)] = 65536
    max_body_size: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    admin_token: str = ""
    advertise_url: str = ""
    service_id: Annotated[str, msgspec.Meta(pattern=r"^\S{1,128}$")] = "taskdash-periodic"
    announce_interval: Seconds = 5.0
    metadata_limit: Annotated[int, msgspec.Meta(ge=1, le=100000)] = 1000
    # bytes of task_list in one lease reply: gRPC clients refuse replies over 4 MiB by default,
    # and a refused reply would still have leased its tasks; 64 KiB is left for the framing
    max_reply_size: Annotated[int, msgspec.Meta(ge=4096, le=1024 * 1024 * 1024)] = (
        4 * 1024 * 1024 - 64 * 1024
    )

    def __post_init__(self) -> None:
        self._require_host("grpc_host")
        self._require_host("http_host")
        if self.grpc_port and self.grpc_port == self.http_port:
            raise ValueError(f"http_port is the same port as grpc_port ({self.grpc_port})")
        if self.admin_token and len(self.admin_token) < 16:
            raise ValueError("admin_token must be at least 16 characters (or empty: no admin)")
        if self.advertise_url and http_url_error(self.advertise_url):
            raise ValueError(f"advertise_url must be an {HTTP_URL} URL")
        if self.max_task_data_size > self.max_body_size:
            raise ValueError("max_task_data_size must be at most max_body_size")
        if self.max_task_data_size + 2048 > self.max_reply_size:
            raise ValueError(
                "max_reply_size must hold one task of max_task_data_size (plus 2048 bytes)"
            )


#: What alerts are about (docs/alerts.md); a webhook's ``events`` filter names these or patterns
#: of them (``service.*``). A new producer adds its kind here.
ALERT_KINDS = (
    "service.stale",
    "service.offline",
    "service.online",
    "periodic.task_dead",
    "task.out_of_window",  # a daily window's flag (docs/windows.md)
    "task.in_window",
    "alerts.suppressed",  # the summary sent once a subject's rate limit held some back
)


class WebhookSettings(_Section):
    """One receiver of alerts (``[[alerts.webhooks]]``)."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    url: str
    format: Literal["json", "slack"] = "json"
    secret: str = ""  # signs each delivery (X-TaskDash-Signature); prefer secret_file
    secret_file: str = ""
    events: list[str] = []  # kinds or patterns (service.*); empty = every kind

    def __repr__(self) -> str:
        """Never the secret, whoever prints the settings."""
        secret = "***" if self.secret else ""
        return (
            f"WebhookSettings(name={self.name!r}, url={self.url!r}, format={self.format!r}, "
            f"secret={secret!r}, secret_file={self.secret_file!r}, events={self.events!r})"
        )

    def __post_init__(self) -> None:
        problem = http_url_error(self.url)
        if problem:
            raise ValueError(f"url {self.url!r} is not an {HTTP_URL} URL: {problem}")
        if self.secret and self.secret_file:
            raise ValueError("secret must be empty when secret_file is set (keep one)")
        if self.secret_file:
            self.signing_secret()  # readable, private, not empty
        for pattern in self.events:
            if not any(fnmatch.fnmatchcase(kind, pattern) for kind in ALERT_KINDS):
                raise ValueError(
                    f"events entry {pattern!r} matches no alert kind ({', '.join(ALERT_KINDS)})"
                )

    def signing_secret(self) -> str:
        """The HMAC key: ``secret``, else the content of ``secret_file`` ("" = unsigned)."""
        if not self.secret_file:
            return self.secret
        return read_secret_file("secret_file", self.secret_file)

    def wants(self, kind: str) -> bool:
        """Whether this webhook receives alerts of ``kind``."""
        return not self.events or any(fnmatch.fnmatchcase(kind, p) for p in self.events)


class AlertsSettings(_Section):
    """Webhooks told when services change state or periodic tasks die (docs/alerts.md)."""

    webhooks: list[WebhookSettings] = []
    poll_interval: Seconds = 1.0
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=256)] = 8
    retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 5
    backoff_initial: Seconds = 2.0
    backoff_max: Seconds = 300.0
    connect_timeout: Seconds = 5.0
    request_timeout: Seconds = 10.0
    max_response_size: Annotated[int, msgspec.Meta(ge=1024, le=16 * 1024 * 1024)] = 65536
    claim_lease: Seconds = 60.0
    rate_limit: Annotated[int, msgspec.Meta(ge=0, le=10000)] = 5
    rate_window: Seconds = 600.0
    max_event_age: Seconds = 3600.0
    keep_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 30.0

    def __post_init__(self) -> None:
        names = [hook.name for hook in self.webhooks]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"webhooks name {name!r} is used twice (names must be unique)")
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must be >= backoff_initial")
        if self.claim_lease <= self.connect_timeout + self.request_timeout:
            raise ValueError(
                "claim_lease must be longer than connect_timeout + request_timeout (else a "
                "delivery still in flight is taken over and sent twice)"
            )


class MetricsSettings(_Section):
    """``/metrics`` (Prometheus) on the web port and on the periodic service's HTTP port."""

    enabled: bool = True
    # "" = open to whoever reaches the port; else scrapers send "Authorization: Bearer <token>"
    token: str = ""
    token_file: str = ""  # the token from a file (mode 0600), instead of ``token``
    # services by state and periodic queue depths are counted in MongoDB at most this often
    store_counts_ttl: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 5.0

    def __post_init__(self) -> None:
        if self.token and self.token_file:
            raise ValueError("token must be empty when token_file is set (keep one)")
        if self.token and len(self.token) < METRICS_TOKEN_MIN:
            raise ValueError(f"token must be at least {METRICS_TOKEN_MIN} characters (or empty)")
        if self.token_file and len(self.bearer()) < METRICS_TOKEN_MIN:
            raise ValueError(f"token_file must hold at least {METRICS_TOKEN_MIN} characters")

    def __repr__(self) -> str:
        """Never the token, whoever prints the settings."""
        token = "***" if self.token else ""
        return (
            f"MetricsSettings(enabled={self.enabled!r}, token={token!r}, "
            f"token_file={self.token_file!r}, store_counts_ttl={self.store_counts_ttl!r})"
        )

    def bearer(self) -> str:
        """The token scrapers must send ("" = open): ``token``, else ``token_file``'s."""
        if not self.token_file:
            return self.token
        return read_secret_file("token_file", self.token_file)


#: the shortest ``[metrics] token`` accepted (a guessable token is no protection)
METRICS_TOKEN_MIN = 16


class Settings(_Section):
    """Every section; what :func:`load` returns."""

    daemon: DaemonSettings = msgspec.field(default_factory=DaemonSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    mongodb: MongoSettings = msgspec.field(default_factory=MongoSettings)
    web: WebSettings = msgspec.field(default_factory=WebSettings)
    tcp: TcpSettings = msgspec.field(default_factory=TcpSettings)
    nsq: NsqSettings = msgspec.field(default_factory=NsqSettings)
    checker: CheckerSettings = msgspec.field(default_factory=CheckerSettings)
    fetcher: FetcherSettings = msgspec.field(default_factory=FetcherSettings)
    tasks: TasksSettings = msgspec.field(default_factory=TasksSettings)
    periodic: PeriodicSettings = msgspec.field(default_factory=PeriodicSettings)
    alerts: AlertsSettings = msgspec.field(default_factory=AlertsSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)

    def __post_init__(self) -> None:
        # A beat absorbed by the resolution is not stored: with a resolution near stale_after,
        # a service beating steadily would look quiet between stored beats and flap.
        if self.nsq.heartbeat_resolution * 2 > self.checker.stale_after:
            raise ValueError("nsq.heartbeat_resolution must be at most half of checker.stale_after")

    def data_path(self, *parts: str) -> Path:
        """A path under the daemon's data directory."""
        return Path(self.daemon.data_dir).joinpath(*parts)

    def embedded_mongodb_dir(self) -> Path:
        """Where the embedded nx-27017 keeps its data: the daemon's and the CLI's, the same."""
        configured = self.mongodb.embedded_data_dir
        return Path(configured) if configured else self.data_path("mongodb")


def _parse_env_value(raw: str) -> Any:
    """Read an override as a TOML value (``8081``, ``true``, ``["a:1"]``), else as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Collect ``TASKDASH_SECTION__KEY`` variables; returns (overrides, key path -> var name)."""
    overrides: dict[str, dict[str, Any]] = {}
    origins: dict[str, str] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if not section or not key:
            raise ConfigError(f"{name}: expected TASKDASH_<SECTION>__<KEY>")
        overrides.setdefault(section, {})[key] = _parse_env_value(raw)
        origins[f"{section}.{key}"] = name
        origins.setdefault(section, name)
    return overrides, origins


def _is_text(annotation: Any) -> bool:
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation is str


def _keep_text_for_string_fields(
    overrides: dict[str, dict[str, Any]], env: Mapping[str, str], origins: Mapping[str, str]
) -> None:
    """``TASKDASH_DAEMON__NODE_ID=42`` means the text "42", not a number a text key refuses."""
    sections = {f.name: f.type for f in msgspec.structs.fields(Settings)}
    for section, values in overrides.items():
        cls = sections.get(section)
        if not (isinstance(cls, type) and issubclass(cls, msgspec.Struct)):
            continue
        text_keys = {f.name for f in msgspec.structs.fields(cls) if _is_text(f.type)}
        for key in values.keys() & text_keys:
            values[key] = env[origins[f"{section}.{key}"]]


def _sections() -> dict[str, Any]:
    """Section name -> its struct."""
    return {f.name: f.type for f in msgspec.structs.fields(Settings)}


def _keys(section: str) -> dict[str, Any]:
    """Key name -> its annotation in ``section`` ({} for an unknown section)."""
    cls = _sections().get(section)
    return {f.name: f.type for f in msgspec.structs.fields(cls)} if cls else {}


def env_name(section: str, key: str) -> str:
    """The variable that overrides ``section.key``: ``TASKDASH_WEB__PORT``."""
    return f"{ENV_PREFIX}{section.upper()}__{key.upper()}"


def _squash(name: str) -> str:
    """Names compared without case, dots or underscores: WEB_PORT, web.port, web__port agree."""
    return re.sub(r"[._]", "", name).lower()


def _nearest_key(typed: str) -> tuple[str, str] | None:
    """The (section, key) a mistyped name most likely meant, if any is close enough."""
    known = {_squash(s + k): (s, k) for s in _sections() for k in _keys(s)}
    found = difflib.get_close_matches(_squash(typed), known, n=1, cutoff=0.8)
    return known[found[0]] if found else None


def _unknown_key_hint(path: str, var: str | None) -> str:
    """``; did you mean ...?`` for an unknown key or section, in the form it was written."""
    if var:
        near = _nearest_key(var[len(ENV_PREFIX) :])
        return f"; did you mean {env_name(*near)}?" if near else ""
    if "." in path:
        near = _nearest_key(path)
        return f"; did you mean {near[0]}.{near[1]}?" if near else ""
    sections = difflib.get_close_matches(path, _sections(), n=1, cutoff=0.6)
    return f"; did you mean [{sections[0]}]?" if sections else ""


def _allowed_values(path: str) -> tuple[Any, ...]:
    """The values a ``Literal`` key (or list of them) accepts, to list them in its error."""
    section, _, key = path.partition(".")
    annotation = _keys(section).get(key)
    while typing.get_origin(annotation) in (Annotated, list):
        annotation = typing.get_args(annotation)[0]
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()


def _key_of_check(path: str, message: str) -> tuple[str, str]:
    """A section's check says ``key is/must ...``: report ``section.key: [is] ...``."""
    key, _, rest = message.partition(" ")
    if rest and key in _keys(path):
        return f"{path}.{key}", rest.removeprefix("is ")
    return path, message


def _origin(path: str, message: str, source: str, origins: Mapping[str, str]) -> str:
    """Where the value came from: its variable, else the file; a check names every key used."""
    section, _, _ = path.partition(".")
    mentioned = [k for k in _keys(section) if re.search(rf"\b{k}\b", message)]
    paths = [path] + [f"{section}.{k}" for k in mentioned if f"{section}.{k}" != path]
    found = list(dict.fromkeys(origins.get(p, source) for p in paths))
    if len(found) > 1 and DEFAULTS in found:  # the variable is what the user can change
        found.remove(DEFAULTS)
    return ", ".join(found)


def _describe(err: msgspec.ValidationError, source: str, origins: Mapping[str, str]) -> str:
    """Turn msgspec's ``... - at `$.web.port``` into ``web.port: ... (in FILE)``."""
    text = str(err)
    message, found, where = text.rpartition(" - at `")
    if not found:
        message, where = text, ""
    path = where.rstrip("`").removeprefix("$").lstrip(".")
    unknown = re.match(r"Object contains unknown field `([^`]+)`", message)
    if unknown:
        path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
        var = origins.get(path)
        return f"{path}: unknown key (in {var or source}){_unknown_key_hint(path, var)}"
    if not path:  # a check across sections names its keys in the message
        named = [k for k in re.findall(r"\b[a-z]+\.[a-z_]+\b", message) if k in origins]
        origin = ", ".join(origins[k] for k in named) or source
        return f"{message} (in {origin})"
    path, message = _key_of_check(path, message)
    # fetcher.allowed_schemes[1], alerts.webhooks[0].format -> the key they are in
    key_path = re.sub(r"\[\d+\].*$", "", path)
    bad_enum = re.fullmatch(r"Invalid enum value (.+)", message)
    allowed = _allowed_values(key_path) if bad_enum else ()
    if bad_enum and allowed:
        message = f"Expected one of {', '.join(map(str, allowed))}, got {bad_enum.group(1)}"
    return f"{path}: {message} (in {_origin(key_path, message, source, origins)})"


def origin_of(
    key: str, path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> str:
    """Where ``section.key`` came from (its variable, else the file), for errors found later.

    A value can be valid text yet unusable at start (a log file in a missing directory):
    the error line still names the place to fix it.
    """
    env = os.environ if env is None else env
    variable = env_name(*key.split(".", 1))
    if variable in env:
        return variable
    return str(path) if path is not None else DEFAULTS


class EnvWarning(NamedTuple):
    """A ``TASKDASH_*`` variable that is no override, and the one it most likely meant."""

    variable: str
    did_you_mean: str  # "" when no key is close

    def __str__(self) -> str:
        hint = (
            f"; did you mean {self.did_you_mean}?"
            if self.did_you_mean
            else f" (settings are {ENV_PREFIX}<SECTION>__<KEY>)"
        )
        return f"{self.variable} is not a setting and is ignored{hint}"


def env_warnings(env: Mapping[str, str] | None = None) -> list[EnvWarning]:
    """The ``TASKDASH_*`` variables that are no override, so would change nothing unseen.

    A variable with ``__`` naming an unknown key is an error at load, like an unknown key in
    the file; one without ``__`` (``TASKDASH_WEB_PORT``) is not read at all, so it is worth a
    warning naming the key it most likely meant. ``TASKDASH_TEST_*`` belong to the test suite.
    """
    env = os.environ if env is None else env
    warnings = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" in name:
            continue
        if name.startswith(ENV_NOT_SETTINGS_PREFIX):
            continue
        near = _nearest_key(name[len(ENV_PREFIX) :])
        warnings.append(EnvWarning(name, env_name(*near) if near else ""))
    return warnings


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from ``path`` (optional) and ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    source = DEFAULTS
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    overrides, origins = _env_overrides(env)
    _keep_text_for_string_fields(overrides, env, origins)
    for section, values in overrides.items():
        existing = data.get(section)
        data[section] = {**existing, **values} if isinstance(existing, dict) else values
    try:
        return msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(exc, source, origins)) from None
