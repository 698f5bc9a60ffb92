"""Alerts: webhooks told when services change state or periodic tasks die (docs/alerts.md).

``outbox.enqueue`` is how any producer raises one; ``intake`` reads the checker's state
changes; ``fanout`` makes one delivery per webhook within rate limits; ``dispatcher`` claims
and attempts them through ``sender`` (the only HTTP code); ``payloads`` and ``signing`` are
pure; ``periodic`` raises the periodic service's dead tasks.
"""

from taskdash.alerts.outbox import enqueue

__all__ = ["enqueue"]
