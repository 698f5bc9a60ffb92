"""Start/stop helpers: a port setting that cannot be bound, and the hard-exit watchdog."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import free_port

from taskdash.lifecycle import ListenError, bind_setting, broker_bind_error
from taskdash.nsq.broker import persist
from taskdash.settings import NsqSettings

TESTS = Path(__file__).parent


def test_a_taken_port_names_the_setting_and_the_address() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ListenError) as caught:
            bind_setting("web.port", "127.0.0.1", port)
        assert str(caught.value) == f"web.port 127.0.0.1:{port} already in use"
        assert (caught.value.setting, caught.value.address) == ("web.port", f"127.0.0.1:{port}")
        free = free_port()
        cfg = NsqSettings(embedded_tcp_port=free, embedded_http_port=0, embedded_lookupd_port=port)
        taken = OSError(errno.EADDRINUSE, "Address already in use")
        found = broker_bind_error(taken, cfg)
        assert str(found) == f"nsq.embedded_lookupd_port 127.0.0.1:{port} already in use"
    # the free port was tried and left free
    bind_setting("a.port", "127.0.0.1", free)[0].close()
    other = broker_bind_error(OSError(errno.EACCES, "Permission denied"), cfg)
    assert (other.setting, str(other)) == (
        "nsq.embedded_host",
        "nsq.embedded_host 127.0.0.1: Permission denied",
    )


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


def test_the_watchdog_saves_the_broker_while_the_loop_is_stuck(tmp_path: Path) -> None:
    # the loop never reaches its own emergency step: the watchdog thread saves the broker's
    # unfinished messages (one in flight to a connected client, two queued) before the exit
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time
        sys.path[:0] = [{str(TESTS)!r}, {str(TESTS / "broker")!r}]
        from broker_helpers import RawClient
        from taskdash.lifecycle import HardExit
        from taskdash.nsq.broker import Broker

        async def main():
            broker = Broker(tcp_port=0, http_port=0, lookupd_http_port=None,
                            data_dir={str(tmp_path)!r})
            await broker.start()
            consumer = await RawClient.connect(broker.tcp_port)
            producer = await RawClient.connect(broker.tcp_port)
            await consumer.subscribe("kept", "ch", rdy=1)
            for body in (b"one", b"two", b"three"):
                await producer.pub("kept", body)
            await consumer.message()
            HardExit(0.3, lambda: None, rescue=[broker.save_now]).start()
            time.sleep(120)  # a loop that never comes back
            print("not reached", flush=True)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert "not reached" not in done.stdout
    saved = persist.load(tmp_path).messages
    assert sorted(m.body for m in saved) == [b"one", b"three", b"two"], done.stdout
    assert "messages_persisted" in done.stdout and "shutdown_forced" in done.stdout


def test_a_failing_rescue_step_does_not_stop_the_exit() -> None:
    script = textwrap.dedent(
        """
        import time
        from taskdash.lifecycle import HardExit

        def broken():
            raise OSError("disk gone")

        HardExit(0.3, lambda: print("children killed", flush=True), rescue=[broken]).start()
        time.sleep(120)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "children killed" in done.stdout and "rescue_failed" in done.stdout
