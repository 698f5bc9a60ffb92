"""Readiness: each component reports whether it is ready, with details for ``/readyz``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Check = Callable[[], tuple[bool, dict[str, Any]]]


class Health:
    """A registry of named readiness checks; the daemon is ready when all of them are."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        """Register (or replace) the check for one component."""
        self._checks[name] = check

    def report(self) -> tuple[bool, dict[str, Any]]:
        """(ready, {component: {"ready": bool, ...details}})."""
        components: dict[str, Any] = {}
        for name, check in self._checks.items():
            ok, details = check()
            components[name] = {"ready": ok, **details}
        ready = bool(components) and all(c["ready"] for c in components.values())
        return ready, components
