"""Registry changes → telemetry points → every configured sink (issue 7).

:class:`TelemetryPipeline` listens to the hub's registry (on the loop) and turns

- each accepted telemetry message (live or replayed from an agent's outbox — the seq tracker has
  already dropped duplicates) into one ``device`` point at the device's own timestamp, tagged
  with agent, device, venue and kind;
- each health transition into a ``device_health`` point at once (``state_code``: 0 offline,
  1 online, 2 stale, 3 fault; ``up``), so the state timeline has the exact moment;

and every ``sample_interval_s`` writes a ``device_health`` point per device (state, up, seconds
since last seen) and a ``hub`` point with the hub's counters (``HubService.stats()``'s numbers)
plus one more ``hub`` point per sink (its ``stats()``, tag ``sink``). Names are those the Grafana
example (examples/grafana) and docs/TELEMETRY.md use.

The listener only builds points and hands them to the sinks' non-blocking ``write``: all I/O
happens in the sinks' own threads and tasks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hub.registry import (
    AgentChanged,
    DeviceChanged,
    DeviceRemoved,
    HealthChanged,
    HubChange,
    Registry,
    TelemetryReceived,
)
from hub.telemetry_points import HEALTH_CODES, Point, TelemetrySink, sort_tags

log = logging.getLogger(__name__)

DEVICE = "device"
DEVICE_HEALTH = "device_health"
HUB = "hub"
#: sink statistics share the ``hub`` measurement, told apart by their ``sink`` tag
HUB_SINK = HUB


class TelemetryPipeline:
    """Feeds every sink; ``on_change`` is a registry listener, :meth:`run` the sampler."""

    def __init__(
        self,
        registry: Registry,
        sinks: Sequence[TelemetrySink],
        *,
        sample_interval_s: float = 10.0,
        hub_stats: Callable[[], Mapping[str, Any]] | None = None,
        hub_id: str = "hub",
        clock: Callable[[], float] = time.time,
        device_points: bool = True,
    ) -> None:
        """``hub_stats``: the hub's counters (non-numeric values are skipped);
        ``device_points=False``: telemetry messages are written by ingest workers instead
        (scale-out), this pipeline writes health and hub points only."""
        self.registry = registry
        self.sinks = list(sinks)
        self.sample_interval_s = sample_interval_s
        self._hub_stats = hub_stats
        self._hub_id = hub_id
        self._clock = clock
        self._device_points = device_points
        #: (agent, device) → its sorted tags; dropped when a birth may change venue or kind
        self._tags: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
        self.points = 0
        self.failures = 0

    # registry listener (on the loop) ------------------------------------------------------------
    def on_change(self, change: HubChange) -> None:
        """Registry listener: telemetry and health transitions become points."""
        try:
            if isinstance(change, TelemetryReceived):
                if not self._device_points:
                    return
                msg = change.telemetry
                if msg.metrics:
                    tags = self._device_tags(change.agent, change.device)
                    self._write([Point(DEVICE, tags, msg.metrics, msg.ts)])
            elif isinstance(change, HealthChanged):
                tags = self._device_tags(change.agent, change.device)
                self._write([_health_point(tags, change.new.value, change.ts, None)])
            elif isinstance(change, AgentChanged):
                self._forget(lambda key: key[0] == change.agent)
            elif isinstance(change, DeviceChanged | DeviceRemoved):
                self._forget(lambda key: key == (change.agent, change.device))
        except Exception:  # a bad point must not break the registry's other listeners
            self.failures += 1
            log.exception("telemetry point failed change=%s", type(change).__name__)

    def _device_tags(self, agent_id: str, device_id: str) -> tuple[tuple[str, str], ...]:
        key = (agent_id, device_id)
        tags = self._tags.get(key)
        if tags is None:
            agent = self.registry.agent(agent_id)
            device = self.registry.device(agent_id, device_id)
            tags = sort_tags(
                {
                    "agent": agent_id,
                    "device": device_id,
                    "venue": agent.venue_id if agent else "",
                    "kind": device.kind if device else "",
                }
            )
            if agent is not None and device is not None:  # complete: worth keeping
                self._tags[key] = tags
        return tags

    def _forget(self, match: Callable[[tuple[str, str]], bool]) -> None:
        for key in [k for k in self._tags if match(k)]:
            del self._tags[key]

    # sampling -----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Sample device health and hub counters every ``sample_interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.sample_interval_s)
            try:
                self.sample()
            except Exception:
                self.failures += 1
                log.exception("telemetry sample failed")

    def sample(self) -> None:
        """One round of ``device_health`` and ``hub`` points, stamped now."""
        now = int(self._clock() * 1000)
        points = [
            _health_point(
                self._device_tags(d.agent, d.id),
                d.state.value,
                now,
                (now - d.last_seen_ms) / 1000 if d.last_seen_ms else None,
            )
            for d in self.registry.devices()
        ]
        if self._hub_stats is not None:
            fields = _numbers(self._hub_stats())
            if fields:
                points.append(Point.make(HUB, {"hub": self._hub_id}, fields, now))
        for sink in self.sinks:
            fields = _numbers(sink.stats())
            if fields:
                points.append(
                    Point.make(HUB_SINK, {"hub": self._hub_id, "sink": sink.name}, fields, now)
                )
        self._write(points)

    def _write(self, points: list[Point]) -> None:
        if not points:
            return
        self.points += len(points)
        for sink in self.sinks:
            sink.write(points)

    def stats(self) -> dict[str, float]:
        """Points built and listener failures, for /metrics."""
        return {"points": self.points, "failures": self.failures}


def _health_point(
    tags: tuple[tuple[str, str], ...], state: str, ts_ms: int, age_s: float | None
) -> Point:
    fields = {"state_code": float(HEALTH_CODES.get(state, 0)), "up": float(state == "online")}
    if age_s is not None:
        fields["last_seen_age_s"] = max(0.0, age_s)
    return Point(DEVICE_HEALTH, tags, fields, ts_ms)


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries (bools as 0/1): sinks store numbers only."""
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float)}
