"""``taskdash periodic``: run the periodic task service (gRPC + HTTP) until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from taskdash.periodic import schedule_cli
from taskdash.settings import EnvWarning, Settings
from taskdash.subcommands import subparser

DESCRIPTION = """\
Run the periodic task service of seed 000: the gRPC service PeriodicTask ([periodic] grpc_host,
grpc_port; health checking and reflection on) and its HTTP API ([periodic] http_host,
http_port), on the MongoDB of [mongodb] (set uri to the daemon's; with none, an embedded
nx-27017 is started). With NSQ configured ([nsq] nsqd_http_address or nsqd_tcp_addresses) it
announces itself on the service topic and heartbeats, so TaskDash lists its tasks."""

EPILOG = """\
Examples:
  taskdash periodic --config /etc/taskdash/taskdash.toml
  TASKDASH_MONGODB__URI=mongodb://db1/ TASKDASH_PERIODIC__GRPC_PORT=50052 taskdash periodic
  taskdash periodic schedule --help      schedules of a queue (create, list, show, pause...)

Reference: docs/periodic.md.
Exit codes: 0 after a clean stop, 1 if start failed (e.g. a port in use), 2 bad
configuration."""


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register the ``periodic`` subcommand (and ``periodic schedule ...``)."""
    periodic = subparser(
        sub,
        "periodic",
        "run the periodic task service (gRPC + HTTP task queue)",
        DESCRIPTION,
        EPILOG,
        parents=parents,
    )
    commands = periodic.add_subparsers(dest="periodic_command", metavar="COMMAND")
    schedule_cli.add_parser(commands)


def run(args: argparse.Namespace, settings: Settings, warnings: list[EnvWarning]) -> int:
    """Run the service until a stop signal (or a ``schedule`` command); the exit code."""
    if getattr(args, "periodic_command", None) == "schedule":
        return schedule_cli.run(args, settings)
    from taskdash.cli import _configure_logs  # cli imports this module: import when run
    from taskdash.periodic.service import PeriodicService

    log_file = _configure_logs(args, settings, warnings)

    async def main() -> int:
        return await PeriodicService(settings, log_file=log_file).run()

    return asyncio.run(main())
