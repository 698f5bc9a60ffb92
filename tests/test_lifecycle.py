"""Start/stop helpers: a port setting that cannot be bound, and the hard-exit watchdog."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest
from support import free_port

from taskdash.lifecycle import ListenError, bind_setting, busy_setting


def test_a_taken_port_names_the_setting_and_the_address() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ListenError) as caught:
            bind_setting("web.port", "127.0.0.1", port)
        assert str(caught.value) == f"web.port 127.0.0.1:{port} already in use"
        free = free_port()
        found = busy_setting("127.0.0.1", {"a.port": free, "b.port": 0, "c.port": port})
        assert found == f"c.port 127.0.0.1:{port} already in use"
    assert busy_setting("127.0.0.1", {"a.port": free}) is None, "a free port is left free"


def test_the_watchdog_ends_a_process_whose_loop_is_stuck() -> None:
    script = textwrap.dedent(
        """
        import time
        from taskdash.lifecycle import HardExit

        def kill_children():
            print("children killed", flush=True)

        HardExit(0.3, kill_children).start()
        time.sleep(120)  # a loop that never comes back
        print("not reached", flush=True)
        """
    )
    # the generous timeout only keeps a broken watchdog from hanging the suite
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "children killed" in done.stdout and "not reached" not in done.stdout
    assert "shutdown_forced" in done.stdout + done.stderr
    assert "most recent call first" in done.stderr, "where it hung is on stderr"
