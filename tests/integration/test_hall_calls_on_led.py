"""A counter's call reaches the LED panel above its window: queue → hub command → hall agent →
LED driver → serial bytes on a pty → the simulated panel, decoded back (issue 4)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from edge_agents.config import agent_config_from_dict
from edge_agents.runtime import EdgeAgent
from hub.broker import MosquittoBroker
from hub.config import hub_config_from_dict
from hub.hall_displays import HallDisplays, call_text
from hub.queue_service import QueueService, queue_config_from_dict
from hub.registry import HealthState
from hub.service import HubService
from simulators.led_display import SimulatedLedBus, SimulatedPanel


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def panels() -> AsyncIterator[SimulatedLedBus]:
    bus = SimulatedLedBus([SimulatedPanel(address=1), SimulatedPanel(address=9)])
    await bus.start()
    yield bus
    await bus.stop()


async def test_call_and_recall_show_on_the_window_panel_and_the_board(
    broker: MosquittoBroker, panels: SimulatedLedBus, tmp_path: Path
) -> None:
    hub = HubService(
        hub_config_from_dict({"hub": {"data_dir": str(tmp_path / "hub")}}),
        broker.url,
        "hub",
        "pw-hub",
    )
    queue_config = queue_config_from_dict(
        {
            "counters": [{"id": "1", "services": ["filing"], "display": "agent-a/led-1"}],
            "board_displays": ["agent-a/board"],
        }
    )
    queue = await QueueService.open(tmp_path / "hub", queue_config)
    led = {"port": panels.path, "poll_interval_s": 1.0}
    agent = EdgeAgent(
        agent_config_from_dict(
            {
                "agent": {"id": "agent-a", "data_dir": str(tmp_path / "agent")},
                "venue": {"id": "hall", "kind": "litigation_hall", "name": "诉讼服务大厅"},
                "broker": {"url": str(broker.url), "password": "pw-agent-a"},
                "devices": [
                    {"id": "led-1", "driver": "led_call_display", "options": {**led, "address": 1}},
                    {"id": "board", "driver": "led_call_display", "options": {**led, "address": 9}},
                ],
            }
        )
    )
    displays = HallDisplays(hub, queue, queue_config)
    await hub.start()
    await agent.start()
    displays.start()
    try:
        await until(
            lambda: all(
                (d := hub.registry.device("agent-a", name)) is not None
                and d.state is HealthState.ONLINE
                for name in ("led-1", "board")
            ),
            "both panels online in the registry",
        )
        window, board = panels.panels[1], panels.panels[9]
        await queue.issue("filing", request_id="r1")
        ticket = await queue.call_next("1")
        assert ticket is not None
        expected = call_text(ticket, "1")
        assert expected == "请A001号到1号窗口"
        await until(lambda: window.text[0] == expected and window.chimes == 1, "the window panel")
        await until(lambda: board.text[0] == expected and board.chimes == 1, "the hall board")
        assert window.effects[0] == "flash"
        await queue.recall("1")
        await until(lambda: window.chimes == 2 and board.chimes == 2, "the recall's chime")
        assert displays.stats["failures"] == 0
    finally:
        await displays.stop()
        await agent.stop()
        await hub.stop()
        await queue.close()
