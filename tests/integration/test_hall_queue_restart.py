"""The hall queue inside the running hub: two counters pressing "call next" at the same moment
through the HTTP API never get the same ticket, and a hub restart mid-queue loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import HubRuntime, run_hub
from hub.config import HubConfig, hub_config_from_dict


class Hubs:
    """Starts the hub (own Mosquitto, console on a free port) on one data dir, and restarts it."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self._running: tuple[asyncio.Event, asyncio.Task[None]] | None = None

    async def start(self) -> HubRuntime:
        ready: asyncio.Future[HubRuntime] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        task = asyncio.create_task(run_hub(self.config, stop, on_ready=ready.set_result))
        self._running = (stop, task)
        async with asyncio.timeout(30):
            return await ready

    async def stop(self) -> None:
        if self._running is not None:
            stop, task = self._running
            self._running = None
            stop.set()
            await task

    async def restart(self) -> HubRuntime:
        await self.stop()
        return await self.start()


@pytest.fixture
async def hubs(tmp_path: Path) -> AsyncIterator[Hubs]:
    hubs = Hubs(
        hub_config_from_dict({"hub": {"data_dir": str(tmp_path / "hub")}, "api": {"port": 0}})
    )
    yield hubs
    await hubs.stop()


async def press(
    session: aiohttp.ClientSession, runtime: HubRuntime, counter: str, action: str
) -> dict[str, Any]:
    url = f"{runtime.api_url}/api/v1/queue/counters/{counter}/{action}"
    headers = {"Authorization": f"Bearer {runtime.api_token}"}
    async with session.post(url, json={}, headers=headers) as response:
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body


async def test_two_counters_calling_at_once_never_share_a_ticket(hubs: Hubs) -> None:
    runtime = await hubs.start()
    assert runtime.queue is not None
    for i in range(10):  # counters 1 and 2 both serve filing (the default config)
        await runtime.queue.issue("filing", request_id=f"r{i}")
    called: list[str] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            first, second = await asyncio.gather(
                press(session, runtime, "1", "call-next"), press(session, runtime, "2", "call-next")
            )
            called += [first["ticket"]["number"], second["ticket"]["number"]]
            await asyncio.gather(
                press(session, runtime, "1", "done"), press(session, runtime, "2", "done")
            )
    assert sorted(called) == [f"A{n:03d}" for n in range(1, 11)], called


async def test_a_hub_restart_mid_queue_loses_no_ticket_and_no_state(hubs: Hubs) -> None:
    runtime = await hubs.start()
    queue = runtime.queue
    assert queue is not None
    for i in range(4):
        await queue.issue("filing", request_id=f"r{i}")
    called = await queue.call_next("1")
    assert called is not None and called.number == "A001"
    before = await queue.snapshot()

    again = await hubs.restart()  # the whole hub: broker, service, stores, queue, console
    assert again.queue is not None
    current = await again.queue.current("1")
    assert current is not None and current.number == "A001" and current.state == "called"
    after = await again.queue.snapshot()
    assert after.waiting == before.waiting
    assert [c.number for c in after.now_calling] == [c.number for c in before.now_calling]
    # the same request after the restart is the same ticket, and numbering continues
    assert (await again.queue.issue("filing", request_id="r2")).number == "A003"
    assert (await again.queue.issue("filing", request_id="r9")).number == "A005"
    await again.queue.done("1")
    follow = await again.queue.call_next("1")
    assert follow is not None and follow.number == "A002"
