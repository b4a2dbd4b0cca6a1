"""Births, deaths and heartbeats against a real Mosquitto: registry, persistence and health."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hub_harness import AgentFactory, FakeAgent, HubFactory, wait_until

from hub.broker import MosquittoBroker
from hub.registry import AgentChanged, HealthChanged, HealthState, HubChange
from protocol.messages import DeviceInfo, DeviceStatus, VenueKind


async def test_birth_fills_registry_and_survives_restart(
    make_hub: HubFactory, make_agent: AgentFactory, tmp_path: Path
) -> None:
    hub = await make_hub()
    changes: list[HubChange] = []
    hub.add_listener(changes.append)
    agent = await make_agent("agent-a")
    await agent.birth()

    await wait_until(lambda: hub.registry.agent("agent-a") is not None, what="birth")
    record = hub.registry.agent("agent-a")
    assert record is not None
    assert record.online and record.venue_id == "venue-agent-a"
    assert record.venue_kind == VenueKind.LITIGATION_HALL.value
    assert record.version == "fake-1"
    kiosk = hub.registry.device("agent-a", "kiosk-1")
    assert kiosk is not None and kiosk.capabilities == ("reboot", "message")
    assert kiosk.kind == "kiosk" and kiosk.model == "K100"
    assert kiosk.state is HealthState.ONLINE
    assert {d.id for d in hub.registry.devices_of("agent-a")} == {"kiosk-1", "printer-1"}
    assert AgentChanged("agent-a") in changes

    await agent.telemetry("kiosk-1", {"paper_pct": 80.0})
    await wait_until(lambda: kiosk.metrics.get("paper_pct") == 80.0, what="telemetry")
    await hub.stop()

    # a fresh service on the same data dir finds everything in SQLite before any message
    again = await make_hub()
    loaded = again.registry.device("agent-a", "kiosk-1")
    assert loaded is not None
    assert loaded.capabilities == ("reboot", "message")
    assert loaded.metrics == {"paper_pct": 80.0}
    loaded_agent = again.registry.agent("agent-a")
    assert loaded_agent is not None and loaded_agent.venue_name == "Hall of agent-a"
    assert again.seq.received("agent-a") == [(0, 0)]


async def test_new_birth_removes_ghost_devices(
    make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    hub = await make_hub()
    agent = await make_agent("agent-a")
    await agent.birth()
    await wait_until(lambda: hub.registry.device("agent-a", "printer-1") is not None)

    agent.devices = [d for d in agent.devices if d.id != "printer-1"]
    agent.devices.append(DeviceInfo(id="camera-1", kind="camera", capabilities=["snapshot"]))
    await agent.birth()
    await wait_until(lambda: hub.registry.device("agent-a", "camera-1") is not None)
    assert hub.registry.device("agent-a", "printer-1") is None
    assert hub.stats()["devices_total"] == 2


async def test_killed_connection_takes_agent_and_devices_offline(
    make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    hub = await make_hub()
    agent = await make_agent("agent-a", bdseq=3)
    await agent.birth()
    await wait_until(lambda: hub.stats()["devices_online"] == 2, what="devices online")

    loop = asyncio.get_running_loop()
    started = loop.time()
    agent.kill_connection()  # no DISCONNECT: the broker publishes the retained death will
    await wait_until(lambda: hub.stats()["agents_online"] == 0, timeout=2.0, what="death")
    assert loop.time() - started < 2.0
    for device in hub.registry.devices_of("agent-a"):
        assert device.state is HealthState.OFFLINE
        assert device.state_reason == "agent offline"
    assert hub.stats()["devices_online"] == 0


async def test_death_with_old_bdseq_is_ignored(
    make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    hub = await make_hub()
    agent = await make_agent("agent-a", bdseq=7)
    await agent.birth()
    await wait_until(lambda: hub.registry.agent("agent-a") is not None)

    await agent.death(bdseq=6)  # a late will from the previous session
    await wait_until(lambda: hub.health.ignored_deaths == 1, what="stale death counted")
    record = hub.registry.agent("agent-a")
    assert record is not None and record.online
    assert hub.stats()["devices_online"] == 2

    await agent.death(bdseq=7)  # the current session's goodbye
    await wait_until(lambda: not record.online, what="current death")
    assert hub.stats()["devices_offline"] == 2


async def _retained_birth_and_death(agent: FakeAgent, death_first: bool) -> None:
    if death_first:
        await agent.death()
        await agent.birth()
    else:
        await agent.birth()
        await agent.death()


async def test_retained_death_and_birth_at_hub_start_in_either_order(
    make_hub: HubFactory, make_agent: AgentFactory, tmp_path: Path
) -> None:
    # agent-a: birth then death published; agent-b: death then birth (both retained, same
    # bdseq). Both sessions are over, whatever order the broker replays them in.
    a = await make_agent("agent-a", bdseq=4, with_will=False)
    b = await make_agent("agent-b", bdseq=9, with_will=False)
    await _retained_birth_and_death(a, death_first=False)
    await _retained_birth_and_death(b, death_first=True)
    # agent-interro: alive (birth only) — and an old retained death of its previous session
    c = await make_agent("interro-1", bdseq=2, with_will=False)
    await c.death(bdseq=1)
    await c.birth()

    hub = await make_hub()
    await wait_until(lambda: hub.stats()["agents_total"] == 3, what="retained births")
    await wait_until(lambda: hub.stats()["devices_total"] == 6)
    await asyncio.sleep(0.2)  # let every retained death arrive too (they are already sent)
    agents = {r.id: r.online for r in hub.registry.agents()}
    assert agents == {"agent-a": False, "agent-b": False, "interro-1": True}
    assert all(d.state is HealthState.OFFLINE for d in hub.registry.devices_of("agent-a"))
    assert all(d.state is HealthState.OFFLINE for d in hub.registry.devices_of("agent-b"))
    assert all(d.state is HealthState.ONLINE for d in hub.registry.devices_of("interro-1"))

    # the order at hub start is the broker's; replay both orders through the service directly
    for death_first in (True, False):
        await hub.stop()
        for agent in (a, b):
            await _retained_birth_and_death(agent, death_first)
        fresh = await make_hub(data_dir=tmp_path / f"fresh-{death_first}")
        await wait_until(lambda: fresh.stats()["agents_total"] == 3)  # noqa: B023
        await asyncio.sleep(0.2)
        online = {r.id: r.online for r in fresh.registry.agents()}
        assert online == {"agent-a": False, "agent-b": False, "interro-1": True}
        hub = fresh


async def test_stale_after_missed_heartbeats_and_back_online(
    make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    hub = await make_hub(
        stale_heartbeats=3,
        overrides=[{"agent": "agent-a", "device": "slow-1", "stale_after_s": 30}],
    )
    transitions: list[HealthChanged] = []
    hub.add_listener(lambda c: transitions.append(c) if isinstance(c, HealthChanged) else None)
    agent = await make_agent(
        "agent-a",
        devices=[
            DeviceInfo(id="fast-1", kind="sensor", heartbeat_s=0.2),
            DeviceInfo(id="slow-1", kind="sensor", heartbeat_s=0.2),
        ],
    )
    await agent.birth()
    await wait_until(lambda: hub.registry.device("agent-a", "fast-1") is not None)
    fast = hub.registry.device("agent-a", "fast-1")
    slow = hub.registry.device("agent-a", "slow-1")
    assert fast is not None and slow is not None

    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait_until(lambda: fast.state is HealthState.STALE, timeout=3, what="stale")
    assert loop.time() - started >= 0.55  # 3 × 0.2 s, not earlier
    assert slow.state is HealthState.ONLINE  # its override gives it 30 s
    assert hub.health.stale_after_s(slow) == 30

    await agent.telemetry("fast-1", {"t": 1.0})
    await wait_until(lambda: fast.state is HealthState.ONLINE, what="back online")
    assert [(t.device, t.new) for t in transitions] == [
        ("fast-1", HealthState.STALE),
        ("fast-1", HealthState.ONLINE),
    ]
    # transitions land in the state log for charts
    await hub.flusher.flush()
    log = await hub.store.state_log("agent-a", "fast-1")
    assert [e.state for e in log][-2:] == [HealthState.STALE, HealthState.ONLINE]


async def test_reported_device_state_wins_over_heartbeat(
    make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    hub = await make_hub()
    agent = await make_agent("agent-a")
    await agent.birth()
    await wait_until(lambda: hub.registry.device("agent-a", "printer-1") is not None)
    await agent.state("printer-1", DeviceStatus.FAULT, "paper jam")
    printer = hub.registry.device("agent-a", "printer-1")
    assert printer is not None
    await wait_until(lambda: printer.state is HealthState.FAULT, what="fault")
    assert printer.state_reason == "paper jam"
    await agent.state("printer-1", DeviceStatus.OFFLINE, "unplugged")
    await wait_until(lambda: printer.state is HealthState.OFFLINE, what="offline")
    await agent.state("printer-1", DeviceStatus.ONLINE)
    await wait_until(lambda: printer.state is HealthState.ONLINE, what="online")


async def test_hub_state_is_retained_online_then_offline(
    broker: MosquittoBroker, make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    seen: list[bytes] = []
    from protocol.mqtt_link import MqttLink, Subscription

    watcher = MqttLink(
        broker.url,
        client_id="watcher",
        username="agent-b",
        password="pw-agent-b",
        subscriptions=[Subscription("courthub/v1/hub/state")],
        on_message=lambda t, p, r: seen.append(p),
    )
    hub = await make_hub()
    await watcher.start()
    try:
        await wait_until(lambda: any(b'"online":true' in p for p in seen), what="online")
        await hub.stop()
        await wait_until(lambda: b'"online":false' in seen[-1], what="offline")
    finally:
        await watcher.stop()
