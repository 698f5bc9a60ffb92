"""The [periodic] section: defaults, overrides, and the mistakes it refuses at load."""

from __future__ import annotations

import pytest

from taskdash.errors import ConfigError
from taskdash.settings import load


def test_defaults() -> None:
    cfg = load(env={}).periodic
    assert (cfg.grpc_port, cfg.http_port) == (50051, 8081)
    assert (cfg.visibility_timeout, cfg.max_attempts, cfg.max_limit) == (300, 5, 1000)
    assert cfg.admin_token == "" and cfg.service_id == "taskdash-periodic"
    assert cfg.max_reply_size == 4 * 1024 * 1024 - 64 * 1024  # under gRPC clients' 4 MiB


def test_env_override() -> None:
    cfg = load(env={"TASKDASH_PERIODIC__GRPC_PORT": "50052", "TASKDASH_PERIODIC__NODE_ID": "7"})
    assert cfg.periodic.grpc_port == 50052 and cfg.periodic.node_id == "7"


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("ADMIN_TOKEN", "short", "periodic.admin_token: must be at least 16 characters"),
        ("HTTP_PORT", "50051", "periodic.http_port: the same port as grpc_port"),
        ("MAX_LIMIT", "5", "periodic.max_limit"),
        ("MAX_ATTEMPTS", "0", "periodic.max_attempts"),
        ("ADVERTISE_URL", "ftp://x", "periodic.advertise_url"),
        (
            "MAX_TASK_DATA_SIZE",
            "2000000",
            "periodic.max_task_data_size: must be at most max_body_size",
        ),
        ("GRPC_HOST", " ", "periodic.grpc_host: must not be empty"),
        ("MAX_REPLY_SIZE", "66000", "periodic.max_reply_size: must hold one task"),
    ],
)
def test_refused(key: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(env={f"TASKDASH_PERIODIC__{key}": value})
    assert fragment in str(err.value)
