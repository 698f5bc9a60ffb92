"""config/grafana/taskdash.json queries exactly what a running daemon and periodic service
expose: every metric a panel uses exists, and every TaskDash metric has a panel."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import daemon_env, free_ports, http_get, running_daemon
from test_process import PeriodicProcess, periodic_env, register_and_start

from taskdash.metrics.reading import Scrape
from taskdash.periodic.proto import periodic_task_pb2_grpc as pb_grpc

DASHBOARD = Path(__file__).parents[2] / "config" / "grafana" / "taskdash.json"
METRIC = re.compile(r"\b(?:taskdash|process)_[a-z0-9_]+\b")

pytestmark = pytest.mark.slow


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL text in the dashboard: panel targets and template variable queries."""
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append(query["query"])
    return found


def scraped(base: str) -> Scrape:
    status, text = http_get(f"{base}/metrics")
    assert status == 200, text
    return Scrape(text)


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert names == {"datasource", "instance"}


def test_the_dashboard_uses_exactly_the_metrics_exposed(mongo_uri: str, tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = {name for query in queries(dashboard) for name in METRIC.findall(query)}
    # a webhook (a loopback port nobody listens on), so the alerts' metrics are there too
    config = tmp_path / "alerts.toml"
    hook = f"http://127.0.0.1:{free_ports(1)[0]}/hook"
    config.write_text(f'[[alerts.webhooks]]\nname = "ops"\nurl = "{hook}"\n')
    with running_daemon(tmp_path, daemon_env(tmp_path), config=config) as daemon:
        daemon_metrics = scraped(daemon.web)
    periodic = PeriodicProcess(tmp_path, periodic_env(mongo_uri))
    try:
        periodic.wait_ready()
        with grpc.insecure_channel(periodic.grpc_target) as channel:
            register_and_start(pb_grpc.PeriodicTaskStub(channel))
        periodic_metrics = scraped(periodic.http)
    finally:
        assert periodic.stop() == 0
    exposed = {**daemon_metrics.series, **periodic_metrics.series}
    assert used - exposed.keys() == set(), "panels query metrics nobody exposes"
    # x_created: the creation times the Prometheus text format shows as gauges of their own
    ours = {f for f in exposed.values() if f.startswith("taskdash_") and not f.endswith("_created")}
    shown = {exposed[name] for name in used}
    assert ours - shown == set(), "metrics without a panel"
    # the daemon's own parts and the periodic service's, each where it belongs
    assert "taskdash_nsq_messages" in daemon_metrics.families
    assert "taskdash_alert_attempts" in daemon_metrics.families
    assert "taskdash_periodic_queue_tasks" in periodic_metrics.families
    assert "taskdash_grpc_requests" in periodic_metrics.families
    assert "taskdash_nsq_messages" not in periodic_metrics.families
