"""nsqd's and nsqlookupd's HTTP APIs over real sockets: replies, status codes, JSON errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from broker_helpers import RawClient, channel_stats, http, stats

from taskdash.nsq.broker import Broker
from taskdash.nsq.broker.protocol import encode_mpub

Connect = Callable[..., Awaitable[RawClient]]
MAX_MSG = 1048576
MAX_BODY = 5242880


async def test_ping(broker: Broker) -> None:
    reply = await http(broker.http_port, "/ping")
    assert (reply.status, reply.body) == (200, b"OK")


async def test_pub_delivers(broker: Broker, raw: Connect) -> None:
    consumer = await raw()
    await consumer.subscribe("web", "ch", rdy=1)
    reply = await http(broker.http_port, "/pub?topic=web", "POST", b"from http")
    assert (reply.status, reply.body) == (200, b"OK")
    assert reply.headers["X-Nsq-Content-Type"] == "nsq; version=1.0"
    msg = await consumer.message()
    assert (msg.body, msg.attempts) == (b"from http", 1)


async def test_pub_defer(broker: Broker, raw: Connect) -> None:
    consumer = await raw()
    await consumer.subscribe("webdefer", "ch", rdy=1)
    reply = await http(broker.http_port, "/pub?topic=webdefer&defer=300", "POST", b"later")
    assert reply.status == 200
    assert channel_stats(await stats(broker.http_port), "webdefer", "ch")["deferred_count"] == 1
    assert (await consumer.message()).body == b"later"


async def test_mpub_lines(broker: Broker, raw: Connect) -> None:
    consumer = await raw()
    await consumer.subscribe("lines", "ch", rdy=10)
    reply = await http(broker.http_port, "/mpub?topic=lines", "POST", b"one\ntwo\n\nthree")
    assert (reply.status, reply.body) == (200, b"OK")
    assert [(await consumer.message()).body for _ in range(3)] == [b"one", b"two", b"three"]


@pytest.mark.parametrize("flag", ["true", "1", "yes"])
async def test_mpub_binary(broker: Broker, raw: Connect, flag: str) -> None:
    consumer = await raw()
    await consumer.subscribe("binary", "ch", rdy=10)
    body = encode_mpub([b"line\nbreak", b"\x00\x01"])
    reply = await http(broker.http_port, f"/mpub?topic=binary&binary={flag}", "POST", body)
    assert reply.status == 200
    assert [(await consumer.message()).body for _ in range(2)] == [b"line\nbreak", b"\x00\x01"]


async def test_mpub_binary_is_all_or_nothing(broker: Broker, raw: Connect) -> None:
    consumer = await raw()
    await consumer.subscribe("binall", "ch", rdy=10)
    broken = encode_mpub([b"ok", b"x" * (MAX_MSG + 1)])
    reply = await http(broker.http_port, "/mpub?topic=binall&binary=true", "POST", broken)
    assert (reply.status, reply.json()) == (413, {"message": "BAD_MESSAGE"})
    await consumer.no_frame()
    assert channel_stats(await stats(broker.http_port), "binall", "ch")["message_count"] == 0


ERROR_CASES = [
    ("/pub", "POST", b"x", 400, "MISSING_ARG_TOPIC"),
    ("/pub?topic=bad*topic", "POST", b"x", 400, "INVALID_TOPIC"),
    ("/pub?topic=", "POST", b"x", 400, "INVALID_TOPIC"),
    ("/pub?topic=" + "t" * 65, "POST", b"x", 400, "INVALID_TOPIC"),
    ("/pub?topic=t", "POST", b"", 400, "MSG_EMPTY"),
    ("/pub?topic=t", "POST", b"x" * (MAX_MSG + 1), 413, "MSG_TOO_BIG"),
    ("/pub?topic=t&defer=-1", "POST", b"x", 400, "INVALID_DEFER"),
    ("/pub?topic=t&defer=soon", "POST", b"x", 400, "INVALID_DEFER"),
    ("/pub?topic=t&defer=3600001", "POST", b"x", 400, "INVALID_DEFER"),
    ("/mpub", "POST", b"x", 400, "MISSING_ARG_TOPIC"),
    ("/mpub?topic=bad%20topic", "POST", b"x", 400, "INVALID_TOPIC"),
    ("/mpub?topic=t", "POST", b"x" * (MAX_BODY + 1), 413, "BODY_TOO_BIG"),
    ("/mpub?topic=t", "POST", b"ok\n" + b"x" * (MAX_MSG + 1), 413, "MSG_TOO_BIG"),
    ("/mpub?topic=t&binary=true", "POST", b"\x00\x00\x00\x00", 413, "BAD_BODY"),
    ("/mpub?topic=t&binary=true", "POST", b"\x00", 413, "BAD_BODY"),
    ("/mpub?topic=t&binary=true", "POST", b"\x00\x00\x00\x01\x00\x00\x00\x00", 413, "BAD_MESSAGE"),
    (
        "/mpub?topic=t&binary=true",
        "POST",
        b"\x00\x00\x00\x01\x00\x00\x00\x09ab",
        413,
        "BAD_MESSAGE",
    ),
    ("/pub?topic=t", "GET", None, 405, "METHOD_NOT_ALLOWED"),
    ("/stats", "POST", b"", 405, "METHOD_NOT_ALLOWED"),
    ("/nope", "GET", None, 404, "NOT_FOUND"),
    ("/topic/delete?topic=never", "POST", b"", 404, "TOPIC_NOT_FOUND"),
    ("/topic/delete", "POST", b"", 400, "MISSING_ARG_TOPIC"),
    ("/channel/create?topic=never&channel=c", "POST", b"", 404, "TOPIC_NOT_FOUND"),
    ("/channel/create?topic=t", "POST", b"", 400, "MISSING_ARG_CHANNEL"),
    ("/channel/create?topic=t&channel=b*d", "POST", b"", 400, "INVALID_ARG_CHANNEL"),
    ("/channel/create?topic=b*d&channel=c", "POST", b"", 400, "INVALID_ARG_TOPIC"),
]


@pytest.mark.parametrize(("path", "method", "body", "status", "message"), ERROR_CASES)
async def test_nsqd_errors(
    broker: Broker, path: str, method: str, body: bytes | None, status: int, message: str
) -> None:
    reply = await http(broker.http_port, path, method, body)
    assert reply.status == status
    assert reply.json() == {"message": message}
    assert reply.headers["Content-Type"].startswith("application/json")


async def test_stats_json_shape(broker: Broker, raw: Connect) -> None:
    consumer, producer = await raw(), await raw()
    await consumer.subscribe("shape", "ch", rdy=1)
    for body in (b"1", b"2", b"3"):
        await producer.pub("shape", body)
    await consumer.message()
    await producer.command("DPUB shape 3600000", b"deferred")
    assert await producer.response() == b"OK"
    doc = await stats(broker.http_port)
    assert (doc["version"], doc["health"]) == ("1.3.0", "OK")
    assert isinstance(doc["start_time"], int)
    topic = next(t for t in doc["topics"] if t["topic_name"] == "shape")
    assert (topic["depth"], topic["backend_depth"], topic["message_count"]) == (0, 0, 4)
    ch = topic["channels"][0]
    assert ch["channel_name"] == "ch"
    assert (ch["depth"], ch["in_flight_count"], ch["deferred_count"]) == (2, 1, 1)
    assert (ch["message_count"], ch["client_count"], ch["backend_depth"]) == (4, 1, 0)
    client = ch["clients"][0]
    assert (client["state"], client["ready_count"], client["in_flight_count"]) == (3, 1, 1)
    assert client["version"] == "V2" and client["message_count"] == 1
    producers = doc["producers"]
    assert [p["pub_counts"] for p in producers] == [[{"topic": "shape", "count": 4}]]


async def test_stats_filters_and_text(broker: Broker, raw: Connect) -> None:
    producer = await raw()
    await producer.pub("listed", b"x")
    assert (await stats(broker.http_port, topic="missing"))["topics"] is None
    assert [t["topic_name"] for t in (await stats(broker.http_port, topic="listed"))["topics"]] == [
        "listed"
    ]
    no_clients = await stats(broker.http_port, include_clients="false")
    assert no_clients["producers"] is None
    text = await http(broker.http_port, "/stats")
    assert text.status == 200 and b"[listed" in text.body


async def test_info(broker: Broker) -> None:
    doc = (await http(broker.http_port, "/info")).json()
    assert (doc["version"], doc["tcp_port"], doc["http_port"]) == (
        "1.3.0",
        broker.tcp_port,
        broker.http_port,
    )


async def test_topic_and_channel_admin(broker: Broker) -> None:
    port = broker.http_port
    assert (await http(port, "/topic/create?topic=admin", "POST", b"")).status == 200
    assert (await http(port, "/channel/create?topic=admin&channel=c", "POST", b"")).status == 200
    assert list(broker.registry.topics["admin"].channels) == ["c"]
    assert (await http(port, "/channel/delete?topic=admin&channel=c", "POST", b"")).status == 200
    reply = await http(port, "/channel/delete?topic=admin&channel=c", "POST", b"")
    assert (reply.status, reply.json()) == (404, {"message": "CHANNEL_NOT_FOUND"})
    assert (await http(port, "/topic/delete?topic=admin", "POST", b"")).status == 200
    assert "admin" not in broker.registry.topics


async def test_lookup(broker: Broker, raw: Connect) -> None:
    consumer = await raw()
    await consumer.subscribe("looked", "ch")
    reply = await http(broker.lookupd_http_port, "/lookup?topic=looked")
    assert reply.status == 200
    doc = reply.json()
    assert doc["channels"] == ["ch"]
    [producer] = doc["producers"]
    assert producer["broadcast_address"] == "127.0.0.1"
    assert (producer["tcp_port"], producer["http_port"]) == (broker.tcp_port, broker.http_port)
    assert producer["version"] == "1.3.0"
    assert {"remote_address", "hostname"} <= set(producer)


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/lookup?topic=unknown", 404, "TOPIC_NOT_FOUND"),
        ("/lookup", 400, "MISSING_ARG_TOPIC"),
        ("/nothing", 404, "NOT_FOUND"),
    ],
)
async def test_lookup_errors(broker: Broker, path: str, status: int, message: str) -> None:
    reply = await http(broker.lookupd_http_port, path)
    assert (reply.status, reply.json()) == (status, {"message": message})


async def test_lookupd_other_endpoints(broker: Broker, raw: Connect) -> None:
    consumer = await raw()
    await consumer.subscribe("nodes", "ch")
    port = broker.lookupd_http_port
    assert (await http(port, "/ping")).body == b"OK"
    assert (await http(port, "/topics")).json() == {"topics": ["nodes"]}
    assert (await http(port, "/channels?topic=nodes")).json() == {"channels": ["ch"]}
    [node] = (await http(port, "/nodes")).json()["producers"]
    assert (node["topics"], node["tcp_port"]) == (["nodes"], broker.tcp_port)
