"""The config file the demo's children run on: ``<data dir>/demo.toml`` (pure).

Written, not built in memory, so that a newcomer can read what the demo changed from the
defaults (and start ``taskdash run --config`` on it afterwards). Every value is on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path

from taskdash.demo.timing import Timings
from taskdash.settings import Settings, load

HOST = "127.0.0.1"
FILE_NAME = "demo.toml"


def free_port(host: str = HOST) -> int:
    """A TCP port free a moment ago, for a child that must be told its port up front."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Ports:
    """The children's ports, all on :data:`HOST`."""

    web: int
    tcp: int
    nsqd_tcp: int
    nsqd_http: int
    lookupd_http: int
    periodic_grpc: int
    periodic_http: int
    mongodb: int

    @classmethod
    def pick(cls, web: int = 0) -> Ports:
        """``web`` as given (0: a free one), every other port free."""
        names = [f for f in cls.__dataclass_fields__ if f != "web"]
        chosen: set[int] = {web}
        ports: dict[str, int] = {}
        for name in names:
            port = free_port()
            while port in chosen:  # two sockets closed in a row may get the same port
                port = free_port()
            chosen.add(port)
            ports[name] = port
        return cls(web=web or free_port(), **ports)


def _text(value: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's."""
    return json.dumps(value)


TEMPLATE = """\
# Written by `taskdash demo` (docs/demo.md): the defaults of config/taskdash.toml, except
# the keys below. Everything listens on {host}; thresholds are short (--speed {speed:g}) so that
# every state change shows within a minute.

[daemon]
data_dir = {data_dir}
shutdown_timeout = 5.0

[log]
format = "json"

[mongodb]
uri = {mongodb_uri}   # the demo's nx-27017, shared by the daemon and the periodic service

[web]
host = "{host}"
port = {ports.web}

[tcp]
host = "{host}"
port = {ports.tcp}

[nsq]
# the daemon's embedded broker; the periodic service and the simulated services publish to it
embedded_host = "{host}"
embedded_tcp_port = {ports.nsqd_tcp}
embedded_http_port = {ports.nsqd_http}
embedded_lookupd_port = {ports.lookupd_http}
nsqd_http_address = "http://{host}:{ports.nsqd_http}"
heartbeat_resolution = 0.0    # every beat stored: beats come faster than the default 1 s

[checker]
check_interval = {t.check_interval:.3f}
stale_after = {t.stale_after:.3f}
offline_after = {t.offline_after:.3f}
self_preservation = false     # the demo silences two of six services at once, on purpose

[tasks]
window_timezone = "UTC"       # the TCP tasks' windows are placed around the current UTC time

[fetcher]
fetch_interval = {t.fetch_interval:.3f}
connect_timeout = {t.connect_timeout:.3f}
request_timeout = {t.request_timeout:.3f}
backoff_initial = {t.backoff_initial:.3f}
backoff_max = {t.backoff_max:.3f}
node_heartbeat_interval = {t.node_heartbeat_interval:.3f}
node_timeout = {t.node_timeout:.3f}
# SSRF rules: the simulated services listen on loopback, so the demo allows 127.0.0.1
# explicitly, and only it. Never copy this to a shared machine: anyone who can publish a
# service URL could make the daemon request its own host's services.
allowed_cidrs = ["127.0.0.1/32"]
refused_cidrs = ["169.254.0.0/16", "fe80::/10", "100.100.100.200/32", "fd00:ec2::254/128"]

[periodic]
grpc_host = "{host}"
grpc_port = {ports.periodic_grpc}
http_host = "{host}"
http_port = {ports.periodic_http}
announce_interval = {t.announce_interval:.3f}
visibility_timeout = {t.visibility_timeout:.3f}
"""


def render(data_dir: Path, ports: Ports, timings: Timings, speed: float) -> str:
    """The demo's config file, as text."""
    uri = f"mongodb://{HOST}:{ports.mongodb}/?directConnection=true"
    return TEMPLATE.format(
        host=HOST,
        speed=speed,
        data_dir=_text(str(data_dir)),
        mongodb_uri=_text(uri),
        ports=ports,
        t=timings,
    )


def write(data_dir: Path, ports: Ports, timings: Timings, speed: float) -> tuple[Path, Settings]:
    """Write ``demo.toml`` into ``data_dir`` and load it back as the children will.

    Loaded without the environment: the children run without ``TASKDASH_*`` variables too,
    so the demo is the same wherever it starts.
    """
    path = data_dir / FILE_NAME
    path.write_text(render(data_dir, ports, timings, speed), encoding="utf-8")
    return path, load(path, env={})
