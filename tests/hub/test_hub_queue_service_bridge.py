"""The kiosk bridge without a broker: bad requests, failed commands, bounded concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hub.commands import CommandOutcome, CommandStatus
from hub.hall_kiosks import HallKiosks
from hub.queue_service import QueueService
from hub.registry import EventReceived, HubChange
from protocol.messages import Event


class FakeHub:
    """Just what the bridge uses of HubService: listeners and ``call_command``."""

    def __init__(self) -> None:
        self.listeners: list[Callable[[HubChange], None]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = False
        self.gate = asyncio.Event()
        self.gate.set()
        self.running = 0
        self.max_running = 0

    def add_listener(self, listener: Callable[[HubChange], None]) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def emit(self, data: dict[str, Any], kind: str = "ticket_request") -> None:
        event = Event(ts=0, seq=0, type=kind, data=data)
        for listener in self.listeners:
            listener(EventReceived("hall-1", "kiosk-1", event))

    async def call_command(
        self, agent: str, device: str, name: str, args: dict[str, Any], timeout_s: float
    ) -> CommandOutcome:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        self.calls.append((name, args))
        if self.fail:
            return CommandOutcome(False, error="kiosk offline", status=CommandStatus.OFFLINE)
        return CommandOutcome(True, {"sent": name})


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[QueueService]:
    q = await QueueService.open(tmp_path)
    yield q
    await q.close()


async def settle(bridge: HallKiosks) -> None:
    for _ in range(500):
        if bridge.in_flight == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("requests still in flight")


async def test_bad_requests_and_failed_commands_are_counted_not_raised(
    queue: QueueService,
) -> None:
    hub = FakeHub()
    bridge = HallKiosks(hub, queue)  # type: ignore[arg-type]
    bridge.start()
    hub.emit({"service": "filing"})  # no request_id: nothing to answer
    hub.emit({"request_id": "x"}, kind="case_query")  # a case look-up without a case number
    hub.fail = True
    hub.emit({"request_id": "r1", "service": "filing", "priority": "normal"})
    await settle(bridge)
    assert bridge.stats["bad_requests"] == 2 and bridge.stats["command_failures"] == 1
    assert bridge.stats["requests"] == 2 and bridge.stats["tickets_sent"] == 0
    # the kiosk repeats; this time the answer goes through, with the same ticket
    hub.fail = False
    hub.emit({"request_id": "r1", "service": "filing", "priority": "normal", "repeat": True})
    await settle(bridge)
    assert [args["number"] for _name, args in hub.calls] == ["A001", "A001"]
    assert bridge.stats["tickets_sent"] == 1
    await bridge.stop()
    assert not hub.listeners


async def test_concurrency_is_bounded(queue: QueueService) -> None:
    hub = FakeHub()
    hub.gate.clear()
    bridge = HallKiosks(hub, queue, max_concurrent=3)  # type: ignore[arg-type]
    bridge.start()
    for i in range(10):
        hub.emit({"request_id": f"r{i}", "service": "consult", "priority": "normal"})

    async def three_waiting() -> None:
        while hub.running < 3:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(three_waiting(), 5)
    assert bridge.in_flight == 10 and hub.max_running == 3
    hub.gate.set()
    await settle(bridge)
    numbers = sorted(args["number"] for _name, args in hub.calls)
    assert numbers == [f"B{i:03d}" for i in range(1, 11)]
    await bridge.stop()
