"""The hub core as one service: ingest → seq tracking → registry and health → store, plus commands.

:class:`HubService` wires the pieces and routes every validated message to them (on the loop):

| topic kind   | goes to                                                                  |
|--------------|--------------------------------------------------------------------------|
| birth        | seq tracker (live births only), health (agent online, device list)       |
| death        | health (offline when the bdseq is current)                               |
| state        | health (reported device state)                                           |
| telemetry    | seq tracker (duplicates dropped), health (liveness), last values, listeners |
| event        | seq tracker, health, listeners                                           |
| cmd/result   | command router                                                           |
| audio        | health (liveness), listeners                                             |

Live messages' timestamps also feed :class:`hub.clock_skew.ClockSkew` (the agent's clock against
the hub's): telemetry, events and audio frames of an agent whose clock is confirmed off are
handed on with the offset taken out, so everything downstream files them on the hub's clock.

A sweeper task marks devices stale and declares unfilled seq gaps lost (then asks the agent for
a rebirth); the write-behind flusher persists the registry about once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from hub.bad_messages import BadMessageCounter
from hub.clock_skew import ClockSkew
from hub.commands import CommandOutcome, CommandRouter
from hub.config import HubConfig
from hub.health import HealthMonitor
from hub.ingest import Inbound, Ingest, Item, RebirthRequester, Rejected
from hub.loop_monitor import LoopMonitor
from hub.mqtt_process import MqttProcess
from hub.registry import (
    AudioReceived,
    EventReceived,
    HealthState,
    Listener,
    Registry,
    StateLogEntry,
    TelemetryReceived,
)
from hub.seq_tracker import LostRange, SeqResult, SeqTracker
from hub.store import HubStore, StoreFlusher
from protocol.audio import AudioFrame
from protocol.messages import (
    Birth,
    CommandResult,
    Death,
    DeviceInfo,
    DeviceState,
    DeviceStatus,
    Event,
    Telemetry,
    Venue,
)
from protocol.mqtt_link import BrokerUrl
from protocol.topics import TopicKind

log = logging.getLogger(__name__)


class HubService:
    """The running hub core. ``start()`` / ``stop()`` on the loop that owns it."""

    def __init__(
        self,
        config: HubConfig,
        broker_url: BrokerUrl | str,
        username: str | None,
        password: str | None,
        *,
        client_id: str | None = None,
        flush_interval_s: float = 1.0,
    ) -> None:
        self.config = config
        url = broker_url if isinstance(broker_url, BrokerUrl) else BrokerUrl.parse(broker_url)
        self.broker_url = url
        health = config.health
        self.registry = Registry()
        self.bad = BadMessageCounter()
        self.seq = SeqTracker(gap_fill_timeout_s=health.gap_fill_timeout_s)
        self.health = HealthMonitor(
            self.registry,
            stale_heartbeats=health.stale_heartbeats,
            overrides=health.override_map(),
        )
        self.store = HubStore(config.data_dir)
        self.flusher = StoreFlusher(
            self.store, self.registry, self.seq, interval_s=flush_interval_s
        )
        self.ingest = Ingest(
            url,
            username=username,
            password=password,
            handler=self._dispatch,
            bad=self.bad,
            client_id=client_id or config.broker.client_id,
            network_process=config.broker.network_process,
        )
        self.rebirths = RebirthRequester(
            lambda topic, payload: self.ingest.link.publish(topic, payload, qos=1),
            min_interval_s=health.rebirth_min_interval_s,
        )
        self.clock_skew = ClockSkew()
        self.loop_monitor = LoopMonitor()
        self.commands = CommandRouter(
            self.registry, self.ingest.publish_acked, clock_offset=self.clock_skew.correction_ms
        )
        self.historical_in = 0
        self.unknown_agent_messages = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._connected = False

    # lifecycle ----------------------------------------------------------------------------------
    async def start(self, *, connect: bool = True) -> None:
        """Load the stored registry, connect to the broker, start the sweeper and the flusher.

        ``connect=False``: everything but the broker connection; call :meth:`connect` once every
        listener is attached. The broker delivers the queue it kept for the hub's session the
        moment the hub connects, and a message dispatched before, say, the telemetry pipeline
        listens is never stored (the chaos suite lost 4 s of an agent's points that way when the
        sinks' processes took a few seconds to start)."""
        if self._started:
            return
        await self.store.open()
        try:
            await self._load_state()
            if connect:
                await self.connect()
        except BaseException:
            await self.store.close()  # do not leak the store's thread on a failed start
            raise
        self._tasks = [
            asyncio.create_task(self._sweep_forever(), name="hub-sweeper"),
            asyncio.create_task(self.flusher.run(), name="hub-store-flusher"),
            asyncio.create_task(self.loop_monitor.run(), name="hub-loop-monitor"),
        ]
        self._started = True

    async def connect(self) -> None:
        """Connect to the broker and start dispatching (idempotent)."""
        if not self._connected:
            self._connected = True
            await self.ingest.start()

    async def _load_state(self) -> None:
        stored = await self.store.load()
        self.registry.restore(stored.agents, stored.devices)
        for agent, state in stored.seq_states.items():
            try:
                self.seq.restore(agent, state)
            except (KeyError, TypeError, ValueError):
                log.warning("stored seq state unusable, starting fresh agent=%s", agent)
        log.info(
            "hub registry loaded agents=%d devices=%d",
            len(stored.agents),
            len(stored.devices),
        )

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the broker session is up; False on timeout."""
        return await self.ingest.link.wait_connected(timeout)

    @property
    def connected(self) -> bool:
        """True while the hub's MQTT session is up."""
        return self.ingest.link.connected

    async def stop(self) -> None:
        """Announce offline (retained), disconnect, stop the tasks and flush the store."""
        if not self._started:
            return
        self._started = False
        if self._connected:
            self._connected = False
            await self.ingest.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.flusher.flush()
        await self.store.close()

    # API for other services -------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Subscribe to registry changes, events, telemetry and audio (called on the loop).

        Returns a function that unsubscribes. Listeners must not block: they run in ingest.
        """
        return self.registry.add_listener(listener)

    async def call_command(
        self,
        agent: str,
        device: str,
        name: str,
        args: dict[str, Any] | None = None,
        timeout_s: float = 5.0,
    ) -> CommandOutcome:
        """Run a device command (see :class:`hub.commands.CommandRouter`)."""
        return await self.commands.call(agent, device, name, args, timeout_s)

    # devices the hub runs itself (the recorder's cameras) ---------------------------------------
    def report_local_agent(self, agent_id: str, venue: Venue, devices: list[DeviceInfo]) -> None:
        """Register a hub-side pseudo agent (e.g. ``video-court-1``: the cameras the hub records).

        Its devices live in the registry like any agent's: health, technician grid, telemetry
        listeners. There is no MQTT behind it, so it never dies while the hub runs.
        """
        now = int(time.time() * 1000)
        birth = Birth(ts=now, bdseq=0, seq=0, venue=venue, devices=devices, agent_version="hub")
        self.health.on_birth(agent_id, birth, retained=False)

    def report_local_state(
        self, agent_id: str, device_id: str, state: DeviceStatus, reason: str = ""
    ) -> None:
        """A hub-side device's own state (online / offline / fault)."""
        msg = DeviceState(ts=int(time.time() * 1000), state=state, reason=reason)
        self.health.on_device_state(agent_id, device_id, msg, retained=False)

    def report_local_telemetry(
        self, agent_id: str, device_id: str, metrics: dict[str, float]
    ) -> None:
        """A hub-side device's measurements, announced to telemetry listeners like an agent's."""
        msg = Telemetry(ts=int(time.time() * 1000), seq=0, metrics=metrics)
        self._on_live_stream(agent_id, device_id, msg)
        self.registry.notify(TelemetryReceived(agent_id, device_id, msg))

    async def device_transitions(
        self, agent: str, device: str, *, since_ms: int = 0, limit: int = 1000
    ) -> list[StateLogEntry]:
        """A device's health transitions, oldest first: the stored ones and those not flushed yet."""
        stored = await self.store.state_log(agent, device, since_ms=since_ms, limit=limit)
        pending = [e for e in self.registry.unflushed_state_log(agent, device) if e.ts >= since_ms]
        return (stored + pending)[:limit]

    def stats(self) -> dict[str, Any]:
        """Counters and totals for the API, the CLI and the demo."""
        agents = self.registry.agents()
        states = {s: 0 for s in HealthState}
        for device in self.registry.devices():
            states[device.state] += 1
        counters = self.ingest.counters
        return {
            "connected": self.connected,
            "agents_online": sum(1 for a in agents if a.online),
            "agents_total": len(agents),
            "devices_online": states[HealthState.ONLINE],
            "devices_stale": states[HealthState.STALE],
            "devices_offline": states[HealthState.OFFLINE],
            "devices_fault": states[HealthState.FAULT],
            "devices_total": sum(states.values()),
            "messages_in": counters.messages_in,
            "accepted": counters.accepted,
            "retained_in": counters.retained_in,
            "bad_messages": self.bad.total,
            "bad_by_reason": self.bad.by_reason(),
            "outbox_replayed": self.historical_in,
            "historical_in": self.historical_in,
            "duplicates": self.seq.duplicates,
            "lost": self.seq.lost,
            "recovered": self.seq.recovered,
            "seq_resets": self.seq.resets,
            "rebirths_requested": self.rebirths.requested,
            "ignored_deaths": self.health.ignored_deaths,
            "unknown_agent_messages": self.unknown_agent_messages,
            "commands_sent": self.commands.sent,
            "commands_expired": self.commands.expired,
            "command_late_results": self.commands.late_results,
            "ingest_pending": self.ingest.pending,
            "store_flushes": self.flusher.flushes,
            "store_failures": self.flusher.failures,
            **self.loop_monitor.stats(),
            **self._link_stats(),
        }

    def _link_stats(self) -> dict[str, float]:
        link = self.ingest.link
        if not isinstance(link, MqttProcess):
            return {}
        return {
            "mqtt_process_up": float(link.process_up),
            "mqtt_process_restarts": float(link.restarts),
        }

    # dispatch (on the loop, one validated message at a time) -----------------------------------
    def _dispatch(self, item: Item) -> None:
        if isinstance(item, Rejected):
            self._count_bad(item)
            return
        msg = self._on_hub_clock(item)
        match item.kind:
            case TopicKind.BIRTH:
                assert isinstance(msg, Birth)
                self._on_birth(item, msg)
            case TopicKind.DEATH:
                assert isinstance(msg, Death)
                self.health.on_death(item.agent, msg)
            case TopicKind.DEVICE_STATE:
                assert isinstance(msg, DeviceState) and item.device is not None
                self._on_device_state(item, msg)
            case TopicKind.TELEMETRY | TopicKind.EVENT:
                assert isinstance(msg, Telemetry | Event) and item.device is not None
                self._on_stream(item.agent, item.device, msg)
            case TopicKind.COMMAND_RESULT:
                assert isinstance(msg, CommandResult) and item.device is not None
                self.health.on_live(item.agent, item.device)
                self.commands.on_result(item.agent, item.device, msg)
            case TopicKind.AUDIO:
                assert isinstance(msg, AudioFrame) and item.device is not None
                self.health.on_live(item.agent, item.device)
                self.registry.notify(AudioReceived(item.agent, item.device, msg))

    def _on_hub_clock(self, item: Inbound) -> Any:
        """Measure the agent's clock on a live message; return the message with its timestamp
        on the hub's clock (unchanged unless the agent's clock is confirmed off)."""
        msg = item.msg
        if item.retained:
            return msg  # stamped whenever it was published, maybe hours ago
        received_ms = int(time.time() * 1000)
        if isinstance(msg, AudioFrame):
            ts_ms = msg.capture_ts_us // 1000
            filed = self.clock_skew.observe(item.agent, ts_ms, received_ms)
            if filed == ts_ms:
                return msg
            return dataclasses.replace(
                msg, capture_ts_us=msg.capture_ts_us + (filed - ts_ms) * 1000
            )
        if isinstance(msg, Telemetry | Event):
            if msg.historical or msg.seq <= self.seq.highest(item.agent):
                # an outbox replay, or sent before a message the hub already has (paho resends
                # what the broker had not acknowledged after a reconnect, and the agent's new
                # birth can overtake it): stamped at an unknown earlier time, it says nothing
                # of the agent's clock now. Measured, three such looked like a step back.
                return msg
            filed = self.clock_skew.observe(item.agent, msg.ts, received_ms)
            return msg if filed == msg.ts else msgspec.structs.replace(msg, ts=filed)
        # measured, not refiled. Not a DeviceState: it is stamped when the state *began* and
        # re-sent with every birth, so after a reconnect it reads as a clock stepped back
        if isinstance(msg, Birth | CommandResult) and msg.ts > 0:
            self.clock_skew.observe(item.agent, msg.ts, received_ms)
        return msg

    def _count_bad(self, item: Rejected) -> None:
        device = self.registry.device(item.agent, item.device)
        if device is not None:
            device.bad_messages += 1
            self.registry.mark_device(device)

    def _on_birth(self, item: Inbound, birth: Birth) -> None:
        if not item.retained:
            # a retained birth may be hours old; only a live one says where the agent's seq is
            lost = self.seq.on_birth(item.agent, birth.seq)
            if lost is not None:
                self._on_lost(lost, rebirth=False)
        self.health.on_birth(item.agent, birth, retained=item.retained)

    def _on_device_state(self, item: Inbound, state: DeviceState) -> None:
        assert item.device is not None
        device = self.health.on_device_state(item.agent, item.device, state, retained=item.retained)
        if device is None and not item.retained:
            self.rebirths.request(item.agent, f"state of unknown device {item.device}")

    def _on_stream(self, agent_id: str, device_id: str, msg: Telemetry | Event) -> None:
        agent = self.registry.agent(agent_id)
        if agent is None or agent.bdseq < 0:
            self.unknown_agent_messages += 1
            self.rebirths.request(agent_id, "data from an agent without a known birth")
        result, lost = self.seq.observe(agent_id, msg.seq, historical=msg.historical)
        if lost is not None:
            self._on_lost(lost, rebirth=True)
        if result is SeqResult.DUPLICATE:
            return
        if msg.historical:
            self.historical_in += 1
        else:
            self._on_live_stream(agent_id, device_id, msg)
        if isinstance(msg, Telemetry):
            self.registry.notify(TelemetryReceived(agent_id, device_id, msg))
        else:
            self.registry.notify(EventReceived(agent_id, device_id, msg))

    def _on_live_stream(self, agent_id: str, device_id: str, msg: Telemetry | Event) -> None:
        """Live data: liveness, and the device's last values unless they are newer already."""
        agent = self.registry.agent(agent_id)
        if agent is not None and agent.bdseq >= 0 and not agent.online:
            self.rebirths.request(agent_id, "live data from an agent marked offline")
        device = self.health.on_live(agent_id, device_id)
        if device is None:
            if agent is not None and agent.bdseq >= 0:
                self.rebirths.request(agent_id, f"data from unknown device {device_id}")
            return
        if isinstance(msg, Telemetry) and (
            msg.ts >= device.metrics_ts or device.metrics_ts > self._trusted_until_ms()
        ):
            device.metrics.update(msg.metrics)
            device.metrics_ts = msg.ts

    def _trusted_until_ms(self) -> int:
        """Latest believable last-values time: one stamped further ahead of the hub's clock (by
        an agent whose clock was ahead) must not freeze a device's live values until then."""
        return int(time.time() * 1000) + self.clock_skew.threshold_ms

    def _on_lost(self, lost: LostRange, *, rebirth: bool) -> None:
        if rebirth:
            self.rebirths.request(lost.agent, f"{lost.count} seqs lost ({lost.reason})")

    async def _sweep_forever(self) -> None:
        interval = self.config.health.sweep_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                self.health.sweep()
                for lost in self.seq.sweep():
                    self._on_lost(lost, rebirth=True)
            except Exception:  # the sweeper must outlive a bug in one pass
                log.exception("hub sweep failed")
