"""The spine end to end: real agents (with real drivers and simulated devices), the real hub,
a real Mosquitto in between. What a technician would notice: devices appear, go offline when an
agent dies, nothing is lost across a broker restart, commands reach devices and come back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from edge_agents.config import agent_config_from_dict
from edge_agents.runtime import EdgeAgent
from hub.broker import MosquittoBroker
from hub.config import hub_config_from_dict
from hub.registry import HealthState, HubChange, TelemetryReceived
from hub.service import HubService
from simulators.http_sensor import SensorServer

SENSORS = ("env-1", "ups-1", "door-1")


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Wait for ``condition`` with a timeout (never a bare sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def sensors() -> AsyncIterator[SensorServer]:
    server = SensorServer({s: s.split("-")[0] for s in SENSORS}, seed=1)  # type: ignore[misc]
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def hub(broker: MosquittoBroker, tmp_path: Path) -> AsyncIterator[HubService]:
    config = hub_config_from_dict({"hub": {"data_dir": str(tmp_path / "hub")}})
    service = HubService(config, broker.url, "hub", "pw-hub")
    await service.start()
    assert await service.wait_connected(10)
    yield service
    await service.stop()


def venue(
    broker: MosquittoBroker, sensors: SensorServer, data_dir: Path, interval: float
) -> dict[str, Any]:
    return {
        "agent": {"id": "agent-a", "data_dir": str(data_dir), "heartbeat_s": 1.0},
        "venue": {"id": "court-1", "kind": "tech_courtroom", "name": "第一科技法庭"},
        "broker": {"url": str(broker.url), "password": "pw-agent-a"},
        "devices": [
            {
                "id": s,
                "driver": "http_sensor",
                "options": {"url": sensors.url_for(s), "interval_s": interval, "timeout_s": 1.0},
            }
            for s in SENSORS
        ],
    }


def health(hub: HubService, device: str) -> HealthState | None:
    record = hub.registry.device("agent-a", device)
    return record.state if record else None


async def test_agent_birth_fills_the_registry_and_commands_reach_devices(
    broker: MosquittoBroker, sensors: SensorServer, hub: HubService, tmp_path: Path
) -> None:
    agent = EdgeAgent(agent_config_from_dict(venue(broker, sensors, tmp_path / "a", 0.5)))
    await agent.start()
    try:
        await until(
            lambda: all(health(hub, d) is HealthState.ONLINE for d in (*SENSORS, "agent")),
            "every device online in the registry",
        )
        env = hub.registry.device("agent-a", "env-1")
        assert env is not None and "poll_now" in env.capabilities
        await until(lambda: "temperature_c" in env.metrics, "live telemetry in the registry")

        outcome = await hub.call_command("agent-a", "env-1", "poll_now", {}, timeout_s=5)
        assert outcome.ok, outcome.error
        assert "temperature_c" in outcome.result["readings"]

        ping = await hub.call_command("agent-a", "agent", "ping", {}, timeout_s=5)
        assert ping.ok and ping.result["pong"] is True

        sensors.slow("ups-1", 3.0)  # the sensor answers too late for the command's deadline
        late = await hub.call_command("agent-a", "ups-1", "poll_now", {}, timeout_s=0.5)
        assert not late.ok
        assert "deadline" in (late.error or "")
    finally:
        await agent.stop()
    await until(lambda: health(hub, "env-1") is HealthState.OFFLINE, "offline after the death")


async def test_broker_restart_mid_stream_loses_no_seq(
    broker: MosquittoBroker, sensors: SensorServer, hub: HubService, tmp_path: Path
) -> None:
    seen: set[int] = set()
    historical = 0

    def record(change: HubChange) -> None:
        nonlocal historical
        if isinstance(change, TelemetryReceived) and change.agent == "agent-a":
            seen.add(change.telemetry.seq)
            historical += change.telemetry.historical

    hub.add_listener(record)
    agent = EdgeAgent(agent_config_from_dict(venue(broker, sensors, tmp_path / "a", 0.05)))
    await agent.start()
    try:
        await until(lambda: len(seen) >= 50, "a live stream")
        await asyncio.to_thread(broker.stop)
        # the agent keeps producing while the broker is gone: into its outbox
        await until(lambda: agent.stats["outbox_pending"] >= 30, "telemetry held in the outbox")
        await asyncio.to_thread(broker.start)
        before = max(seen)
        await until(lambda: max(seen) > before + 100, "the stream to resume", timeout=30)
        await until(lambda: not hub.seq.missing("agent-a"), "every gap filled", timeout=30)
    finally:
        await agent.stop()
    top = hub.seq.highest("agent-a")
    assert hub.seq.received("agent-a") == [(0, top)], "every seq from 0 arrived"
    assert hub.stats()["lost"] == 0
    assert historical > 0, "messages held during the outage were replayed as historical"
    # the listener sees telemetry only; events share the seq space, so compare with the tracker
    assert seen <= set(range(top + 1))


async def test_kill_9_of_an_agent_process_takes_its_devices_offline_within_2_s(
    broker: MosquittoBroker, sensors: SensorServer, hub: HubService, tmp_path: Path
) -> None:
    config = tmp_path / "venue.toml"
    config.write_bytes(tomli_w.dumps(venue(broker, sensors, tmp_path / "a", 0.5)).encode())
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agents",
        "--config",
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await until(
            lambda: all(health(hub, d) is HealthState.ONLINE for d in SENSORS), "agent online"
        )
        os.kill(proc.pid, signal.SIGKILL)
        await until(
            lambda: all(health(hub, d) is HealthState.OFFLINE for d in (*SENSORS, "agent")),
            "offline via the agent's will",
            timeout=2.0,
        )
        record = hub.registry.agent("agent-a")
        assert record is not None and not record.online
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def test_demo_runs_and_ends_with_a_json_summary(tmp_path: Path) -> None:
    """`courthub demo --duration` with its faults: every agent back, nothing lost."""
    proc = subprocess.run(
        [sys.executable, "-m", "hub.cli", "demo", "--duration", "20", "--port", "0",
         "--data-dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "courthub demo is running" in proc.stdout
    # 4 venue agents and 3 hub-side "video-<venue>" agents holding the recorded cameras
    assert summary["agents_online"] == summary["agents_total"] == 7
    # devices either online or reporting their own fault (a jammed kiosk printer); none lost
    assert summary["devices_offline"] == 0 and summary["devices_stale"] == 0, summary
    assert summary["devices_online"] + summary["devices_fault"] == summary["devices_total"]
    # 3 kiosks, 9 sensors, 4 agents, 3 window LEDs + board, the hall's ticket printer, 4 cameras
    # and court-1's 4-seat microphone
    assert summary["devices_total"] == 26
    # court-1's seats recorded (a WAV track per seat) and, in the demo's hearing, transcribed
    assert summary["audio"]["tracks"] == 4 and summary["audio"]["segments_indexed"] > 0, summary
    assert summary["transcription"]["running"] is True
    # every camera recorded, and the camera cut for 5 s made one outage (a gap, an alert)
    recorder = summary["recorder"]
    assert recorder["segments_indexed"] >= recorder["cameras"] == 4, recorder
    assert all(n > 0 for n in recorder["frames_received"].values()), recorder
    assert recorder["outages"] >= 1 and recorder["index_failures"] == 0, recorder
    # the hall works: kiosks got tickets, clerks called them, the LED panels showed the calls
    assert summary["court"]["kiosk"]["tickets"] > 0
    assert summary["clerks"]["called"] > 0
    assert summary["court"]["led"]["chimes"] > 0
    # ...and the hall's printer printed the tickets the kiosks issued
    assert summary["court"]["printer"]["tickets"] > 0
    assert all(
        text.startswith("请") and text.endswith("号窗口")
        for text in summary["court"]["led"]["showing"].values()
    )
    # the demo's faults: garbage counted by reason, broker restart replayed from outboxes
    assert summary["bad_messages"] >= 6
    assert set(summary["bad_by_reason"]) >= {"malformed_json", "schema", "oversized", "bad_magic"}
    assert summary["outbox_replayed"] > 0
    assert summary["lost"] == 0
    assert summary["court"]["faults_injected"]["kill_agent"] == 1
