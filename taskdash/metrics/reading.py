"""A ``/metrics`` page read back into values: for tests, scripts and ad-hoc checks."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, frozenset[tuple[str, str]]]

#: the series names a family of each type is queried by
SERIES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "info": ("_info",),
}


class Scrape:
    """Every sample of one exposition (Prometheus text), by name and labels."""

    def __init__(self, text: str) -> None:
        self.samples: dict[Key, float] = {}
        self.families: set[str] = set()
        #: every series name a query may use (``x_total``, ``x_bucket``...) -> its family
        self.series: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.families.add(family.name)
            for suffix in SERIES.get(family.type, ("",)):
                self.series[family.name + suffix] = family.name
            for sample in family.samples:
                self.samples[sample.name, frozenset(sample.labels.items())] = sample.value

    @property
    def names(self) -> set[str]:
        """Every sample name (``x_total``, ``x_bucket``, ``x_count``...)."""
        return {name for name, _ in self.samples}

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels (0 when absent: a series not yet touched)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def sum(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, found), v in self.samples.items() if n == name and wanted <= found)

    def labelled(self, name: str) -> list[Mapping[str, str]]:
        """The label sets ``name`` has samples for."""
        return [dict(found) for n, found in self.samples if n == name]


def scrape(url: str, token: str = "", timeout: float = 10.0) -> Scrape:
    """GET a ``/metrics`` page (with ``Authorization: Bearer`` when ``token``) and read it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
        return Scrape(r.read().decode())
