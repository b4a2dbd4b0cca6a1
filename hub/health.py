"""Agent and device health: online, stale, offline or fault.

Rules (LESSONS.md: base state on the session plus heartbeats with a per-device timeout):

1. The agent's session decides first. A birth makes the agent online; a death carrying the
   **current** birth's ``bdseq`` makes it and all its devices offline at once. A death with any
   other bdseq comes from an older session and is ignored (counted). Births and deaths are both
   retained, so at hub start they arrive in either order: the last death's bdseq is remembered and
   a birth with that same bdseq is born dead.
2. Then what the agent reports about the device (``state`` topic): ``offline`` or ``fault``.
3. Then the heartbeat: no message from the device for ``stale_heartbeats × heartbeat_s`` (or the
   per-device override) makes it stale; the next live message makes it online again.

Timestamps: ``last_seen`` is the hub's own clock when a live message arrived, so an agent whose
clock is off can never make its devices look fresh or stale. Loop only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Final

from hub.registry import (
    AgentChanged,
    AgentRecord,
    DeviceChanged,
    DeviceRecord,
    HealthState,
    Registry,
)
from protocol.messages import Birth, Death, DeviceState, DeviceStatus, now_ms

log = logging.getLogger(__name__)

#: Reported states kept for devices no birth has listed yet (retained states may come first).
MAX_PENDING_STATES: Final = 10_000

REASON_AGENT_OFFLINE: Final = "agent offline"


class HealthMonitor:
    """Applies births, deaths, device states and liveness to the registry's health fields."""

    def __init__(
        self,
        registry: Registry,
        *,
        stale_heartbeats: float = 3,
        overrides: Mapping[tuple[str, str], float] | None = None,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self._registry = registry
        self.stale_heartbeats = stale_heartbeats
        self._overrides = dict(overrides or {})
        self._clock_ms = clock_ms
        #: Deaths of agents the registry does not know yet (their retained birth may follow).
        self._early_deaths: dict[str, int] = {}
        self._pending_states: dict[tuple[str, str], DeviceState] = {}
        self.ignored_deaths = 0

    # births and deaths --------------------------------------------------------------------------
    def on_birth(self, agent_id: str, birth: Birth, *, retained: bool) -> AgentRecord:
        """A birth: metadata, device list (ghosts removed) and online unless already dead."""
        now = self._clock_ms()
        agent = self._registry.ensure_agent(agent_id)
        early = self._early_deaths.pop(agent_id, None)
        if early is not None:
            agent.last_death_bdseq = early
        agent.venue_id = birth.venue.id
        agent.venue_kind = birth.venue.kind.value
        agent.venue_name = birth.venue.name
        agent.version = birth.agent_version
        agent.bdseq = birth.bdseq
        agent.last_birth_ms = birth.ts
        dead = agent.last_death_bdseq == birth.bdseq
        if dead:
            log.info(
                "birth of a session already dead agent=%s bdseq=%d retained=%s",
                agent_id,
                birth.bdseq,
                retained,
            )
        agent.online = not dead
        if not retained:
            agent.last_seen_ms = now
        self._registry.mark_agent(agent)
        added, _ = self._registry.replace_devices(agent_id, birth.devices, now)
        new = {device.id for device in added}
        for device in self._registry.devices_of(agent_id):
            if not dead:
                # a birth vouches for its devices: each gets a full heartbeat window from now
                device.last_seen_ms = max(device.last_seen_ms, now)
            pending = self._pending_states.pop(device.key, None)
            if pending is not None:
                self._apply_reported(device, pending)
            self.evaluate(device, agent, now, initial=device.id in new)
        self._registry.notify(AgentChanged(agent_id))
        return agent

    def on_death(self, agent_id: str, death: Death) -> bool:
        """A death; True when it ended the current session (agent and devices now offline)."""
        agent = self._registry.agent(agent_id)
        if agent is None:
            self._early_deaths[agent_id] = death.bdseq
            log.info(
                "death of an unknown agent remembered agent=%s bdseq=%d", agent_id, death.bdseq
            )
            return False
        agent.last_death_bdseq = death.bdseq
        self._registry.mark_agent(agent)
        if death.bdseq != agent.bdseq:
            self.ignored_deaths += 1
            log.info(
                "stale death ignored agent=%s death_bdseq=%d current_bdseq=%d",
                agent_id,
                death.bdseq,
                agent.bdseq,
            )
            return False
        if not agent.online:
            return True
        agent.online = False
        log.info("agent offline agent=%s bdseq=%d", agent_id, death.bdseq)
        now = self._clock_ms()
        for device in self._registry.devices_of(agent_id):
            self.evaluate(device, agent, now)
        self._registry.notify(AgentChanged(agent_id))
        return True

    # device reports and liveness ----------------------------------------------------------------
    def on_device_state(
        self, agent_id: str, device_id: str, state: DeviceState, *, retained: bool
    ) -> DeviceRecord | None:
        """What the agent says about a device; ``None`` when no birth has listed the device."""
        device = self._registry.device(agent_id, device_id)
        if device is None:
            if len(self._pending_states) < MAX_PENDING_STATES:
                self._pending_states[(agent_id, device_id)] = state
            return None
        if state.ts < device.reported_ts:
            return device  # an older report (e.g. a retained one) never overwrites a newer one
        self._apply_reported(device, state)
        now = self._clock_ms()
        if not retained:
            self._touch(device, now)
        self.evaluate(device, self._registry.agent(agent_id), now)
        return device

    def on_live(self, agent_id: str, device_id: str | None) -> DeviceRecord | None:
        """A live (not historical, not retained) message from a device or its agent."""
        now = self._clock_ms()
        agent = self._registry.agent(agent_id)
        if agent is not None:
            agent.last_seen_ms = now
            self._registry.mark_agent(agent)
        if device_id is None:
            return None
        device = self._registry.device(agent_id, device_id)
        if device is None:
            return None
        self._touch(device, now)
        if device.state is HealthState.STALE:
            self.evaluate(device, agent, now)
        return device

    def sweep(self) -> int:
        """Mark stale every online device whose heartbeat is overdue; returns how many changed."""
        now = self._clock_ms()
        changed = 0
        for device in self._registry.devices():
            if device.state is HealthState.ONLINE and self._is_stale(device, now):
                changed += self.evaluate(device, self._registry.agent(device.agent), now)
        return changed

    # rules --------------------------------------------------------------------------------------
    def stale_after_s(self, device: DeviceRecord) -> float | None:
        """Seconds of silence after which the device is stale; ``None``: never."""
        override = self._overrides.get(device.key)
        if override is not None:
            return override
        if device.heartbeat_s <= 0:
            return None
        return self.stale_heartbeats * device.heartbeat_s

    def evaluate(
        self, device: DeviceRecord, agent: AgentRecord | None, now: int, *, initial: bool = False
    ) -> bool:
        """Recompute the device's effective state; True when it changed."""
        state, reason = self.verdict(device, agent, now)
        return self._registry.set_health(device, state, reason, now, initial=initial)

    def verdict(
        self, device: DeviceRecord, agent: AgentRecord | None, now: int
    ) -> tuple[HealthState, str]:
        """The device's effective state and why, by the rules of the module docstring."""
        if agent is None or not agent.online:
            state, reason = HealthState.OFFLINE, REASON_AGENT_OFFLINE
        elif device.reported_state is DeviceStatus.OFFLINE:
            state, reason = HealthState.OFFLINE, device.reported_reason or "reported offline"
        elif device.reported_state is DeviceStatus.FAULT:
            state, reason = HealthState.FAULT, device.reported_reason or "reported fault"
        elif self._is_stale(device, now):
            limit = self.stale_after_s(device)
            state, reason = HealthState.STALE, f"no message in {limit:g} s"
        else:
            state, reason = HealthState.ONLINE, ""
        return state, reason

    def _is_stale(self, device: DeviceRecord, now: int) -> bool:
        limit = self.stale_after_s(device)
        return limit is not None and now - device.last_seen_ms > limit * 1000

    def _touch(self, device: DeviceRecord, now: int) -> None:
        device.last_seen_ms = now
        self._registry.mark_device(device)

    def _apply_reported(self, device: DeviceRecord, state: DeviceState) -> None:
        changed = (device.reported_state, device.reported_reason) != (state.state, state.reason)
        device.reported_state = state.state
        device.reported_reason = state.reason
        device.reported_ts = state.ts
        self._registry.mark_device(device)
        if changed:
            self._registry.notify(DeviceChanged(device.agent, device.id))
