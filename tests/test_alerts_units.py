"""The pure parts of alerts (signature, payloads, backoff, windows) and their settings."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
from pathlib import Path

import pytest
from support import VENV_BIN

from taskdash.alerts import payloads
from taskdash.alerts.dispatcher import backoff_ms
from taskdash.alerts.fanout import window_of
from taskdash.alerts.sender import classify
from taskdash.alerts.signing import signature, verify
from taskdash.errors import ConfigError
from taskdash.settings import AlertsSettings, WebhookSettings, load

BODY = b'{"id":"k1"}'
NOW = 1_795_000_000


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(b"key", f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert signature("key", NOW, BODY) == f"t={NOW},v1={expected}"


@pytest.mark.parametrize(
    ("header", "body", "now", "ok"),
    [
        (signature("key", NOW, BODY), BODY, NOW, True),
        (signature("key", NOW, BODY), BODY, NOW + 300, True),
        (signature("key", NOW, BODY), BODY, NOW + 301, False),  # too old: a replay
        (signature("key", NOW, BODY), BODY, NOW - 301, False),
        (signature("key", NOW, BODY), BODY + b" ", NOW, False),  # body changed
        (signature("other", NOW, BODY), BODY, NOW, False),  # another secret
        (signature("key", NOW, BODY).replace(f"t={NOW}", f"t={NOW + 1}"), BODY, NOW, False),
        (f"v1=x,{signature('key', NOW, BODY)}", BODY, NOW, True),  # one of several v1
        (f"t={NOW},t={NOW},v1=x", BODY, NOW, False),
        ("t=abc,v1=x", BODY, NOW, False),
        ("", BODY, NOW, False),
    ],
)
def test_verify(header: str, body: bytes, now: int, ok: bool) -> None:
    assert verify("key", header, body, now=now) is ok


@pytest.mark.parametrize(
    ("code", "outcome"),
    [(200, "delivered"), (204, "delivered"), (299, "delivered"), (301, "failed"),
     (400, "failed"), (401, "failed"), (404, "failed"), (408, "retry"), (429, "retry"),
     (500, "retry"), (503, "retry"), (199, "failed")],
)  # fmt: skip
def test_classify(code: int, outcome: str) -> None:
    assert classify(code) == outcome


def test_backoff_doubles_up_to_the_maximum() -> None:
    s = AlertsSettings(backoff_initial=2.0, backoff_max=10.0)
    assert [backoff_ms(s, n) for n in (1, 2, 3, 4, 100)] == [2000, 4000, 8000, 10000, 10000]


def test_windows_are_aligned_to_the_epoch() -> None:
    assert window_of(0, 600) == (0, 600_000)
    assert window_of(599_999, 600) == (0, 600_000)
    assert window_of(600_000, 600) == (1, 1_200_000)


DELIVERY = {
    "event": "service:s1:abc",
    "kind": "service.stale",
    "subject": "s1",
    "title": "Service s1 is stale: no heartbeat",
    "at": 1_795_000_000_000,
    "details": {"from": "online", "to": "stale"},
    "webhook": "ops",
}


def test_json_payload_is_the_event() -> None:
    assert json.loads(payloads.body("json", DELIVERY)) == {
        "id": "service:s1:abc",
        "kind": "service.stale",
        "subject": "s1",
        "title": "Service s1 is stale: no heartbeat",
        "at": "2026-11-18T11:06:40+00:00",
        "details": {"from": "online", "to": "stale"},
        "webhook": "ops",
    }


def test_slack_payload_has_text_and_blocks() -> None:
    body = json.loads(payloads.body("slack", DELIVERY))
    assert body["text"] == ":warning: Service s1 is stale: no heartbeat"
    assert body["blocks"][1]["elements"][0]["text"] == (
        "service.stale · s1 · 2026-11-18T11:06:40+00:00"
    )


@pytest.mark.parametrize(
    ("kind", "subject", "details", "title"),
    [
        ("service.offline", "a", {"reason": "no heartbeat"}, "Service a is offline: no heartbeat"),
        ("service.online", "a", {}, "Service a is back online: ?"),
        ("task.outside_window", "t1", {}, "task.outside_window: t1"),  # a kind without template
        ("alerts.suppressed", "a", {"window_seconds": "x"}, "alerts.suppressed: a"),  # bad type
        ("service.stale", "x" * 400, {}, "Service " + "x" * 291 + "…"),
    ],
)
def test_titles(kind: str, subject: str, details: dict[str, object], title: str) -> None:
    assert payloads.title(kind, subject, details) == title


# --- settings -------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "taskdash.toml"
    path.write_text(text)
    return path


HOOK = '[[alerts.webhooks]]\nname = "ops"\nurl = "https://hooks.example/x"\n'


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[[alerts.webhooks]]\nname = "ops"\nurl = "ftp://x/y"\n',
            "alerts.webhooks[0]: url 'ftp://x/y' is not an http(s)://host[:port] URL",
        ),
        ('[[alerts.webhooks]]\nurl = "http://x/"\n', "missing required field `name`"),
        ('[[alerts.webhooks]]\nname = "a b"\nurl = "http://x/"\n', "alerts.webhooks[0].name"),
        (HOOK + 'format = "xml"\n', "alerts.webhooks[0].format: Invalid enum value 'xml'"),
        (HOOK + 'events = ["service.gone"]\n', "events entry 'service.gone' matches no alert"),
        (HOOK + 'secret = "a"\nsecret_file = "/x"\n', "secret must be empty when secret_file"),
        (HOOK + 'secret_file = "/nonexistent"\n', "secret_file cannot be read: /nonexistent"),
        (HOOK + HOOK, "alerts.webhooks: name 'ops' is used twice"),
        (HOOK + "unknown = 1\n", "alerts.webhooks[0].unknown: unknown key"),
        ("[alerts]\nbackoff_initial = 10.0\nbackoff_max = 5.0\n", "alerts.backoff_max: must be >="),
        ("[alerts]\nclaim_lease = 10.0\n", "alerts.claim_lease: must be longer than"),
        ("[alerts]\nrate_limit = -1\n", "alerts.rate_limit: Expected `int` >= 0"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, toml), env={})
    assert message in str(caught.value)
    assert str(tmp_path / "taskdash.toml") in str(caught.value)


def test_a_secret_file_is_read_and_must_be_private(tmp_path: Path) -> None:
    secret = tmp_path / "hook.secret"
    secret.write_text("from-a-file\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load(write(tmp_path, HOOK + f'secret_file = "{secret}"\n'), env={})
    secret.chmod(0o600)
    hook = load(write(tmp_path, HOOK + f'secret_file = "{secret}"\n'), env={}).alerts.webhooks[0]
    assert hook.signing_secret() == "from-a-file"


def test_the_secret_is_never_in_the_settings_repr() -> None:
    hook = WebhookSettings(name="ops", url="http://x/", secret="hunter2")
    assert "hunter2" not in repr(hook) and "hunter2" not in repr(AlertsSettings(webhooks=[hook]))


def test_event_filters() -> None:
    hook = WebhookSettings(name="ops", url="http://x/", events=["service.*", "periodic.task_dead"])
    assert hook.wants("service.stale") and hook.wants("periodic.task_dead")
    assert not hook.wants("alerts.suppressed")
    assert WebhookSettings(name="all", url="http://x/").wants("anything.new")


def test_webhooks_come_from_the_environment_too() -> None:
    env = {"TASKDASH_ALERTS__WEBHOOKS": '[{name = "ops", url = "http://x/", format = "slack"}]'}
    (hook,) = load(env=env).alerts.webhooks
    assert (hook.name, hook.format) == ("ops", "slack")


def test_check_config_refuses_a_bad_webhook_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[[alerts.webhooks]]\nname = "ops"\nurl = "hooks.example/x"\n')
    result = subprocess.run(
        [str(VENV_BIN / "taskdash"), "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "alerts.webhooks[0]: url 'hooks.example/x' is not an http(s)://host[:port] URL" in line
