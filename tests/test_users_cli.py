"""``taskdash user ...`` as an admin runs it: real subprocesses against a real store.

Every error is one line on stderr; 2 for bad input (found before the store is touched), 1 for
what the store refuses or when it cannot be reached.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import subprocess
import termios
import time
from pathlib import Path

import pytest
from support import VENV_BIN, daemon_env, free_port, pids_with_arg
from test_cli import clean_env, one_line

from taskdash.store import Store, users

TASKDASH = str(VENV_BIN / "taskdash")
GOOD = "correct horse battery"
CTRL_D = "\x04"  # end of input, typed at a prompt


def user_cmd(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """One ``taskdash user`` command in a session of its own (no terminal to prompt on)."""
    return subprocess.run(
        [TASKDASH, "user", *args],
        env=env,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        start_new_session=True,
    )


@pytest.fixture
def env(store: Store, mongo_uri: str) -> dict[str, str]:
    """The test's database on the suite's server."""
    return clean_env(TASKDASH_MONGODB__URI=mongo_uri, TASKDASH_MONGODB__DATABASE=store.db.name)


def _take_terminal() -> None:
    """In the child: the pty on stdin becomes its controlling terminal (getpass opens it)."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _read_until(fd: int, wanted: bytes, seen: bytearray, start: int) -> None:
    """Read the terminal until ``wanted`` appears after ``start`` (bounded, if it never comes)."""
    deadline = time.monotonic() + 30
    while wanted not in seen[start:]:
        assert time.monotonic() < deadline, bytes(seen)
        if select.select([fd], [], [], 0.5)[0]:
            seen += os.read(fd, 1024)


def on_terminal(args: list[str], env: dict[str, str], answers: list[str]) -> tuple[int, str]:
    """Run with a pseudo-terminal as its console, answering each password prompt in turn."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [TASKDASH, "user", *args],
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=_take_terminal,
    )
    os.close(slave)
    seen = bytearray()
    try:
        for answer in answers:
            _read_until(master, b"assword: ", seen, len(seen))
            os.write(master, answer.encode() + (b"" if answer == CTRL_D else b"\n"))
        code = proc.wait(60)
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 1024)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, seen.decode(errors="replace")


@pytest.mark.parametrize("action", ["", "add", "list", "passwd", "disable", "enable"])
def test_help_shows_examples_and_exit_codes(action: str) -> None:
    result = subprocess.run(
        [TASKDASH, "user", *([action] if action else []), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stderr == ""
    examples = result.stdout.split("Examples:")[1]
    assert f"taskdash user {action}".strip() in examples and "Exit codes: 0" in examples


async def test_add_with_password_stdin(store: Store, env: dict[str, str]) -> None:
    result = user_cmd("add", "alice", "--role", "admin", "--password-stdin", env=env, stdin=GOOD)
    assert (result.returncode, result.stderr) == (0, "")
    assert "created user alice (role admin)" in result.stdout
    user = await users.verify_login(store, "alice", GOOD)
    assert user is not None and user.role == "admin"


async def test_add_takes_the_whole_line_less_its_newline(store: Store, env: dict[str, str]) -> None:
    result = user_cmd("add", "bob", "--password-stdin", env=env, stdin=f" {GOOD} \r\n")
    assert result.returncode == 0, result.stderr
    user = await users.verify_login(store, "bob", f" {GOOD} ")
    assert user is not None and user.role == "user"


async def test_add_a_taken_name_is_exit_1(store: Store, env: dict[str, str]) -> None:
    await users.add_user(store, "alice", GOOD)
    result = user_cmd("add", "alice", "--password-stdin", env=env, stdin="another password 1")
    assert result.returncode == 1
    assert one_line(result.stderr) == "taskdash: user 'alice' exists already"
    assert await users.verify_login(store, "alice", GOOD) is not None


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["add", "Alice", "--password-stdin"], GOOD, "invalid user name 'Alice'"),
        (["add", "x" * 65, "--password-stdin"], GOOD, "invalid user name"),
        (["add", "alice", "--password-stdin"], "short", "password too short"),
        (["add", "alice", "--password-stdin"], "a" * 1025, "password too long"),
        (["add", "alice", "--password-stdin"], "", "no password on stdin"),
        (["add", "alice"], None, "no terminal to ask the password on: use --password-stdin"),
        (["passwd", "alice"], None, "no terminal to ask the password on"),
        (["passwd", "alice", "--password-stdin"], "short", "password too short"),
        (["add", "alice", "--role", "root", "--password-stdin"], GOOD, "invalid choice"),
        (["disable"], None, "the following arguments are required: name"),
    ],
)
async def test_bad_input_is_one_line_exit_2(
    store: Store, env: dict[str, str], args: list[str], stdin: str | None, message: str
) -> None:
    if args[0] == "passwd":
        await users.add_user(store, "alice", GOOD)
    result = user_cmd(*args, env=env, stdin=stdin)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and message in result.stderr
    if args[0] == "add":
        assert await users.count_users(store) == 0
    if args[0] == "passwd":
        assert await users.verify_login(store, "alice", GOOD) is not None


async def test_list_shows_each_account(store: Store, env: dict[str, str]) -> None:
    await users.add_user(store, "bob", GOOD)
    await users.add_user(store, "alice", GOOD, role="admin")
    await users.set_disabled(store, "bob", True)
    result = user_cmd("list", env=env)
    assert (result.returncode, result.stderr) == (0, "")
    lines = [line.split()[:3] for line in result.stdout.splitlines()]
    assert lines == [
        ["NAME", "ROLE", "STATE"],
        ["alice", "admin", "enabled"],
        ["bob", "user", "disabled"],
    ]
    assert "$argon2" not in result.stdout


async def test_passwd_changes_the_password(store: Store, env: dict[str, str]) -> None:
    await users.add_user(store, "alice", GOOD)
    result = user_cmd("passwd", "alice", "--password-stdin", env=env, stdin="a brand new password")
    assert (result.returncode, result.stdout.strip()) == (0, "password of alice changed")
    assert await users.verify_login(store, "alice", GOOD) is None
    assert await users.verify_login(store, "alice", "a brand new password") is not None


async def test_disable_then_enable(store: Store, env: dict[str, str]) -> None:
    await users.add_user(store, "alice", GOOD)
    result = user_cmd("disable", "alice", env=env)
    assert (result.returncode, result.stdout.strip()) == (0, "user alice disabled")
    assert await users.verify_login(store, "alice", GOOD) is None
    result = user_cmd("enable", "alice", env=env)
    assert (result.returncode, result.stdout.strip()) == (0, "user alice enabled")
    assert await users.verify_login(store, "alice", GOOD) is not None


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (["passwd", "nobody", "--password-stdin"], GOOD),
        (["passwd", "nobody"], None),  # said before any prompt
        (["disable", "nobody"], None),
        (["enable", "nobody"], None),
    ],
)
def test_an_unknown_user_is_one_line_exit_1(
    env: dict[str, str], args: list[str], stdin: str | None
) -> None:
    result = user_cmd(*args, env=env, stdin=stdin)
    assert result.returncode == 1
    assert one_line(result.stderr) == "taskdash: no user 'nobody'"


def test_an_unreachable_store_is_one_line_exit_1() -> None:
    env = clean_env(
        TASKDASH_MONGODB__URI=f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
        TASKDASH_MONGODB__SERVER_SELECTION_TIMEOUT="0.5",
    )
    result = user_cmd("list", env=env)
    assert result.returncode == 1
    assert "MongoDB unreachable" in one_line(result.stderr)


async def test_the_prompt_asks_twice_with_echo_off(store: Store, env: dict[str, str]) -> None:
    code, screen = on_terminal(["add", "alice", "--role", "admin"], env, [GOOD, GOOD])
    assert code == 0, screen
    assert "Repeat the password: " in screen and GOOD not in screen
    assert await users.verify_login(store, "alice", GOOD) is not None


async def test_passwords_that_differ_are_exit_2(store: Store, env: dict[str, str]) -> None:
    await users.add_user(store, "alice", GOOD)
    code, screen = on_terminal(["passwd", "alice"], env, ["first long password", "other one!!!!"])
    assert code == 2
    assert "taskdash: the passwords differ" in screen and "Traceback" not in screen
    assert await users.verify_login(store, "alice", GOOD) is not None


async def test_a_weak_password_is_refused_at_the_first_prompt(
    store: Store, env: dict[str, str]
) -> None:
    code, screen = on_terminal(["add", "alice"], env, ["short"])
    assert code == 2
    assert "password too short" in screen and "Repeat" not in screen
    assert await users.count_users(store) == 0


async def test_end_of_input_at_the_prompt_is_exit_2(store: Store, env: dict[str, str]) -> None:
    code, screen = on_terminal(["add", "alice"], env, [CTRL_D])
    assert code == 2
    assert "taskdash: no password given" in screen and "Traceback" not in screen
    assert await users.count_users(store) == 0


async def test_a_password_on_stdin_must_be_utf8(store: Store, env: dict[str, str]) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [TASKDASH, "user", "add", "alice", "--password-stdin"],
        env=env,
        input=b"\xff" * 20,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert one_line(result.stderr.decode()) == "taskdash: the password on stdin is not UTF-8"
    assert await users.count_users(store) == 0


def test_without_uri_the_embedded_store_is_started_for_the_command(tmp_path: Path) -> None:
    env = daemon_env(tmp_path)
    added = user_cmd("add", "alice", "--password-stdin", env=env, stdin=GOOD)
    assert added.returncode == 0, added.stderr
    listed = user_cmd("list", env=env)
    assert listed.returncode == 0 and "alice" in listed.stdout
    assert (tmp_path / "var" / "mongodb").is_dir()
    assert pids_with_arg(str(tmp_path)) == []  # stopped again after each command
