"""``taskdash run``'s ``/metrics`` after real traffic: NSQ messages published to its broker,
tcpx requests, API calls, a fetch, the checker; each counter moves by exactly what was sent.

The daemon runs with ``[metrics] token`` set: the same run shows the 401 without it.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest
from support import daemon_env, daemon_token, free_ports, http_get, running_daemon, wait_for
from test_daemon_fetch import task_service

from taskdash.metrics.reading import Scrape, scrape
from taskdash.tcp.client import TcpClient

TOKEN = "daemon-metrics-token-0123456789"
SERVICE, HEARTBEAT = "taskdash.service", "taskdash.heartbeat"

pytestmark = pytest.mark.slow


def publish(env: dict[str, str], topic: str, body: bytes) -> None:
    nsqd = f"http://127.0.0.1:{env['TASKDASH_NSQ__EMBEDDED_HTTP_PORT']}"
    request = urllib.request.Request(f"{nsqd}/pub?topic={topic}", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


async def tcp_traffic(port: int) -> None:
    """Register, Find (found and not), an unknown request, a heartbeat: one connection."""
    async with TcpClient("127.0.0.1", port, timeout=20) as client:
        assert (await client.register({"id": "tcp-m1", "name": "t"}))["errid"] == 0
        assert (await client.find("tcp-m1"))["errid"] == 0
        assert (await client.find("tcp-none"))["errid"] == 1002
        assert (await client.request("Bogus", {"id": "x"}))["errid"] == 1000
        await client.heartbeat()
        assert (await client.find("tcp-m1"))["errid"] == 0  # after the heartbeat: it was read


def test_daemon_metrics_move_with_real_traffic(tmp_path: Path) -> None:
    env = daemon_env(
        tmp_path,
        TASKDASH_METRICS__TOKEN=TOKEN,
        TASKDASH_METRICS__STORE_COUNTS_TTL=0,
        # a second beat within 7 s of the first stored one is absorbed (no write of its own)
        TASKDASH_NSQ__HEARTBEAT_RESOLUTION=7,
        TASKDASH_FETCHER__FETCH_INTERVAL=0.5,
        TASKDASH_FETCHER__NODE_HEARTBEAT_INTERVAL=0.2,
        TASKDASH_FETCHER__NODE_TIMEOUT=1,
    )
    # a webhook (on a loopback port nobody listens on): its metrics are there from the start
    config = tmp_path / "alerts.toml"
    hook = f"http://127.0.0.1:{free_ports(1)[0]}/hook"
    config.write_text(f'[[alerts.webhooks]]\nname = "ops"\nurl = "{hook}"\n')
    with task_service() as url, running_daemon(tmp_path, env, config=config) as daemon:
        page = f"{daemon.web}/metrics"
        assert http_get(page)[0] == 401
        assert http_get(page, token="wrong-token-0123456789")[0] == 401
        before = scrape(page, TOKEN)
        alerts = "taskdash_alert_attempts_total"
        assert before.value(alerts, webhook="ops", outcome="delivered") == 0
        assert [dict(x) for x in before.labelled("taskdash_alert_deliveries_pending")] == [
            {"webhook": "ops"}
        ]
        assert before.value("taskdash_services", state="unknown") == 0
        assert before.value("taskdash_nsq_messages_received_total", topic=SERVICE) == 0

        def settled(count: int) -> Scrape | None:
            now = scrape(page, TOKEN)
            done = now.sum("taskdash_nsq_processing_seconds_count")
            return now if done == count else None

        # one at a time: the readers run apart, and a beat read before its service's
        # registration would be from an unknown service
        publish(env, SERVICE, json.dumps({"id": "svc-m", "url": url}).encode())
        publish(env, SERVICE, b'{"id": 7}')  # poison: dead-lettered
        wait_for(lambda: settled(2), timeout=30)
        publish(env, HEARTBEAT, b'{"id": "svc-m"}')
        wait_for(lambda: settled(3), timeout=30)
        publish(env, HEARTBEAT, b'{"id": "svc-m"}')  # within heartbeat_resolution: absorbed
        after = wait_for(lambda: settled(4), timeout=30)
        messages = "taskdash_nsq_messages_total"
        assert after.value("taskdash_nsq_messages_received_total", topic=SERVICE) == 2
        assert after.value(messages, topic=SERVICE, outcome="stored") == 1
        assert after.value(messages, topic=SERVICE, outcome="dead_lettered") == 1
        assert after.value(messages, topic=SERVICE, outcome="requeued") == 0
        assert after.value(messages, topic=HEARTBEAT, outcome="stored") == 1
        assert after.value(messages, topic=HEARTBEAT, outcome="absorbed") == 1
        assert after.value("taskdash_nsq_messages_received_total", topic=HEARTBEAT) == 2
        assert after.value("taskdash_nsq_heartbeats_unknown_total", topic=HEARTBEAT) == 0
        assert after.value("taskdash_nsq_processing_seconds_count", topic=SERVICE) == 2
        assert after.value("taskdash_nsq_processing_seconds_bucket", topic=SERVICE, le="+Inf") == 2
        assert after.sum("taskdash_services") == 1

        # the pass counts its changes once it ends, a moment after the store shows them
        transitions = "taskdash_checker_transitions_total"
        online = wait_for(
            lambda: (
                (s := scrape(page, TOKEN)).value(
                    transitions, from_state="unknown", to_state="online"
                )
                and s
            )
        )
        assert online.value(transitions, from_state="unknown", to_state="online") == 1
        assert online.sum(transitions) == 1
        assert online.value("taskdash_services", state="online") == 1
        assert online.value("taskdash_checker_pass_duration_seconds_count") > 0
        assert online.value("taskdash_checker_mode", mode="normal") == 1

        fetched = wait_for(
            lambda: (
                (s := scrape(page, TOKEN)).value("taskdash_fetch_requests_total", result="ok") and s
            )
        )
        assert fetched.value("taskdash_fetch_duration_seconds_count", outcome="ok") >= 1
        assert fetched.value("taskdash_fetch_share_services") == 1

        asyncio.run(tcp_traffic(int(env["TASKDASH_TCP__PORT"])))
        tcp = scrape(page, TOKEN)
        requests = "taskdash_tcp_requests_total"
        assert tcp.value(requests, type="Register", errid="0") == 1
        assert tcp.value(requests, type="Find", errid="0") == 2
        assert tcp.value(requests, type="Find", errid="1002") == 1
        assert tcp.value(requests, type="Unknown", errid="1000") == 1
        assert tcp.sum(requests) == 5
        assert tcp.value("taskdash_tcp_heartbeats_total") == 1
        assert tcp.value("taskdash_tcp_connections_accepted_total") == 1

        token = daemon_token(env)
        for _ in range(3):
            assert http_get(f"{daemon.web}/api/v1/services/svc-m", token=token)[0] == 200
        route = "/api/v1/services/(?P<service_id>[^/]{1,1536})"
        http = scrape(page, TOKEN)
        total = "taskdash_http_requests_total"
        assert http.value(total, route=route, method="GET", status="200") == 3
        assert http.value(total, route="/metrics", method="GET", status="401") == 2
        assert not [labels for labels in http.labelled(total) if "svc-m" in labels["route"]]
        assert daemon.stop() == 0
