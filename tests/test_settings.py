"""Config: defaults, the file, environment overrides, and each kind of bad value."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo.errors import PyMongoError

from taskdash.errors import ConfigError
from taskdash.settings import Settings, _uri_validator, env_warnings, load

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "taskdash.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file_or_env() -> None:
    s = load(env={})
    assert s.web.port == 8080
    assert s.mongodb.uri == "" and s.mongodb.embedded_port == 27017
    assert s.nsq.service_topic == "taskdash.service" and s.nsq.channel == "taskdash"
    assert s.nsq.embedded
    assert (s.checker.stale_after, s.checker.offline_after, s.checker.recover_beats) == (15, 60, 2)


def test_shipped_config_equals_the_built_in_defaults() -> None:
    """config/taskdash.toml documents every key with its default: it must not drift."""
    assert load(ROOT / "config" / "taskdash.toml", env={}) == Settings()


def test_shipped_config_names_every_key() -> None:
    text = (ROOT / "config" / "taskdash.toml").read_text()
    for section in Settings.__struct_fields__:
        assert f"[{section}]" in text
        for key in getattr(Settings(), section).__struct_fields__:
            assert f"\n{key} = " in text, f"{section}.{key} is not documented"


def test_production_example_is_valid_and_external() -> None:
    s = load(ROOT / "config" / "production.example.toml", env={})
    assert "replicaSet=rs0" in s.mongodb.uri
    assert not s.nsq.embedded


def test_file_values(tmp_path: Path) -> None:
    path = write(tmp_path, '[web]\nport = 9000\n[nsq]\nnsqd_tcp_addresses = ["n1:4150"]\n')
    s = load(path, env={})
    assert s.web.port == 9000
    assert s.nsq.nsqd_tcp_addresses == ["n1:4150"] and not s.nsq.embedded


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[web]\nport = 9000\nhost = '0.0.0.0'\n")
    env = {
        "TASKDASH_WEB__PORT": "9100",
        "TASKDASH_MONGODB__URI": "mongodb://a,b/?replicaSet=rs0",
        "TASKDASH_CHECKER__ENABLED": "false",
        "TASKDASH_NSQ__LOOKUPD_HTTP_ADDRESSES": '["http://l1:4161"]',
        "TASKDASH_TEST_MONGODB_URI": "ignored: not SECTION__KEY",
        "OTHER": "x",
    }
    s = load(path, env=env)
    assert s.web.port == 9100 and s.web.host == "0.0.0.0"
    assert s.mongodb.uri == "mongodb://a,b/?replicaSet=rs0"
    assert s.checker.enabled is False
    assert s.nsq.lookupd_http_addresses == ["http://l1:4161"]


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[web]\nprot = 1\n", "web.prot: unknown key (in {file}); did you mean web.port?"),
        ("[wbe]\nport = 1\n", "wbe: unknown key (in {file}); did you mean [web]?"),
        ("[web]\nzzz = 1\n", "web.zzz: unknown key (in {file})"),
        ("[web]\nport = 'x'\n", "web.port: Expected `int`, got `str` (in {file})"),
        ("[web]\nport = 70000\n", "web.port: Expected `int` <= 65535 (in {file})"),
        ("[web]\nport = true\n", "web.port: Expected `int`, got `bool` (in {file})"),
        (
            "[log]\nformat = 'xml'\n",
            "log.format: Expected one of auto, json, console, got 'xml' (in {file})",
        ),
        (
            "[log]\nlevel = 'verbose'\n",
            "log.level: Expected one of debug, info, warning, error, got 'verbose' (in {file})",
        ),
        (
            "[fetcher]\nallowed_schemes = ['http', 'ftp']\n",
            "fetcher.allowed_schemes[1]: Expected one of http, https, got 'ftp' (in {file})",
        ),
        ("[web]\nhost = ''\n", "web.host: must not be empty (in {file})"),
        ("[mongodb]\nembedded_host = ' '\n", "mongodb.embedded_host: must not be empty"),
        ("[nsq]\nembedded_host = ''\n", "nsq.embedded_host: must not be empty (in {file})"),
        ("[daemon]\nshutdown_timeout = 0\n", "daemon.shutdown_timeout: Expected `float` > 0.0"),
        (
            "[checker]\nstale_after = 60\noffline_after = 30\n",
            "checker.offline_after: must be greater than stale_after (in {file})",
        ),
        ("[mongodb]\nuri = 'postgres://x'\n", "mongodb.uri: must start with mongodb://"),
        ("[nsq]\nchannel = 'bad name!'\n", "nsq.channel: not a valid NSQ name"),
        (
            "[nsq]\nnsqd_tcp_addresses = ['nohost']\n",
            "nsq.nsqd_tcp_addresses: entry 'nohost' is not host:port",
        ),
        ("[nsq]\nmax_in_flight = 0\n", "nsq.max_in_flight: Expected `int` >= 1"),
        (
            "[nsq]\nembedded_lookupd_port = 4150\n",
            "nsq.embedded_lookupd_port: the same port as embedded_tcp_port (4150) (in {file})",
        ),
        (
            "[nsq]\nnsqd_http_address = 'nsqd-1:4151'\n",
            "nsq.nsqd_http_address: must be an http(s)://host[:port] URL (in {file})",
        ),
        (
            "[nsq]\nnsqd_http_address = 'http://'\n",
            "nsq.nsqd_http_address: must be an http(s)://host[:port] URL (in {file})",
        ),
        (
            "[nsq]\nlookupd_http_addresses = ['http://l1:4161', 'http://l2:x']\n",
            "nsq.lookupd_http_addresses: entry 'http://l2:x' is not an http(s)://host[:port] URL",
        ),
        (
            "[nsq]\nrequeue_delay = 5\nrequeue_delay_max = 1\n",
            "nsq.requeue_delay_max: must be >= requeue_delay",
        ),
        ("[nsq]\nrequeue_delay_max = 7200\n", "nsq.requeue_delay_max: Expected `float` <= 3600"),
        (
            "[nsq]\nheartbeat_flush_interval = 120\n",
            "nsq.heartbeat_flush_interval: Expected `float` <= 10",
        ),
        (
            "[nsq]\nheartbeat_resolution = 10\n",
            "nsq.heartbeat_resolution must be at most half of checker.stale_after (in {file})",
        ),
        ("web = 3\n", "web: Expected `object`, got `int`"),
        ("[web\n", "invalid TOML"),
    ],
)
def test_bad_file_values_name_key_and_file(tmp_path: Path, toml: str, expected: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert expected.format(file=path) in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"TASKDASH_WEB__PORT": "http"},
            "web.port: Expected `int`, got `str` (in TASKDASH_WEB__PORT)",
        ),
        ({"TASKDASH_WEB__NOPE": "1"}, "web.nope: unknown key (in TASKDASH_WEB__NOPE)"),
        (
            {"TASKDASH_WEB__PROT": "1"},
            "web.prot: unknown key (in TASKDASH_WEB__PROT); did you mean TASKDASH_WEB__PORT?",
        ),
        (
            {"TASKDASH_WEBB__PORT": "1"},
            "webb: unknown key (in TASKDASH_WEBB__PORT); did you mean TASKDASH_WEB__PORT?",
        ),
        (
            {"TASKDASH_LOG__LEVEL": "verbose"},
            "log.level: Expected one of debug, info, warning, error, got 'verbose' "
            "(in TASKDASH_LOG__LEVEL)",
        ),
        ({"TASKDASH_WEB__HOST": ""}, "web.host: must not be empty (in TASKDASH_WEB__HOST)"),
        (
            {"TASKDASH_MONGODB__URI": "mongodb://"},
            "mongodb.uri: not a valid MongoDB URI: Must provide at least one hostname or IP "
            "(in TASKDASH_MONGODB__URI)",
        ),
        (
            {"TASKDASH_CHECKER__STALE_AFTER": "90"},
            "checker.offline_after: must be greater than stale_after "
            "(in TASKDASH_CHECKER__STALE_AFTER)",
        ),
        ({"TASKDASH_NOPE__PORT": "1"}, "nope: unknown key (in TASKDASH_NOPE__PORT)"),
        ({"TASKDASH___PORT": "1"}, "TASKDASH___PORT: expected TASKDASH_<SECTION>__<KEY>"),
        (
            {"TASKDASH_NSQ__HEARTBEAT_RESOLUTION": "5", "TASKDASH_CHECKER__STALE_AFTER": "8"},
            "at most half of checker.stale_after "
            "(in TASKDASH_NSQ__HEARTBEAT_RESOLUTION, TASKDASH_CHECKER__STALE_AFTER)",
        ),
    ],
)
def test_bad_env_values_name_the_variable(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, env=env)
    assert expected in str(info.value)


def test_env_values_for_text_keys_stay_text() -> None:
    """A node id or a database name that looks like a number is still that text."""
    settings = load(
        None,
        env={
            "TASKDASH_DAEMON__NODE_ID": "42",
            "TASKDASH_MONGODB__DATABASE": "2026",
            "TASKDASH_WEB__PORT": "9000",
            "TASKDASH_NSQ__NSQD_TCP_ADDRESSES": '["a:4150"]',
        },
    )
    assert settings.daemon.node_id == "42" and settings.mongodb.database == "2026"
    assert settings.web.port == 9000 and settings.nsq.nsqd_tcp_addresses == ["a:4150"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "absent.toml", env={})


def test_check_config_command(tmp_path: Path) -> None:
    good = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskdash",
            "check-config",
            "-c",
            str(ROOT / "config/taskdash.toml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0 and "config OK" in good.stdout
    bad = write(tmp_path, "[web]\nport = -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "taskdash", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0] == f"taskdash: config error: web.port: Expected `int` >= 0 (in {bad})"


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("mongodb://", "Must provide at least one hostname or IP"),
        ("mongodb://host:notaport", "Port contains non-digit characters"),
        ("mongodb://host:99999", "Port must be an integer between 0 and 65535"),
        ("mongodb://:27017", "Empty host"),
        ("mongodb://h1,,h2/", "Empty host"),
        ("mongodb://user:p@ss@host", "must be escaped according to RFC 3986"),
        ("mongodb://h/?replSet=rs0", "Unknown option"),
        ("mongodb://h/?journal=maybe", "The value of journal must be 'true' or 'false'"),
        ("mongodb+srv://cluster.example.invalid:27017", "must not include a port number"),
        ("mongodb+srv://a.example.invalid,b.example.invalid", "one, and only one, hostname"),
    ],
)
def test_malformed_mongodb_uri_is_a_config_error(tmp_path: Path, uri: str, reason: str) -> None:
    """The driver's own URI parser runs at load: a bad URI is one line, not a traceback at start."""
    path = write(tmp_path, f"[mongodb]\nuri = '{uri}'\n")
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    message = str(info.value)
    assert message.startswith("mongodb.uri: not a valid MongoDB URI: ")
    assert reason in message and message.endswith(f"(in {path})")
    assert "\n" not in message


def test_mongodb_uri_error_never_shows_the_password() -> None:
    env = {"TASKDASH_MONGODB__URI": "mongodb://admin:s3cr3t-pw@db:notaport/"}
    with pytest.raises(ConfigError) as info:
        load(None, env=env)
    assert "s3cr3t-pw" not in str(info.value)
    assert "(in TASKDASH_MONGODB__URI)" in str(info.value)


@pytest.mark.parametrize(
    "uri",
    [
        "mongodb://127.0.0.1:27017/?directConnection=true",
        "mongodb://taskdash:pw@db1:27017,db2,db3/?replicaSet=rs0&authSource=admin&w=majority",
        "mongodb://[::1]:27017",
        # no DNS lookup at load: a name that resolves nowhere is still a well-formed URI
        "mongodb+srv://cluster0.example.invalid/?retryWrites=true",
    ],
)
def test_good_mongodb_uris_pass(uri: str) -> None:
    assert load(None, env={"TASKDASH_MONGODB__URI": uri}).mongodb.uri == uri


@pytest.mark.parametrize(
    ("name", "warning"),
    [
        (
            "TASKDASH_WEB_PORT",
            "TASKDASH_WEB_PORT is not a setting and is ignored; did you mean TASKDASH_WEB__PORT?",
        ),
        (
            "TASKDASH_MONGODB_URI",
            "TASKDASH_MONGODB_URI is not a setting and is ignored; "
            "did you mean TASKDASH_MONGODB__URI?",
        ),
        ("TASKDASH_LOGLEVEL", "did you mean TASKDASH_LOG__LEVEL?"),
        (
            "TASKDASH_COLOUR",
            "TASKDASH_COLOUR is not a setting and is ignored "
            "(settings are TASKDASH_<SECTION>__<KEY>)",
        ),
    ],
)
def test_env_variable_without_double_underscore_warns(name: str, warning: str) -> None:
    env = {name: "9090"}
    assert load(None, env=env) == Settings()  # a warning, not an error
    warnings = env_warnings(env)
    assert len(warnings) == 1 and warning in str(warnings[0])
    assert warnings[0].variable == name


def test_no_warnings_for_good_overrides_other_variables_and_the_test_suite() -> None:
    env = {
        "TASKDASH_WEB__PORT": "9090",
        "TASKDASH_TEST_MONGODB_URI": "mongodb://127.0.0.1:1",  # the test suite's own variable
        "PATH": "/usr/bin",
        "TASKDASHBOARD": "x",
    }
    assert env_warnings(env) == []


def test_load_file_that_is_a_directory_or_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"cannot read config file {tmp_path}: ")):
        load(tmp_path, env={})
    binary = tmp_path / "latin1.toml"
    binary.write_bytes(b"[daemon]\nnode_id = '\xe9'\n")
    with pytest.raises(ConfigError, match=r"cannot read config file .*latin1\.toml: .*utf-8"):
        load(binary, env={})


@pytest.mark.parametrize(
    "uri",
    [
        "mongodb://",
        "mongodb://host:notaport",
        "mongodb://:27017",
        "mongodb://h/?replSet=rs0",
        "mongodb://taskdash:pw@db1:27017,db2,db3/?replicaSet=rs0&authSource=admin",
        "mongodb://[::1]:27017",
    ],
)
def test_the_public_parser_stands_in_for_the_private_validator(uri: str) -> None:
    """Should PyMongo move its private validation helper, ``mongodb://`` URIs get one verdict."""
    private, public = _uri_validator(uri), _uri_validator(uri, private=False)
    assert private is not None and public is not None and private is not public

    def verdict(validate: Callable[..., Any]) -> str | None:
        try:
            validate(uri, validate=True, warn=False)
        except (PyMongoError, ValueError) as exc:
            return type(exc).__name__
        return None

    assert verdict(private) == verdict(public)
    assert _uri_validator("mongodb+srv://c.example.invalid", private=False) is None, "no DNS"
