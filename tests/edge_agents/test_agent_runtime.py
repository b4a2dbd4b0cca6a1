"""EdgeAgent against a real Mosquitto, with the test hub of conftest.py acting as the hub."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from device_drivers.base import DeviceDescription, DriverConfigError
from edge_agents.config import AGENT_DEVICE_ID
from protocol import topics
from protocol.messages import (
    Command,
    DeviceStatus,
    VenueKind,
    encode,
    now_ms,
)
from protocol.topics import TopicKind

AGENT = "agent-a"


async def started(agent: Any, hub: Any, wait_for: Any, births: int = 1) -> Any:
    """Start ``agent`` and wait for its ``births``-th birth; returns that birth."""
    await agent.start()
    found = await wait_for(
        lambda: len(hub.births(agent.agent_id)) >= births and hub.births(agent.agent_id),
        10.0,
        f"birth #{births} of {agent.agent_id}",
    )
    return found[births - 1]


async def test_birth_lists_venue_devices_and_the_agent(
    make_agent: Any, hub: Any, new_probe: Any, wait_for: Any
) -> None:
    agent = make_agent(devices=("dev-1", "dev-2"))
    birth = await started(agent, hub, wait_for)

    assert birth.venue.id == "hall"
    assert birth.venue.kind is VenueKind.LITIGATION_HALL
    assert birth.venue.name == "诉讼服务大厅"
    assert birth.bdseq == 1  # first connection of a fresh agent
    assert birth.seq == 0  # nothing assigned yet
    assert (birth.outbox_pending, birth.outbox_dropped) == (0, 0)
    by_id = {d.id: d for d in birth.devices}
    assert set(by_id) == {AGENT_DEVICE_ID, "dev-1", "dev-2"}
    assert by_id[AGENT_DEVICE_ID].kind == "edge_agent"
    assert "ping" in by_id[AGENT_DEVICE_ID].capabilities
    assert by_id["dev-1"].kind == "fake"
    assert by_id["dev-1"].model == "fake-1"
    assert by_id["dev-1"].capabilities == ["echo", "slow", "fail", "boom"]

    # A late subscriber gets birth and device states from the broker: they are retained.
    late = new_probe()
    await late.start(online=True)
    try:
        await wait_for(
            lambda: (
                late.births(AGENT)
                and all(
                    any(s.state is DeviceStatus.ONLINE for s in late.states(AGENT, d))
                    for d in ("dev-1", "dev-2", AGENT_DEVICE_ID)
                )
            ),
            5.0,
            "retained birth and online states",
        )
        assert all(r.retained for r in late.received if r.agent == AGENT)
        assert late.births(AGENT)[-1].bdseq == birth.bdseq
    finally:
        await late.stop()


async def test_clean_stop_publishes_retained_death_with_the_birth_bdseq(
    make_agent: Any, hub: Any, new_probe: Any, wait_for: Any
) -> None:
    agent = make_agent()
    birth = await started(agent, hub, wait_for)
    await agent.stop()
    deaths = await wait_for(lambda: hub.deaths(AGENT), 5.0, "death")
    assert deaths[-1].bdseq == birth.bdseq
    assert deaths[-1].ts > 0

    late = new_probe()
    await late.start()
    try:
        retained = await wait_for(lambda: late.deaths(AGENT), 5.0, "retained death")
        assert retained[-1].bdseq == birth.bdseq
    finally:
        await late.stop()


async def test_outbox_holds_while_hub_offline_then_replays_historical(
    make_agent: Any, offline_hub: Any, fake_drivers: Any, wait_for: Any
) -> None:
    hub = offline_hub
    agent = make_agent()
    await started(agent, hub, wait_for)
    driver = fake_drivers["dev-1"]
    await wait_for(lambda: agent.stats["connected"] and driver.sink, 5.0, "agent connected")

    driver.emit(20)
    await wait_for(lambda: agent.stats["outbox_pending"] == 20, 5.0, "20 messages stored")
    assert hub.telemetry(AGENT) == []  # held while the hub is offline

    hub.set_online(True)
    await wait_for(lambda: len(hub.telemetry(AGENT, "dev-1")) >= 20, 5.0, "replay of 20")
    held = hub.telemetry(AGENT, "dev-1")
    assert [t.seq for t in held] == list(range(20))  # in order, contiguous, no duplicates
    assert all(t.historical for t in held)
    assert [t.metrics["i"] for t in held] == [float(i) for i in range(20)]
    # The hub coming online gets a new birth (the agent was born while it was away).
    await wait_for(lambda: len(hub.births(AGENT)) >= 2, 5.0, "birth on hub online")
    await wait_for(lambda: agent.stats["outbox_pending"] == 0, 5.0, "outbox drained")
    assert agent.stats["replayed"] == 20

    driver.emit(5, start=20)  # now live
    await wait_for(lambda: len(hub.telemetry(AGENT, "dev-1")) >= 25, 5.0, "live telemetry")
    live = hub.telemetry(AGENT, "dev-1")[20:]
    assert [t.seq for t in live] == list(range(20, 25))
    assert not any(t.historical for t in live)


async def test_broker_restart_mid_stream_loses_nothing(
    make_agent: Any, hub: Any, broker: Any, fake_drivers: Any, wait_for: Any
) -> None:
    agent = make_agent()
    first = await started(agent, hub, wait_for)
    driver = fake_drivers["dev-1"]
    await wait_for(lambda: agent.stats["delivering"] and driver.sink, 5.0, "delivering")
    total = 600

    async def produce() -> None:
        for i in range(0, total, 10):
            driver.emit(10, start=i)
            await asyncio.sleep(0.005)

    producer = asyncio.create_task(produce())
    await wait_for(lambda: len(hub.seqs(AGENT)) >= 50, 5.0, "some telemetry before the outage")
    await asyncio.to_thread(broker.stop)
    await asyncio.to_thread(broker.start)
    await producer

    await wait_for(
        lambda: set(hub.seqs(AGENT)) >= set(range(total)), 20.0, "every seq after reconnect"
    )
    assert set(hub.seqs(AGENT)) == set(range(total))  # nothing invented either
    # The outage really cut the stream: what was produced meanwhile went out as history.
    assert agent.stats["replayed"] > 0
    assert any(t.historical for t in hub.telemetry(AGENT))
    await wait_for(lambda: agent.stats["outbox_pending"] == 0, 5.0, "outbox drained")
    assert agent.stats["connects"] >= 2
    later = await wait_for(
        lambda: [b for b in hub.births(AGENT) if b.bdseq > first.bdseq],
        5.0,
        "birth after reconnect",
    )
    assert later[0].bdseq > first.bdseq


async def test_agent_started_before_the_broker_connects_when_it_comes(
    make_agent: Any, broker: Any, new_probe: Any, fake_drivers: Any, wait_for: Any
) -> None:
    await asyncio.to_thread(broker.stop)
    agent = make_agent()
    await agent.start()
    await wait_for(lambda: fake_drivers["dev-1"].sink, 5.0, "driver running")
    fake_drivers["dev-1"].emit(5)
    await wait_for(lambda: agent.stats["outbox_pending"] == 5, 5.0, "held without a broker")
    await asyncio.to_thread(broker.start)
    hub = new_probe()
    await hub.start(online=True)
    try:
        births = await wait_for(lambda: hub.births(AGENT), 10.0, "birth once the broker is up")
        assert births[0].bdseq == 1  # failed first attempts do not burn bdseqs
        await wait_for(lambda: len(hub.telemetry(AGENT)) >= 5, 5.0, "held telemetry")
        assert [t.seq for t in hub.telemetry(AGENT)] == list(range(5))
        assert all(t.historical for t in hub.telemetry(AGENT))
    finally:
        await hub.stop()


async def test_outbox_survives_an_agent_restart(
    make_agent: Any, offline_hub: Any, fake_drivers: Any, wait_for: Any, tmp_path: Any
) -> None:
    hub = offline_hub
    data_dir = tmp_path / "durable"
    first = make_agent(data_dir=data_dir)
    birth1 = await started(first, hub, wait_for)
    await wait_for(lambda: fake_drivers["dev-1"].sink, 5.0, "driver running")
    fake_drivers["dev-1"].emit(10)
    await wait_for(lambda: first.stats["outbox_pending"] == 10, 5.0, "10 stored")
    await first.stop()
    assert hub.telemetry(AGENT) == []

    second = make_agent(data_dir=data_dir)
    await second.start()
    birth2 = (await wait_for(lambda: [b for b in hub.births(AGENT) if b.bdseq > birth1.bdseq]))[0]
    assert birth2.seq == 10  # seq continues where the first run stopped
    assert birth2.outbox_pending == 10

    hub.set_online(True)
    await wait_for(lambda: len(hub.telemetry(AGENT)) >= 10, 5.0, "stored messages delivered")
    assert [t.seq for t in hub.telemetry(AGENT)] == list(range(10))
    assert all(t.historical for t in hub.telemetry(AGENT))

    await wait_for(lambda: second.stats["delivering"] and fake_drivers["dev-1"].sink, 5.0)
    fake_drivers["dev-1"].emit(3, start=10)
    await wait_for(lambda: len(hub.telemetry(AGENT)) >= 13, 5.0, "new telemetry")
    assert [t.seq for t in hub.telemetry(AGENT)][10:] == [10, 11, 12]


async def test_a_full_outbox_drops_the_oldest_and_counts_them(
    make_agent: Any, offline_hub: Any, fake_drivers: Any, wait_for: Any
) -> None:
    hub = offline_hub
    agent = make_agent(max_messages=5)
    await started(agent, hub, wait_for)
    await wait_for(lambda: fake_drivers["dev-1"].sink, 5.0, "driver running")
    fake_drivers["dev-1"].emit(12)
    await wait_for(lambda: agent.stats["outbox_dropped"] == 7, 5.0, "7 dropped")
    assert agent.stats["outbox_pending"] == 5

    hub.set_online(True)
    await wait_for(lambda: len(hub.telemetry(AGENT)) >= 5, 5.0, "the 5 newest delivered")
    assert [t.seq for t in hub.telemetry(AGENT)] == [7, 8, 9, 10, 11]
    births = await wait_for(lambda: hub.births(AGENT)[1:], 5.0, "birth on hub online")
    assert births[0].outbox_dropped == 7
    assert births[0].seq == 12


async def test_agent_heartbeat_telemetry_goes_through_the_outbox(
    make_agent: Any, hub: Any, fake_drivers: Any, wait_for: Any
) -> None:
    agent = make_agent(heartbeat_s=0.1)
    await started(agent, hub, wait_for)
    await wait_for(lambda: fake_drivers["dev-1"].sink, 5.0, "driver running")
    sink = fake_drivers["dev-1"].sink
    for _ in range(3):
        sink.bad_input("checksum", "bad frame")
    sink.telemetry({"temp": 21.5, "bogus": "x", "nan": float("nan")})
    beats = await wait_for(
        lambda: [
            t for t in hub.telemetry(AGENT, AGENT_DEVICE_ID) if t.metrics["bad_input_total"] >= 5
        ],
        5.0,
        "agent telemetry counting bad input",
    )
    metrics = beats[-1].metrics
    for name in ("outbox_pending", "outbox_dropped", "replayed", "connects", "uptime_s"):
        assert name in metrics
    assert metrics["connects"] == 1
    assert agent.stats["bad_input"] == {"dev-1": 5}  # 3 reported + 2 non-numeric metrics
    device = await wait_for(lambda: hub.telemetry(AGENT, "dev-1"), 5.0, "device telemetry")
    assert device[0].metrics == {"temp": 21.5, "bad_input": 5.0}
    # device and agent telemetry share one seq space
    seqs = hub.seqs(AGENT)
    assert sorted(seqs) == list(range(len(seqs)))


async def test_events_carry_seq_and_data(
    make_agent: Any, hub: Any, fake_drivers: Any, wait_for: Any
) -> None:
    agent = make_agent()
    await started(agent, hub, wait_for)
    await wait_for(lambda: agent.stats["delivering"] and fake_drivers["dev-1"].sink, 5.0)
    sink = fake_drivers["dev-1"].sink
    sink.event("ticket_taken", {"ticket": "A012", "service": "filing"})
    sink.event("broken", {"obj": object()})  # not JSON: counted as bad input, not sent
    sink.telemetry({"queue": 3})
    await wait_for(lambda: len(hub.seqs(AGENT)) >= 2, 5.0, "event and telemetry")
    (event,) = hub.events(AGENT, "dev-1")
    assert (event.type, event.data, event.seq, event.historical) == (
        "ticket_taken",
        {"ticket": "A012", "service": "filing"},
        0,
        False,
    )
    assert hub.telemetry(AGENT, "dev-1")[0].seq == 1
    assert agent.stats["bad_input"]["dev-1"] == 1


async def test_sink_calls_from_a_thread_and_driver_mistakes_never_raise(
    make_agent: Any, hub: Any, fake_drivers: Any, wait_for: Any
) -> None:
    agent = make_agent()
    await started(agent, hub, wait_for)
    await wait_for(lambda: agent.stats["delivering"] and fake_drivers["dev-1"].sink, 5.0)
    sink = fake_drivers["dev-1"].sink
    sink.telemetry(None)  # not a mapping
    sink.set_state("sleeping")  # not a state
    await asyncio.to_thread(sink.telemetry, {"from_thread": 1})  # e.g. a capture thread
    await asyncio.to_thread(sink.set_state, DeviceStatus.FAULT, "lamp broken")
    await wait_for(lambda: hub.telemetry(AGENT, "dev-1"), 5.0, "telemetry from a thread")
    assert hub.telemetry(AGENT, "dev-1")[0].metrics["from_thread"] == 1.0
    faults = await wait_for(
        lambda: [s for s in hub.states(AGENT, "dev-1") if s.state is DeviceStatus.FAULT], 5.0
    )
    assert faults[-1].reason == "lamp broken"
    assert agent.stats["bad_input"]["dev-1"] == 2


async def test_rebirth_request_gets_a_new_birth_and_states(
    make_agent: Any, hub: Any, wait_for: Any
) -> None:
    agent = make_agent()
    birth = await started(agent, hub, wait_for)
    states_before = len(hub.states(AGENT, "dev-1"))
    hub.request_rebirth(AGENT)
    births = await wait_for(lambda: hub.births(AGENT)[1:], 5.0, "second birth")
    assert births[0].bdseq == birth.bdseq  # same connection
    await wait_for(lambda: len(hub.states(AGENT, "dev-1")) > states_before, 5.0, "states again")


async def test_describe_triggers_a_new_birth(
    make_agent: Any, hub: Any, fake_drivers: Any, wait_for: Any
) -> None:
    agent = make_agent()
    await started(agent, hub, wait_for)
    await wait_for(lambda: fake_drivers["dev-1"].sink, 5.0, "driver running")
    fake_drivers["dev-1"].sink.describe(
        DeviceDescription(kind="fake", model="fake-2", firmware="9.9", capabilities=("echo",))
    )
    births = await wait_for(lambda: hub.births(AGENT)[1:], 5.0, "birth after describe")
    dev = next(d for d in births[0].devices if d.id == "dev-1")
    assert (dev.model, dev.firmware, dev.capabilities) == ("fake-2", "9.9", ["echo"])


async def test_hub_back_online_gets_a_new_birth(make_agent: Any, hub: Any, wait_for: Any) -> None:
    agent = make_agent()
    await started(agent, hub, wait_for)
    await wait_for(lambda: agent.stats["hub_online"], 5.0, "hub seen online")
    assert len(hub.births(AGENT)) == 1  # the retained online state needs no second birth
    hub.set_online(False)
    await wait_for(lambda: not agent.stats["hub_online"], 5.0, "hub seen offline")
    hub.set_online(True)
    await wait_for(lambda: len(hub.births(AGENT)) == 2, 5.0, "birth when the hub returns")


# commands ------------------------------------------------------------------------------------
async def test_command_round_trip_and_failures(
    make_agent: Any, hub: Any, fake_drivers: Any, wait_for: Any
) -> None:
    agent = make_agent()
    await started(agent, hub, wait_for)
    await wait_for(lambda: agent.stats["connected"], 5.0)

    ok = await hub.command(AGENT, "dev-1", "echo", {"text": "请到3号窗口"})
    assert (ok.ok, ok.result, ok.error) == (True, {"text": "请到3号窗口"}, None)

    unknown = await hub.command(AGENT, "dev-1", "dance")
    assert not unknown.ok and "unknown command" in (unknown.error or "")

    failed = await hub.command(AGENT, "dev-1", "fail")
    assert (failed.ok, failed.error) == (False, "paper jam")

    crashed = await hub.command(AGENT, "dev-1", "boom")
    assert (crashed.ok, crashed.error) == (False, "internal error: ValueError")

    nodev = await hub.command(AGENT, "dev-9", "echo")
    assert not nodev.ok and "unknown device" in (nodev.error or "")

    pong = await hub.command(AGENT, AGENT_DEVICE_ID, "ping")
    assert pong.ok and pong.result["pong"] is True

    stats = await hub.command(AGENT, AGENT_DEVICE_ID, "stats")
    assert stats.ok and stats.result["commands_ok"] >= 2

    assert agent.stats["commands_failed"] == 4
    assert agent.stats["bad_commands"] == 0


async def test_expired_deadline_is_refused_without_running(
    make_agent: Any, hub: Any, fake_drivers: Any, wait_for: Any
) -> None:
    agent = make_agent()
    await started(agent, hub, wait_for)
    await wait_for(lambda: agent.stats["connected"], 5.0)
    result = await hub.command(AGENT, "dev-1", "echo", deadline_ms=now_ms() - 1)
    assert (result.ok, result.error) == (False, "deadline expired")
    assert fake_drivers["dev-1"].executed == []


async def test_deadline_expiring_during_a_slow_command(
    make_agent: Any, hub: Any, fake_drivers: Any, wait_for: Any
) -> None:
    agent = make_agent()
    await started(agent, hub, wait_for)
    await wait_for(lambda: agent.stats["connected"], 5.0)
    result = await hub.command(AGENT, "dev-1", "slow", {"s": 30}, deadline_ms=now_ms() + 300)
    assert (result.ok, result.error) == (False, "deadline expired while running")
    assert fake_drivers["dev-1"].executed == ["slow"]


async def test_malformed_commands_are_counted_and_the_agent_keeps_working(
    make_agent: Any, hub: Any, wait_for: Any
) -> None:
    agent = make_agent()
    await started(agent, hub, wait_for)
    await wait_for(lambda: agent.stats["connected"], 5.0)

    hub.send_command_raw(AGENT, "dev-1", b"{not json")
    hub.send_command_raw(AGENT, "dev-1", b'{"id": "x1", "name": 42}')  # schema: answered
    hub.send_command_raw(AGENT, "dev-1", b"\xff" * 70_000)  # oversized
    await wait_for(lambda: agent.stats["bad_commands"] == 3, 5.0, "3 bad commands counted")
    answer = await hub.result(AGENT, "dev-1", "x1")
    assert (answer.ok, answer.error) == (False, "bad command: schema")

    still = await hub.command(AGENT, "dev-1", "echo", {"n": 1})
    assert still.ok
    cmd = Command(id="late", name="echo", deadline_ms=now_ms() + 5000)
    hub.link.publish(topics.build(TopicKind.COMMAND, AGENT, "dev-1"), encode(cmd), qos=1)
    assert (await hub.result(AGENT, "dev-1", "late")).ok


# drivers -------------------------------------------------------------------------------------
async def test_a_crashing_driver_goes_fault_and_is_restarted(
    make_agent: Any, hub: Any, fake_drivers: Any, wait_for: Any
) -> None:
    agent = make_agent(options={"dev-1": {"fail_runs": 2}})
    await started(agent, hub, wait_for)
    states = await wait_for(
        lambda: [s for s in hub.states(AGENT, "dev-1") if s.state is DeviceStatus.ONLINE],
        5.0,
        "device online after restarts",
    )
    assert states
    history = hub.states(AGENT, "dev-1")
    faults = [s for s in history if s.state is DeviceStatus.FAULT]
    assert faults and "simulated crash" in faults[-1].reason
    assert fake_drivers["dev-1"].runs == 3
    assert agent.stats["driver_restarts"] == 2
    assert agent.device_state("dev-1").state is DeviceStatus.ONLINE
    # the agent itself is unaffected
    assert (await hub.command(AGENT, AGENT_DEVICE_ID, "ping")).ok


async def test_bad_driver_options_fail_fast(make_agent: Any) -> None:
    with pytest.raises(DriverConfigError, match=r"dev-1.*fail_runs"):
        make_agent(options={"dev-1": {"fail_runs": "often"}})
