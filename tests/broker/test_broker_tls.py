"""TLS as nsqd does it: IDENTIFY tls_v1, the upgrade in place, required TLS, client certificates.

Real clients only: pynsq (through the daemon's own reader glue) and a raw V2 socket that runs
the TLS handshake itself.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import nsq
import pytest
import tornado.httpclient
import tornado.iostream
from broker_helpers import RawClient, error_code, eventually, stats, stop_reader, stop_writer
from nsq_tls import Pki

from taskdash.nsq.broker import Broker
from taskdash.nsq.broker.options import TLSRequired
from taskdash.nsq.broker.protocol import FRAME_RESPONSE
from taskdash.nsq.reader import ClosableReader
from taskdash.nsq.tls import client_context

BrokerFactory = Callable[..., Any]


def tls_options(pki: Pki, **extra: Any) -> dict[str, Any]:
    """The broker's certificate and key."""
    return {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key), **extra}


def context(
    pki: Pki, *, client_cert: bool = False, rogue: bool = False, **kw: Any
) -> ssl.SSLContext:
    """The daemon's client context trusting the test CA (optionally with a client cert)."""
    cert, key = "", ""
    if client_cert:
        cert, key = str(pki.client_cert), str(pki.client_key)
    if rogue:
        cert, key = str(pki.rogue_cert), str(pki.rogue_key)
    return client_context(ca_file=str(pki.ca), cert_file=cert, key_file=key, **kw)


@pytest.fixture
async def readers() -> AsyncIterator[list[nsq.Reader]]:
    """Readers to stop at the end."""
    made: list[nsq.Reader] = []
    yield made
    for reader in made:
        stop_reader(reader)


def tls_reader(
    broker: Broker,
    topic: str,
    into: list[bytes],
    made: list[nsq.Reader],
    tls_context: ssl.SSLContext | None,
    host: str = "127.0.0.1",
    **kw: Any,
) -> ClosableReader:
    """The daemon's reader class with TLS asked for through pynsq."""

    def handle(message: nsq.Message) -> bool:
        into.append(message.body)
        return True

    reader = ClosableReader(
        topic=topic,
        channel="ch",
        message_handler=handle,
        nsqd_tcp_addresses=[f"{host}:{broker.tcp_port}"],
        max_in_flight=10,
        tls_v1=tls_context is not None,
        tls_context=tls_context,
        **kw,
    )
    made.append(reader)
    return reader


async def publish_http(broker: Broker, topic: str, body: bytes) -> None:
    """Publish through the plain HTTP /pub."""
    client = tornado.httpclient.AsyncHTTPClient()
    reply = await client.fetch(
        f"http://127.0.0.1:{broker.http_port}/pub?topic={topic}", method="POST", body=body
    )
    assert reply.code == 200


# --- the wire ---------------------------------------------------------------------------------


async def raw_tls(broker: Broker, ctx: ssl.SSLContext, **identify: Any) -> tuple[RawClient, dict]:
    """A raw V2 client: IDENTIFY with tls_v1, the answer, the handshake, then nsqd's OK."""
    client = await RawClient.connect(broker.tcp_port)
    doc = await client.identify(tls_v1=True, **identify)
    assert doc["tls_v1"] is True
    await client.writer.start_tls(ctx, server_hostname="localhost")
    assert await client.frame() == (FRAME_RESPONSE, b"OK")
    return client, doc


async def test_identify_grants_tls_then_upgrades_in_place(
    make_broker: BrokerFactory, pki: Pki
) -> None:
    broker = await make_broker(**tls_options(pki))
    client, doc = await raw_tls(broker, context(pki))
    try:
        assert doc["auth_required"] is False
        assert client.writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        await client.pub("after_tls", b"secret body")  # the same socket, encrypted now
        entry = (await stats(broker.http_port))["producers"][0]
        assert entry["tls"] is True and entry["tls_version"] in ("TLS1.2", "TLS1.3")
        assert entry["tls_cipher_suite"]
    finally:
        await client.close()


async def test_without_a_certificate_tls_is_refused_in_the_answer(
    make_broker: BrokerFactory,
) -> None:
    broker = await make_broker()
    client = await RawClient.connect(broker.tcp_port)
    try:
        assert (await client.identify(tls_v1=True))["tls_v1"] is False
        assert await client.alive()  # still plain, still usable
    finally:
        await client.close()


@pytest.mark.parametrize("required", ["true", "tcp-https"])
async def test_tls_required_refuses_a_plain_client_after_identify(
    make_broker: BrokerFactory, pki: Pki, required: str
) -> None:
    broker = await make_broker(**tls_options(pki, tls_required=TLSRequired.parse(required)))
    client = await RawClient.connect(broker.tcp_port)
    try:
        await client.identify()  # IDENTIFY is always allowed
        await client.command("PUB t", b"x")
        error = await client.error()
        assert error == b"E_INVALID cannot PUB in current state (TLS required)"
        assert await client.closed()
    finally:
        await client.close()


async def test_tls_required_checks_before_the_command_name(
    make_broker: BrokerFactory, pki: Pki
) -> None:
    broker = await make_broker(**tls_options(pki, tls_required=TLSRequired.REQUIRED))
    client = await RawClient.connect(broker.tcp_port)
    try:
        await client.command("FOO")
        assert await client.error() == b"E_INVALID cannot FOO in current state (TLS required)"
    finally:
        await client.close()


async def test_tls_required_lets_a_tls_client_work(make_broker: BrokerFactory, pki: Pki) -> None:
    broker = await make_broker(**tls_options(pki, tls_required=TLSRequired.REQUIRED))
    client, _ = await raw_tls(broker, context(pki))
    try:
        assert await client.alive()
    finally:
        await client.close()


async def test_a_failed_handshake_drops_only_that_client(
    make_broker: BrokerFactory, pki: Pki
) -> None:
    broker = await make_broker(**tls_options(pki))
    client = await RawClient.connect(broker.tcp_port)
    await client.identify(tls_v1=True)
    await client.send(b"this is not a TLS ClientHello\n" * 10)
    assert await client.closed()
    await client.close()
    other, _ = await raw_tls(broker, context(pki))  # the listener is fine
    try:
        assert await other.alive()
    finally:
        await other.close()


# --- client certificates ----------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["require", "require-verify"])
async def test_client_certificate_required(
    make_broker: BrokerFactory, pki: Pki, policy: str
) -> None:
    broker = await make_broker(
        **tls_options(pki, tls_client_auth_policy=policy, tls_root_ca_file=str(pki.ca))
    )
    good, _ = await raw_tls(broker, context(pki, client_cert=True))
    try:
        assert await good.alive()
    finally:
        await good.close()
    for ctx in (context(pki), context(pki, rogue=True)):  # none, or signed by another CA
        client = await RawClient.connect(broker.tcp_port)
        await client.identify(tls_v1=True)
        # TLS 1.3 ends the client's handshake first: the refusal then shows as a closed socket
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await client.writer.start_tls(ctx, server_hostname="localhost")
            await client.frame()
        await client.close()


async def test_a_client_auth_policy_makes_tls_required(
    make_broker: BrokerFactory, pki: Pki
) -> None:
    broker = await make_broker(
        **tls_options(pki, tls_client_auth_policy="require-verify", tls_root_ca_file=str(pki.ca))
    )
    client = await RawClient.connect(broker.tcp_port)
    try:
        await client.command("PUB t", b"x")
        assert error_code(await client.error()) == "E_INVALID"
    finally:
        await client.close()


# --- pynsq, through the daemon's reader -------------------------------------------------------


async def test_pynsq_reader_over_tls_receives_messages(
    make_broker: BrokerFactory, pki: Pki, readers: list[nsq.Reader]
) -> None:
    broker = await make_broker(**tls_options(pki, tls_required=TLSRequired.REQUIRED))
    got: list[bytes] = []
    reader = tls_reader(broker, "tls_topic", got, readers, context(pki))
    await eventually(
        lambda: reader.negotiation.report().get(f"127.0.0.1:{broker.tcp_port}", {}).get("ready")
    )
    writer = nsq.Writer(
        [f"127.0.0.1:{broker.tcp_port}"],
        tls_v1=True,
        tls_options={"ssl_version": ssl.PROTOCOL_TLS_CLIENT, "ca_certs": str(pki.ca)},
    )
    try:
        await eventually(lambda: writer.conns)
        writer.pub("tls_topic", b"one")
        writer.mpub("tls_topic", [b"two", b"three"])
        await eventually(lambda: len(got) == 3)
    finally:
        stop_writer(writer)
    assert sorted(got) == [b"one", b"three", b"two"]
    report = reader.negotiation.report()[f"127.0.0.1:{broker.tcp_port}"]
    assert report["tls"] is True and report["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert report["compression"] == "none"


async def test_pynsq_reader_refuses_an_nsqd_of_another_ca(
    make_broker: BrokerFactory,
    pki: Pki,
    readers: list[nsq.Reader],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = await make_broker(**tls_options(pki))
    got: list[bytes] = []
    wrong = client_context(ca_file=str(pki.other_ca))
    reader = tls_reader(broker, "wrong_ca", got, readers, wrong)
    await eventually(lambda: "failed to upgrade to TLS" in caplog.text)
    await publish_http(broker, "wrong_ca", b"never read")
    assert not reader.conns and not got
    assert (await stats(broker.http_port))["topics"][0]["channels"] == []


async def test_pynsq_reader_with_hostname_check_refuses_a_wrong_name(
    make_broker: BrokerFactory,
    pki: Pki,
    readers: list[nsq.Reader],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A certificate of the right CA for nsqd.example, reached as 127.0.0.1."""
    broker = await make_broker(tls_cert=str(pki.other_name_cert), tls_key=str(pki.other_name_key))
    got: list[bytes] = []
    tls_reader(broker, "wrong_name", got, readers, context(pki))
    await eventually(lambda: "failed to upgrade to TLS" in caplog.text)
    assert "IP address mismatch" in caplog.text or "hostname" in caplog.text
    # the same without the name check (tls_verify = false, the CA still checked) connects
    unchecked = tls_reader(broker, "wrong_name", got, readers, context(pki, verify=False))
    await publish_http(broker, "wrong_name", b"read")
    await eventually(lambda: got == [b"read"])
    assert unchecked.negotiation.report()[f"127.0.0.1:{broker.tcp_port}"]["tls"] is True


async def test_pynsq_reader_never_falls_back_to_clear_text(
    make_broker: BrokerFactory,
    pki: Pki,
    readers: list[nsq.Reader],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pynsq alone would go on unencrypted when nsqd does not offer TLS; the daemon's reader
    closes the connection instead (and so never sends its AUTH secret in clear)."""
    broker = await make_broker()  # no certificate: tls_v1 is answered false
    got: list[bytes] = []
    reader = tls_reader(broker, "no_tls", got, readers, context(pki), auth_secret="s3cret")
    await eventually(lambda: "nsqd_refused_tls" in caplog.text or reader.lost_at)
    await publish_http(broker, "no_tls", b"must not be read in clear")
    await eventually(lambda: not reader.conns)
    assert not got


# --- HTTPS -------------------------------------------------------------------------------------


async def fetch(
    url: str, ctx: ssl.SSLContext | None = None, **kw: Any
) -> tornado.httpclient.HTTPResponse:
    """One request; error statuses returned, not raised."""
    client = tornado.httpclient.AsyncHTTPClient()
    return await client.fetch(url, ssl_options=ctx, raise_error=False, **kw)


async def test_tls_required_closes_plain_http_and_opens_https(
    make_broker: BrokerFactory, pki: Pki
) -> None:
    broker = await make_broker(https=True, **tls_options(pki, tls_required=TLSRequired.REQUIRED))
    plain = await fetch(f"http://127.0.0.1:{broker.http_port}/ping")
    assert plain.code == 403
    assert json.loads(plain.body) == {"message": "TLS_REQUIRED", "https_port": broker.https_port}
    reply = await fetch(
        f"https://127.0.0.1:{broker.https_port}/mpub?topic=over_https",
        context(pki),
        method="POST",
        body=b"one\ntwo",
    )
    assert (reply.code, reply.body) == (200, b"OK")
    doc = await fetch(f"https://127.0.0.1:{broker.https_port}/stats?format=json", context(pki))
    assert json.loads(doc.body)["topics"][0]["message_count"] == 2


async def test_tcp_https_leaves_plain_http_open(make_broker: BrokerFactory, pki: Pki) -> None:
    broker = await make_broker(https=True, **tls_options(pki, tls_required=TLSRequired.EXCEPT_HTTP))
    assert (await fetch(f"http://127.0.0.1:{broker.http_port}/ping")).code == 200


async def test_https_asks_for_the_client_certificate_too(
    make_broker: BrokerFactory, pki: Pki
) -> None:
    broker = await make_broker(
        https=True,
        **tls_options(pki, tls_client_auth_policy="require-verify", tls_root_ca_file=str(pki.ca)),
    )
    url = f"https://127.0.0.1:{broker.https_port}/ping"
    assert (await fetch(url, context(pki, client_cert=True))).code == 200
    with pytest.raises((ssl.SSLError, OSError, tornado.iostream.StreamClosedError)):
        reply = await fetch(url, context(pki))
        assert reply.code != 200  # a 599 also means refused
        raise OSError(str(reply.error))


def test_https_without_a_certificate_is_refused() -> None:
    with pytest.raises(ValueError, match="--https-address needs --tls-cert and --tls-key"):
        Broker(https_port=0)
