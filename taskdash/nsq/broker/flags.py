"""``taskdash nsqd``'s TLS, compression and AUTH flags, under nsqd's own names and syntax.

Go's flag package: a boolean flag alone means true (``--snappy``), ``--snappy=false`` turns it
off; durations carry a unit (``2s``, ``500ms``); ``--auth-http-address`` may be repeated.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from taskdash.nsq.broker.options import (
    CLIENT_AUTH_POLICIES,
    TLS_VERSIONS,
    SecurityOptions,
    TLSRequired,
)

_GO_TRUE = ("1", "t", "true")
_GO_FALSE = ("0", "f", "false")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def go_bool(text: str) -> bool:
    """Go's strconv.ParseBool, as nsqd's boolean flags take it."""
    value = text.lower()
    if value in _GO_TRUE:
        return True
    if value in _GO_FALSE:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true or false)")


def go_duration(text: str) -> float:
    """Go's time.ParseDuration (``2s``, ``1m30s``, ``500ms``), in seconds."""
    if text == "0":
        return 0.0
    if not text:
        raise argparse.ArgumentTypeError("an empty duration")
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION.match(text, pos)
        if match is None:
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 2s, 500ms)")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total


def _tls_required(text: str) -> TLSRequired:
    try:
        return TLSRequired.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--tls-required: ")) from None


def _port_of(text: str) -> int:
    _host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not <addr>:<port>")
    return int(port)


def add_security_flags(parser: argparse.ArgumentParser) -> None:
    """nsqd's TLS, compression and AUTH flags, with nsqd's defaults."""
    group = parser.add_argument_group("TLS, compression and AUTH (nsqd's flags)")
    add = group.add_argument
    add("--tls-cert", default="", metavar="PATH", help="path to certificate file")
    add("--tls-key", default="", metavar="PATH", help="path to key file")
    add(
        "--tls-client-auth-policy",
        default="",
        choices=[p for p in CLIENT_AUTH_POLICIES if p],
        help="client certificate auth policy ('require' or 'require-verify')",
    )
    add("--tls-root-ca-file", default="", metavar="PATH", help="path to certificate authority file")
    add(
        "--tls-required",
        type=_tls_required,
        nargs="?",
        const=TLSRequired.REQUIRED,
        default=TLSRequired.NOT_REQUIRED,
        metavar="true|false|tcp-https",
        help="require TLS for client connections (true, false, tcp-https)",
    )
    add(
        "--tls-min-version",
        default="",
        choices=[v for v in TLS_VERSIONS if v],
        help="minimum TLS version acceptable",
    )
    add(
        "--https-address",
        type=_port_of,
        default=None,
        metavar="ADDR:PORT",
        help="<addr>:<port> to listen on for HTTPS clients (the port; default 4152 with TLS)",
    )
    for name, default, text in (
        ("--deflate", True, "enable deflate feature negotiation (client compression)"),
        ("--snappy", None, "enable snappy feature negotiation (client compression)"),
    ):
        add(name, type=go_bool, nargs="?", const=True, default=default, metavar="BOOL", help=text)
    add(
        "--max-deflate-level",
        type=int,
        default=6,
        metavar="N",
        help="max deflate compression level a client can negotiate (1-9)",
    )
    add(
        "--auth-http-address",
        action="append",
        default=[],
        metavar="ADDR",
        help="<addr>:<port> or a full url to query auth server (may be given multiple times)",
    )
    for name, default in (
        ("--http-client-connect-timeout", 2.0),
        ("--http-client-request-timeout", 5.0),
    ):
        add(
            name,
            type=go_duration,
            default=default,
            metavar="DURATION",
            help=f"timeout for HTTP {name.split('-')[-2]} (e.g. 2s)",
        )


#: nsqd listens for HTTPS here when it has a certificate and no --https-address
DEFAULT_HTTPS_PORT = 4152


def security_options(args: Any) -> tuple[SecurityOptions, int | None]:
    """The broker's SecurityOptions and HTTPS port from parsed flags; ValueError in one line."""
    options = SecurityOptions(
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_auth_policy=args.tls_client_auth_policy,
        tls_root_ca_file=args.tls_root_ca_file,
        tls_required=args.tls_required,
        tls_min_version=args.tls_min_version,
        deflate=args.deflate,
        max_deflate_level=args.max_deflate_level,
        snappy=args.snappy,
        auth_http_addresses=tuple(args.auth_http_address),
        http_client_connect_timeout=args.http_client_connect_timeout,
        http_client_request_timeout=args.http_client_request_timeout,
    )
    https_port = args.https_address
    if https_port is None and options.tls_enabled:
        https_port = DEFAULT_HTTPS_PORT
    return options, https_port
