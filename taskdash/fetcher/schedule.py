"""When a service is due again, and how long a claim holds it: pure arithmetic on epoch ms.

Sweeps start on interval boundaries (multiples of ``fetch_interval`` since the epoch), so every
daemon sweeps at the same instants. A fetch made at ``base`` is due again at the first boundary
at least one interval later: on a boundary that is the next one, and off a boundary (a sweep
woken early because a node died) it is the one after, so a service is never fetched twice
within one interval, takeover included.
"""

from __future__ import annotations

from taskdash.settings import FetcherSettings

#: Added to the longest possible fetch when a claim holds a service.
CLAIM_MARGIN_MS = 1000


def next_boundary(now_ms: int, interval_ms: int) -> int:
    """The first interval boundary strictly after ``now_ms``."""
    return (now_ms // interval_ms + 1) * interval_ms


def next_due(base_ms: int, interval_ms: int) -> int:
    """When a fetch made at ``base_ms`` is due again: the first boundary an interval later."""
    return -(-(base_ms + interval_ms) // interval_ms) * interval_ms


def fetch_budget_ms(settings: FetcherSettings) -> int:
    """The longest one fetch can take: every redirect hop may use the whole request timeout."""
    hops = settings.max_redirects + 1
    return int(settings.request_timeout * hops * 1000) + CLAIM_MARGIN_MS


def hold_until(settings: FetcherSettings, now_ms: int, due_ms: int) -> int:
    """How long a claim keeps a service from every other sweep and daemon.

    At least until it is due again, and at least as long as its fetch can last: a slow fetch is
    never started a second time (here or on another daemon) while the first still runs. The
    stored result then sets the real next due time.
    """
    return max(due_ms, now_ms + fetch_budget_ms(settings))
