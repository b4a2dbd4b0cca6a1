"""Registry changes become the points a technician charts (hub/telemetry_pipeline.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hub.registry import HealthChanged, HealthState, Registry, TelemetryReceived
from hub.telemetry_pipeline import TelemetryPipeline
from hub.telemetry_points import Point
from protocol.messages import DeviceInfo, Telemetry

NOW = 1_795_000_000.0


class ListSink:
    """A sink that keeps what it is given (the real ones are tested in tests/telemetry)."""

    name = "list"

    def __init__(self) -> None:
        self.points: list[Point] = []

    async def start(self) -> None: ...

    def write(self, points: Sequence[Point]) -> None:
        self.points.extend(points)

    async def flush(self) -> None: ...

    async def stop(self) -> None: ...

    def stats(self) -> Mapping[str, float]:
        return {"written": float(len(self.points)), "dropped": 0.0}


def court_registry() -> Registry:
    registry = Registry()
    agent = registry.ensure_agent("hall-agent")
    agent.venue_id = "hall"
    registry.replace_devices("hall-agent", [DeviceInfo(id="kiosk-1", kind="kiosk")], 0)
    return registry


def test_telemetry_becomes_a_tagged_point_at_the_device_time() -> None:
    registry, sink = court_registry(), ListSink()
    pipeline = TelemetryPipeline(registry, [sink], clock=lambda: NOW)
    registry.add_listener(pipeline.on_change)

    msg = Telemetry(ts=1_794_999_000_000, seq=7, metrics={"paper_pct": 42.0, "temp_c": 31.5})
    registry.notify(TelemetryReceived("hall-agent", "kiosk-1", msg))
    replayed = Telemetry(ts=1_794_998_000_000, seq=3, metrics={"paper_pct": 43.0}, historical=True)
    registry.notify(TelemetryReceived("hall-agent", "kiosk-1", replayed))

    first, second = sink.points
    assert first.measurement == "device" and first.ts_ms == msg.ts
    assert dict(first.tags) == {
        "agent": "hall-agent",
        "device": "kiosk-1",
        "venue": "hall",
        "kind": "kiosk",
    }
    assert dict(first.fields) == {"paper_pct": 42.0, "temp_c": 31.5}
    # an outbox replay is data too: it is charted at the time it was measured
    assert second.ts_ms == replayed.ts and dict(second.fields) == {"paper_pct": 43.0}
    assert first.to_line().startswith(
        "device,agent=hall-agent,device=kiosk-1,kind=kiosk,venue=hall "
    )


def test_a_birth_that_moves_a_device_retags_its_next_points() -> None:
    registry, sink = court_registry(), ListSink()
    pipeline = TelemetryPipeline(registry, [sink])
    registry.add_listener(pipeline.on_change)
    registry.notify(
        TelemetryReceived("hall-agent", "kiosk-1", Telemetry(ts=1, seq=1, metrics={"a": 1}))
    )
    registry.replace_devices("hall-agent", [DeviceInfo(id="kiosk-1", kind="printer")], 0)
    registry.notify(
        TelemetryReceived("hall-agent", "kiosk-1", Telemetry(ts=2, seq=2, metrics={"a": 2}))
    )
    assert [p.tag("kind") for p in sink.points] == ["kiosk", "printer"]


def test_health_transitions_and_samples_are_numbers() -> None:
    registry, sink = court_registry(), ListSink()
    stats = {"messages_in": 10, "connected": True, "bad_by_reason": {"json": 1}}
    pipeline = TelemetryPipeline(registry, [sink], hub_stats=lambda: stats, clock=lambda: NOW)
    registry.add_listener(pipeline.on_change)
    registry.notify(
        HealthChanged("hall-agent", "kiosk-1", HealthState.ONLINE, HealthState.OFFLINE, "lwt", 5)
    )
    (offline,) = sink.points
    assert offline.measurement == "device_health" and offline.ts_ms == 5
    assert dict(offline.fields) == {"state_code": 0.0, "up": 0.0}

    device = registry.device("hall-agent", "kiosk-1")
    assert device is not None
    device.last_seen_ms = int(NOW * 1000) - 2500
    pipeline.sample()
    health, hub, sink_stats = sink.points[1:]
    assert health.measurement == "device_health" and health.ts_ms == int(NOW * 1000)
    assert dict(health.fields) == {"state_code": 1.0, "up": 1.0, "last_seen_age_s": 2.5}
    # strings and nested values are left out; booleans become 0/1
    assert hub.measurement == "hub" and dict(hub.fields) == {"messages_in": 10.0, "connected": 1.0}
    assert sink_stats.tag("sink") == "list" and "written" in sink_stats.fields


def test_a_failing_point_is_counted_not_raised() -> None:
    registry, sink = court_registry(), ListSink()
    pipeline = TelemetryPipeline(registry, [sink])

    def broken(points: Sequence[Point]) -> None:
        raise OSError("disk gone")

    sink.write = broken  # type: ignore[method-assign]
    registry.add_listener(pipeline.on_change)
    registry.notify(
        TelemetryReceived("hall-agent", "kiosk-1", Telemetry(ts=1, seq=1, metrics={"a": 1}))
    )
    assert pipeline.failures == 1
