"""``taskdash tcp register|update|find``: the TCP interface from a shell, for admins.

Prints the reply body as JSON (the seed's ``errmsg`` in UTF-8); exit 0 when ``errid`` is 0,
1 for any other errid or an unreachable server, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from taskdash.settings import Settings
from taskdash.subcommands import subparser
from taskdash.tcp.client import ClientError, TcpClient

DESCRIPTION = """\
Send one request of the TCP interface (tcpx frames, seed 002) to a TaskDash daemon and print
its reply: Register (creates or updates a task), Update (errid 1002 if the id is unknown) or
Find. Only the fields given are sent: Update leaves the others as stored."""

EPILOG = """\
Examples:
  taskdash tcp register --id 1234567 --name abc --user wsg --start-time 12:00 --stop-time 18:00
  taskdash tcp update --id 1234567 --status finish --addr 10.0.0.5:8090
  taskdash tcp find --id 1234567

Exit codes: 0 errid 0; 1 another errid, or the server unreachable; 2 bad arguments."""

EXAMPLES = {
    "register": "taskdash tcp register --id 1234567 --name abc --user wsg --start-time 12:00",
    "update": "taskdash tcp update --id 1234567 --status finish --addr 10.0.0.5:8090",
    "find": "taskdash tcp find --id 1234567",
}
FIELDS = ("name", "url", "user", "group_id", "description", "status", "start_time", "stop_time")


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in (0, 3600]")
    return value


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser] | None = None) -> None:
    """Add ``tcp register|update|find`` to the ``taskdash`` command line."""
    tcp = subparser(
        subparsers, "tcp", "send a Register/Update/Find request over TCP", DESCRIPTION, EPILOG
    )
    kinds = tcp.add_subparsers(dest="request", required=True, metavar="REQUEST")
    for name in ("register", "update", "find"):
        sub = subparser(
            kinds,
            name,
            f"send {name.title()}",
            f"Send one {name.title()} request and print the reply body as JSON.",
            f"Examples:\n  {EXAMPLES[name]}\n\nExit codes: 0 errid 0; 1 another errid, "
            "or the server unreachable; 2 bad arguments.",
            parents=parents or [],
        )
        sub.add_argument("--id", required=True, help="the task id")
        sub.add_argument(
            "--addr",
            type=_address,
            metavar="HOST:PORT",
            help="the daemon's TCP address (default: [tcp] host and port)",
        )
        sub.add_argument("--timeout", type=_seconds, default=10.0, help="seconds to wait (10)")
        if name != "find":
            for field in FIELDS:
                sub.add_argument(f"--{field.replace('_', '-')}", dest=field, help=f"the {field}")


async def _send(args: argparse.Namespace, host: str, port: int) -> dict[str, Any]:
    async with TcpClient(host, port, timeout=args.timeout) as client:
        if args.request == "find":
            return await client.find(args.id)
        record = {"id": args.id}
        record.update({f: v for f in FIELDS if (v := getattr(args, f)) is not None})
        return await client.request(args.request.title(), record)


def run(args: argparse.Namespace, settings: Settings, warnings: Any = ()) -> int:
    """Send the request, print the reply; the exit code says whether errid was 0."""
    host, port = args.addr or (settings.tcp.host, settings.tcp.port)
    try:
        reply = asyncio.run(_send(args, host, port))
    except ClientError as exc:
        print(f"taskdash: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(reply, ensure_ascii=False))
    return 0 if reply.get("errid") == 0 else 1
