"""What the daemon's start and stop need beyond any one component.

Listening on a configured port with an error that names the setting, the record of a started
component (its stop, and its emergency step once the shutdown budget is spent), and the
watchdog thread that ends the process even if the event loop cannot.
"""

from __future__ import annotations

import errno
import faulthandler
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import structlog
import tornado.netutil

from taskdash.errors import TaskDashError
from taskdash.logs import ReopenableFileHandler
from taskdash.settings import NsqSettings

log = structlog.get_logger("taskdash.daemon")

Stopper = Callable[[], Awaitable[None]]
#: a synchronous step that keeps data (the broker's save): no awaits, safe from any thread
Rescue = Callable[[], object]

# The budget + 1 s, spent after the budget: the loop's path is the rescue (the broker's save:
# ~0.12 s for 15,000 messages on a loaded 2-core box), then ABORT_STEP (+ a 0.05 s floor per
# part), then CANCEL_WAIT: ~0.62 s. The watchdog fires at HARD_EXIT_AFTER, after that path,
# and still has 0.25 s for its own save (a no-op if the loop's got done) before the second.

#: after the budget, once the rescue steps have run: at most this long for all the
#: emergency steps that await (closing the web server, reaping the killed child)...
ABORT_STEP = 0.25
#: ...and this long for the cancelled tasks to end before the process exits regardless
CANCEL_WAIT = 0.2
#: the watchdog ends the process this long after the budget, whatever the loop is doing
HARD_EXIT_AFTER = 0.75


class ListenError(TaskDashError):
    """A port cannot be listened on (taken, refused); the message names the setting and address."""

    setting: str = ""
    address: str = ""


def bind_setting(setting: str, host: str, port: int) -> list[socket.socket]:
    """Bind ``host:port`` for ``setting``; a taken port is one line naming both."""
    try:
        return tornado.netutil.bind_sockets(port, host)
    except OSError as exc:
        address = f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            error = ListenError(f"{setting} {address} already in use")
        else:
            error = ListenError(f"{setting} {address}: {exc.strerror or exc}")
        error.setting, error.address = setting, address
        raise error from None


def broker_bind_error(exc: OSError, cfg: NsqSettings) -> ListenError:
    """The embedded broker could not listen: name the setting and address behind ``exc``.

    Neither asyncio's nor Tornado's error says which of the broker's three ports failed, so each
    configured port is tried again; a host that cannot be bound at all is the host's fault.
    """
    ports = {
        "nsq.embedded_tcp_port": cfg.embedded_tcp_port,
        "nsq.embedded_http_port": cfg.embedded_http_port,
        "nsq.embedded_lookupd_port": cfg.embedded_lookupd_port,
    }
    if exc.errno == errno.EADDRINUSE:
        for setting, port in ports.items():
            if not port:
                continue
            try:
                for sock in bind_setting(setting, cfg.embedded_host, port):
                    sock.close()
            except ListenError as busy:
                return busy
    error = ListenError(f"nsq.embedded_host {cfg.embedded_host}: {exc.strerror or exc}")
    error.setting, error.address = "nsq.embedded_host", cfg.embedded_host
    return error


def on_reload_signal(log_file: ReopenableFileHandler | None) -> None:
    """SIGHUP (``systemctl reload``, logrotate): reopen the log file, if any; config unchanged."""
    path = log_file.path if log_file is not None else None
    if log_file is not None:
        try:
            log_file.reopen()
        except OSError as exc:
            log.error("log_reopen_failed", path=path, error=str(exc))
    log.info("reload_requested", signal="SIGHUP", log_file=path, config="unchanged")


@dataclass
class Component:
    """A started part: how to stop it, and what to do if the budget runs out.

    ``rescue`` runs first once the budget is spent (and from the watchdog if the loop never
    gets there): synchronous, so no deadline can cancel it half-way. ``abort`` follows, within
    :data:`ABORT_STEP`.
    """

    name: str
    stop: Stopper
    abort: Stopper | None = None
    rescue: Rescue | None = None


class HardExit:
    """The last guarantee that a stop request ends the process: a timer thread.

    Runs only if the event loop could not finish in time (a library swallowing cancellation,
    a blocking call): kills the children, runs the rescue steps (the broker's save, which is
    thread-safe), writes one line, flushes the logs, ``os._exit(1)``. ``rescue`` is read when
    the timer fires, so a list that grows as parts start can be passed.
    """

    def __init__(
        self,
        seconds: float,
        kill_children: Callable[[], None],
        rescue: Iterable[Rescue] = (),
    ) -> None:
        self.seconds = seconds
        self.kill_children = kill_children
        self.rescue = rescue
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def start(self) -> None:
        """Arm the timer."""
        self._timer.start()

    def cancel(self) -> None:
        """Disarm it (in-process use, where ending the process would end the caller too)."""
        self._timer.cancel()

    def _fire(self) -> None:
        try:
            self.kill_children()  # signals only: first, so no child outlives us
            run_rescue(list(self.rescue))
            log.error("shutdown_forced", after=self.seconds)
            for handler in logging.getLogger().handlers:
                handler.flush()
            faulthandler.dump_traceback(all_threads=True)  # where it hung, on stderr
        finally:
            os._exit(1)


def run_rescue(steps: Iterable[Rescue]) -> None:
    """Run every rescue step; one failing must not keep the others from saving."""
    for step in steps:
        try:
            step()
        except Exception as exc:
            log.error(
                "rescue_failed", step=getattr(step, "__qualname__", repr(step)), error=str(exc)
            )
