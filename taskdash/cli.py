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
    sub.add_parser("nsqd", parents=[common], help="run only the embedded NSQ broker")
    pub = sub.add_parser("publish", help="publish a TaskService or HeartBeat through nsqd HTTP")
    kinds = pub.add_subparsers(dest="kind", required=True)
    svc = kinds.add_parser("service", parents=[common], help="announce a task service")
    svc.add_argument("--id", required=True)
    for name in ("name", "type", "url", "description", "reserved"):
        svc.add_argument(f"--{name}", default="")
    hb = kinds.add_parser("heartbeat", parents=[common], help="send heartbeats")
    hb.add_argument("--id", required=True)
    hb.add_argument("--reserved", default="")
    hb.add_argument("--every", type=float, default=0, help="repeat every N seconds (0 = once)")
    hb.add_argument("--count", type=int, default=0, help="stop after N beats (0 = forever)")
    for p in (svc, hb):
        p.add_argument("--nsqd-http", help="nsqd HTTP address (default: from the config)")
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


def cmd_nsqd(args: argparse.Namespace, settings: Settings) -> int:
    """Run the embedded broker alone (nsqd TCP + HTTP, nsqlookupd HTTP) until a stop signal."""
    import signal

    from taskdash.nsq.broker import Broker

    logs.configure(settings.log, args.log_format)
    cfg = settings.nsq

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        broker = Broker(
            host=cfg.embedded_host,
            tcp_port=cfg.embedded_tcp_port,
            http_port=cfg.embedded_http_port,
            lookupd_http_port=cfg.embedded_lookupd_port,
            data_dir=settings.data_path("nsq").absolute(),
            broadcast_address=cfg.embedded_host,
        )
        try:
            await broker.start()
        except OSError as exc:
            log.error("start_failed", error=str(exc))
            return 1
        log.info("nsqd_ready", tcp_port=broker.tcp_port, http_port=broker.http_port)
        await stop.wait()
        await broker.stop()
        return 0

    return asyncio.run(main())


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    """Publish with ``requests`` against nsqd's ``/pub``: what a task service would send."""
    import time

    from taskdash.errors import ValidationError
    from taskdash.models import HeartBeat, TaskService, convert
    from taskdash.nsq.announce import PublishError, encode, publish

    cfg = settings.nsq
    nsqd_http = args.nsqd_http or cfg.nsqd_http_address
    nsqd_http = nsqd_http or f"http://{cfg.embedded_host}:{cfg.embedded_http_port}"
    try:
        if args.kind == "service":
            fields = ("id", "name", "type", "url", "description", "reserved")
            record = convert(TaskService, {f: getattr(args, f) for f in fields})
            publish(nsqd_http, cfg.service_topic, encode(record))
            print(f"published service {record.id} to {cfg.service_topic}")
            return 0
        beat = encode(convert(HeartBeat, {"id": args.id, "reserved": args.reserved}))
        sent = 0
        while True:
            publish(nsqd_http, cfg.heartbeat_topic, beat)
            sent += 1
            if args.every <= 0 or (args.count and sent >= args.count):
                break
            time.sleep(args.every)
        print(f"published {sent} heartbeat(s) for {args.id} to {cfg.heartbeat_topic}")
        return 0
    except ValidationError as exc:
        print(f"taskdash: invalid {args.kind}: {exc}", file=sys.stderr)
        return 2
    except PublishError as exc:
        print(f"taskdash: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


COMMANDS = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "nsqd": cmd_nsqd,
    "publish": cmd_publish,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``taskdash`` console script."""
    args = _parser().parse_args(argv)
    settings = _settings(args)
    if settings is None:
        return 2
    return COMMANDS[args.command](args, settings)


if __name__ == "__main__":
    sys.exit(main())
