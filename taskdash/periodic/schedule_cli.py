"""``taskdash periodic schedule create|list|show|runs|pause|resume|delete``: from a shell.

A client of the periodic service's HTTP API (``requests``), so it works from any machine that
reaches it; the service's secret is read from a file (or stdin), never from the command line
where ``ps`` would show it. Prints the answer as JSON; exit 0 when the service accepted, 1 when
it refused (its message on stderr) or could not be reached, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

import requests

from taskdash.settings import Settings
from taskdash.subcommands import subparser

DESCRIPTION = """\
Manage the schedules of a queue of the periodic task service through its HTTP API: each
schedule creates a task on the queue every interval, or at each match of a 5-field cron
expression in a time zone. Every node that has started the queue fires it; each run creates
one task."""

EPILOG = """\
Examples:
  taskdash periodic schedule create --service mailer --queue jobs --secret-file ~/.mailer \\
      --id nightly --cron '30 2 * * *' --timezone Europe/Paris --task-data '{"report": 1}'
  taskdash periodic schedule create --service mailer --queue jobs --secret-file ~/.mailer \\
      --interval 10 --misfire skip
  taskdash periodic schedule list --service mailer --queue jobs --secret-file ~/.mailer
  taskdash periodic schedule runs nightly --service mailer --queue jobs --secret-file ~/.mailer
  taskdash periodic schedule pause nightly --service mailer --queue jobs --secret-file -

Reference: docs/periodic.md (Schedules).
Exit codes: 0 done; 1 refused by the service, or the service unreachable; 2 bad arguments."""

ACTIONS = {
    "create": "create a schedule",
    "list": "list the queue's schedules",
    "show": "show a schedule with its next runs and its last run",
    "runs": "list the runs that created a task, newest first, with their tasks' states",
    "pause": "stop firing a schedule (runs due meanwhile are not caught up)",
    "resume": "fire a paused schedule again, from its next run",
    "delete": "delete a schedule (the tasks it created stay)",
}
TIMEOUT = 10.0


class UsageError(Exception):
    """Bad input found before anything is sent: exit 2."""


def add_parser(sub: Any) -> None:
    """Add ``schedule`` and its actions under ``taskdash periodic``."""
    schedule = subparser(sub, "schedule", "manage the schedules of a queue", DESCRIPTION, EPILOG)
    actions = schedule.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help_ in ACTIONS.items():
        parser = subparser(actions, action, help_, help_.capitalize() + ".", EPILOG)
        # --config again, defaulting to "not given": `taskdash periodic --config F schedule
        # list` keeps F (a sub-command's own default would overwrite it)
        parser.add_argument(
            "--config", "-c", metavar="FILE", default=argparse.SUPPRESS, help="TOML config file"
        )
        if action in ("show", "runs", "pause", "resume", "delete"):
            parser.add_argument("schedule_id", help="the schedule's id")
        parser.add_argument("--service", required=True, help="the service's name")
        parser.add_argument("--queue", required=True, help="the queue's name")
        parser.add_argument(
            "--secret-file",
            required=True,
            metavar="FILE",
            help="file holding the service's secret (its first line); - reads stdin",
        )
        parser.add_argument(
            "--url", help="the service's HTTP API (default: [periodic] http_host, http_port)"
        )
        if action == "list":
            parser.add_argument("--after", default="", help="list the ids after this one")
        if action == "runs":
            parser.add_argument(
                "--before", type=int, metavar="MS", help="runs due before (epoch ms)"
            )
        if action in ("list", "runs"):
            parser.add_argument("--limit", type=int, default=0, help="at most this many (10)")
        if action == "create":
            _add_create(parser)


def _add_create(parser: argparse.ArgumentParser) -> None:
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--interval", type=float, metavar="SECONDS", help="every SECONDS")
    when.add_argument("--cron", metavar="EXPR", help="5 fields: minute hour day month weekday")
    parser.add_argument("--timezone", help="the cron's IANA time zone (UTC)")
    parser.add_argument("--id", dest="schedule_id", help="the schedule's id (default: generated)")
    parser.add_argument("--task-type", default="", help="every task's task_type")
    parser.add_argument("--task-data", default="{}", metavar="JSON", help="every task's data ({})")
    parser.add_argument("--misfire", choices=("skip", "once"), help="a late run: (once)")
    parser.add_argument("--misfire-grace", type=float, metavar="SECONDS", help="(60)")
    parser.add_argument("--jitter", type=float, metavar="SECONDS", help="delay tasks by up to")
    parser.add_argument("--paused", action="store_true", help="create it paused")


def _secret(path: str) -> str:
    try:
        if path == "-":
            text = sys.stdin.readline()
        else:
            with open(path, encoding="utf-8") as file:
                text = file.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the secret from {path}: {exc}") from None
    if not text.strip():
        raise UsageError(f"no secret in {'stdin' if path == '-' else path}")
    return text.strip()


def _create_body(args: argparse.Namespace) -> dict[str, Any]:
    try:
        data = json.loads(args.task_data)
    except ValueError as exc:
        raise UsageError(f"--task-data is not JSON: {exc}") from None
    body: dict[str, Any] = {"task_type": args.task_type, "task_data": data}
    for field in ("schedule_id", "interval", "cron", "timezone", "misfire", "jitter"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    if args.misfire_grace is not None:
        body["misfire_grace"] = args.misfire_grace
    if args.paused:
        body["paused"] = True
    return body


def request(args: argparse.Namespace, settings: Settings) -> tuple[str, str, dict[str, Any] | None]:
    """(method, URL, JSON body) of the action."""
    cfg = settings.periodic
    host = "127.0.0.1" if cfg.http_host in ("0.0.0.0", "::") else cfg.http_host
    base = (args.url or f"http://{host}:{cfg.http_port}").rstrip("/")
    quote = urllib.parse.quote
    path = f"/v1/services/{quote(args.service, safe='')}/queues/{quote(args.queue, safe='')}"
    url = f"{base}{path}/schedules"
    if args.action == "create":
        return "POST", url, _create_body(args)
    if args.action == "list":
        query = urllib.parse.urlencode({"after": args.after, "limit": args.limit})
        return "GET", f"{url}?{query}", None
    one = f"{url}/{quote(args.schedule_id, safe='')}"
    if args.action == "runs":
        page = {"limit": args.limit, **({"before": args.before} if args.before else {})}
        return "GET", f"{one}/runs?{urllib.parse.urlencode(page)}", None
    if args.action in ("pause", "resume"):
        return "POST", f"{one}/{args.action}", {}
    return ("GET" if args.action == "show" else "DELETE"), one, None


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Send the action's request, print the answer; the exit code says how it went."""
    try:
        secret = _secret(args.secret_file)
        method, url, body = request(args, settings)
    except UsageError as exc:
        print(f"taskdash: {exc}", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {secret}"}
    try:
        resp = requests.request(method, url, json=body, headers=headers, timeout=TIMEOUT)
    except requests.RequestException as exc:
        print(f"taskdash: cannot reach the periodic service at {url}: {exc}", file=sys.stderr)
        return 1
    try:
        answer = resp.json()
    except ValueError:
        print(f"taskdash: {url} answered {resp.status_code} without JSON", file=sys.stderr)
        return 1
    if resp.status_code >= 400:
        print(f"taskdash: {answer.get('error')}: {answer.get('message')}", file=sys.stderr)
        return 1
    print(json.dumps(answer, ensure_ascii=False))
    return 0
