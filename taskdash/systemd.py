"""systemd ``Type=notify`` support: READY/STOPPING/WATCHDOG; does nothing outside systemd."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("taskdash.systemd")


class Notifier:
    """Sends sd_notify datagrams to ``$NOTIFY_SOCKET`` when it is set."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        # A leading "@" names a socket in the abstract namespace.
        self.address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        # as sd_watchdog_enabled(): a WATCHDOG_PID naming another process (the variables were
        # inherited) means the watchdog is not ours
        owner = env.get("WATCHDOG_PID", "")
        ours = not owner or owner == str(os.getpid())
        wanted = ours and usec.isdigit() and int(usec) > 0
        #: seconds between ``WATCHDOG=1`` pings: half of ``WatchdogSec=``; None when off
        self.watchdog_interval = int(usec) / 2e6 if wanted else None

    @property
    def enabled(self) -> bool:
        """Whether systemd (or a test) is listening."""
        return bool(self.address)

    def notify(self, state: str) -> bool:
        """Send one state string; never raises (a lost notification must not kill the daemon)."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(state.encode())
        except OSError as exc:
            log.warning("systemd_notify_failed", state=state, error=str(exc))
            return False
        return True

    def ready(self) -> bool:
        """Everything listens: tell systemd the start-up is complete."""
        return self.notify(f"READY=1\nMAINPID={os.getpid()}")

    def stopping(self) -> bool:
        """Shutdown has begun."""
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        """Keep-alive for ``WatchdogSec=``."""
        return self.notify("WATCHDOG=1")
