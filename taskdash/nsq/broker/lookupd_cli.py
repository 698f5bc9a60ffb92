"""``taskdash nsqlookupd``: flags as nsqlookupd 1.3 spells them, and the serving loop."""

from __future__ import annotations

import argparse
import asyncio
import signal

import structlog

from taskdash.nsq.broker.nsqd_flags import go_duration, host_port, refused_flag

log = structlog.get_logger("taskdash.nsq.lookupd")

DESCRIPTION = """\
Run a standalone nsqlookupd: nsqd nodes (real ones, or 'taskdash nsqd --lookupd-tcp-address')
register their topics and channels over its TCP protocol, and consumers find them through its
HTTP API (/lookup, /topics, /channels, /nodes, /ping, /info). Runs until SIGTERM or Ctrl-C.
Unlike nsqlookupd, it listens on 127.0.0.1 unless told otherwise."""

EPILOG = """\
Examples:
  taskdash nsqlookupd
  taskdash nsqlookupd --tcp-address=0.0.0.0:4160 --http-address=0.0.0.0:4161

Exit codes: 0 after a clean stop, 1 if a port could not be bound, 2 bad flags."""

#: every flag of nsqlookupd 1.3 (apps/nsqlookupd/options.go)
NSQLOOKUPD_FLAGS = frozenset(
    [
        "version",
        "config",
        "log-level",
        "log-prefix",
        "verbose",
        "tcp-address",
        "http-address",
        "broadcast-address",
        "inactive-producer-timeout",
        "tombstone-lifetime",
    ]
)


def _duration(text: str) -> float:
    try:
        value = go_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r} (a duration such as 300s)"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r} (a duration above 0)")
    return value


def _address(text: str) -> tuple[str, int]:
    try:
        return host_port(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r} (host:port)") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """nsqlookupd's flags, ``--name`` and ``-name``."""
    group = parser.add_argument_group("nsqlookupd flags (as nsqlookupd 1.3 spells them)")
    for name, kind, default, text in (
        ("tcp-address", _address, "127.0.0.1:4160", "TCP listener for nsqd registrations"),
        ("http-address", _address, "127.0.0.1:4161", "HTTP listener (/lookup ...)"),
        ("broadcast-address", str, None, "address of this lookupd (default: the host name)"),
        ("inactive-producer-timeout", _duration, "300s", "forget an nsqd silent this long"),
        ("tombstone-lifetime", _duration, "45s", "how long a tombstoned producer is hidden"),
    ):
        group.add_argument(
            f"--{name}",
            f"-{name}",
            dest=f"lookupd_{name.replace('-', '_')}",
            type=kind,
            default=kind(default) if default else None,
            metavar="VALUE",
            help=f"{text} (default {default or 'the host name'})",
        )


def unknown_flag_error(extras: list[str]) -> str:
    """For ``taskdash nsqlookupd``."""
    return refused_flag("nsqlookupd", NSQLOOKUPD_FLAGS, extras)


async def serve(args: argparse.Namespace) -> int:
    """Listen until SIGTERM/SIGINT; 1 if a port cannot be bound."""
    from taskdash.nsq.broker.lookupd_tcp import Lookupd

    tcp_host, tcp_port = args.lookupd_tcp_address
    http_host, http_port = args.lookupd_http_address
    lookupd = Lookupd(
        host=tcp_host,
        tcp_port=tcp_port,
        http_port=http_port,
        http_host=http_host,
        broadcast_address=args.lookupd_broadcast_address,
        inactive_producer_timeout=args.lookupd_inactive_producer_timeout,
        tombstone_lifetime=args.lookupd_tombstone_lifetime,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await lookupd.start()
    except OSError as exc:
        log.error("start_failed", error=str(exc), tcp_port=tcp_port, http_port=http_port)
        return 1
    log.info("nsqlookupd_ready", tcp_port=lookupd.tcp_port, http_port=lookupd.http_port)
    await stop.wait()
    await lookupd.stop()
    return 0
