"""Fixtures for driver tests: a recording sink, and running drivers/simulators that clean up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest

from device_drivers.base import DeviceDescription, DeviceDriver, DeviceSink
from hub.broker import MosquittoBroker
from protocol.messages import DeviceStatus
from simulators.kiosk import KioskProfile, SimulatedKiosk


class RecordingSink(DeviceSink):
    """A DeviceSink that remembers every call, with a polling wait for conditions."""

    def __init__(self) -> None:
        self.states: list[tuple[DeviceStatus, str]] = []
        self.telemetry_log: list[dict[str, float]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.descriptions: list[DeviceDescription] = []
        self.bad: list[tuple[str, str]] = []

    # DeviceSink
    def set_state(self, state: DeviceStatus, reason: str = "") -> None:
        self.states.append((state, reason))

    def telemetry(self, metrics: Mapping[str, float]) -> None:
        self.telemetry_log.append(dict(metrics))

    def event(self, type: str, data: Mapping[str, Any]) -> None:
        self.events.append((type, dict(data)))

    def describe(self, description: DeviceDescription) -> None:
        self.descriptions.append(description)

    def bad_input(self, reason: str, detail: str) -> None:
        self.bad.append((reason, detail))

    # queries
    @property
    def state(self) -> tuple[DeviceStatus, str] | None:
        return self.states[-1] if self.states else None

    def events_of(self, type: str) -> list[dict[str, Any]]:
        return [data for t, data in self.events if t == type]

    def metric(self, name: str) -> float | None:
        for metrics in reversed(self.telemetry_log):
            if name in metrics:
                return metrics[name]
        return None

    async def wait(self, condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
        """Poll ``condition`` until it is truthy; fail with the sink's record otherwise."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}; states={self.states[-5:]} "
                    f"events={self.events[-5:]} bad={self.bad[-5:]}"
                )
            await asyncio.sleep(0.01)

    async def wait_state(
        self, state: DeviceStatus, reason: str | None = None, timeout: float = 5.0
    ) -> None:
        """Wait until the current state is ``state`` (and ``reason``, when given)."""

        def reached() -> bool:
            current = self.state
            return current is not None and current[0] == state and reason in (None, current[1])

        await self.wait(reached, f"state {state.value} {reason or ''}", timeout)


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
async def run_driver() -> AsyncIterator[Callable[[DeviceDriver[Any], DeviceSink], None]]:
    """Start ``driver.run(sink)`` as a task; cancelled (and checked) at teardown."""
    tasks: list[asyncio.Task[None]] = []

    def start(driver: DeviceDriver[Any], sink: DeviceSink) -> None:
        tasks.append(asyncio.create_task(driver.run(sink)))

    yield start
    for task in tasks:
        assert not task.done(), f"driver.run ended by itself: {task!r}"
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def kiosk_options(broker: MosquittoBroker) -> Callable[..., dict[str, Any]]:
    """Options of a kiosk_mqtt driver logged in as agent hall-1 (which may use kiosk/+/...)."""

    def make(**overrides: Any) -> dict[str, Any]:
        options: dict[str, Any] = {
            "broker_url": f"mqtt://{broker.url.host}:{broker.url.port}",
            "username": "hall-1",
            "password": "pw-hall-1",
            "kiosk_id": "k1",
        }
        options.update(overrides)
        return options

    return make


@pytest.fixture
def quiet_profile() -> KioskProfile:
    """A kiosk without random litigants or jams, reporting status every 0.2 s."""
    return KioskProfile(
        arrivals_per_min={"filing": 0.0, "consult": 0.0, "payment": 0.0, "materials": 0.0},
        case_queries_per_min=0.0,
        status_interval_s=0.2,
        answer_timeout_s=60.0,
        jam_probability=0.0,
    )


@pytest.fixture
async def start_kiosk(
    broker: MosquittoBroker, quiet_profile: KioskProfile
) -> AsyncIterator[Callable[..., Awaitable[SimulatedKiosk]]]:
    """Start a simulated kiosk k1 (quiet: no random arrivals) and wait until it is connected."""
    kiosks: list[SimulatedKiosk] = []

    async def start(profile: KioskProfile | None = None, seed: int = 1) -> SimulatedKiosk:
        kiosk = SimulatedKiosk(
            broker.url,
            kiosk_id="k1",
            username="kiosk-k1",
            password="pw-kiosk-k1",
            profile=profile or quiet_profile,
            seed=seed,
        )
        kiosks.append(kiosk)
        await kiosk.start()
        assert await kiosk.wait_connected(5.0), "simulated kiosk did not connect"
        return kiosk

    yield start
    for kiosk in kiosks:
        await kiosk.stop()
