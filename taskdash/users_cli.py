"""``taskdash user add|list|passwd|disable|enable``: dashboard accounts from a shell, for admins.

Input problems (a bad name, a weak password, two different passwords) are found before the
store is touched and exit 2; what the store says (a taken name, an unknown user, MongoDB away)
exits 1. Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import sys
import warnings
from collections.abc import AsyncIterator
from typing import Any

import structlog

from taskdash.errors import EmbeddedServerError, StoreError, ValidationError
from taskdash.passwords import MAX_BYTES, check_password
from taskdash.settings import EnvWarning, Settings
from taskdash.store import Store, users
from taskdash.store.embedded import EmbeddedMongo, port_open
from taskdash.store.times import from_ms
from taskdash.subcommands import subparser

DESCRIPTION = """\
Manage the accounts of the dashboard: role 'user' or 'admin', a password (argon2id hash, at
least 12 characters), enabled or disabled. The store is [mongodb] uri; with none, the embedded
store under [daemon] data_dir, which belongs to 'taskdash run': while the daemon runs it is
used through the daemon's nx-27017, otherwise it is started for the command and stopped after
it (the daemon cannot start meanwhile)."""

EPILOG = """\
Examples:
  taskdash user add alice --role admin           asks for the password twice
  printf '%s' "$PASS" | taskdash user add bot --password-stdin
  taskdash user list
  taskdash user passwd admin
  taskdash user disable alice

Reference: docs/users.md.
Exit codes: 0 done; 1 the name is taken, no such user, or MongoDB unreachable; 2 bad
arguments, a weak password, passwords that differ, or no terminal to ask on."""

#: action -> (help, example)
ACTIONS = {
    "add": (
        "create an account (password prompted twice, or --password-stdin)",
        "taskdash user add alice --role admin",
    ),
    "list": ("list the accounts", "taskdash user list"),
    "passwd": (
        "set a new password (prompted twice, or --password-stdin)",
        "taskdash user passwd admin",
    ),
    "disable": ("refuse every login of an account (its data stay)", "taskdash user disable bob"),
    "enable": ("allow an account to log in again", "taskdash user enable bob"),
}
EXIT_CODES = "Exit codes: 0 done; 1 refused by the store or MongoDB unreachable; 2 bad input."


class UsageError(Exception):
    """Bad input found before the store is touched: exit 2."""


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``user`` and its actions on the ``taskdash`` command line."""
    user = subparser(sub, "user", "manage dashboard accounts", DESCRIPTION, EPILOG)
    actions = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, (help_, example) in ACTIONS.items():
        parser = subparser(
            actions,
            action,
            help_,
            help_.capitalize() + ".",
            f"Examples:\n  {example}\n\n{EXIT_CODES}",
            parents=parents,
        )
        if action != "list":
            parser.add_argument("name", help="the account's name (a-z 0-9 . _ @ -, up to 64)")
        if action == "add":
            parser.add_argument("--role", choices=users.ROLES, default="user", help="(user)")
        if action in ("add", "passwd"):
            parser.add_argument(
                "--password-stdin",
                action="store_true",
                help="read the password from stdin (one line, no confirmation)",
            )


def _password_from_stdin() -> str:
    """Everything on stdin, less one final newline (bounded: the rules refuse more anyway)."""
    raw = sys.stdin.buffer.read(MAX_BYTES * 4)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("the password on stdin is not UTF-8") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise UsageError("no password on stdin")
    return text


def _password_from_terminal() -> str:
    """Asked twice on the terminal, echo off; never read from a pipe by accident."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", getpass.GetPassWarning)
        try:
            first = getpass.getpass("Password: ")
            check_password(first)  # before asking again
            second = getpass.getpass("Repeat the password: ")
        except getpass.GetPassWarning:
            raise UsageError("no terminal to ask the password on: use --password-stdin") from None
        except EOFError:
            raise UsageError("no password given") from None
    if first != second:
        raise UsageError("the passwords differ")
    return first


def read_password(args: argparse.Namespace) -> str:
    """The new password, checked against the rules (UsageError/ValidationError if not)."""
    password = _password_from_stdin() if args.password_stdin else _password_from_terminal()
    check_password(password)
    return password


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    """The configured store; with no uri the daemon's embedded one, started here if need be."""
    cfg = settings.mongodb
    uri, embedded = cfg.uri, None
    if not uri:
        embedded = EmbeddedMongo(
            host=cfg.embedded_host,
            port=cfg.embedded_port,
            data_dir=settings.embedded_mongodb_dir().absolute(),
        )
        uri = embedded.uri
        if await asyncio.to_thread(port_open, cfg.embedded_host, cfg.embedded_port):
            embedded = None  # the running daemon's child: use it, leave it alone
        else:
            await embedded.start()
    store = Store(uri, cfg.database, server_selection_timeout=cfg.server_selection_timeout)
    try:
        yield store
    finally:
        await store.close()
        if embedded is not None:
            await embedded.stop()


def _when(ms: int) -> str:
    return from_ms(ms).isoformat(timespec="seconds")


def _print_table(accounts: list[users.User]) -> None:
    rows = [("NAME", "ROLE", "STATE", "CREATED", "UPDATED")]
    for u in accounts:
        state = "disabled" if u.disabled else "enabled"
        rows.append((u.name, u.role, state, _when(u.created_at), _when(u.updated_at)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


async def _known(store: Store, name: str) -> None:
    """Before asking for a password: say at once that the account does not exist."""
    if await users.get_user(store, name) is None:
        raise users.UnknownUser(f"no user {name!r}")


async def _act(args: argparse.Namespace, store: Store) -> None:
    """One action against the store; messages for people on stdout."""
    if args.action == "list":
        _print_table(await users.list_users(store))
    elif args.action == "add":
        if await users.get_user(store, args.name) is not None:
            raise users.UserExists(f"user {args.name!r} exists already")
        await users.add_user(store, args.name, read_password(args), role=args.role)
        print(f"created user {args.name} (role {args.role})")
    elif args.action == "passwd":
        await _known(store, args.name)
        await users.set_password(store, args.name, read_password(args))
        print(f"password of {args.name} changed")
    else:
        disabled = args.action == "disable"
        await users.set_disabled(store, args.name, disabled)
        print(f"user {args.name} {args.action}d")


async def _main(args: argparse.Namespace, settings: Settings) -> None:
    async with open_store(settings) as store:
        await _act(args, store)


def run(args: argparse.Namespace, settings: Settings, warnings: list[EnvWarning]) -> int:
    """Run one action; the exit code says whose fault a failure was (see the module doc)."""
    from taskdash.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, _error, _print_warnings

    _print_warnings(warnings)
    # the embedded store's start/stop lines are for the daemon's log, not this command's output
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        if getattr(args, "name", None) is not None:
            users.check_name(args.name)
        asyncio.run(_main(args, settings))
    except (UsageError, ValidationError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except (StoreError, EmbeddedServerError) as exc:
        _error(str(exc))
        return EXIT_FAILED
    return EXIT_OK
