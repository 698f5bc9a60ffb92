"""Metadata harvest: fetch TaskMetaData from every service URL (issue 4).

``rules`` (SSRF allow-rules) and ``parse`` (body -> records) are pure; ``client`` is the only
HTTP code; ``sharding`` splits services among daemons; ``outcome`` turns one fetch into
what is stored; ``fetcher`` is the long-lived part.
"""

from taskdash.fetcher.errors import FetchError, ParseError, Refused
from taskdash.fetcher.fetcher import Fetcher
from taskdash.fetcher.outcome import SweepResult

__all__ = ["FetchError", "Fetcher", "ParseError", "Refused", "SweepResult"]
