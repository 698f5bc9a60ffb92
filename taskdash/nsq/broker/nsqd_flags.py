"""nsqd's own command-line flags for ``taskdash nsqd``, so harnesses written for nsqd can start it.

Spelled as nsqd 1.3 spells them (``--tcp-address=127.0.0.1:4150``, also ``-tcp-address`` and
a separate value, as Go's flag package accepts), with nsqd's value syntax (Go durations such as
``60s``, ``15m0s``, ``500ms``). A flag overrides the matching ``[nsq] embedded_*`` setting or
built-in limit. A flag nsqd has but this broker does not is refused, as is an unknown one, with
one line naming it.
"""

from __future__ import annotations

import argparse
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: every flag of nsqd 1.3 (apps/nsqd/options.go), to tell "not supported here" from "unknown"
NSQD_FLAGS = frozenset(
    [
        "version",
        "config",
        "log-level",
        "log-prefix",
        "verbose",
        "node-id",
        "worker-id",
        "https-address",
        "http-address",
        "tcp-address",
        "auth-http-address",
        "auth-http-request-method",
        "broadcast-address",
        "broadcast-tcp-port",
        "broadcast-http-port",
        "lookupd-tcp-address",
        "http-client-connect-timeout",
        "http-client-request-timeout",
        "topology-region",
        "topology-zone",
        "data-path",
        "mem-queue-size",
        "max-bytes-per-file",
        "sync-every",
        "sync-timeout",
        "queue-scan-worker-pool-max",
        "queue-scan-selection-count",
        "msg-timeout",
        "max-msg-timeout",
        "max-msg-size",
        "max-req-timeout",
        "max-body-size",
        "max-heartbeat-interval",
        "max-rdy-count",
        "max-output-buffer-size",
        "max-output-buffer-timeout",
        "min-output-buffer-timeout",
        "output-buffer-timeout",
        "max-channel-consumers",
        "statsd-address",
        "statsd-interval",
        "statsd-mem-stats",
        "statsd-prefix",
        "statsd-udp-packet-size",
        "statsd-exclude-ephemeral",
        "e2e-processing-latency-percentile",
        "e2e-processing-latency-window-time",
        "tls-cert",
        "tls-key",
        "tls-client-auth-policy",
        "tls-root-ca-file",
        "tls-required",
        "tls-min-version",
        "deflate",
        "max-deflate-level",
        "snappy",
        "enable-experiment",
    ]
)

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def go_duration(text: str) -> float:
    """Seconds in a Go duration (``1m30s``, ``500ms``, ``0``); ValueError if it is not one."""
    rest = text.lstrip("+")
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(text)
    total, pos = 0.0, 0
    while pos < len(rest):
        match = _DURATION_PART.match(rest, pos)
        if match is None:
            raise ValueError(text)
        total += float(match[1]) * _UNIT_SECONDS[match[2]]
        pos = match.end()
    return total


def host_port(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``, ``:port`` = every interface), as nsqd's listeners take."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(text)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port)


def _int(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text, 10)
        if value < minimum:
            raise ValueError(text)
        return value

    return parse


def _ms(minimum_ms: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = round(go_duration(text) * 1000)
        if value < minimum_ms:
            raise ValueError(text)
        return value

    return parse


@dataclass(frozen=True, slots=True)
class Flag:
    """One supported nsqd flag: how its value reads and what it sets."""

    name: str
    parse: Callable[[str], Any]
    expects: str  # for the error line
    help: str
    repeat: bool = False


SUPPORTED: tuple[Flag, ...] = (
    Flag("tcp-address", host_port, "host:port", "nsqd TCP listener (default [nsq] embedded_*)"),
    Flag("http-address", host_port, "host:port", "nsqd HTTP listener, same host as TCP"),
    Flag("data-path", str, "a directory", "where queues are kept (default <data_dir>/nsq)"),
    Flag("broadcast-address", str, "a host name", "address registered with lookupd"),
    Flag(
        "lookupd-tcp-address",
        host_port,
        "host:port",
        "nsqlookupd TCP address to register with (repeatable)",
        repeat=True,
    ),
    Flag("mem-queue-size", _int(0), "an integer >= 0", "messages per queue kept in memory"),
    Flag("max-bytes-per-file", _int(4096), "an integer >= 4096", "disk queue segment size"),
    Flag("sync-every", _int(1), "an integer >= 1", "messages per disk queue fsync"),
    Flag("sync-timeout", _ms(1), "a duration such as 2s", "time between disk queue fsyncs"),
    Flag("max-msg-size", _int(1), "an integer >= 1", "largest message body in bytes"),
    Flag("max-body-size", _int(1), "an integer >= 1", "largest MPUB/IDENTIFY body in bytes"),
    Flag("msg-timeout", _ms(1), "a duration such as 60s", "default in-flight timeout"),
    Flag("max-msg-timeout", _ms(1), "a duration such as 15m", "largest in-flight timeout"),
    Flag("max-req-timeout", _ms(1), "a duration such as 1h", "largest REQ/DPUB delay"),
    Flag("max-rdy-count", _int(1), "an integer >= 1", "largest RDY a client may send"),
    Flag("max-heartbeat-interval", _ms(1), "a duration such as 60s", "largest client heartbeat"),
)

_BY_DEST = {flag.name.replace("-", "_"): flag for flag in SUPPORTED}


class _Store(argparse.Action):
    """Parse the value with the flag's own reader; a bad value is one line naming the flag."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        flag = _BY_DEST[self.dest.removeprefix("nsqd_")]
        try:
            value = flag.parse(values)
        except ValueError:
            raise argparse.ArgumentError(
                self, f"invalid value {values!r} (expected {flag.expects})"
            ) from None
        if flag.repeat:
            value = [*(getattr(namespace, self.dest) or []), value]
        setattr(namespace, self.dest, value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The supported nsqd flags, in both ``--name`` and ``-name`` spellings."""
    group = parser.add_argument_group("nsqd flags (as nsqd 1.3 spells them)")
    for flag in SUPPORTED:
        group.add_argument(
            f"--{flag.name}",
            f"-{flag.name}",
            dest=f"nsqd_{flag.name.replace('-', '_')}",
            action=_Store,
            metavar="VALUE",
            help=flag.help,
        )


def refused_flag(program: str, known: frozenset[str], extras: list[str]) -> str:
    """One line naming the first argument ``taskdash <program>`` does not take: one of the
    real program's flags it does not support, an unknown flag, or a stray argument."""
    first = extras[0]
    name = first.lstrip("-").split("=", 1)[0]
    if first.startswith("-") and name in known:
        return f"{program} flag --{name} is not supported by taskdash {program}"
    if first.startswith("-"):
        return f"unknown {program} flag {first.split('=', 1)[0]}"
    return f"unexpected argument {first!r}"


def unknown_flag_error(extras: list[str]) -> str:
    """For ``taskdash nsqd``."""
    return refused_flag("nsqd", NSQD_FLAGS, extras)


class FlagError(ValueError):
    """Flags that cannot go together (one line for the user)."""


def broker_overrides(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    """The Broker keyword arguments once the flags given are applied over ``defaults``."""
    kwargs = dict(defaults)
    given = {
        name: getattr(args, f"nsqd_{name}")
        for name in _BY_DEST
        if getattr(args, f"nsqd_{name}", None) is not None
    }
    tcp = given.pop("tcp_address", None)
    http = given.pop("http_address", None)
    if tcp and http and tcp[0] != http[0]:
        raise FlagError(
            f"--tcp-address and --http-address must use the same host here ({tcp[0]} vs {http[0]})"
        )
    if tcp or http:
        kwargs["host"] = (tcp or http)[0]
        if "broadcast_address" not in given:
            host = kwargs["host"]
            kwargs["broadcast_address"] = socket.gethostname() if host == "0.0.0.0" else host
    if tcp:
        kwargs["tcp_port"] = tcp[1]
    if http:
        kwargs["http_port"] = http[1]
    if "data_path" in given:
        kwargs["data_dir"] = Path(given.pop("data_path")).absolute()
    if "lookupd_tcp_address" in given:
        # a real nsqlookupd answers for the cluster: no lookupd HTTP of our own
        kwargs["lookupd_tcp_addresses"] = [f"{h}:{p}" for h, p in given.pop("lookupd_tcp_address")]
        kwargs["lookupd_http_port"] = None
    renamed = {
        "msg_timeout": "msg_timeout_ms",
        "max_msg_timeout": "max_msg_timeout_ms",
        "max_req_timeout": "max_req_timeout_ms",
        "sync_timeout": "sync_timeout_ms",
        "max_heartbeat_interval": "max_heartbeat_interval_ms",
    }
    for name, value in given.items():
        kwargs[renamed.get(name, name)] = value
    return kwargs
