"""Readiness: each component reports whether it is ready, with details for ``/readyz``.

The daemon is ready only while it is ``running``: during start-up (components registered one
by one, some not yet started) and during shutdown, ``/readyz`` answers 503 whatever the
components say, so that no traffic is sent to a daemon that is half there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

Check = Callable[[], tuple[bool, dict[str, Any]]]
Phase = Literal["starting", "running", "stopping"]


class Health:
    """A registry of named readiness checks; the daemon is ready when all of them are."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}
        self.phase: Phase = "starting"

    def add(self, name: str, check: Check) -> None:
        """Register (or replace) the check for one component."""
        self._checks[name] = check

    def set_phase(self, phase: Phase) -> None:
        """Starting -> running once everything started; stopping once a stop was asked for."""
        self.phase = phase

    def report(self) -> tuple[bool, dict[str, Any]]:
        """(ready, {component: {"ready": bool, ...details}})."""
        components: dict[str, Any] = {}
        for name, check in self._checks.items():
            ok, details = check()
            components[name] = {"ready": ok, **details}
        ready = bool(components) and all(c["ready"] for c in components.values())
        return ready and self.phase == "running", components
