"""The signature of a delivery: HMAC-SHA256 over ``<timestamp>.<body>`` (as Stripe signs).

Pure functions. The timestamp is inside the signed text, so a receiver that refuses old
timestamps also refuses a replayed delivery; ``v1`` names the scheme, so a later one can be
sent beside it while receivers move over.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-TaskDash-Signature"
#: how far a receiver should let a signature's time be from its own clock (seconds)
TOLERANCE = 300


def digest(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``<timestamp>.<body>`` under ``secret``."""
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The header's value: ``t=<unix seconds>,v1=<hex digest>``."""
    return f"t={timestamp},v1={digest(secret, timestamp, body)}"


def verify(
    secret: str, header: str, body: bytes, *, now: float, tolerance: float = TOLERANCE
) -> bool:
    """Whether ``header`` signs ``body`` under ``secret`` within ``tolerance`` of ``now``.

    What a receiver runs (docs/alerts.md has the same recipe without TaskDash installed).
    """
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    stamps = fields.get("t", [])
    if len(stamps) != 1 or not stamps[0].isdigit():
        return False
    timestamp = int(stamps[0])
    if abs(now - timestamp) > tolerance:
        return False
    expected = digest(secret, timestamp, body)
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))
