"""The MQTT link against a real Mosquitto: auth, ACL refusal under MQTT 5, reconnect."""

from __future__ import annotations

import asyncio

import pytest

from hub.broker import MosquittoBroker
from protocol.mqtt_link import BrokerUrl, MqttLink, PublishRefused, Subscription


def test_broker_url_parsing_and_safe_str() -> None:
    url = BrokerUrl.parse("mqtts://hall-1:s%40cret@broker.court:8884?ca=/etc/ca.pem")
    assert (url.host, url.port, url.tls, url.username, url.password) == (
        "broker.court",
        8884,
        True,
        "hall-1",
        "s@cret",
    )
    assert url.ca_file == "/etc/ca.pem"
    assert "s@cret" not in str(url) and "s@cret" not in repr(url)
    assert BrokerUrl.parse("mqtt://localhost").port == 1883
    assert BrokerUrl.parse("mqtts://localhost").port == 8883
    with pytest.raises(ValueError, match="mqtt://"):
        BrokerUrl.parse("http://localhost")


async def test_acl_refuses_writing_into_another_agents_topics(broker: MosquittoBroker) -> None:
    received: list[str] = []
    hub = MqttLink(
        broker.url,
        client_id="hub",
        username="hub",
        password="pw-hub",
        subscriptions=[Subscription("courthub/#")],
        on_message=lambda topic, payload, retain: received.append(topic),
    )
    agent = MqttLink(broker.url, client_id="agent-a", username="agent-a", password="pw-agent-a")
    await hub.start()
    await agent.start()
    try:
        assert await hub.wait_connected(5)
        assert await agent.wait_connected(5)
        await agent.publish_acked("courthub/v1/agent-a/dev/telemetry", b"{}")
        with pytest.raises(PublishRefused, match="Not authorized"):
            await agent.publish_acked("courthub/v1/agent-b/dev/telemetry", b"{}")
        with pytest.raises(PublishRefused):
            await agent.publish_acked("courthub/v1/hub/state", b'{"online":false,"ts":0}')
        # a marker published after the refused ones: once it arrives, nothing else will
        await agent.publish_acked("courthub/v1/agent-a/dev/event", b"{}")
        async with asyncio.timeout(5):
            while "courthub/v1/agent-a/dev/event" not in received:
                await asyncio.sleep(0.01)
        assert "courthub/v1/agent-b/dev/telemetry" not in received
        assert "courthub/v1/hub/state" not in received
    finally:
        await agent.stop()
        await hub.stop()


async def test_agent_cannot_read_another_agents_commands(broker: MosquittoBroker) -> None:
    seen: list[str] = []
    spy = MqttLink(
        broker.url,
        client_id="agent-b",
        username="agent-b",
        password="pw-agent-b",
        subscriptions=[
            Subscription("courthub/v1/+/+/cmd"),
            Subscription("courthub/v1/agent-b/+/cmd"),
        ],
        on_message=lambda topic, payload, retain: seen.append(topic),
    )
    hub = MqttLink(broker.url, client_id="hub", username="hub", password="pw-hub")
    await spy.start()
    await hub.start()
    try:
        assert await spy.wait_connected(5) and await hub.wait_connected(5)
        await asyncio.sleep(0.2)  # let the SUBSCRIBE land before publishing
        await hub.publish_acked("courthub/v1/agent-a/dev/cmd", b"{}")
        await hub.publish_acked("courthub/v1/agent-b/dev/cmd", b"{}")
        async with asyncio.timeout(5):
            while "courthub/v1/agent-b/dev/cmd" not in seen:
                await asyncio.sleep(0.01)
        assert "courthub/v1/agent-a/dev/cmd" not in seen
    finally:
        await spy.stop()
        await hub.stop()


async def test_wrong_password_never_connects(broker: MosquittoBroker) -> None:
    link = MqttLink(broker.url, client_id="x", username="agent-a", password="wrong")
    await link.start()
    try:
        assert not await link.wait_connected(1.5)
    finally:
        await link.stop()


async def test_link_reconnects_after_broker_restart(broker: MosquittoBroker) -> None:
    link = MqttLink(
        broker.url, client_id="agent-a", username="agent-a", password="pw-agent-a", max_backoff_s=1
    )
    await link.start()
    try:
        assert await link.wait_connected(5)
        broker.restart()
        async with asyncio.timeout(10):
            while link.connects < 2 or not link.connected:
                await asyncio.sleep(0.05)
        await link.publish_acked("courthub/v1/agent-a/dev/event", b"{}")
    finally:
        await link.stop()
