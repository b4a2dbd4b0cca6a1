"""The device registry: every agent and device the hub knows, in memory on the event loop.

The registry is data plus bookkeeping — which rows changed since the last flush (the write-behind
flusher in :mod:`hub.store` persists only those) and who listens for changes. The rules that
decide an agent's or device's health live in :mod:`hub.health`; sequence numbers in
:mod:`hub.seq_tracker`. Everything here runs on the event loop only (no locks).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, TypeAlias

from protocol.audio import AudioFrame
from protocol.messages import DeviceInfo, DeviceStatus, Event, Telemetry

log = logging.getLogger(__name__)


class HealthState(StrEnum):
    """A device's effective health as the hub sees it."""

    ONLINE = "online"
    STALE = "stale"
    OFFLINE = "offline"
    FAULT = "fault"


@dataclass(slots=True)
class AgentRecord:
    """One edge agent."""

    id: str
    venue_id: str = ""
    venue_kind: str = ""
    venue_name: str = ""
    #: bdseq of the last birth; a death with another bdseq is from an older session.
    bdseq: int = -1
    online: bool = False
    last_birth_ms: int = 0
    last_seen_ms: int = 0
    version: str = ""
    #: bdseq of the last death seen (retained deaths can arrive before the birth they end).
    last_death_bdseq: int | None = None


@dataclass(slots=True)
class DeviceRecord:
    """One device of an agent, as listed by the agent's last birth."""

    agent: str
    id: str
    kind: str
    model: str = ""
    firmware: str = ""
    capabilities: tuple[str, ...] = ()
    heartbeat_s: float = 10.0
    #: What the agent last said about the device (``state`` topic).
    reported_state: DeviceStatus = DeviceStatus.ONLINE
    reported_reason: str = ""
    reported_ts: int = 0
    #: The hub's verdict: agent session, reported state and heartbeat age together.
    state: HealthState = HealthState.ONLINE
    state_reason: str = ""
    state_since_ms: int = 0
    #: Hub time of the last live message from or about the device.
    last_seen_ms: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    metrics_ts: int = 0
    bad_messages: int = 0

    @property
    def key(self) -> tuple[str, str]:
        """``(agent, device)``."""
        return (self.agent, self.id)


@dataclass(frozen=True, slots=True)
class StateLogEntry:
    """One health transition, kept in ``device_state_log`` for charts."""

    agent: str
    device: str
    ts: int
    state: HealthState
    reason: str


# Changes delivered to listeners ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentChanged:
    """An agent's metadata or online flag changed (birth, death)."""

    agent: str


@dataclass(frozen=True, slots=True)
class DeviceChanged:
    """A device was added or its metadata or reported state changed."""

    agent: str
    device: str


@dataclass(frozen=True, slots=True)
class DeviceRemoved:
    """A new birth no longer lists the device."""

    agent: str
    device: str


@dataclass(frozen=True, slots=True)
class HealthChanged:
    """A device's effective health changed."""

    agent: str
    device: str
    old: HealthState
    new: HealthState
    reason: str
    ts: int


class TelemetryReceived(NamedTuple):
    """Telemetry accepted (not a duplicate); ``telemetry.historical`` tells replays apart.

    This and the other per-message changes are named tuples, not frozen dataclasses: as
    immutable, and ~0.5 µs cheaper to build on the hub's loop, once per message."""

    agent: str
    device: str
    telemetry: Telemetry


class EventReceived(NamedTuple):
    """An event accepted (not a duplicate)."""

    agent: str
    device: str
    event: Event


class AudioReceived(NamedTuple):
    """An audio frame from a device."""

    agent: str
    device: str
    frame: AudioFrame


HubChange: TypeAlias = (
    AgentChanged
    | DeviceChanged
    | DeviceRemoved
    | HealthChanged
    | TelemetryReceived
    | EventReceived
    | AudioReceived
)
Listener: TypeAlias = Callable[[HubChange], None]


@dataclass(slots=True)
class DirtyRows:
    """What changed since the last flush (copies, safe to hand to the store's thread)."""

    agents: list[AgentRecord]
    devices: list[DeviceRecord]
    removed_devices: list[tuple[str, str]]
    state_log: list[StateLogEntry]

    def __bool__(self) -> bool:
        return bool(self.agents or self.devices or self.removed_devices or self.state_log)


class Registry:
    """Agents and devices in memory, with dirty tracking and change listeners (loop only)."""

    def __init__(self) -> None:
        self._agents: dict[str, AgentRecord] = {}
        self._devices: dict[str, dict[str, DeviceRecord]] = {}
        self._listeners: list[Listener] = []
        self._dirty_agents: set[str] = set()
        self._dirty_devices: set[tuple[str, str]] = set()
        self._removed: set[tuple[str, str]] = set()
        self._state_log: list[StateLogEntry] = []

    # reading ------------------------------------------------------------------------------------
    def agent(self, agent: str) -> AgentRecord | None:
        """The agent, or ``None``."""
        return self._agents.get(agent)

    def device(self, agent: str, device: str) -> DeviceRecord | None:
        """The device, or ``None``."""
        return self._devices.get(agent, {}).get(device)

    def agents(self) -> list[AgentRecord]:
        """All agents, sorted by id."""
        return [self._agents[a] for a in sorted(self._agents)]

    def devices_of(self, agent: str) -> list[DeviceRecord]:
        """The agent's devices, sorted by id."""
        devices = self._devices.get(agent, {})
        return [devices[d] for d in sorted(devices)]

    def devices(self) -> Iterator[DeviceRecord]:
        """All devices, sorted by agent then id."""
        for agent in sorted(self._devices):
            yield from self.devices_of(agent)

    def device_count(self) -> int:
        """How many devices the registry holds."""
        return sum(len(d) for d in self._devices.values())

    # writing ------------------------------------------------------------------------------------
    def ensure_agent(self, agent: str) -> AgentRecord:
        """The agent's record, created (empty, offline) when new."""
        record = self._agents.get(agent)
        if record is None:
            record = self._agents[agent] = AgentRecord(agent)
            self._devices.setdefault(agent, {})
            self._dirty_agents.add(agent)
        return record

    def replace_devices(
        self, agent: str, infos: Iterable[DeviceInfo], now_ms: int
    ) -> tuple[list[DeviceRecord], list[str]]:
        """Make the agent's device list exactly ``infos`` (a birth); returns (added, removed ids).

        Devices the birth no longer lists are removed, so none linger as ghosts; listed ones keep
        their runtime fields (reported state, last telemetry) and get the new metadata.
        """
        current = self._devices.setdefault(agent, {})
        listed: dict[str, DeviceInfo] = {info.id: info for info in infos}
        removed = [d for d in current if d not in listed]
        for device in removed:
            del current[device]
            self._dirty_devices.discard((agent, device))
            self._removed.add((agent, device))
            self.notify(DeviceRemoved(agent, device))
        added: list[DeviceRecord] = []
        for device_id, info in listed.items():
            record = current.get(device_id)
            if record is None:
                record = DeviceRecord(agent, device_id, info.kind, state_since_ms=now_ms)
                current[device_id] = record
                self._removed.discard((agent, device_id))
                added.append(record)
            record.kind = info.kind
            record.model = info.model
            record.firmware = info.firmware
            record.capabilities = tuple(info.capabilities)
            record.heartbeat_s = info.heartbeat_s
            self.mark_device(record)
            self.notify(DeviceChanged(agent, device_id))
        return added, removed

    def set_health(
        self,
        device: DeviceRecord,
        state: HealthState,
        reason: str,
        ts: int,
        *,
        initial: bool = False,
    ) -> bool:
        """Record a health transition (logged, stored, announced); False when nothing changed.

        ``initial`` is a new device's first verdict: stored in the state log, not announced as a
        change (its :class:`DeviceChanged` already was).
        """
        if initial:
            device.state, device.state_reason, device.state_since_ms = state, reason, ts
            self.mark_device(device)
            self._state_log.append(StateLogEntry(device.agent, device.id, ts, state, reason))
            log.info(
                "device added agent=%s device=%s state=%s", device.agent, device.id, state.value
            )
            return True
        if device.state == state and device.state_reason == reason:
            return False
        old = device.state
        device.state = state
        device.state_reason = reason
        device.state_since_ms = ts
        self.mark_device(device)
        if old != state:
            self._state_log.append(StateLogEntry(device.agent, device.id, ts, state, reason))
            log.info(
                "device health agent=%s device=%s %s -> %s reason=%s",
                device.agent,
                device.id,
                old.value,
                state.value,
                reason or "-",
            )
            self.notify(HealthChanged(device.agent, device.id, old, state, reason, ts))
        return True

    def mark_agent(self, agent: AgentRecord) -> None:
        """The agent's row must be written at the next flush."""
        self._dirty_agents.add(agent.id)

    def mark_device(self, device: DeviceRecord) -> None:
        """The device's row must be written at the next flush."""
        self._dirty_devices.add(device.key)

    def restore(self, agents: Iterable[AgentRecord], devices: Iterable[DeviceRecord]) -> None:
        """Load what the store kept (at start, before any message); nothing becomes dirty."""
        for agent in agents:
            self._agents[agent.id] = agent
            self._devices.setdefault(agent.id, {})
        for device in devices:
            self._devices.setdefault(device.agent, {})[device.id] = device

    def unflushed_state_log(self, agent: str, device: str) -> list[StateLogEntry]:
        """The device's transitions not yet written to the store."""
        return [e for e in self._state_log if e.agent == agent and e.device == device]

    def take_dirty(self) -> DirtyRows:
        """Copies of the rows changed since the last call, and clear the marks."""
        agents = [_copy_agent(self._agents[a]) for a in self._dirty_agents if a in self._agents]
        devices = []
        for agent, device in self._dirty_devices:
            record = self.device(agent, device)
            if record is not None:
                devices.append(_copy_device(record))
        dirty = DirtyRows(agents, devices, sorted(self._removed), self._state_log)
        self._dirty_agents = set()
        self._dirty_devices = set()
        self._removed = set()
        self._state_log = []
        return dirty

    # listeners ----------------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(change)`` on the loop for every change; returns an unsubscribe function.

        Listeners must be quick and must not block: they run inside the ingest path.
        """
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def notify(self, change: HubChange) -> None:
        """Deliver ``change`` to every listener; a failing listener is logged, never propagated."""
        for listener in tuple(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("registry listener failed change=%s", type(change).__name__)


def _copy_agent(record: AgentRecord) -> AgentRecord:
    return dataclasses.replace(record)


def _copy_device(record: DeviceRecord) -> DeviceRecord:
    return dataclasses.replace(record, metrics=dict(record.metrics))
