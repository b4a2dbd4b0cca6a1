"""A hub command turns the courtroom camera to the witness: hub → MQTT → courtroom agent →
visca_ptz driver → VISCA bytes on a pty → the simulated PTZ head (issue 5); and voice follow
doing the same through the hub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from device_drivers.visca import PtzPosition
from edge_agents.config import agent_config_from_dict
from edge_agents.runtime import EdgeAgent
from hub.broker import MosquittoBroker
from hub.config import hub_config_from_dict
from hub.registry import HealthState
from hub.service import HubService
from hub.voice_follow import VoiceFollow
from simulators.visca_camera import SimulatedViscaCamera

JUDGE = PtzPosition(-1200, 300, 0x1000)
WITNESS = PtzPosition(1500, -100, 0x3000)


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def camera() -> AsyncIterator[SimulatedViscaCamera]:
    sim = SimulatedViscaCamera(presets={1: JUDGE, 4: WITNESS})
    await sim.start()
    yield sim
    await sim.stop()


async def test_hub_recalls_the_witness_preset_through_a_real_agent(
    broker: MosquittoBroker, camera: SimulatedViscaCamera, tmp_path: Path
) -> None:
    hub = HubService(
        hub_config_from_dict({"hub": {"data_dir": str(tmp_path / "hub")}}),
        broker.url,
        "hub",
        "pw-hub",
    )
    agent = EdgeAgent(
        agent_config_from_dict(
            {
                "agent": {"id": "court-1", "data_dir": str(tmp_path / "agent")},
                "venue": {"id": "court-1", "kind": "tech_courtroom", "name": "第一科技法庭"},
                "broker": {"url": str(broker.url), "password": "pw-court-1"},
                "devices": [
                    {
                        "id": "ptz-1",
                        "driver": "visca_ptz",
                        "options": {"port": camera.path, "poll_interval_s": 1.0},
                    }
                ],
            }
        )
    )
    await hub.start()
    await agent.start()
    follow = VoiceFollow(hub.call_command, {"court-1": ("court-1", "ptz-1")}, min_hold_s=0.0)
    try:
        await until(
            lambda: (
                (d := hub.registry.device("court-1", "ptz-1")) is not None
                and d.state is HealthState.ONLINE
            ),
            "the PTZ camera online in the registry",
        )
        outcome = await hub.call_command(
            "court-1", "ptz-1", "recall_preset", {"seat": "witness"}, 5.0
        )
        assert outcome.ok, outcome
        assert outcome.result == {"ok": True, "preset": 4}
        assert camera.position == WITNESS
        failed = await hub.call_command("court-1", "ptz-1", "recall_preset", {"seat": "defendant"})
        assert not failed.ok and "command not executable" in (failed.error or "")
        assert await follow.on_loudest_seat("court-1", "judge") is True
        assert camera.position == JUDGE
        assert follow.stats()["recalls_sent"] == 1
    finally:
        await follow.close()
        await agent.stop()
        await hub.stop()
