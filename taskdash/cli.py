"""Command line: arguments -> settings -> logs -> run; every command returns an exit code.

Bad input of any kind ends in one line on stderr and the README's exit code, never a traceback:
0 done, 1 runtime failure (a port in use, nsqd unreachable), 2 bad configuration or usage,
128 + the signal when a signal cut short what was asked (130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from taskdash import __version__, logs, users_cli
from taskdash.demo import cli as demo_cli
from taskdash.errors import ConfigError
from taskdash.nsq.broker.flags import add_security_flags, security_options
from taskdash.periodic import cli as periodic_cli
from taskdash.settings import (
    EnvWarning,
    Settings,
    env_warnings,
    http_url_error,
    load,
    origin_of,
)
from taskdash.subcommands import subparser
from taskdash.tcp import cli as tcp_cli

log = structlog.get_logger("taskdash.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

DESCRIPTION = """\
TaskDash keeps track of task services: it reads their registrations and heartbeats from NSQ,
stores them in MongoDB, flags the services that went quiet, fetches their task metadata and
serves it all over HTTP (dashboard, JSON API, /healthz, /readyz)."""

EPILOG = """\
Examples:
  taskdash run                                   start on embedded MongoDB and NSQ
  taskdash run --config /etc/taskdash/taskdash.toml
  taskdash check-config --config /etc/taskdash/taskdash.toml
  taskdash nsqd                                  only the embedded NSQ broker
  taskdash nsqlookupd                            a standalone nsqlookupd
  taskdash publish heartbeat --id svc-1 --every 5
  taskdash user add alice --role admin           a dashboard account
  taskdash demo                                  everything, with simulated services

Configuration: one TOML file (--config; config/taskdash.toml lists every key with its
default) plus TASKDASH_<SECTION>__<KEY> environment variables, e.g. TASKDASH_WEB__PORT=9090.

Exit codes: 0 ok, 1 runtime failure (e.g. a port in use, nsqd unreachable), 2 bad
configuration or usage, 130 interrupted by Ctrl-C.

Run 'taskdash COMMAND --help' for a command's options."""

RUN_DESCRIPTION = """\
Run the daemon until SIGTERM or Ctrl-C: NSQ readers, heartbeat checker, metadata fetcher and
the HTTP server. With no [mongodb] uri it starts its own nx-27017 server, and with no NSQ
address its own broker; their data live under [daemon] data_dir. SIGHUP reopens the log file."""

RUN_EPILOG = """\
Examples:
  taskdash run
  taskdash run --config /etc/taskdash/taskdash.toml
  TASKDASH_WEB__PORT=9090 taskdash run --log-format console

Exit codes: 0 after a clean shutdown, 1 if start failed (e.g. a port in use), 2 bad
configuration."""

CHECK_DESCRIPTION = """\
Load and validate the configuration (file and TASKDASH_* variables) exactly as 'run' would,
without starting anything. Prints warnings for TASKDASH_* variables that are not settings."""

CHECK_EPILOG = """\
Examples:
  taskdash check-config --config /etc/taskdash/taskdash.toml
  TASKDASH_MONGODB__URI='mongodb://db1,db2/?replicaSet=rs0' taskdash check-config

Exit codes: 0 valid, 2 invalid (one line naming the key and where it came from)."""

NSQD_DESCRIPTION = """\
Run only the embedded NSQ broker (nsqd TCP and HTTP, nsqlookupd HTTP) on the [nsq] embedded_*
host and ports, until SIGTERM or Ctrl-C. Queues are kept under <data_dir>/nsq: up to
mem_queue_size messages per topic/channel in memory, the rest on disk (docs/nsq-broker.md says
what each setting guarantees after a crash). nsqd's own flags override the settings. SIGHUP
reopens the log file ([log] file)."""

NSQD_EPILOG = """\
Examples:
  taskdash nsqd
  TASKDASH_NSQ__EMBEDDED_HTTP_PORT=14151 taskdash nsqd --config taskdash.toml
  taskdash nsqd --tcp-address=127.0.0.1:4150 --mem-queue-size=0 --lookupd-tcp-address=lk:4160

Exit codes: 0 after a clean stop, 1 if a port could not be bound, 2 bad configuration."""

PUBLISH_DESCRIPTION = """\
Publish what a task service sends, through nsqd's HTTP /pub: a TaskService registration or
HeartBeats. The nsqd address is --nsqd-http, else [nsq] nsqd_http_address, else the embedded
broker's; the topics are [nsq] service_topic and heartbeat_topic."""

PUBLISH_EPILOG = """\
Examples:
  taskdash publish service --id svc-1 --name crawler --url http://127.0.0.1:9000/tasks
  taskdash publish heartbeat --id svc-1 --every 5

Exit codes: 0 published, 1 nsqd unreachable or refused the message, 2 bad arguments."""

SERVICE_EPILOG = """\
Examples:
  taskdash publish service --id svc-1 --name crawler --type batch --url http://127.0.0.1:9000/tasks
  taskdash publish service --id svc-1 --nsqd-http http://nsqd-1.internal:4151"""

HEARTBEAT_EPILOG = """\
Examples:
  taskdash publish heartbeat --id svc-1                 one heartbeat
  taskdash publish heartbeat --id svc-1 --every 5       every 5 s until Ctrl-C
  taskdash publish heartbeat --id svc-1 --every 1 --count 10

Ctrl-C or SIGTERM stops it between two heartbeats and prints how many nsqd acknowledged.
Exit codes: 0 all sent, or an endless --every stopped by Ctrl-C/SIGTERM (its only way to
stop); 130 (Ctrl-C) or 143 (SIGTERM) when a --count was cut short; 1 nsqd unreachable or
refused a message; 2 bad arguments."""

Command = Callable[[argparse.Namespace, Settings, list[EnvWarning]], int]


def _non_negative(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type that refuses negative numbers (a negative interval means nothing)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
        return value

    return parse


def _common() -> argparse.ArgumentParser:
    """Options every command that reads the config accepts."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", "-c", metavar="FILE", help="TOML config file (default: built-in defaults)"
    )
    common.add_argument(
        "--log-format", choices=("auto", "json", "console"), help="override [log] format"
    )
    return common


def _add_publish(sub: Any, common: argparse.ArgumentParser) -> None:
    pub = subparser(
        sub, "publish", "publish a TaskService or HeartBeat", PUBLISH_DESCRIPTION, PUBLISH_EPILOG
    )
    kinds = pub.add_subparsers(dest="kind", required=True, metavar="KIND")
    svc = subparser(
        kinds,
        "service",
        "announce a task service",
        "Publish one TaskService registration (the service's id, name, type, task URL).",
        SERVICE_EPILOG,
        parents=[common],
    )
    svc.add_argument("--id", required=True, help="the service's id")
    svc.add_argument("--url", default="", help="where the fetcher asks for its task metadata")
    for name in ("name", "type", "description"):
        svc.add_argument(f"--{name}", default="", help=f"the service's {name}")
    svc.add_argument("--reserved", default="", help="free text, carried as is")
    hb = subparser(
        kinds,
        "heartbeat",
        "send heartbeats",
        "Publish HeartBeats for a service: once, every --every seconds, or --count times.",
        HEARTBEAT_EPILOG,
        parents=[common],
    )
    hb.add_argument("--id", required=True, help="the service's id")
    hb.add_argument("--reserved", default="", help="free text, carried as is")
    hb.add_argument(
        "--every",
        type=_non_negative(float),
        default=0.0,
        metavar="SECONDS",
        help="repeat every SECONDS (0 = no pause)",
    )
    hb.add_argument(
        "--count",
        type=_non_negative(int),
        default=0,
        help="send COUNT heartbeats (0 = one, or forever with --every)",
    )
    for p in (svc, hb):
        p.add_argument(
            "--nsqd-http", metavar="URL", help="nsqd HTTP address, e.g. http://127.0.0.1:4151"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskdash",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"taskdash {__version__}")
    common = _common()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subparser(sub, "run", "run the daemon", RUN_DESCRIPTION, RUN_EPILOG, parents=[common])
    subparser(
        sub,
        "check-config",
        "validate the configuration and exit",
        CHECK_DESCRIPTION,
        CHECK_EPILOG,
        parents=[common],
    )
    nsqd = subparser(
        sub,
        "nsqd",
        "run only the embedded NSQ broker",
        NSQD_DESCRIPTION,
        NSQD_EPILOG,
        parents=[common],
        allow_abbrev=False,  # as Go's flag package: --mem is not --mem-queue-size
    )
    add_security_flags(nsqd)  # --tls-*, --deflate, --snappy, --auth-http-address
    # --- nsqd's own flags (taskdash/nsq/broker/nsqd_flags.py) ---
    from taskdash.nsq.broker import nsqd_flags

    nsqd_flags.add_arguments(nsqd)
    # --- taskdash nsqlookupd (taskdash/nsq/broker/lookupd_cli.py) ---
    from taskdash.nsq.broker import lookupd_cli

    lookupd = subparser(
        sub,
        "nsqlookupd",
        "run a standalone nsqlookupd",
        lookupd_cli.DESCRIPTION,
        lookupd_cli.EPILOG,
        parents=[common],
        allow_abbrev=False,
    )
    lookupd_cli.add_arguments(lookupd)
    _add_publish(sub, common)
    tcp_cli.add_parser(sub, [common])
    periodic_cli.add_parser(sub, [common])
    users_cli.add_parser(sub, [common])
    demo_cli.add_parser(sub, [common])
    return parser


def _error(message: str) -> None:
    """The one line a failed command prints."""
    print(f"taskdash: {message}", file=sys.stderr)


def _print_warnings(warnings: list[EnvWarning]) -> None:
    """For short commands: warnings on stderr, where the user running them looks."""
    for warning in warnings:
        _error(f"warning: {warning}")


def _log_warnings(warnings: list[EnvWarning]) -> None:
    """For long-running commands: warnings in the log, once logging is set up."""
    for warning in warnings:
        fields = {"did_you_mean": warning.did_you_mean} if warning.did_you_mean else {}
        log.warning("env_variable_ignored", variable=warning.variable, **fields)


class _LogFileError(Exception):
    """``[log] file`` cannot be opened: a config error, reported before anything starts."""


def _configure_logs(
    args: argparse.Namespace, settings: Settings, warnings: list[EnvWarning]
) -> logs.ReopenableFileHandler | None:
    """Set up logging, then log the environment warnings through it."""
    try:
        log_file = logs.configure(settings.log, args.log_format)
    except OSError as exc:
        origin = origin_of("log.file", args.config)
        raise _LogFileError(
            f"log.file: cannot open {settings.log.file}: {exc.strerror or exc} (in {origin})"
        ) from None
    _log_warnings(warnings)
    return log_file


def cmd_run(args: argparse.Namespace, settings: Settings, warnings: list[EnvWarning]) -> int:
    """Run the daemon until a stop signal."""
    # `systemctl reload` during the imports below must not kill us (SIGHUP's default action);
    # the daemon installs its own handler once its loop runs
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from taskdash.daemon import Daemon

    log_file = _configure_logs(args, settings, warnings)

    async def main() -> int:
        return await Daemon(settings, log_file=log_file).run()

    return asyncio.run(main())


def _log_file_problem(path: str) -> str | None:
    """Why ``run`` could not append to ``path`` (None if it could), checked without creating it."""
    target = Path(path)
    if target.is_dir():
        return "Is a directory"
    if not target.exists() and not target.parent.is_dir():
        return "No such file or directory"
    writable = target if target.exists() else target.parent
    return None if os.access(writable, os.W_OK) else "Permission denied"


def cmd_check_config(
    args: argparse.Namespace, settings: Settings, warnings: list[EnvWarning]
) -> int:
    """Loading succeeded: say so, with what will be embedded."""
    _print_warnings(warnings)
    problem = settings.log.file and _log_file_problem(settings.log.file)
    if problem:
        origin = origin_of("log.file", args.config)
        _error(f"config error: log.file: cannot open {settings.log.file}: {problem} (in {origin})")
        return EXIT_USAGE
    mongo = "external" if settings.mongodb.uri else "embedded nx-27017"
    nsq = "embedded broker" if settings.nsq.embedded else "external nsqd/nsqlookupd"
    print(f"config OK ({args.config or 'built-in defaults'}): mongodb={mongo}, nsq={nsq}")
    return EXIT_OK


def _usable_data_dir(data_dir: Path) -> bool:
    """The queues are saved there at stop, which is too late to find it unusable."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.error("start_failed", error=str(exc), setting="daemon.data_dir", path=str(data_dir))
        return False
    return True


async def _serve_broker(
    settings: Settings,
    log_file: logs.ReopenableFileHandler | None,
    kwargs: dict[str, Any],
    args: argparse.Namespace | None = None,
) -> int:
    """Start the broker, wait for SIGTERM/SIGINT, stop it (saving unfinished messages)."""
    from taskdash.lifecycle import broker_bind_error, on_reload_signal
    from taskdash.nsq.broker import Broker

    cfg = settings.nsq
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_reload_signal, log_file)
    data_dir = kwargs["data_dir"]
    # TLS, compression, AUTH: nsqd's flags (taskdash/nsq/broker/flags.py)
    security, https_port = security_options(args) if args is not None else (None, None)
    try:
        broker = Broker(**kwargs, security=security, https_port=https_port)
    except ValueError as exc:  # a certificate that cannot be loaded, snappy missing
        _error(f"nsqd: {exc}")
        return EXIT_USAGE
    if not _usable_data_dir(data_dir):
        return EXIT_FAILED
    try:
        await broker.start()
    except OSError as exc:
        error = broker_bind_error(exc, cfg)
        log.error("start_failed", error=str(error), setting=error.setting, address=error.address)
        return EXIT_FAILED
    log.info("nsqd_ready", tcp_port=broker.tcp_port, http_port=broker.http_port)
    await stop.wait()
    try:
        await broker.stop()
    except OSError as exc:  # e.g. the disk filled up: say so, without a traceback
        log.error("stop_failed", error=str(exc), path=str(data_dir))
        return EXIT_FAILED
    return EXIT_OK


def cmd_nsqd(args: argparse.Namespace, settings: Settings, warnings: list[EnvWarning]) -> int:
    """Run the embedded broker alone (nsqd TCP + HTTP, nsqlookupd HTTP) until a stop signal."""
    from taskdash.nsq.broker.embedded import broker_kwargs
    from taskdash.nsq.broker.nsqd_flags import FlagError, broker_overrides

    try:
        security_options(args)  # a bad flag combination: one line, before logging starts
    except ValueError as exc:
        _error(f"nsqd: {exc}")
        return EXIT_USAGE
    defaults = broker_kwargs(settings.nsq, settings.data_path("nsq").absolute())
    try:
        kwargs = broker_overrides(args, defaults)
        from taskdash.nsq.broker import Options

        Options(**{k: v for k, v in kwargs.items() if k in Options.__dataclass_fields__})
    except (FlagError, ValueError) as exc:
        _error(f"nsqd: {exc}")
        return EXIT_USAGE
    log_file = _configure_logs(args, settings, warnings)
    return asyncio.run(_serve_broker(settings, log_file, kwargs, args))


def cmd_nsqlookupd(args: argparse.Namespace, settings: Settings, warnings: list[EnvWarning]) -> int:
    """A standalone nsqlookupd (TCP registrations + HTTP API) until a stop signal."""
    from taskdash.nsq.broker.lookupd_cli import serve

    _configure_logs(args, settings, warnings)
    return asyncio.run(serve(args))


class _StopSignals:
    """SIGINT/SIGTERM only set an event while heartbeats repeat: the loop ends between two
    publishes, so the count printed is exactly what nsqd acknowledged."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum
        self.event.set()

    @contextmanager
    def installed(self) -> Iterator[_StopSignals]:
        previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def describe(self) -> str:
        return "Ctrl-C" if self.signum == signal.SIGINT else "SIGTERM"


def _nsqd_http(args: argparse.Namespace, settings: Settings) -> str:
    """--nsqd-http, else the configured nsqd, else the embedded broker's HTTP port."""
    cfg = settings.nsq
    return (
        args.nsqd_http
        or cfg.nsqd_http_address
        or f"http://{cfg.embedded_host}:{cfg.embedded_http_port}"
    )


def _publish_service(args: argparse.Namespace, settings: Settings, nsqd_http: str) -> int:
    from taskdash.models import TaskService, convert
    from taskdash.nsq.announce import encode, publish

    fields = ("id", "name", "type", "url", "description", "reserved")
    record = convert(TaskService, {f: getattr(args, f) for f in fields})
    publish(nsqd_http, settings.nsq.service_topic, encode(record))
    print(f"published service {record.id} to {settings.nsq.service_topic}")
    return EXIT_OK


def _publish_heartbeats(args: argparse.Namespace, settings: Settings, nsqd_http: str) -> int:
    """Once, --count times, or every --every seconds until a signal; prints how many went."""
    from taskdash.models import HeartBeat, convert
    from taskdash.nsq.announce import PublishError, encode, publish

    topic = settings.nsq.heartbeat_topic
    beat = encode(convert(HeartBeat, {"id": args.id, "reserved": args.reserved}))
    endless = args.every > 0 and not args.count
    wanted = args.count or (0 if endless else 1)
    sent = 0
    with _StopSignals().installed() as stop:
        try:
            while not stop.event.is_set():
                publish(nsqd_http, topic, beat)
                sent += 1
                if (sent >= wanted and not endless) or stop.event.wait(args.every):
                    break
        except PublishError:
            if sent:
                print(f"published {sent} heartbeat(s) for {args.id} to {topic} before failing")
            raise
    stopped = stop.signum is not None and (endless or sent < wanted)
    cut_short = stopped and not endless
    of = f" of {wanted}" if cut_short else ""
    why = f" (stopped by {stop.describe()})" if stopped else ""
    print(f"published {sent}{of} heartbeat(s) for {args.id} to {topic}{why}")
    return 128 + stop.signum if cut_short and stop.signum else EXIT_OK


def cmd_publish(args: argparse.Namespace, settings: Settings, warnings: list[EnvWarning]) -> int:
    """Publish with ``requests`` against nsqd's ``/pub``: what a task service would send."""
    from taskdash.errors import ValidationError
    from taskdash.nsq.announce import PublishError

    _print_warnings(warnings)
    if args.nsqd_http and http_url_error(args.nsqd_http):
        _error(f"--nsqd-http: {args.nsqd_http!r} is not an http(s)://host[:port] URL")
        return EXIT_USAGE
    nsqd_http = _nsqd_http(args, settings)
    try:
        if args.kind == "service":
            return _publish_service(args, settings, nsqd_http)
        return _publish_heartbeats(args, settings, nsqd_http)
    except ValidationError as exc:
        _error(f"invalid {args.kind}: {exc}")
        return EXIT_USAGE
    except PublishError as exc:
        _error(str(exc))
        return EXIT_FAILED


COMMANDS: dict[str, Command] = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "nsqd": cmd_nsqd,
    "nsqlookupd": cmd_nsqlookupd,
    "publish": cmd_publish,
    "tcp": tcp_cli.run,
    "periodic": periodic_cli.run,
    "user": users_cli.run,
    "demo": demo_cli.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``taskdash`` console script."""
    parser = _parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # nsqd's and nsqlookupd's flags: one line naming the first one refused
        if args.command == "nsqd":
            from taskdash.nsq.broker.nsqd_flags import unknown_flag_error
        elif args.command == "nsqlookupd":
            from taskdash.nsq.broker.lookupd_cli import unknown_flag_error
        else:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        _error(f"{args.command}: {unknown_flag_error(extras)}")
        return EXIT_USAGE
    try:
        settings = load(args.config)
    except ConfigError as exc:
        _error(f"config error: {exc}")
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args, settings, env_warnings())
    except _LogFileError as exc:
        _error(f"config error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C before a command's own signal handling is in place
        _error("interrupted")
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
