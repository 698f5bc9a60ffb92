"""AUTH as nsqd does it, against a real auth HTTP server: grants, denials, ttl, outages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import nsq
import pytest
from auth_server import AuthServer, grant
from broker_helpers import RawClient, eventually, stats, stop_reader
from nsq_tls import Pki

from taskdash.nsq.broker import Broker
from taskdash.nsq.broker.protocol import FRAME_RESPONSE, encode_mpub
from taskdash.nsq.reader import ClosableReader
from taskdash.nsq.tls import client_context

SECRET = "s3cret-token-value"


@pytest.fixture
def auth_server() -> AsyncIterator[AuthServer]:
    """A running auth server granting nothing until a test says so."""
    server = AuthServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def broker(make_broker: Callable[..., Any], auth_server: AuthServer) -> Broker:
    """A broker asking ``auth_server``."""
    return await make_broker(auth_http_addresses=(auth_server.address,))


async def authed(broker: Broker, secret: str = SECRET) -> tuple[RawClient, dict[str, Any]]:
    """A raw client that IDENTIFYs and AUTHs; returns the AUTH answer."""
    client = await RawClient.connect(broker.tcp_port)
    assert (await client.identify())["auth_required"] is True
    await client.command("AUTH", secret.encode())
    return client, json.loads(await client.response())


async def error_for(
    broker: Broker, line: str, body: bytes | None = None, *, secret: str | None = SECRET
) -> bytes:
    """The error frame ``line`` gets, after IDENTIFY and AUTH (none when ``secret`` is None)."""
    if secret is None:
        client = await RawClient.connect(broker.tcp_port)
    else:
        client, _ = await authed(broker, secret)
    try:
        await client.command(line, body)
        return await client.error()
    finally:
        await client.close()


async def test_auth_answer_and_what_the_auth_server_is_asked(
    broker: Broker, auth_server: AuthServer
) -> None:
    auth_server.grants[SECRET] = grant("^events$", ["publish"])
    client, answer = await authed(broker)
    try:
        assert answer == {
            "identity": "svc-reader",
            "identity_url": "https://auth.example/svc-reader",
            "permission_count": 1,
        }
        assert auth_server.calls == [
            {
                "common_name": "",
                "remote_ip": "127.0.0.1",
                "secret": SECRET,
                "tls": "false",
                "accept": "application/vnd.nsq; version=1.0",
            }
        ]
        await client.pub("events", b"allowed")
        entry_stats = (await stats(broker.http_port))["producers"][0]
        assert entry_stats["authed"] is True and entry_stats["auth_identity"] == "svc-reader"
    finally:
        await client.close()


async def test_publish_denied_on_another_topic(broker: Broker, auth_server: AuthServer) -> None:
    auth_server.grants[SECRET] = grant("^events$", ["publish"])
    client, _ = await authed(broker)
    try:
        await client.command("PUB other", b"x")
        assert await client.error() == b'E_UNAUTHORIZED AUTH failed for PUB on "other" ""'
        assert await client.closed()
    finally:
        await client.close()
    assert (await stats(broker.http_port))["topics"] == []  # nothing was created


@pytest.mark.parametrize(
    ("command", "body"),
    [("MPUB other", encode_mpub([b"a"])), ("DPUB other 10", b"x")],
)
async def test_mpub_and_dpub_are_checked(
    broker: Broker, auth_server: AuthServer, command: str, body: bytes
) -> None:
    auth_server.grants[SECRET] = grant("^events$", ["publish"])
    client, _ = await authed(broker)
    try:
        await client.command(command, body)
        verb = command.split()[0]
        assert (
            await client.error() == f'E_UNAUTHORIZED AUTH failed for {verb} on "other" ""'.encode()
        )
    finally:
        await client.close()


async def test_subscribe_needs_the_subscribe_permission_and_a_channel_match(
    broker: Broker, auth_server: AuthServer
) -> None:
    auth_server.grants[SECRET] = grant("events", ["subscribe"], ["^taskdash$"])
    client, _ = await authed(broker)
    try:
        await client.command("SUB events other")
        assert await client.error() == b'E_UNAUTHORIZED AUTH failed for SUB on "events" "other"'
    finally:
        await client.close()
    client, _ = await authed(broker)
    try:
        await client.subscribe("events", "taskdash")
        await client.command("PUB events", b"x")  # subscribe only: no publish
        assert (await client.error()).startswith(b"E_UNAUTHORIZED AUTH failed for PUB")
    finally:
        await client.close()


async def test_publish_needs_a_channel_pattern_matching_the_empty_name(
    broker: Broker, auth_server: AuthServer
) -> None:
    """nsqd's quirk, kept: a publish grant whose channels all need a letter allows nothing."""
    auth_server.grants[SECRET] = grant("events", ["publish"], ["^taskdash$"])
    assert (await error_for(broker, "PUB events", b"x")).startswith(b"E_UNAUTHORIZED")


async def test_auth_first(broker: Broker) -> None:
    error = await error_for(broker, "SUB events ch", secret=None)
    assert error == b"E_AUTH_FIRST AUTH required before SUB"


async def test_a_refused_secret_is_auth_failed_without_detail(
    broker: Broker, auth_server: AuthServer, capsys: pytest.CaptureFixture[str]
) -> None:
    client = await RawClient.connect(broker.tcp_port)
    try:
        await client.command("AUTH", b"wrong-secret-value")
        assert await client.error() == b"E_AUTH_FAILED AUTH failed"
        assert await client.closed()
    finally:
        await client.close()
    out = capsys.readouterr().out
    assert "client_auth_failed" in out and "403" in out  # the reason, in the log only
    assert "wrong-secret-value" not in out


async def test_no_authorizations_is_unauthorized(broker: Broker, auth_server: AuthServer) -> None:
    auth_server.grants[SECRET] = {"ttl": 60, "identity": "nobody", "authorizations": []}
    error = await error_for(broker, "AUTH", SECRET.encode(), secret=None)
    assert error == b"E_UNAUTHORIZED AUTH no authorizations found"


@pytest.mark.parametrize(
    "answer",
    [
        {
            "ttl": 0,
            "authorizations": [{"topic": ".*", "channels": [".*"], "permissions": ["publish"]}],
        },
        {
            "ttl": 60,
            "authorizations": [{"topic": ".*", "channels": [".*"], "permissions": ["admin"]}],
        },
        {
            "ttl": 60,
            "authorizations": [{"topic": "(", "channels": [".*"], "permissions": ["publish"]}],
        },
    ],
    ids=["ttl 0", "unknown permission", "bad pattern"],
)
async def test_unusable_answers_fail_auth(
    broker: Broker, auth_server: AuthServer, answer: dict[str, Any]
) -> None:
    auth_server.grants[SECRET] = answer
    error = await error_for(broker, "AUTH", SECRET.encode(), secret=None)
    assert error == b"E_AUTH_FAILED AUTH failed"


async def test_auth_twice_and_auth_disabled(
    broker: Broker, auth_server: AuthServer, make_broker: Callable[..., Any]
) -> None:
    auth_server.grants[SECRET] = grant(".*", ["publish"])
    client, _ = await authed(broker)
    try:
        await client.command("AUTH", SECRET.encode())
        assert await client.error() == b"E_INVALID AUTH already set"
    finally:
        await client.close()
    plain = await make_broker()
    client = await RawClient.connect(plain.tcp_port)
    try:
        assert (await client.identify())["auth_required"] is False
        await client.command("AUTH", SECRET.encode())
        assert await client.error() == b"E_AUTH_DISABLED AUTH disabled"
    finally:
        await client.close()


async def test_grants_are_asked_again_after_their_ttl(
    broker: Broker, auth_server: AuthServer
) -> None:
    auth_server.grants[SECRET] = grant("events", ["publish"], ttl=1)
    client, _ = await authed(broker)
    try:
        await client.pub("events", b"first")
        assert len(auth_server.calls) == 1  # within the ttl: the cached grant
        auth_server.grants[SECRET] = grant("^elsewhere$", ["publish"], ttl=1)  # revoked
        await asyncio.sleep(1.05)  # let the ttl pass (no duration is asserted)
        await client.command("PUB events", b"second")
        assert (await client.error()).startswith(b"E_UNAUTHORIZED")
        assert len(auth_server.calls) == 2
    finally:
        await client.close()


async def test_an_unreachable_auth_server_fails_auth(
    make_broker: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    gone = AuthServer()
    gone.start()
    gone.stop()  # a port nobody listens on any more
    broker = await make_broker(auth_http_addresses=(gone.address,))
    error = await error_for(broker, "AUTH", SECRET.encode(), secret=None)
    assert error == b"E_AUTH_FAILED AUTH failed"
    out = capsys.readouterr().out
    assert f"failed to auth against {gone.address}" in out
    assert SECRET not in out


async def test_the_next_auth_server_is_tried(
    make_broker: Callable[..., Any], auth_server: AuthServer
) -> None:
    gone = AuthServer()
    gone.start()
    gone.stop()
    auth_server.grants[SECRET] = grant(".*", ["publish"])
    broker = await make_broker(auth_http_addresses=(gone.address, auth_server.address))
    for _ in range(4):  # whichever is asked first
        client, answer = await authed(broker)
        await client.close()
        assert answer["permission_count"] == 1


async def test_tls_and_client_certificate_reach_the_auth_server(
    make_broker: Callable[..., Any], auth_server: AuthServer, pki: Pki
) -> None:
    auth_server.grants[SECRET] = grant(".*", ["publish"])
    broker = await make_broker(
        auth_http_addresses=(f"http://{auth_server.address}/auth",),
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_auth_policy="require-verify",
        tls_root_ca_file=str(pki.ca),
    )
    client = await RawClient.connect(broker.tcp_port)
    try:
        await client.identify(tls_v1=True)
        ctx = client_context(
            ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key)
        )
        await client.writer.start_tls(ctx, server_hostname="localhost")
        assert await client.frame() == (FRAME_RESPONSE, b"OK")
        await client.command("AUTH", SECRET.encode())
        await client.response()
    finally:
        await client.close()
    assert auth_server.calls[-1]["tls"] == "true"
    assert auth_server.calls[-1]["common_name"] == "taskdash-client"


# --- pynsq ------------------------------------------------------------------------------------


async def test_pynsq_reader_with_a_secret_reads_its_topic_only(
    broker: Broker, auth_server: AuthServer, caplog: pytest.LogCaptureFixture
) -> None:
    auth_server.grants[SECRET] = grant("^allowed$", ["subscribe", "publish"])
    got: list[bytes] = []
    readers: list[ClosableReader] = []

    def reader(topic: str) -> ClosableReader:
        def handle(message: nsq.Message) -> bool:
            got.append(message.body)
            return True

        made = ClosableReader(
            topic=topic, channel="taskdash", message_handler=handle, auth_secret=SECRET,
            nsqd_tcp_addresses=[f"127.0.0.1:{broker.tcp_port}"], max_in_flight=5,
        )  # fmt: skip
        readers.append(made)
        return made

    try:
        allowed = reader("allowed")
        denied = reader("denied")
        key = f"127.0.0.1:{broker.tcp_port}"
        await eventually(lambda: allowed.negotiation.report().get(key, {}).get("ready"))
        report = allowed.negotiation.report()[key]
        assert report["auth_identity"] == "svc-reader" and report["auth_permissions"] == 1
        client, _ = await authed(broker)
        await client.pub("allowed", b"for the reader")
        await client.close()
        await eventually(lambda: got == [b"for the reader"])
        await eventually(lambda: "E_UNAUTHORIZED" in caplog.text)
        assert not denied.conns or denied.lost_at
    finally:
        for made in readers:
            stop_reader(made)
    assert SECRET not in caplog.text
