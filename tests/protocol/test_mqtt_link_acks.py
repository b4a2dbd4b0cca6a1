"""PUBACK bookkeeping of :class:`MqttLink`: acks of plain ``publish()`` calls are not kept.

The soak test found the hall agent's memory growing ~12 MB an hour: every command result and
device state it sends with plain ``publish(qos=1)`` left its PUBACK (a paho ``ReasonCode``,
~1.2 kB) in the link's early-ack table, which was only reset at 10,000 entries. A kept ack could
also be taken, after message ids wrapped, by a later ``publish_acked`` as its own.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import tracemalloc

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from hub.broker import MosquittoBroker
from protocol.mqtt_link import BrokerUrl, MqttLink

TOPIC = "courthub/v1/agent-a/dev/cmd/result"


def _success() -> ReasonCode:
    return ReasonCode(PacketTypes.PUBACK)


async def test_acks_of_plain_publishes_take_no_memory(broker: MosquittoBroker) -> None:
    """3000 QoS 1 results sent with plain publish(): what the link holds after their acks does
    not grow with their number (it grew ~1.2 kB per message before)."""
    link = MqttLink(broker.url, client_id="agent-a", username="agent-a", password="pw-agent-a")
    await link.start()
    try:
        assert await link.wait_connected(5)
        await link.publish_acked(TOPIC, b"warm-up")
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            for i in range(3000):
                link.publish(TOPIC, b'{"id":"c-%d","ok":true}' % i, qos=1)
                if i % 100 == 99:
                    await asyncio.sleep(0)  # let the network thread keep up
            # PUBACKs come in order: once this one is back, so are all 3000 before it
            async with asyncio.timeout(30):
                await link.publish_acked(TOPIC, b"marker")
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        kept = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        assert kept < 300_000, f"the link kept {kept} bytes after 3000 acknowledged publishes"
    finally:
        await link.stop()


async def test_acked_publishes_complete_among_plain_ones_from_another_thread(
    broker: MosquittoBroker,
) -> None:
    """Acks of plain publishes racing with acked ones never complete or block the wrong one."""
    link = MqttLink(broker.url, client_id="agent-a", username="agent-a", password="pw-agent-a")
    await link.start()
    stop = threading.Event()

    def plain_publisher() -> None:  # like audio frames or results sent from other threads
        while not stop.wait(0.0005):  # paced: paho's queue holds 65535 messages at most
            try:
                link.publish(TOPIC, b"plain", qos=1)
            except ConnectionError:  # that queue full on a loaded machine: keep racing, slower
                stop.wait(0.05)

    try:
        assert await link.wait_connected(5)
        thread = threading.Thread(target=plain_publisher, daemon=True)
        thread.start()
        async with asyncio.timeout(60):
            for i in range(300):
                await link.publish_acked(TOPIC, b"acked-%d" % i)
    finally:
        stop.set()
        await link.stop()


async def test_an_ack_before_publish_returns_settles_and_a_stale_one_does_not() -> None:
    """The PUBACK may beat ``publish()``'s return: it still settles that publish. The ack of a
    plain publish never settles a later ``publish_acked`` that reuses its message id."""
    link = MqttLink(BrokerUrl("127.0.0.1", 1), client_id="fake")
    link._loop = asyncio.get_running_loop()
    link._connected.set()
    mids = iter([7, 8, 8])

    class FakeInfo:
        rc = 0

        def __init__(self, mid: int) -> None:
            self.mid = mid

    def publish(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> FakeInfo:
        mid = next(mids)
        if payload == b"fast":
            # the network thread: an unrelated plain publish's ack, then this one's, both
            # before publish() returns
            link._paho_publish(link._client, None, 99, _success(), None)
            link._paho_publish(link._client, None, mid, _success(), None)
        return FakeInfo(mid)

    link._client.publish = publish  # type: ignore[method-assign,assignment]
    async with asyncio.timeout(5):
        await link.publish_acked(TOPIC, b"fast")  # mid 7: settled by its early ack

    link.publish(TOPIC, b"plain", qos=1)  # mid 8, nobody waits for its ack
    link._paho_publish(link._client, None, 8, _success(), None)

    acked = asyncio.create_task(link.publish_acked(TOPIC, b"reuses 8"))  # mid 8 again
    for _ in range(5):  # an ack taken from the table settles at once, on the next iteration
        await asyncio.sleep(0)
    assert not acked.done(), "settled by the ack of an earlier plain publish"
    link._paho_publish(link._client, None, 8, _success(), None)  # its own ack
    async with asyncio.timeout(5):
        await acked
