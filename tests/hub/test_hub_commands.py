"""Device commands through a real Mosquitto: round trip, refusals, deadlines, late results."""

from __future__ import annotations

import asyncio

from hub_harness import AgentFactory, HubFactory, echo_answer, wait_until

from hub.commands import CommandStatus
from protocol.messages import CommandResult, DeviceStatus, now_ms


async def test_command_round_trip(make_hub: HubFactory, make_agent: AgentFactory) -> None:
    hub = await make_hub()
    agent = await make_agent("agent-a", answer=echo_answer)
    await agent.birth()
    await wait_until(lambda: hub.registry.agent("agent-a") is not None)

    before = now_ms()
    outcome = await hub.call_command("agent-a", "kiosk-1", "message", {"text": "hi"}, 3.0)
    assert outcome.ok and outcome.status is CommandStatus.OK
    assert outcome.result == {"device": "kiosk-1", "args": {"text": "hi"}}
    assert outcome.error is None and len(outcome.id) == 32
    assert outcome.elapsed_ms > 0
    device, command = agent.commands[0]
    assert device == "kiosk-1" and command.name == "message" and command.id == outcome.id
    assert before + 3000 <= command.deadline_ms <= now_ms() + 3000  # absolute UTC ms
    assert hub.commands.pending == 0


async def test_agent_failure_is_reported(make_hub: HubFactory, make_agent: AgentFactory) -> None:
    hub = await make_hub()
    agent = await make_agent(
        "agent-a", answer=lambda d, c: CommandResult(id=c.id, ok=False, error="printer busy")
    )
    await agent.birth()
    await wait_until(lambda: hub.registry.agent("agent-a") is not None)
    outcome = await hub.call_command("agent-a", "printer-1", "print", {"lines": ["x"]})
    assert not outcome.ok and outcome.status is CommandStatus.FAILED
    assert outcome.error == "printer busy"


async def test_refused_commands_publish_nothing(
    make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    hub = await make_hub()
    agent = await make_agent("agent-a", answer=echo_answer)
    await agent.birth()
    await wait_until(lambda: hub.registry.agent("agent-a") is not None)

    unsupported = await hub.call_command("agent-a", "kiosk-1", "self_destruct")
    assert unsupported.status is CommandStatus.UNSUPPORTED
    assert "self_destruct" in (unsupported.error or "") and "reboot" in (unsupported.error or "")
    unknown = await hub.call_command("agent-a", "nope-1", "reboot")
    assert unknown.status is CommandStatus.UNKNOWN_DEVICE
    await agent.state("kiosk-1", DeviceStatus.OFFLINE, "powered off")
    kiosk = hub.registry.device("agent-a", "kiosk-1")
    assert kiosk is not None
    await wait_until(lambda: kiosk.reported_state is DeviceStatus.OFFLINE)
    offline = await hub.call_command("agent-a", "kiosk-1", "reboot")
    assert offline.status is CommandStatus.OFFLINE and "powered off" in (offline.error or "")

    # prove the negative: a real command sent afterwards is the first the agent sees
    await agent.state("kiosk-1", DeviceStatus.ONLINE)
    await wait_until(lambda: kiosk.reported_state is DeviceStatus.ONLINE)
    assert (await hub.call_command("agent-a", "kiosk-1", "reboot")).ok
    assert [c.name for _, c in agent.commands] == ["reboot"]
    assert hub.commands.sent == 1


async def test_deadline_expires_and_late_result_is_ignored(
    make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    hub = await make_hub()
    agent = await make_agent("agent-a")  # never answers by itself
    await agent.birth()
    await wait_until(lambda: hub.registry.agent("agent-a") is not None)

    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome = await hub.call_command("agent-a", "kiosk-1", "reboot", timeout_s=0.3)
    assert loop.time() - started >= 0.29
    assert not outcome.ok and outcome.status is CommandStatus.DEADLINE
    assert outcome.error == "deadline exceeded"
    assert hub.commands.expired == 1 and hub.commands.pending == 0

    _, command = agent.commands[0]
    await agent.result("kiosk-1", CommandResult(id=command.id, ok=True, result="too late"))
    await wait_until(lambda: hub.commands.late_results == 1, what="late result ignored")
    assert hub.stats()["commands_expired"] == 1
