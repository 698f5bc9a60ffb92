"""Time zones by IANA name (``Europe/Paris``), checked; and the machine's own zone.

Shared by cron schedules (:mod:`taskdash.periodic.timing`) and daily windows
(:mod:`taskdash.windows`). No I/O besides reading the zone files.
"""

from __future__ import annotations

import functools
from zoneinfo import ZoneInfo, available_timezones

from taskdash.errors import ValidationError

MAX_ZONE_LENGTH = 64
LOCALTIME = "/etc/localtime"


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def zone(name: str) -> ZoneInfo:
    """The zone called ``name``; ValidationError (with the sentence to show) otherwise.

    ``localtime`` is refused: it names whatever zone the machine is set to, which differs
    between machines, and every node must compute the same times.
    """
    if name == "localtime":
        raise ValidationError(
            "timezone 'localtime' depends on the machine; name the zone, e.g. Europe/Paris"
        )
    if len(name) > MAX_ZONE_LENGTH or name not in _zones():
        raise ValidationError(
            f"timezone {name[:MAX_ZONE_LENGTH]!r} is not an IANA time zone name "
            "(such as UTC, Europe/Paris or America/New_York)"
        )
    return ZoneInfo(name)


def machine_zone(path: str = LOCALTIME) -> ZoneInfo:
    """This machine's zone, with its DST rules (``/etc/localtime``); UTC if it has none."""
    try:
        with open(path, "rb") as file:
            return ZoneInfo.from_file(file, key="localtime")
    except (OSError, ValueError):
        return ZoneInfo("UTC")
