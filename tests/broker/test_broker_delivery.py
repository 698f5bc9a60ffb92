"""Delivery over raw sockets: channels, RDY, REQ, timeouts, TOUCH, DPUB, MPUB, ephemeral."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

from broker_helpers import RawClient, channel_stats, error_code, eventually, stats

from taskdash.nsq.broker import Broker
from taskdash.nsq.broker.protocol import encode_mpub

Connect = Callable[..., Awaitable[RawClient]]


async def test_every_channel_gets_every_message(raw: Connect) -> None:
    a, b, producer = await raw(), await raw(), await raw()
    await a.subscribe("fan", "one", rdy=10)
    await b.subscribe("fan", "two", rdy=10)
    for i in range(3):
        await producer.pub("fan", b"m%d" % i)
    got_a = [await a.message() for _ in range(3)]
    got_b = [await b.message() for _ in range(3)]
    assert [m.body for m in got_a] == [b"m0", b"m1", b"m2"]
    assert [(m.id, m.timestamp, m.body) for m in got_a] == [
        (m.id, m.timestamp, m.body) for m in got_b
    ]
    assert all(len(m.id) == 16 and int(m.id, 16) >= 0 for m in got_a)
    assert all(m.attempts == 1 for m in got_a + got_b)


async def test_consumers_of_one_channel_share_without_duplicates(raw: Connect) -> None:
    a, b, producer = await raw(), await raw(), await raw()
    await a.subscribe("share", "ch", rdy=1)
    await b.subscribe("share", "ch", rdy=1)
    for i in range(20):
        await producer.pub("share", b"%d" % i)
    received: dict[str, list[bytes]] = {"a": [], "b": []}

    async def consume(name: str, client: RawClient) -> None:
        while sum(len(v) for v in received.values()) < 20:
            try:
                msg = await client.message(timeout=0.5)
            except TimeoutError:
                continue
            received[name].append(msg.body)
            await client.command(b"FIN " + msg.id)

    await asyncio.wait_for(asyncio.gather(consume("a", a), consume("b", b)), 10)
    everything = received["a"] + received["b"]
    assert sorted(everything) == sorted(b"%d" % i for i in range(20))
    assert received["a"] and received["b"]


async def test_rdy_caps_messages_in_flight(raw: Connect, broker: Broker) -> None:
    consumer, producer = await raw(), await raw()
    await consumer.subscribe("capped", "ch", rdy=2)
    for i in range(5):
        await producer.pub("capped", b"%d" % i)
    first = [await consumer.message(), await consumer.message()]
    await consumer.no_frame()
    ch = channel_stats(await stats(broker.http_port), "capped", "ch")
    assert (ch["in_flight_count"], ch["depth"]) == (2, 3)
    await consumer.command(b"FIN " + first[0].id)
    third = await consumer.message()
    assert third.body == b"2"
    await consumer.no_frame()


async def test_rdy_zero_pauses_and_a_new_rdy_resumes(raw: Connect) -> None:
    consumer, producer = await raw(), await raw()
    await consumer.subscribe("paused", "ch")  # a fresh subscriber starts at RDY 0
    await producer.pub("paused", b"wait")
    await consumer.no_frame()
    await consumer.command("RDY 1")
    assert (await consumer.message()).body == b"wait"


async def test_req_redelivers_with_one_more_attempt(raw: Connect, broker: Broker) -> None:
    consumer, producer = await raw(), await raw()
    await consumer.subscribe("requeue", "ch", rdy=1)
    await producer.pub("requeue", b"again")
    first = await consumer.message()
    await consumer.command(b"REQ " + first.id + b" 0")
    second = await consumer.message()
    assert (second.id, second.body, second.attempts) == (first.id, b"again", 2)
    await consumer.command(b"FIN " + second.id)
    ch = channel_stats(await stats(broker.http_port), "requeue", "ch")
    assert ch["requeue_count"] == 1
    assert ch["in_flight_count"] == 0


async def test_req_with_delay_defers(raw: Connect, broker: Broker) -> None:
    consumer, producer = await raw(), await raw()
    await consumer.subscribe("reqdelay", "ch", rdy=1)
    await producer.pub("reqdelay", b"later")
    first = await consumer.message()
    await consumer.command(b"REQ " + first.id + b" 300")
    ch = channel_stats(await stats(broker.http_port), "reqdelay", "ch")
    assert (ch["deferred_count"], ch["depth"], ch["in_flight_count"]) == (1, 0, 0)
    again = await consumer.message()
    assert (again.id, again.attempts) == (first.id, 2)


async def test_msg_timeout_redelivers(raw: Connect, broker: Broker) -> None:
    consumer, producer = await raw(), await raw()
    await consumer.subscribe("timeout", "ch", rdy=1, msg_timeout=1000)
    await producer.pub("timeout", b"slow")
    first = await consumer.message()
    second = await consumer.message()  # never answered: comes back after msg_timeout
    assert (second.id, second.attempts) == (first.id, 2)
    await consumer.command(b"FIN " + second.id)
    assert await consumer.alive()
    ch = channel_stats(await stats(broker.http_port), "timeout", "ch")
    assert ch["timeout_count"] == 1


async def test_touch_extends_the_deadline(raw: Connect, broker: Broker) -> None:
    consumer, producer = await raw(), await raw()
    await consumer.subscribe("touch", "ch", rdy=1, msg_timeout=1000)
    await producer.pub("touch", b"long job")
    msg = await consumer.message()
    for _ in range(8):  # 8 x 0.25 s: twice the msg_timeout, touched well inside each window
        await asyncio.sleep(0.25)
        await consumer.command(b"TOUCH " + msg.id)
    await consumer.command(b"FIN " + msg.id)
    assert await consumer.alive()  # an E_FIN_FAILED would have arrived before this OK
    ch = channel_stats(await stats(broker.http_port), "touch", "ch")
    assert ch["timeout_count"] == 0


async def test_touch_never_passes_max_msg_timeout() -> None:
    broker = Broker(tcp_port=0, http_port=0, lookupd_http_port=None, max_msg_timeout_ms=1500)
    await broker.start()
    try:
        consumer = await RawClient.connect(broker.tcp_port)
        producer = await RawClient.connect(broker.tcp_port)
        await consumer.subscribe("maxtouch", "ch", rdy=1, msg_timeout=1000)
        await producer.pub("maxtouch", b"x")
        msg = await consumer.message()

        async def keep_touching() -> None:
            while True:
                await asyncio.sleep(0.2)
                await consumer.command(b"TOUCH " + msg.id)

        toucher = asyncio.create_task(keep_touching())
        try:
            again = await consumer.message()
        finally:
            toucher.cancel()
        assert (again.id, again.attempts) == (msg.id, 2)
        await consumer.close()
        await producer.close()
    finally:
        await broker.stop()


async def test_dpub_is_delivered_when_due(raw: Connect, broker: Broker) -> None:
    consumer, producer = await raw(), await raw()
    await consumer.subscribe("deferred", "ch", rdy=1)
    await producer.command("DPUB deferred 300", b"tick")
    assert await producer.response() == b"OK"
    ch = channel_stats(await stats(broker.http_port), "deferred", "ch")
    assert (ch["deferred_count"], ch["depth"]) == (1, 0)
    msg = await consumer.message()
    assert (msg.body, msg.attempts) == (b"tick", 1)


async def test_dpub_zero_is_immediate(raw: Connect) -> None:
    consumer, producer = await raw(), await raw()
    await consumer.subscribe("dpub0", "ch", rdy=1)
    await producer.command("DPUB dpub0 0", b"now")
    assert await producer.response() == b"OK"
    assert (await consumer.message()).body == b"now"


async def test_mpub_is_all_or_nothing(raw: Connect, broker: Broker) -> None:
    consumer, bad, good = await raw(), await raw(), await raw()
    await consumer.subscribe("batch", "ch", rdy=10)
    broken = struct.pack(">ii", 2, 4) + b"fine" + struct.pack(">i", 0)  # 2nd message empty
    await bad.command("MPUB batch", broken)
    assert error_code(await bad.error()) == "E_BAD_MESSAGE"
    await consumer.no_frame()
    assert channel_stats(await stats(broker.http_port), "batch", "ch")["message_count"] == 0
    await good.command("MPUB batch", encode_mpub([b"1", b"2", b"3"]))
    assert await good.response() == b"OK"
    assert [(await consumer.message()).body for _ in range(3)] == [b"1", b"2", b"3"]


async def test_topic_keeps_messages_until_first_channel(raw: Connect, broker: Broker) -> None:
    producer = await raw()
    await producer.pub("early", b"a")
    await producer.pub("early", b"b")
    doc = await stats(broker.http_port)
    topic = next(t for t in doc["topics"] if t["topic_name"] == "early")
    assert (topic["depth"], topic["channels"]) == (2, [])
    consumer = await raw()
    await consumer.subscribe("early", "first", rdy=5)
    assert [(await consumer.message()).body for _ in range(2)] == [b"a", b"b"]


async def test_durable_channel_collects_while_nobody_listens(raw: Connect) -> None:
    first = await raw()
    await first.subscribe("durable", "ch")
    await first.close()
    producer = await raw()
    await producer.pub("durable", b"kept")
    second = await raw()
    await second.subscribe("durable", "ch", rdy=1)
    assert (await second.message()).body == b"kept"


async def test_disconnected_consumers_messages_return_on_timeout(
    raw: Connect, broker: Broker
) -> None:
    leaver, stayer, producer = await raw(), await raw(), await raw()
    await leaver.subscribe("leave", "ch", rdy=1, msg_timeout=2000)
    await producer.pub("leave", b"orphan")
    msg = await leaver.message()
    channel = broker.registry.topics["leave"].channels["ch"]
    await leaver.close()
    await eventually(lambda: len(channel.clients) == 0)
    assert list(channel.in_flight) == [msg.id]  # nsqd keeps it in flight until its deadline
    await stayer.subscribe("leave", "ch", rdy=1)
    again = await stayer.message()
    assert (again.id, again.attempts) == (msg.id, 2)


async def test_ephemeral_channel_and_topic_vanish_with_last_client(
    raw: Connect, broker: Broker
) -> None:
    consumer, producer = await raw(), await raw()
    await consumer.subscribe("eph#ephemeral", "ch#ephemeral", rdy=1)
    await producer.pub("eph#ephemeral", b"gone soon")
    await consumer.message()
    assert "eph#ephemeral" in broker.registry.topics
    await consumer.close()
    await eventually(lambda: "eph#ephemeral" not in broker.registry.topics)
    doc = await stats(broker.http_port)
    assert all(t["topic_name"] != "eph#ephemeral" for t in doc["topics"])


async def test_ephemeral_channel_of_durable_topic(raw: Connect, broker: Broker) -> None:
    durable, ephemeral = await raw(), await raw()
    await durable.subscribe("mixed", "keep")
    await ephemeral.subscribe("mixed", "tmp#ephemeral")
    await ephemeral.close()
    await eventually(lambda: "tmp#ephemeral" not in broker.registry.topics["mixed"].channels)
    assert "keep" in broker.registry.topics["mixed"].channels
