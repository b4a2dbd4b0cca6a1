"""The hub's MQTT connection in a child process (hub/mqtt_process.py), against a real Mosquitto.

What the hub relies on: every message arrives, in order; its own publishes are acknowledged (or
refused with the broker's reason) and never come back to it; a child that dies is started again
on the same session, so what agents published meanwhile still arrives; a hub that dies (kill -9)
leaves its will behind and its session keeps collecting; a clean stop hands over everything.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from hub_harness import wait_until

from hub.broker import MosquittoBroker
from hub.ingest import HUB_FILTER, HUB_STATE_TOPIC
from hub.mqtt_process import MqttProcess, RawMessage
from protocol.messages import HubState, decode
from protocol.mqtt_link import MqttLink, PublishRefused, Subscription
from protocol.topics import TopicKind

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "courthub/v1/agent-a/kiosk-1/telemetry"
PROBE = "courthub/v1/agent-b/probe/telemetry"

ProcessFactory = Callable[..., Awaitable[tuple[MqttProcess, list[RawMessage]]]]


@pytest.fixture
async def make_process(broker: MosquittoBroker) -> AsyncIterator[ProcessFactory]:
    """Start hub-side MqttProcesses on the test broker that record what they receive."""
    started: list[MqttProcess] = []

    async def make(
        received: list[RawMessage] | None = None, client_id: str = "courthub-hub"
    ) -> tuple[MqttProcess, list[RawMessage]]:
        got: list[RawMessage] = [] if received is None else received

        async def on_batch(batch: list[RawMessage], ack: Callable[[], None]) -> None:
            got.extend(batch)
            ack()

        proc = MqttProcess(
            broker.url,
            client_id=client_id,
            username="hub",
            password="pw-hub",
            subscriptions=[Subscription(HUB_FILTER, qos=1, no_local=True)],
            on_batch=on_batch,
            will_topic=HUB_STATE_TOPIC,
        )
        await proc.start()
        started.append(proc)
        assert await proc.wait_connected(15), "the MQTT process did not connect"
        await _until_subscribed(broker, lambda: any(t == PROBE for t, _p, _r in got))
        return proc, got

    yield make
    for proc in started:
        await proc.stop()


@pytest.fixture
async def agent(broker: MosquittoBroker) -> AsyncIterator[MqttLink]:
    link = MqttLink(broker.url, client_id="agent-a", username="agent-a", password="pw-agent-a")
    await link.start()
    assert await link.wait_connected(5)
    yield link
    await link.stop()


async def _until_subscribed(broker: MosquittoBroker, seen: Callable[[], bool]) -> None:
    """Publish probes until one arrives: "connected" is the CONNACK, and the broker may route a
    message published a moment later before it has processed the SUBSCRIBE that follows it."""
    prober = MqttLink(broker.url, client_id="prober", username="agent-b", password="pw-agent-b")
    await prober.start()
    try:
        assert await prober.wait_connected(5)
        async with asyncio.timeout(30):
            while not seen():
                await prober.publish_acked(PROBE, b"{}", qos=1)
                await asyncio.sleep(0.1)
    finally:
        await prober.stop()


def _payloads(got: list[RawMessage]) -> list[int]:
    return [int(p) for t, p, _r in got if t == TOPIC]


async def test_every_message_arrives_in_order_and_own_publishes_do_not_come_back(
    make_process: ProcessFactory, agent: MqttLink, broker: MosquittoBroker
) -> None:
    proc, got = await make_process()
    seen_by_agent: list[str] = []
    listener = MqttLink(
        broker.url,
        client_id="agent-a-listener",
        username="agent-a",
        password="pw-agent-a",
        subscriptions=[Subscription("courthub/v1/agent-a/rebirth", qos=1)],
        on_message=lambda t, _p, _r: seen_by_agent.append(t),
    )
    await listener.start()
    assert await listener.wait_connected(5)
    try:
        # the hub's own publish, acknowledged by the broker, reaches the agent (again until
        # the listener's subscription is in place)...
        async with asyncio.timeout(30):
            while not seen_by_agent:
                await proc.publish_acked("courthub/v1/agent-a/rebirth", b'{"ts":1,"reason":"t"}')
                await asyncio.sleep(0.1)
        for i in range(3000):
            agent.publish(TOPIC, str(i).encode(), qos=1)
        await wait_until(lambda: len(_payloads(got)) >= 3000, timeout=60, what="3000 messages")
    finally:
        await listener.stop()
    assert _payloads(got) == list(range(3000))
    # ...and never comes back to the hub (no_local on the child's one session)
    assert not [t for t, _p, _r in got if t.endswith("/rebirth")]
    assert proc.messages == len(got)


async def test_a_refused_publish_raises_with_the_broker_reason(
    make_process: ProcessFactory,
) -> None:
    proc, _ = await make_process()
    with pytest.raises(PublishRefused, match="Not authorized"):
        await proc.publish_acked("elsewhere/x", b"{}")  # outside the hub's ACL
    await proc.publish_acked(f"{HUB_STATE_TOPIC}-test", b"{}")  # the link still works


async def test_a_killed_child_is_restarted_on_the_same_session(
    make_process: ProcessFactory, agent: MqttLink
) -> None:
    proc, got = await make_process()
    agent.publish(TOPIC, b"0", qos=1)
    await wait_until(lambda: _payloads(got) == [0], what="first message")
    child = proc._child
    assert child is not None
    os.kill(child.proc.pid, signal.SIGKILL)
    await wait_until(lambda: not proc.connected, what="the hub sees the link down")
    for i in range(1, 201):  # published while the hub has no connection: kept by its session
        await agent.publish_acked(TOPIC, str(i).encode(), qos=1)
    await wait_until(lambda: proc.restarts == 1 and proc.connected, timeout=30, what="restart")
    await wait_until(lambda: len(_payloads(got)) >= 201, timeout=30, what="the queued 200")
    assert _payloads(got) == list(range(201))


async def test_a_clean_stop_hands_over_everything_received(
    make_process: ProcessFactory, agent: MqttLink
) -> None:
    received: list[RawMessage] = []
    proc, _ = await make_process(received)
    for i in range(5000):
        agent.publish(TOPIC, str(i).encode(), qos=1)
    await wait_until(lambda: len(received) > 100, what="the flood has started")
    await proc.stop()  # mid-flood: what the child received is handed over before it exits
    handed_over = len(_payloads(received))
    assert not proc.process_up
    await make_process(received)  # the same session gets the rest
    await wait_until(lambda: set(_payloads(received)) == set(range(5000)), timeout=60, what="all")
    assert handed_over < 5000, "the stop came too late to test anything: publish more"


HUB_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from hub.ingest import HUB_FILTER, HUB_STATE_TOPIC
    from hub.mqtt_process import MqttProcess
    from protocol.mqtt_link import BrokerUrl, Subscription

    async def main() -> None:
        async def on_batch(batch, ack):  # acknowledges nothing: dies before it would
            if any(t.endswith("/probe/telemetry") for t, _p, _r in batch):
                print("subscribed", flush=True)
            for t, p, _r in batch:
                if t.endswith("/kiosk-1/telemetry"):
                    print("got", int(p), flush=True)
        proc = MqttProcess(
            BrokerUrl.parse(sys.argv[1]), client_id="courthub-hub", username="hub",
            password="pw-hub", subscriptions=[Subscription(HUB_FILTER, qos=1, no_local=True)],
            on_batch=on_batch, will_topic=HUB_STATE_TOPIC,
        )
        await proc.start()
        assert await proc.wait_connected(15)
        print("connected", proc._child.proc.pid, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_a_hub_killed_leaves_its_will_and_its_session(
    make_process: ProcessFactory, agent: MqttLink, broker: MosquittoBroker
) -> None:
    states: list[HubState] = []
    watcher = MqttLink(
        broker.url,
        client_id="watcher",
        username="agent-b",
        password="pw-agent-b",
        subscriptions=[Subscription(HUB_STATE_TOPIC, qos=1)],
        on_message=lambda _t, p, _r: states.append(decode(TopicKind.HUB_STATE, p)),  # type: ignore[arg-type]
    )
    hub = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HUB_SCRIPT, str(broker.url), cwd=ROOT, stdout=subprocess.PIPE
    )
    try:
        assert hub.stdout is not None
        line = (await asyncio.wait_for(hub.stdout.readline(), 30)).decode()
        assert line.startswith("connected"), line
        child_pid = int(line.split()[1])
        probed = asyncio.Event()

        async def read_probe() -> None:
            assert hub.stdout is not None
            if (await hub.stdout.readline()).startswith(b"subscribed"):
                probed.set()

        reader = asyncio.create_task(read_probe())
        await _until_subscribed(broker, probed.is_set)
        await reader
        await watcher.start()
        assert await watcher.wait_connected(5)
        for i in range(1000, 1020):  # handled by the hub, never acknowledged by it
            await agent.publish_acked(TOPIC, str(i).encode(), qos=1)
        seen: list[int] = []
        while len(seen) < 20:
            out = (await asyncio.wait_for(hub.stdout.readline(), 30)).decode().split()
            if out and out[0] == "got":
                seen.append(int(out[1]))
        assert seen == list(range(1000, 1020))
        hub.kill()  # kill -9 of the hub: its child sees the pipe end
        await asyncio.wait_for(hub.wait(), 10)
        # the broker speaks for the dead hub (its will), and the child does not linger
        await wait_until(
            lambda: any(not s.online for s in states), timeout=30, what="hub offline (will)"
        )
        await wait_until(lambda: not Path(f"/proc/{child_pid}").exists(), what="child gone")
        for i in range(100):  # while no hub is running
            await agent.publish_acked(TOPIC, str(i).encode(), qos=1)
        _, got = await make_process()  # the next hub, same client id: its session kept them
        await wait_until(lambda: len(_payloads(got)) >= 120, timeout=30, what="all 120")
        # the 20 the dead hub had received but not acknowledged come again, then the 100
        assert sorted(_payloads(got)) == [*range(100), *range(1000, 1020)]
    finally:
        if hub.returncode is None:
            hub.kill()
        await watcher.stop()
