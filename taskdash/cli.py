"""Command line: arguments -> settings -> logs -> run; every command returns an exit code."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import structlog

from taskdash import __version__, logs
from taskdash.errors import ConfigError
from taskdash.settings import Settings, load

log = structlog.get_logger("taskdash.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskdash", description=__doc__)
    parser.add_argument("--version", action="version", version=f"taskdash {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", help="TOML config file (default: built-in defaults)")
    common.add_argument(
        "--log-format", choices=("auto", "json", "console"), help="override [log] format"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="run the daemon")
    sub.add_parser("check-config", parents=[common], help="validate the config and exit")
    return parser


def _settings(args: argparse.Namespace) -> Settings | None:
    try:
        return load(args.config)
    except ConfigError as exc:
        print(f"taskdash: config error: {exc}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the daemon until a stop signal."""
    from taskdash.daemon import Daemon

    log_file = logs.configure(settings.log, args.log_format)

    async def main() -> int:
        return await Daemon(settings, log_file=log_file).run()

    return asyncio.run(main())


def cmd_check_config(args: argparse.Namespace, settings: Settings) -> int:
    """Loading succeeded: say so, with what will be embedded."""
    mongo = "external" if settings.mongodb.uri else "embedded nx-27017"
    nsq = "embedded broker" if settings.nsq.embedded else "external nsqd/nsqlookupd"
    print(f"config OK ({args.config or 'built-in defaults'}): mongodb={mongo}, nsq={nsq}")
    return 0


COMMANDS = {"run": cmd_run, "check-config": cmd_check_config}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``taskdash`` console script."""
    args = _parser().parse_args(argv)
    settings = _settings(args)
    if settings is None:
        return 2
    return COMMANDS[args.command](args, settings)


if __name__ == "__main__":
    sys.exit(main())
