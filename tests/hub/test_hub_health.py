"""Health rules without a broker: births, deaths in both orders, reported states, staleness."""

from __future__ import annotations

import pytest

from hub.health import HealthMonitor
from hub.registry import DeviceRemoved, HealthChanged, HealthState, HubChange, Registry
from protocol.messages import (
    Birth,
    Death,
    DeviceInfo,
    DeviceState,
    DeviceStatus,
    Venue,
    VenueKind,
)


class Clock:
    """Milliseconds the test moves by hand."""

    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.ms


def birth(bdseq: int, *device_ids: str, heartbeat_s: float = 1.0) -> Birth:
    devices = [DeviceInfo(id=d, kind="sensor", heartbeat_s=heartbeat_s) for d in device_ids]
    return Birth(
        ts=1,
        bdseq=bdseq,
        seq=0,
        venue=Venue(id="hall", kind=VenueKind.LITIGATION_HALL),
        devices=devices or [DeviceInfo(id="d1", kind="sensor", heartbeat_s=heartbeat_s)],
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def health(registry: Registry, clock: Clock) -> HealthMonitor:
    return HealthMonitor(
        registry, stale_heartbeats=3, overrides={("a", "slow"): 60}, clock_ms=clock
    )


def states(registry: Registry) -> dict[str, HealthState]:
    return {d.id: d.state for d in registry.devices()}


@pytest.mark.parametrize("retained", [True, False])
def test_death_before_birth_of_the_same_session_leaves_it_dead(
    registry: Registry, health: HealthMonitor, retained: bool
) -> None:
    health.on_death("a", Death(bdseq=5))
    health.on_birth("a", birth(5), retained=retained)
    agent = registry.agent("a")
    assert agent is not None and not agent.online
    assert states(registry) == {"d1": HealthState.OFFLINE}


def test_birth_before_death_of_the_same_session_ends_dead(
    registry: Registry, health: HealthMonitor
) -> None:
    health.on_birth("a", birth(5), retained=True)
    assert health.on_death("a", Death(bdseq=5))
    assert states(registry) == {"d1": HealthState.OFFLINE}


def test_old_death_is_ignored_in_either_order(registry: Registry, health: HealthMonitor) -> None:
    health.on_death("a", Death(bdseq=4))  # the previous session's will, replayed first
    health.on_birth("a", birth(5), retained=True)
    health.on_death("a", Death(bdseq=4))  # … and after
    agent = registry.agent("a")
    assert agent is not None and agent.online
    assert health.ignored_deaths == 1  # the early one was only remembered
    assert states(registry) == {"d1": HealthState.ONLINE}
    # a new session after a death comes back online
    health.on_death("a", Death(bdseq=5))
    health.on_birth("a", birth(6), retained=False)
    assert agent.online and states(registry) == {"d1": HealthState.ONLINE}


def test_stale_after_missed_heartbeats_with_override(
    registry: Registry, health: HealthMonitor, clock: Clock
) -> None:
    changes: list[HubChange] = []
    registry.add_listener(changes.append)
    health.on_birth("a", birth(1, "fast", "slow", heartbeat_s=1.0), retained=False)
    clock.ms += 3000
    assert health.sweep() == 0  # exactly 3 heartbeats: not yet
    clock.ms += 1
    assert health.sweep() == 1
    assert states(registry) == {"fast": HealthState.STALE, "slow": HealthState.ONLINE}
    fast = registry.device("a", "fast")
    assert fast is not None and fast.state_reason == "no message in 3 s"
    health.on_live("a", "fast")
    assert fast.state is HealthState.ONLINE
    clock.ms += 60_001
    health.sweep()
    assert states(registry) == {"fast": HealthState.STALE, "slow": HealthState.STALE}
    assert [(c.device, c.new) for c in changes if isinstance(c, HealthChanged)] == [
        ("fast", HealthState.STALE),
        ("fast", HealthState.ONLINE),
        ("fast", HealthState.STALE),
        ("slow", HealthState.STALE),
    ]


def test_reported_state_before_birth_and_older_reports(
    registry: Registry, health: HealthMonitor
) -> None:
    # retained states may be replayed before the birth that lists the device
    assert (
        health.on_device_state(
            "a", "d1", DeviceState(ts=10, state=DeviceStatus.FAULT, reason="jam"), retained=True
        )
        is None
    )
    health.on_birth("a", birth(1), retained=True)
    device = registry.device("a", "d1")
    assert device is not None and device.state is HealthState.FAULT
    assert device.state_reason == "jam"
    # an older report never overwrites a newer one
    health.on_device_state("a", "d1", DeviceState(ts=5, state=DeviceStatus.ONLINE), retained=True)
    assert device.state is HealthState.FAULT
    health.on_device_state("a", "d1", DeviceState(ts=11, state=DeviceStatus.ONLINE), retained=False)
    assert device.state is HealthState.ONLINE


def test_birth_replaces_the_device_list(registry: Registry, health: HealthMonitor) -> None:
    changes: list[HubChange] = []
    registry.add_listener(changes.append)
    health.on_birth("a", birth(1, "d1", "d2"), retained=False)
    health.on_birth("a", birth(1, "d2", "d3"), retained=False)
    assert sorted(states(registry)) == ["d2", "d3"]
    assert DeviceRemoved("a", "d1") in changes
    dirty = registry.take_dirty()
    assert dirty.removed_devices == [("a", "d1")]
    assert {d.id for d in dirty.devices} == {"d2", "d3"}


def test_a_failing_listener_does_not_break_the_registry(
    registry: Registry, health: HealthMonitor
) -> None:
    def broken(change: HubChange) -> None:
        raise RuntimeError("listener bug")

    seen: list[HubChange] = []
    registry.add_listener(broken)
    remove = registry.add_listener(seen.append)
    health.on_birth("a", birth(1), retained=False)
    assert seen
    remove()
    count = len(seen)
    health.on_death("a", Death(bdseq=1))
    assert len(seen) == count
