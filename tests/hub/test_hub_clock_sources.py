"""Which timestamps the hub measures an agent's clock on (hub/service.py ``_on_hub_clock``), on a
real Mosquitto: only those stamped when the message was sent, in the agent's order. Both cases
were seen after every hub restart of the chaos runs: the agent's clock "stepped back" for a
second, and the telemetry that arrived meanwhile was filed at its arrival, not its stamp."""

from __future__ import annotations

import time

from hub_harness import AgentFactory, HubFactory, wait_until

from hub.registry import TelemetryReceived
from hub.service import HubService
from protocol.messages import DeviceState, DeviceStatus, encode
from protocol.topics import TopicKind, build


def telemetry_log(hub: HubService) -> list[TelemetryReceived]:
    received: list[TelemetryReceived] = []
    hub.add_listener(lambda c: received.append(c) if isinstance(c, TelemetryReceived) else None)
    return received


async def test_states_resent_with_a_birth_are_not_a_clock_step(
    make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    """An agent re-sends every device state with each birth, stamped when the state *began*
    (maybe minutes ago): not a reading of its clock."""
    hub = await make_hub()
    received = telemetry_log(hub)
    agent = await make_agent("agent-a")
    await agent.birth(seq=0)
    await wait_until(lambda: hub.registry.agent("agent-a") is not None, what="birth")
    began = int(time.time() * 1000) - 30_000
    for device in ("kiosk-1", "printer-1", "agent"):
        state = DeviceState(ts=began, state=DeviceStatus.ONLINE)
        topic = build(TopicKind.DEVICE_STATE, agent.id, device)
        await agent.publish(topic, encode(state), retain=True)
    stamps = [int(time.time() * 1000) + i for i in range(3)]
    for ts in stamps:
        await agent.telemetry("kiosk-1", {"paper_pct": 50.0}, ts=ts)

    await wait_until(lambda: len(received) == 3, what="the telemetry")
    assert [r.telemetry.ts for r in received] == stamps
    assert hub.clock_skew.skewed() == {}
    assert hub.clock_skew.stats()["agent-a"]["steps"] == 0


async def test_telemetry_resent_after_a_new_birth_keeps_its_stamps(
    make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    """After a reconnect paho resends what the broker had not acknowledged, and the agent's new
    birth (next seq 3) can arrive first: seqs 0-2, stamped 5 s ago, are late, not a clock
    stepped back, and are filed where the agent stamped them."""
    hub = await make_hub()
    received = telemetry_log(hub)
    agent = await make_agent("agent-a")
    await agent.birth(seq=3)
    await wait_until(lambda: hub.registry.agent("agent-a") is not None, what="birth")
    stamps = [int(time.time() * 1000) - 5_000 + i for i in range(3)]
    for seq, ts in enumerate(stamps):
        await agent.telemetry("kiosk-1", {"paper_pct": 50.0}, seq=seq, ts=ts)

    await wait_until(lambda: len(received) == 3, what="the telemetry")
    assert [r.telemetry.ts for r in received] == stamps  # filed where the agent stamped it
    assert hub.clock_skew.skewed() == {}
    assert hub.clock_skew.stats()["agent-a"]["steps"] == 0
