"""The fallback broker (iotcore from PyPI) used only where Mosquitto is missing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hub.broker import EmbeddedBroker
from protocol.mqtt_link import MqttLink, Subscription


async def test_embedded_broker_carries_contract_messages_on_loopback(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path)
    await asyncio.to_thread(broker.start)
    got: list[tuple[str, bytes]] = []
    hub = MqttLink(
        broker.url,
        client_id="hub",
        # as the hub's ingest subscribes; note rumqttd ignores no-local, so on this fallback the
        # hub hears its own commands and counts them as wrong-direction input (demo-only broker)
        subscriptions=[Subscription("courthub/#", no_local=True)],
        on_message=lambda topic, payload, retain: got.append((topic, payload)),
    )
    agent = MqttLink(broker.url, client_id="agent-a")
    try:
        assert not broker.authenticated  # the hub warns about this when it falls back
        assert broker.url.host == "127.0.0.1"
        await hub.start()
        await agent.start()
        assert await hub.wait_connected(10) and await agent.wait_connected(10)
        await asyncio.sleep(0.3)  # the SUBSCRIBE must land first
        await agent.publish_acked("courthub/v1/agent-a/dev/event", b'{"ts":1}')
        async with asyncio.timeout(5):
            while not got:
                await asyncio.sleep(0.02)
        assert got == [("courthub/v1/agent-a/dev/event", b'{"ts":1}')]
    finally:
        await agent.stop()
        await hub.stop()
        await asyncio.to_thread(broker.stop)
