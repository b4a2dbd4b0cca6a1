"""Telemetry and events through a real Mosquitto: seq gaps, outbox replay, duplicates, losses."""

from __future__ import annotations

from hub_harness import AgentFactory, HubFactory, wait_until

from hub.registry import EventReceived, HubChange, TelemetryReceived
from protocol.messages import now_ms


async def test_gap_filled_by_historical_replay_loses_nothing(
    make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    hub = await make_hub(gap_fill_timeout_s=5)
    received: list[HubChange] = []
    hub.add_listener(received.append)
    agent = await make_agent("agent-a")
    await agent.birth(seq=0)
    await wait_until(lambda: hub.registry.agent("agent-a") is not None)

    for _ in range(5):
        await agent.telemetry("kiosk-1", {"n": 1.0})  # seqs 0..4 live
    # the agent lost its link: 5..9 went to the outbox; it reconnects with next seq 10
    await agent.birth(seq=10)
    await agent.event("kiosk-1", "ticket_taken", {"number": "A001"}, seq=10)  # live again
    await wait_until(lambda: hub.seq.missing("agent-a") == [(5, 9)], what="gap 5-9")
    for n in range(5, 10):
        await agent.telemetry("kiosk-1", {"n": float(n)}, seq=n, historical=True)

    await wait_until(lambda: hub.seq.received_count("agent-a") == 11, what="replay")
    assert hub.seq.received("agent-a") == [(0, 10)]
    assert hub.seq.missing("agent-a") == []
    stats = hub.stats()
    assert stats["lost"] == 0
    assert stats["outbox_replayed"] == 5
    assert stats["duplicates"] == 0
    assert stats["rebirths_requested"] == 0
    events = [c for c in received if isinstance(c, EventReceived)]
    assert [e.event.type for e in events] == ["ticket_taken"]
    historical = [
        c.telemetry.seq
        for c in received
        if isinstance(c, TelemetryReceived) and c.telemetry.historical
    ]
    assert historical == [5, 6, 7, 8, 9]  # listeners (telemetry sinks) still get the replay


async def test_unfilled_gap_is_declared_lost_and_rebirth_requested(
    make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    hub = await make_hub(gap_fill_timeout_s=0.3)
    agent = await make_agent("agent-a")
    await agent.birth(seq=0)
    await wait_until(lambda: hub.registry.agent("agent-a") is not None)

    await agent.telemetry("kiosk-1", {"n": 0.0}, seq=0)
    await agent.telemetry("kiosk-1", {"n": 4.0}, seq=4)  # 1..3 never come
    await wait_until(lambda: hub.seq.missing("agent-a") == [(1, 3)], what="gap")
    await wait_until(lambda: hub.stats()["lost"] == 3, timeout=3, what="declared lost")
    assert hub.seq.lost_ranges("agent-a") == [(1, 3)]
    assert hub.seq.missing("agent-a") == []
    await wait_until(lambda: len(agent.rebirths) == 1, what="rebirth request at the agent")
    assert "lost" in agent.rebirths[0].reason
    assert hub.stats()["rebirths_requested"] == 1


async def test_duplicates_are_dropped_and_counted(
    make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    hub = await make_hub()
    telemetry: list[TelemetryReceived] = []
    hub.add_listener(lambda c: telemetry.append(c) if isinstance(c, TelemetryReceived) else None)
    agent = await make_agent("agent-a")
    await agent.birth(seq=0)
    await wait_until(lambda: hub.registry.agent("agent-a") is not None)

    await agent.telemetry("kiosk-1", {"n": 0.0}, seq=0)
    await agent.telemetry("kiosk-1", {"n": 1.0}, seq=1)
    # a redelivery after a lost PUBACK, live and replayed
    await agent.telemetry("kiosk-1", {"n": 1.0}, seq=1)
    await agent.telemetry("kiosk-1", {"n": 0.0}, seq=0, historical=True)
    await agent.event("kiosk-1", "ticket_taken", seq=2)
    await wait_until(lambda: hub.seq.received_count("agent-a") == 3, what="three unique")
    await wait_until(lambda: hub.stats()["duplicates"] == 2, what="two duplicates")
    assert [t.telemetry.seq for t in telemetry] == [0, 1]
    assert hub.stats()["lost"] == 0


async def test_historical_never_overwrites_live_values(
    make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    hub = await make_hub()
    agent = await make_agent("agent-a")
    await agent.birth(seq=5)
    await wait_until(lambda: hub.registry.agent("agent-a") is not None)
    kiosk = hub.registry.device("agent-a", "kiosk-1")
    assert kiosk is not None

    now = now_ms()
    await agent.telemetry("kiosk-1", {"paper_pct": 50.0}, seq=5, ts=now)
    await wait_until(lambda: kiosk.metrics.get("paper_pct") == 50.0)
    seen_before = kiosk.last_seen_ms
    # an outbox replay from before the live value: counted and seq-tracked, never shown as live
    await agent.telemetry("kiosk-1", {"paper_pct": 99.0}, seq=3, ts=now - 60_000, historical=True)
    await wait_until(lambda: hub.stats()["outbox_replayed"] == 1)
    assert kiosk.metrics["paper_pct"] == 50.0
    assert kiosk.metrics_ts == now
    assert kiosk.last_seen_ms == seen_before
    # a live message carrying an older ts does not overwrite the newer value either
    await agent.telemetry("kiosk-1", {"paper_pct": 10.0}, seq=6, ts=now - 1000)
    await wait_until(lambda: hub.seq.received_count("agent-a") == 3)
    assert kiosk.metrics["paper_pct"] == 50.0
    await agent.telemetry("kiosk-1", {"paper_pct": 40.0}, seq=7, ts=now + 1)
    await wait_until(lambda: kiosk.metrics.get("paper_pct") == 40.0)


async def test_data_from_an_agent_without_birth_asks_for_rebirth(
    make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    hub = await make_hub(rebirth_min_interval_s=60)
    agent = await make_agent("agent-b")
    await agent.telemetry("kiosk-1", {"n": 1.0})
    await agent.telemetry("kiosk-1", {"n": 2.0})
    await wait_until(lambda: len(agent.rebirths) == 1, what="rebirth request")
    await wait_until(lambda: hub.stats()["unknown_agent_messages"] == 2)
    assert hub.stats()["rebirths_requested"] == 1  # rate-limited: one per agent per interval
    assert hub.rebirths.suppressed == 1

    await agent.birth()  # the agent answers with its birth: now it is known
    await wait_until(lambda: hub.registry.agent("agent-b") is not None)
    assert hub.seq.received("agent-b") == [(0, 1)]


async def test_messages_sent_while_the_hub_is_away_arrive_after_it_returns(
    make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    hub = await make_hub()
    agent = await make_agent("agent-a")
    await agent.birth(seq=0)
    await agent.telemetry("kiosk-1", {"n": 0.0})
    await wait_until(lambda: hub.seq.received_count("agent-a") == 1)
    await hub.stop()

    # the broker keeps the hub's persistent session and queues QoS 1 messages for it
    for n in range(1, 21):
        await agent.telemetry("kiosk-1", {"n": float(n)})

    again = await make_hub()  # same client id, same data dir
    await wait_until(lambda: again.seq.received_count("agent-a") == 21, what="queued messages")
    assert again.seq.received("agent-a") == [(0, 20)]
    assert again.stats()["lost"] == 0 and again.stats()["duplicates"] == 0
    kiosk = again.registry.device("agent-a", "kiosk-1")
    assert kiosk is not None and kiosk.metrics["n"] == 20.0
