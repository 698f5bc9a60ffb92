"""``taskdash demo``: arguments -> options -> logs -> :class:`~taskdash.demo.runner.Demo`."""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskdash.demo.timing import MAX_SPEED, MIN_SPEED
from taskdash.settings import EnvWarning, Settings
from taskdash.subcommands import subparser

DESCRIPTION = """\
Run all of TaskDash on this machine, on 127.0.0.1 only, with five simulated task services:
an nx-27017 store, the daemon (`taskdash run`, with its embedded NSQ broker), the periodic
service (`taskdash periodic`), a steady service, a flaky one (goes stale and comes back), a
slow one (its metadata URL answers late), one that dies after a minute (stale, then offline)
and a worker leasing periodic tasks over gRPC from a schedule firing every few seconds; plus
two tasks registered over TCP with daily windows. Prints the dashboard's URL and an admin
login. Ctrl-C or SIGTERM stops all of it. What you see: docs/demo.md."""

EPILOG = """\
Examples:
  taskdash demo
  taskdash demo --web-port 8080 --data-dir ./demo-data
  taskdash demo --speed 3 --duration 60        everything three times faster, for a minute

The demo writes its own config (demo.toml in the data directory); TASKDASH_* variables
are not passed on to the parts it starts.
Exit codes: 0 stopped by Ctrl-C, SIGTERM or --duration; 1 a part failed to start or died
(its log is named); 2 bad arguments."""


def _number(low: float, high: float, kind: Callable[[str], Any] = float) -> Callable[[str], Any]:
    """An argparse type for a number from ``low`` to ``high``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}, got {text}")
        return value

    return parse


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``taskdash demo``: no ``--config`` among ``parents``' options, it writes its own."""
    demo = subparser(sub, "demo", "run everything with simulated services", DESCRIPTION, EPILOG)
    demo.set_defaults(config=None)  # main() loads the settings: the built-in ones (and [log])
    demo.add_argument(
        "--log-format", choices=("auto", "json", "console"), help="the demo's own log lines"
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        help="keep the data and logs here (default: a temporary directory, removed at exit)",
    )
    demo.add_argument(
        "--web-port",
        type=_number(0, 65535, int),
        default=0,
        metavar="PORT",
        help="the dashboard's port on 127.0.0.1 (default 0: any free port)",
    )
    demo.add_argument(
        "--speed",
        type=_number(MIN_SPEED, MAX_SPEED),
        default=1.0,
        help=f"divide every delay and threshold by this ({MIN_SPEED:g}-{MAX_SPEED:g}, default 1)",
    )
    demo.add_argument(
        "--duration",
        type=_number(1, 7 * 86400),
        metavar="SECONDS",
        help="stop by itself after this long (default: run until Ctrl-C)",
    )


def _data_dir_problem(path: Path | None) -> str | None:
    """Why ``--data-dir`` cannot be used (None if it can)."""
    if path is None:
        return None
    if path.exists() and not path.is_dir():
        return f"--data-dir {path} exists and is not a directory"
    return None


def run(args: argparse.Namespace, settings: Settings, warnings: list[EnvWarning]) -> int:
    """Run the demo until a stop signal or ``--duration``; the exit code."""
    from taskdash.cli import _configure_logs, _error  # cli imports this module: import when run
    from taskdash.demo.runner import Demo, Options

    problem = _data_dir_problem(args.data_dir)
    if problem:
        _error(f"demo: {problem}")
        return 2
    _configure_logs(args, settings, warnings)
    options = Options(
        data_dir=args.data_dir.absolute() if args.data_dir else None,
        web_port=args.web_port,
        speed=args.speed,
        duration=args.duration,
    )

    async def main() -> int:
        return await Demo(options).run()

    return asyncio.run(main())
