"""Several nsqd behind one nsqlookupd, as production runs them, with the daemon reading them all.

Three ``taskdash nsqd`` processes register with a ``taskdash nsqlookupd`` process; ``taskdash
run`` is given only the lookupd's HTTP address. Registrations published to each broker are
stored; one broker is stopped and started again while a publisher keeps sending to it, and every
registration it acknowledged is stored; a fourth broker started later is found at the next
lookupd poll.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from broker_process import Nsqd, Process, clean_env
from support import (
    daemon_env,
    daemon_token,
    free_ports,
    http_get,
    running_daemon,
    wait_for,
)

# pynsq's Reader asks lookupd every lookupd_poll_interval (taskdash/nsq/consumer.py: 15 s), with
# up to 30 % jitter; a broker is found within one poll
LOOKUPD_POLL = 15 * 1.3


def pub(broker: Nsqd, topic: str, doc: dict[str, str]) -> bool:
    """One message through nsqd's HTTP /pub; True if acknowledged."""
    url = f"http://127.0.0.1:{broker.http_port}/pub?topic={topic}"
    request = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status == 200 and reply.read() == b"OK"
    except (urllib.error.URLError, OSError):
        return False


def stored_ids(web: str, token: str) -> set[str]:
    """Every service id the daemon stored, through its API (with a bearer token)."""
    ids: set[str] = set()
    skip = 0
    while True:
        status, body = http_get(f"{web}/api/v1/services?limit=1000&skip={skip}", token=token)
        assert status == 200, body
        ids |= {s["id"] for s in body["services"]}
        if body["count"] < 1000:
            return ids
        skip += 1000


class Load(threading.Thread):
    """Publishes registrations to one broker until stopped; remembers what was acknowledged."""

    def __init__(self, broker: Nsqd) -> None:
        super().__init__(daemon=True)
        self.broker = broker
        self.acked: list[str] = []
        self.refused = 0
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            sid = f"load-{n}"
            n += 1
            if pub(self.broker, "taskdash.service", {"id": sid, "name": "load"}):
                self.acked.append(sid)
            else:
                self.refused += 1
                self.halt.wait(0.05)  # the broker is down: try the next one a moment later


def test_three_brokers_behind_one_lookupd(tmp_path: Path, mongo_uri: str) -> None:
    lookupd_tcp, lookupd_http = free_ports(2)
    lookupd = Process(
        tmp_path,
        "nsqlookupd",
        [f"--tcp-address=127.0.0.1:{lookupd_tcp}", f"--http-address=127.0.0.1:{lookupd_http}"],
        clean_env(),
    ).start()
    lookupd.wait_port(lookupd_http)
    register = (f"--lookupd-tcp-address=127.0.0.1:{lookupd_tcp}", "--broadcast-address=127.0.0.1")
    brokers = [Nsqd(tmp_path / f"n{i}", tmp_path / f"n{i}" / "data", *register) for i in range(4)]
    daemon = None
    load = Load(brokers[1])
    try:
        for broker in brokers[:3]:
            broker.start()
        # each broker has the topics before the daemon asks lookupd for them
        for i, broker in enumerate(brokers[:3]):
            assert pub(broker, "taskdash.service", {"id": f"svc-{i}", "name": f"on broker {i}"})
            assert pub(broker, "taskdash.heartbeat", {"id": f"svc-{i}"})

        def producers(topic: str) -> int:
            status, body = http_get(f"http://127.0.0.1:{lookupd_http}/lookup?topic={topic}")
            return len(body["producers"]) if status == 200 else 0

        wait_for(lambda: producers("taskdash.service") == 3)

        env = daemon_env(
            tmp_path,
            TASKDASH_MONGODB__URI=mongo_uri,
            TASKDASH_MONGODB__DATABASE=f"cluster_{uuid.uuid4().hex[:12]}",
            TASKDASH_NSQ__LOOKUPD_HTTP_ADDRESSES=json.dumps([f"http://127.0.0.1:{lookupd_http}"]),
            TASKDASH_NSQ__NSQD_HTTP_ADDRESS=f"http://127.0.0.1:{brokers[0].http_port}",
            TASKDASH_FETCHER__ENABLED="false",
        )
        with running_daemon(tmp_path, env) as daemon:
            token = daemon_token(env)  # the API needs a login or a token

            def readers_connected(count: int) -> bool:
                parts = http_get(f"{daemon.web}/readyz")[1]["components"]
                return parts["reader:taskdash.service"]["connections"] == count

            # the daemon knows only the lookupd: it reads from all three brokers
            wait_for(lambda: {"svc-0", "svc-1", "svc-2"} <= stored_ids(daemon.web, token))
            wait_for(lambda: readers_connected(3))

            # broker 1 stopped and started again while a publisher keeps sending to it
            load.start()
            wait_for(lambda: len(load.acked) >= 50)
            assert brokers[1].stop() == 0
            wait_for(lambda: load.refused > 0)  # publishes failed while it was down
            brokers[1].start()
            # meanwhile a fourth broker appears
            brokers[3].start()
            assert pub(brokers[3], "taskdash.service", {"id": "svc-3", "name": "late broker"})
            wait_for(lambda: len(load.acked) >= 100)  # acknowledged again after the restart
            load.halt.set()
            load.join()

            wait_for(lambda: "svc-3" in stored_ids(daemon.web, token), timeout=LOOKUPD_POLL + 10)
            wait_for(
                lambda: set(load.acked) <= stored_ids(daemon.web, token), timeout=LOOKUPD_POLL + 10
            )
            wait_for(lambda: readers_connected(4), timeout=LOOKUPD_POLL + 10)
            assert daemon.stop() == 0
    finally:
        load.halt.set()
        for broker in brokers:
            if broker.proc is not None:
                broker.stop()
        lookupd.stop()
