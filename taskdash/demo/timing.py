"""Every delay and threshold of the demo, in seconds, at ``--speed`` 1 or faster (pure).

At speed 1 a newcomer sees each change within about a minute: a flaky service turns stale and
comes back, the doomed one dies at one minute and goes stale then offline 25 s later, the
scheduler fires every few seconds. ``--speed N`` divides every duration by N (the tests run
at 3), except the floors below, which the parts' own settings require.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MIN_SPEED, MAX_SPEED = 1.0, 10.0
#: a schedule's interval is at least 1 s (docs/periodic.md)
MIN_SCHEDULE_EVERY = 1.0


@dataclass(frozen=True)
class Timings:
    """The demo's clock; build it with :meth:`at_speed`."""

    beat_every: float = 2.0  # heartbeats of the services that are alive
    check_interval: float = 1.0  # [checker]
    stale_after: float = 8.0
    offline_after: float = 25.0
    fetch_interval: float = 5.0  # [fetcher]
    connect_timeout: float = 2.0
    request_timeout: float = 4.0
    backoff_initial: float = 2.0
    backoff_max: float = 20.0
    node_heartbeat_interval: float = 1.0
    node_timeout: float = 5.0
    flaky_up: float = 12.0  # the flaky service beats this long...
    flaky_down: float = 14.0  # ...then is silent this long (stale, not offline)
    slow_delay: float = 2.5  # the slow service's usual answer time...
    slow_stall: float = 8.0  # ...and, every third request, past request_timeout
    doomed_after: float = 60.0  # the doomed service dies this long after the start
    schedule_every: float = 4.0  # the worker's schedule fires this often
    worker_poll: float = 1.0  # the worker asks for tasks this often
    announce_interval: float = 2.0  # [periodic] heartbeats
    visibility_timeout: float = 30.0  # [periodic] lease length
    tcp_update_every: float = 15.0  # the TCP tasks change status this often

    @classmethod
    def at_speed(cls, speed: float) -> Timings:
        """Every duration divided by ``speed`` (within MIN_SPEED..MAX_SPEED)."""
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be from {MIN_SPEED:g} to {MAX_SPEED:g}, got {speed:g}")
        base = cls()
        scaled = {f.name: getattr(base, f.name) / speed for f in dataclasses.fields(cls)}
        scaled["schedule_every"] = max(scaled["schedule_every"], MIN_SCHEDULE_EVERY)
        return cls(**scaled)
