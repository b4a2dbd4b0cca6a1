"""The edge agent: runs a venue's drivers and speaks the courthub MQTT contract for them.

One :class:`EdgeAgent` per process (or per simulated venue). What it does, in contract terms
(DESIGN.md, docs/CONTRACT-NOTES.md):

* **Liveness.** Every MQTT connection gets a new, persisted ``bdseq``; the connection's will is
  ``Death{bdseq}`` on ``{agent}/death`` (QoS 1, retained). On every connect, when ``hub/state``
  turns online and on ``rebirth`` the agent publishes its retained ``Birth`` (venue, devices
  including itself as device ``agent``, ``bdseq``, next ``seq``, outbox counters) and then
  every device's retained ``state``. A clean :meth:`EdgeAgent.stop` publishes the death itself.
* **Data.** Telemetry and events get a ``seq`` and are written to the durable
  :class:`~edge_agents.outbox.Outbox` first; one sender task publishes them in seq order at
  QoS 1 with a window of in-flight messages and deletes them on PUBACK. It sends only while
  connected and the hub's retained ``hub/state`` says online. A message that could not go out
  live (stored while delivery was impossible, or still unsent when delivery stopped or the agent
  restarted) is sent with ``historical: true``.
* **Commands** on ``{agent}/{device}/cmd`` run under their deadline and always get a
  ``cmd/result`` (unless the payload is too broken to name a command id).
* **Drivers** each run in a supervised task: a crash marks the device ``fault`` and restarts
  the driver with backoff (1 s doubling to 30 s). Nothing a driver does can stop the agent.

Threading: everything runs on the event loop except SQLite (the outbox's worker thread) and
paho's network thread, from which messages hop to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import importlib.metadata
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

from device_drivers import catalog
from device_drivers.base import (
    CommandError,
    DeviceDescription,
    DeviceDriver,
    DeviceSink,
    DriverConfigError,
    UnknownCommand,
)
from edge_agents.config import AGENT_DEVICE_ID, AgentConfig
from edge_agents.outbox import Outbox, OutboxClosed, OutboxRow
from protocol import topics
from protocol.errors import BadMessage
from protocol.messages import (
    Birth,
    Command,
    CommandResult,
    Death,
    DeviceInfo,
    DeviceState,
    DeviceStatus,
    Event,
    HubState,
    Rebirth,
    Telemetry,
    Venue,
    decode,
    encode,
    now_ms,
)
from protocol.mqtt_link import (
    MqttLink,
    NotConnected,
    PublishRefused,
    Subscription,
    Will,
)
from protocol.topics import TopicKind

log = logging.getLogger(__name__)

#: Builds a driver: ``(driver name, device id, options) -> driver`` (validates the options).
CreateDriver = Callable[[str, str, Mapping[str, Any]], DeviceDriver[Any]]

#: Kind and capabilities of the agent's own device entry in its birth.
AGENT_KIND: Final = "edge_agent"
AGENT_CAPABILITIES: Final = ("ping", "stats")
#: Messages published but not yet acknowledged by the broker, at most.
DEFAULT_SEND_WINDOW: Final = 100
#: Commands running at the same time, at most (more are answered "agent busy").
DEFAULT_COMMAND_LIMIT: Final = 100
#: How long a clean stop waits for the broker to acknowledge the death.
DEATH_ACK_TIMEOUT_S: Final = 2.0
#: One warning per device and reason per this many seconds for bad input.
BAD_INPUT_LOG_INTERVAL_S: Final = 10.0
#: A driver that ran this long before failing restarts with the initial backoff again.
DRIVER_HEALTHY_AFTER_S: Final = 60.0
#: Rows read from the outbox at a time by the sender.
PREFETCH_ROWS: Final = 500
#: Acknowledged rows are deleted in batches of this size while the window is busy.
ACK_BATCH: Final = 100
#: Delay before retrying a publish that failed for a reason other than a lost connection.
PUBLISH_RETRY_S: Final = 1.0


def _package_version() -> str:
    try:
        return importlib.metadata.version("courthub")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@dataclasses.dataclass
class AgentCounters:
    """Monotonic counters of one agent run (reported in :attr:`EdgeAgent.stats` and telemetry)."""

    published: int = 0  #: outbox messages acknowledged by the broker
    replayed: int = 0  #: of which sent with ``historical: true``
    publish_refused: int = 0  #: refused by the broker (ACL); dropped from the outbox
    connects: int = 0
    births: int = 0
    commands_ok: int = 0
    commands_failed: int = 0
    bad_commands: int = 0  #: command payloads that failed validation
    bad_messages: int = 0  #: other inbound payloads (hub state, rebirth) that failed validation
    bad_input_total: int = 0  #: bad bytes reported by drivers, all devices
    driver_restarts: int = 0
    audio_sent: int = 0  #: audio frames handed to MQTT (QoS 0, live only)
    audio_dropped: int = 0  #: audio frames dropped: not connected, stopping or publish failed


class _RateLimiter:
    """Allows one event per key per interval (log throttling); counts what it suppressed."""

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._last: dict[tuple[str, ...], float] = {}
        self._suppressed: dict[tuple[str, ...], int] = {}

    def allow(self, *key: str) -> tuple[bool, int]:
        """``(allowed, suppressed since the last allowed)`` for ``key``."""
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._suppressed.pop(key, 0)


class _AgentDeviceSink(DeviceSink):
    """The sink handed to one driver. Never raises; callable from any thread."""

    def __init__(self, agent: EdgeAgent, device_id: str) -> None:
        self._agent = agent
        self._device = device_id

    def set_state(self, state: DeviceStatus, reason: str = "") -> None:
        self._agent._from_sink(self._agent._set_state, self._device, state, reason)

    def telemetry(self, metrics: Mapping[str, float]) -> None:
        snapshot = self._snapshot(metrics, "telemetry")  # the driver may reuse its dict
        if snapshot is not None:
            self._agent._from_sink(self._agent._driver_telemetry, self._device, snapshot)

    def event(self, type: str, data: Mapping[str, Any]) -> None:
        snapshot = self._snapshot(data, "event")
        if snapshot is not None:
            self._agent._from_sink(self._agent._driver_event, self._device, type, snapshot)

    def describe(self, description: DeviceDescription) -> None:
        self._agent._from_sink(self._agent._describe, self._device, description)

    def bad_input(self, reason: str, detail: str) -> None:
        self._agent._from_sink(self._agent._bad_input, self._device, reason, detail)

    def audio(self, frame: bytes) -> None:
        self._agent._publish_audio(self._device, frame)

    def _snapshot(self, values: Mapping[str, Any], call: str) -> dict[str, Any] | None:
        try:
            return dict(values)
        except Exception:  # a driver bug: count it, never raise into the driver
            self.bad_input(f"bad_{call}", f"{call}() needs a mapping, got {type(values).__name__}")
            return None


class EdgeAgent:
    """One edge agent: drivers, outbox, MQTT link and the contract between them.

    Drivers are created (and their options validated) here, so a bad config fails before any
    connection is made: :class:`DriverConfigError` names the device.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        create_driver: CreateDriver = catalog.create,
        clock: Callable[[], int] = now_ms,
        restart_backoff: tuple[float, float] = (1.0, 30.0),
        send_window: int = DEFAULT_SEND_WINDOW,
        command_limit: int = DEFAULT_COMMAND_LIMIT,
    ) -> None:
        """``clock`` gives UTC ms for message timestamps and command deadlines;
        ``restart_backoff`` is (first, max) seconds between driver restarts."""
        self.config = config
        self.agent_id = config.agent.id
        self._clock = clock
        self._backoff_first, self._backoff_max = restart_backoff
        self._window = max(1, send_window)
        self._command_limit = max(1, command_limit)
        self._version = _package_version()
        self._drivers = self._create_drivers(config, create_driver)
        self._descriptions: dict[str, DeviceDescription] = {}
        self._states: dict[str, DeviceState] = {}
        self._bad_input_counts: dict[str, int] = {d: 0 for d in self._drivers}
        self._log_limiter = _RateLimiter(BAD_INPUT_LOG_INTERVAL_S)
        self.counters = AgentCounters()
        self._audio_lock = threading.Lock()  # audio counters are bumped on capture threads

        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._outbox: Outbox | None = None
        self._link: MqttLink | None = None
        self._started_at = 0.0
        self._running = False
        self._stopping = False

        # connection / delivery state (event loop only, except _bdseq: see _make_will)
        self._connected = False
        self._hub_online = False
        self._delivering = False
        self._birth_this_connection = False
        self._birth_scheduled = False
        self._bdseq = 0
        self._first_bdseq: int | None = None

        # sender state (event loop only)
        self._wake = asyncio.Event()
        self._generation = 0
        self._cursor = -1  # largest seq read into the buffer in this generation
        self._buffer: collections.deque[OutboxRow] = collections.deque()
        self._inflight: set[int] = set()  # sent and not yet deleted from the outbox
        self._awaiting = 0  # publishes waiting for their PUBACK (the window)
        self._acked: list[int] = []  # PUBACKed, to be deleted from the outbox

        self._supervisors: dict[str, asyncio.Task[None]] = {}
        self._service_tasks: list[asyncio.Task[None]] = []
        self._delivery_tasks: set[asyncio.Task[None]] = set()
        self._command_tasks: set[asyncio.Task[None]] = set()

    # public API -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the outbox, start the drivers and begin connecting (returns without waiting)."""
        if self._running:
            raise RuntimeError(f"agent {self.agent_id} already started")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._started_at = time.monotonic()
        outbox = await Outbox.open(self.config.data_path, self.config.outbox.max_messages)
        self._outbox = outbox
        try:
            await self._start_with(outbox)
        except BaseException:
            await _cancel_all([*self._supervisors.values(), *self._service_tasks])
            await outbox.close()
            self._running = False
            raise

    async def _start_with(self, outbox: Outbox) -> None:
        # Whatever a previous run left unsent is old news now: replay it as historical.
        await outbox.demote_live()
        # The first connection's bdseq is taken here, off paho's thread (see _make_will).
        self._first_bdseq = await outbox.bump_bdseq()
        self._running = True
        self._init_states()
        self._link = self._build_link()
        self._service_tasks = [
            asyncio.create_task(self._send_loop(), name=f"{self.agent_id}-sender"),
            asyncio.create_task(self._heartbeat_loop(), name=f"{self.agent_id}-heartbeat"),
        ]
        for device_id, driver in self._drivers.items():
            self._supervisors[device_id] = asyncio.create_task(
                self._supervise(device_id, driver), name=f"{self.agent_id}-{device_id}"
            )
        log.info(
            "agent starting agent=%s venue=%s devices=%d broker=%s data_dir=%s "
            "outbox_pending=%d next_seq=%d",
            self.agent_id,
            self.config.venue.id,
            len(self._drivers),
            self.config.broker_url,
            self.config.data_path,
            outbox.pending(),
            outbox.next_seq,
        )
        await self._link.start()

    async def stop(self) -> None:
        """Stop cleanly: drivers and commands cancelled, death published (retained), disconnect.

        Unsent messages stay in the outbox for the next run.
        """
        if not self._running or self._stopping:
            return
        self._stopping = True
        await _cancel_all([*self._supervisors.values(), *self._command_tasks])
        await _cancel_all([*self._service_tasks, *self._delivery_tasks])
        outbox, link = self._outbox, self._link
        assert outbox is not None and link is not None
        with contextlib.suppress(Exception):
            await self._flush_acks()
        await self._publish_death(link)
        await link.stop()
        await outbox.close()
        self._running = False
        log.info(
            "agent stopped agent=%s bdseq=%d outbox_pending=%d published=%d",
            self.agent_id,
            self._bdseq,
            outbox.pending(),
            self.counters.published,
        )

    @property
    def running(self) -> bool:
        """True between :meth:`start` and the end of :meth:`stop`."""
        return self._running

    @property
    def bdseq(self) -> int:
        """The bdseq of the current (or last) MQTT connection."""
        return self._bdseq

    @property
    def stats(self) -> dict[str, Any]:
        """Counters and current status, for tests, the simulator and the ``stats`` command."""
        outbox = self._outbox
        return {
            **dataclasses.asdict(self.counters),
            "outbox_pending": outbox.pending() if outbox else 0,
            "outbox_dropped": outbox.dropped if outbox else 0,
            "next_seq": outbox.next_seq if outbox else 0,
            "bdseq": self._bdseq,
            "connected": self._connected,
            "hub_online": self._hub_online,
            "delivering": self._delivering,
            "inflight": self._awaiting,
            "bad_input": dict(self._bad_input_counts),
            "uptime_s": self._uptime_s(),
        }

    def device_state(self, device_id: str) -> DeviceState | None:
        """The last state reported for a device (``agent`` included)."""
        return self._states.get(device_id)

    # set-up -----------------------------------------------------------------------------------
    @staticmethod
    def _create_drivers(
        config: AgentConfig, create_driver: CreateDriver
    ) -> dict[str, DeviceDriver[Any]]:
        drivers: dict[str, DeviceDriver[Any]] = {}
        for device in config.devices:
            try:
                drivers[device.id] = create_driver(device.driver, device.id, device.options)
            except DriverConfigError as exc:
                text = str(exc)
                # The driver base class already names the device; the catalog does not.
                message = text if repr(device.id) in text else f"device {device.id!r}: {text}"
                raise DriverConfigError(f"agent {config.agent.id!r}: {message}") from None
            except ImportError as exc:
                raise DriverConfigError(
                    f"agent {config.agent.id!r}: device {device.id!r}: driver "
                    f"{device.driver!r} cannot be loaded: {exc}"
                ) from None
        return drivers

    def _build_link(self) -> MqttLink:
        return MqttLink(
            self.config.broker_url,
            client_id=f"courthub-agent-{self.agent_id}",
            username=self.config.mqtt_username,
            password=self.config.mqtt_password,
            subscriptions=[
                Subscription(t, qos=1) for t in topics.agent_subscriptions(self.agent_id)
            ],
            on_message=self._on_mqtt_message,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            will_factory=self._make_will,
        )

    def _init_states(self) -> None:
        ts = self._clock()
        self._states[AGENT_DEVICE_ID] = DeviceState(ts=ts, state=DeviceStatus.ONLINE)
        for device_id in self._drivers:
            # Until its driver reports, a device is not known to work; this also replaces a
            # stale retained "online" left by a previous run.
            self._states[device_id] = DeviceState(
                ts=ts, state=DeviceStatus.OFFLINE, reason="starting"
            )

    # MQTT callbacks -------------------------------------------------------------------------
    def _make_will(self) -> Will:
        """A fresh death certificate for each new connection, with a new persisted bdseq.

        Called once on the loop by ``MqttLink.start`` (using the bdseq taken in :meth:`start`)
        and then on paho's network thread before every reconnect, where blocking on the outbox
        worker for the persisted bump is fine. The birth of that connection reads ``_bdseq``.
        """
        bdseq = self._first_bdseq
        self._first_bdseq = None
        if bdseq is None:
            bdseq = self._bump_bdseq_blocking()
        self._bdseq = bdseq
        return Will(self._topic(TopicKind.DEATH), encode(Death(bdseq=bdseq)), qos=1, retain=True)

    def _bump_bdseq_blocking(self) -> int:
        assert self._outbox is not None
        try:
            return self._outbox.bump_bdseq_blocking()
        except (OutboxClosed, concurrent.futures.TimeoutError, OSError, RuntimeError) as exc:
            # Still unique within this run; a clash across restarts only delays a death.
            log.error("bdseq not persisted agent=%s error=%s", self.agent_id, exc)
            return self._bdseq + 1

    def _on_connect(self) -> None:
        if self._stopping:
            return
        self._connected = True
        self.counters.connects += 1
        # Only the hub's retained state (delivered on subscribe) says whether it is online now.
        self._hub_online = False
        self._birth_this_connection = False
        log.info("agent connected agent=%s bdseq=%d", self.agent_id, self._bdseq)
        self._publish_birth("connect")
        self._update_delivery()

    def _on_disconnect(self, reason: str) -> None:
        if self._stopping:
            return
        self._connected = False
        log.warning("agent disconnected agent=%s reason=%s", self.agent_id, reason)
        self._update_delivery()

    def _on_mqtt_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """paho's thread: hop to the event loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed under us
            loop.call_soon_threadsafe(self._handle_message, topic, payload, retained)

    def _handle_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if self._stopping:
            return
        try:
            parsed = topics.parse(topic)
        except BadMessage as exc:
            self._count_bad_message("topic", exc)
            return
        if parsed.kind is TopicKind.HUB_STATE:
            self._on_hub_state(payload, retained)
        elif parsed.agent != self.agent_id:
            log.debug("ignored message for another agent topic=%s", topic[:120])
        elif parsed.kind is TopicKind.REBIRTH:
            self._on_rebirth(payload)
        elif parsed.kind is TopicKind.COMMAND and parsed.device is not None:
            self._on_command(parsed.device, payload)

    def _on_hub_state(self, payload: bytes, retained: bool) -> None:
        try:
            state = decode(TopicKind.HUB_STATE, payload)
        except BadMessage as exc:
            self._count_bad_message("hub_state", exc)
            return
        assert isinstance(state, HubState)
        was_online, self._hub_online = self._hub_online, state.online
        if state.online != was_online:
            log.info("hub state agent=%s online=%s", self.agent_id, state.online)
        # A hub that comes back needs our birth again; the retained state replayed right after
        # subscribing is already answered by this connection's birth.
        if state.online and not was_online and not (retained and self._birth_this_connection):
            self._publish_birth("hub online")
        self._update_delivery()

    def _on_rebirth(self, payload: bytes) -> None:
        try:
            request = decode(TopicKind.REBIRTH, payload)
        except BadMessage as exc:
            self._count_bad_message("rebirth", exc)
            return
        assert isinstance(request, Rebirth)
        log.info("rebirth requested agent=%s reason=%s", self.agent_id, request.reason[:200])
        self._publish_birth("rebirth")

    def _count_bad_message(self, what: str, exc: BadMessage) -> None:
        self.counters.bad_messages += 1
        allowed, suppressed = self._log_limiter.allow("inbound", what, exc.reason.value)
        if allowed:
            log.warning(
                "bad inbound message agent=%s what=%s reason=%s detail=%s suppressed=%d",
                self.agent_id,
                what,
                exc.reason.value,
                exc.detail[:200],
                suppressed,
            )

    # birth, death, state ----------------------------------------------------------------------
    def _publish_birth(self, why: str) -> None:
        """Publish the retained birth, then every device's retained state."""
        link, outbox = self._link, self._outbox
        if link is None or outbox is None or not self._connected or self._stopping:
            return
        birth = Birth(
            ts=self._clock(),
            bdseq=self._bdseq,
            seq=outbox.next_seq,
            venue=Venue(
                id=self.config.venue.id,
                kind=self.config.venue.kind,
                name=self.config.venue.name,
            ),
            devices=self._device_infos(),
            agent_version=self._version,
            outbox_pending=outbox.pending(),
            outbox_dropped=outbox.dropped,
        )
        try:
            link.publish(self._topic(TopicKind.BIRTH), encode(birth), qos=1, retain=True)
            for device_id, state in self._states.items():
                link.publish(
                    self._topic(TopicKind.DEVICE_STATE, device_id),
                    encode(state),
                    qos=1,
                    retain=True,
                )
        except ConnectionError as exc:
            log.info("birth not sent agent=%s why=%s error=%s", self.agent_id, why, exc)
            return
        self._birth_this_connection = True
        self.counters.births += 1
        log.info(
            "birth published agent=%s why=%s bdseq=%d seq=%d devices=%d outbox_pending=%d",
            self.agent_id,
            why,
            birth.bdseq,
            birth.seq,
            len(birth.devices),
            birth.outbox_pending,
        )

    def _device_infos(self) -> list[DeviceInfo]:
        infos = [
            DeviceInfo(
                id=AGENT_DEVICE_ID,
                kind=AGENT_KIND,
                model="courthub-edge-agent",
                firmware=self._version,
                capabilities=list(AGENT_CAPABILITIES),
                heartbeat_s=self.config.agent.heartbeat_s,
            )
        ]
        for device_id, driver in self._drivers.items():
            desc = self._descriptions.get(device_id)
            if desc is None:
                try:
                    desc = driver.description
                except Exception:  # a driver bug must not stop the birth
                    log.exception("driver description failed device=%s", device_id)
                    desc = DeviceDescription(kind="unknown")
            infos.append(
                DeviceInfo(
                    id=device_id,
                    kind=desc.kind,
                    model=desc.model,
                    firmware=desc.firmware,
                    capabilities=list(desc.capabilities),
                    heartbeat_s=desc.heartbeat_s,
                )
            )
        return infos

    def _schedule_birth(self) -> None:
        """Coalesce several describe() calls of one loop iteration into one birth."""
        if self._birth_scheduled or self._loop is None:
            return
        self._birth_scheduled = True

        def fire() -> None:
            self._birth_scheduled = False
            self._publish_birth("describe")

        self._loop.call_soon(fire)

    async def _publish_death(self, link: MqttLink) -> None:
        if not self._connected:
            return
        death = Death(bdseq=self._bdseq, ts=self._clock())
        try:
            await asyncio.wait_for(
                link.publish_acked(self._topic(TopicKind.DEATH), encode(death), qos=1, retain=True),
                DEATH_ACK_TIMEOUT_S,
            )
            log.info("death published agent=%s bdseq=%d", self.agent_id, self._bdseq)
        except (ConnectionError, TimeoutError) as exc:
            log.warning("death not acknowledged agent=%s error=%s", self.agent_id, exc)

    def _set_state(self, device_id: str, state: DeviceStatus, reason: str = "") -> None:
        """Record a device's state and publish it retained (re-sent with every birth)."""
        try:
            state = DeviceStatus(state)
        except ValueError:
            self._bad_input(device_id, "bad_state", f"unknown device state {state!r}")
            return
        current = DeviceState(ts=self._clock(), state=state, reason=str(reason)[:500])
        self._states[device_id] = current
        log.info(
            "device state agent=%s device=%s state=%s reason=%s",
            self.agent_id,
            device_id,
            state.value,
            current.reason,
        )
        link = self._link
        if link is None or not self._connected or self._stopping:
            return
        with contextlib.suppress(ConnectionError):
            link.publish(
                self._topic(TopicKind.DEVICE_STATE, device_id), encode(current), qos=1, retain=True
            )

    # driver output ------------------------------------------------------------------------------
    def _from_sink(self, fn: Callable[..., None], *args: Any) -> None:
        """Run a sink call on the event loop; drivers may call from threads. Never raises."""
        if not self._running or self._stopping or self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._guarded(fn, *args)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(self._guarded, fn, *args)

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # nothing a driver hands us may break the agent
            log.exception("sink call failed agent=%s call=%s", self.agent_id, fn.__name__)

    def _driver_telemetry(self, device_id: str, metrics: dict[str, Any]) -> None:
        clean: dict[str, float] = {}
        for name, value in metrics.items():
            number = _as_number(value)
            if number is None:
                self._bad_input(
                    device_id, "bad_metric", f"{name}={value!r:.80} is not a finite number"
                )
            else:
                clean[str(name)] = number
        bad = self._bad_input_counts.get(device_id, 0)
        if bad:
            clean.setdefault("bad_input", float(bad))
        if clean:
            self._enqueue_telemetry(device_id, clean)

    def _enqueue_telemetry(self, device_id: str, metrics: dict[str, float]) -> None:
        ts = self._clock()
        self._enqueue(
            self._topic(TopicKind.TELEMETRY, device_id),
            lambda seq: encode(Telemetry(ts=ts, seq=seq, metrics=metrics)),
        )

    def _driver_event(self, device_id: str, type_: str, data: dict[str, Any]) -> None:
        try:
            # Validate here (on the caller's watch) rather than fail later on the outbox thread.
            builtins_data = msgspec.to_builtins(data, str_keys=True)
        except (TypeError, ValueError) as exc:
            self._bad_input(device_id, "bad_event", f"event {type_!r:.60} data: {exc}")
            return
        ts = self._clock()
        self._enqueue(
            self._topic(TopicKind.EVENT, device_id),
            lambda seq: encode(Event(ts=ts, seq=seq, type=str(type_), data=builtins_data)),
        )

    def _enqueue(self, topic: str, build: Callable[[int], bytes]) -> None:
        """Durably store a stream message (its seq is assigned by the outbox), then wake the sender."""
        outbox = self._outbox
        if outbox is None:
            return
        try:
            future = outbox.append_nowait(topic, build, self._delivering, created_ms=self._clock())
        except OutboxClosed:
            return
        future.add_done_callback(self._appended)

    def _appended(self, future: concurrent.futures.Future[int]) -> None:
        """Outbox thread: an append finished."""
        exc = future.exception()
        if exc is not None:
            log.error("outbox append failed agent=%s error=%r", self.agent_id, exc)
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

    def _publish_audio(self, device_id: str, frame: bytes) -> None:
        """Publish a live audio frame at QoS 0 from the caller's thread (never the outbox).

        Audio is live: a frame that cannot go out now is dropped and counted, never stored.
        ``MqttLink.publish`` only queues for paho's network thread, so this never blocks.
        """
        link = self._link
        sent = False
        if link is not None and self._running and not self._stopping and self._connected:
            try:
                link.publish(self._topic(TopicKind.AUDIO, device_id), frame, qos=0)
                sent = True
            except ConnectionError:
                pass
        with self._audio_lock:
            if sent:
                self.counters.audio_sent += 1
            else:
                self.counters.audio_dropped += 1

    def _describe(self, device_id: str, description: DeviceDescription) -> None:
        self._descriptions[device_id] = description
        self._schedule_birth()

    def _bad_input(self, device_id: str, reason: str, detail: str) -> None:
        self._bad_input_counts[device_id] = self._bad_input_counts.get(device_id, 0) + 1
        self.counters.bad_input_total += 1
        allowed, suppressed = self._log_limiter.allow("bad_input", device_id, str(reason))
        if allowed:
            log.warning(
                "bad input agent=%s device=%s reason=%s detail=%s count=%d suppressed=%d",
                self.agent_id,
                device_id,
                reason,
                str(detail)[:200],
                self._bad_input_counts[device_id],
                suppressed,
            )

    # delivery -------------------------------------------------------------------------------------
    def _update_delivery(self) -> None:
        """Start or stop sending when ``connected and hub online`` changes."""
        now = self._connected and self._hub_online and not self._stopping
        if now == self._delivering:
            return
        self._delivering = now
        # A new generation makes a peek in progress discard its rows and start over.
        self._rewind()  # on resume: resend everything unacknowledged (the hub drops duplicates)
        if now:
            log.info(
                "delivery resumed agent=%s outbox_pending=%d",
                self.agent_id,
                self._outbox.pending() if self._outbox else 0,
            )
            self._wake.set()
            return
        log.info(
            "delivery paused agent=%s connected=%s hub_online=%s",
            self.agent_id,
            self._connected,
            self._hub_online,
        )
        if self._outbox is not None:
            # Queued behind every earlier append: whatever is unsent now goes out historical.
            with contextlib.suppress(OutboxClosed):
                self._outbox.demote_live_nowait()

    async def _send_loop(self) -> None:
        """Publish stored messages in seq order, ``send_window`` at a time; delete on PUBACK."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush_acks()
                await self._fill_window()
            except OutboxClosed:
                return
            except Exception:  # never let the sender die; retry on the next wake-up
                log.exception("sender failed agent=%s", self.agent_id)
                await asyncio.sleep(PUBLISH_RETRY_S)
                self._wake.set()

    async def _fill_window(self) -> None:
        """Launch publishes from the prefetch buffer until the window is full."""
        assert self._outbox is not None
        while self._delivering and self._awaiting < self._window:
            if not self._buffer:
                generation = self._generation
                rows = await self._outbox.peek(PREFETCH_ROWS, after=self._cursor)
                if generation != self._generation:
                    continue  # delivery stopped or restarted meanwhile: the cursor was reset
                if not rows:
                    return
                self._buffer.extend(rows)
                self._cursor = rows[-1].seq
            row = self._buffer.popleft()
            if row.seq not in self._inflight:  # not already sent in an earlier generation
                self._launch(row)

    def _rewind(self) -> None:
        """Forget the prefetched rows and read the outbox from its start again."""
        self._generation += 1
        self._buffer.clear()
        self._cursor = -1

    def _launch(self, row: OutboxRow) -> None:
        historical = not row.live
        payload = _as_historical(row.topic, row.payload) if historical else row.payload
        self._inflight.add(row.seq)
        self._awaiting += 1
        # Tasks start in creation order, so the publishes leave in seq order.
        task = asyncio.create_task(self._deliver(row.seq, row.topic, payload, historical))
        self._delivery_tasks.add(task)
        task.add_done_callback(self._delivery_tasks.discard)

    async def _deliver(self, seq: int, topic: str, payload: bytes, historical: bool) -> None:
        assert self._link is not None
        retry = False
        try:
            await self._link.publish_acked(topic, payload, qos=1)
        except PublishRefused as exc:
            # Retrying cannot help (ACL): drop it rather than block the outbox forever.
            self.counters.publish_refused += 1
            log.error(
                "publish refused, message dropped agent=%s seq=%d error=%s", self.agent_id, seq, exc
            )
            self._acked.append(seq)
        except NotConnected:
            self._inflight.discard(seq)  # the next generation (after the reconnect) resends it
        except ConnectionError as exc:
            log.warning(
                "publish failed agent=%s seq=%d error=%s; retrying", self.agent_id, seq, exc
            )
            self._inflight.discard(seq)
            retry = True
        else:
            self._acked.append(seq)
            self.counters.published += 1
            if historical:
                self.counters.replayed += 1
        finally:
            self._awaiting -= 1
        if retry:
            await asyncio.sleep(PUBLISH_RETRY_S)
            self._rewind()
        self._wake.set()

    async def _flush_acks(self) -> None:
        """Delete acknowledged rows, in batches while the window is busy (fewer commits)."""
        if not self._acked or self._outbox is None:
            return
        if len(self._acked) < ACK_BATCH and self._awaiting and self._delivering:
            return
        batch, self._acked = self._acked, []
        try:
            await self._outbox.ack(batch)
        finally:
            # Only now may a re-read of the outbox see these rows again (gone unless ack failed).
            self._inflight.difference_update(batch)

    # heartbeat --------------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        """The agent's own telemetry (device ``agent``), through the outbox like any other."""
        while True:
            await asyncio.sleep(self.config.agent.heartbeat_s)
            self._enqueue_telemetry(AGENT_DEVICE_ID, self._agent_metrics())

    def _agent_metrics(self) -> dict[str, float]:
        outbox = self._outbox
        c = self.counters
        return {
            "outbox_pending": float(outbox.pending() if outbox else 0),
            "outbox_dropped": float(outbox.dropped if outbox else 0),
            "published": float(c.published),
            "replayed": float(c.replayed),
            "connects": float(c.connects),
            "births": float(c.births),
            "commands_ok": float(c.commands_ok),
            "commands_failed": float(c.commands_failed),
            "bad_commands": float(c.bad_commands),
            "bad_input_total": float(c.bad_input_total),
            "driver_restarts": float(c.driver_restarts),
            "audio_sent": float(c.audio_sent),
            "audio_dropped": float(c.audio_dropped),
            "uptime_s": self._uptime_s(),
        }

    def _uptime_s(self) -> float:
        return round(time.monotonic() - self._started_at, 3) if self._started_at else 0.0

    # drivers ------------------------------------------------------------------------------------------
    async def _supervise(self, device_id: str, driver: DeviceDriver[Any]) -> None:
        """Run a driver forever: on a crash mark the device fault and restart with backoff."""
        sink = _AgentDeviceSink(self, device_id)
        delay = self._backoff_first
        while True:
            started = time.monotonic()
            try:
                await driver.run(sink)
                reason = "driver stopped unexpectedly"
                log.error("driver returned agent=%s device=%s", self.agent_id, device_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"driver crashed: {type(exc).__name__}: {exc}"
                log.exception("driver crashed agent=%s device=%s", self.agent_id, device_id)
            self._set_state(device_id, DeviceStatus.FAULT, reason)
            if time.monotonic() - started >= DRIVER_HEALTHY_AFTER_S:
                delay = self._backoff_first
            log.info("driver restart agent=%s device=%s in_s=%.1f", self.agent_id, device_id, delay)
            await asyncio.sleep(delay)
            self.counters.driver_restarts += 1
            delay = min(delay * 2, self._backoff_max)

    # commands -----------------------------------------------------------------------------------------
    def _on_command(self, device_id: str, payload: bytes) -> None:
        try:
            msg = decode(TopicKind.COMMAND, payload)
        except BadMessage as exc:
            self._bad_command(device_id, payload, exc)
            return
        assert isinstance(msg, Command)
        if len(self._command_tasks) >= self._command_limit:
            self._finish_command(device_id, msg, self._failure(msg, "agent busy"))
            return
        task = asyncio.create_task(self._run_command(device_id, msg))
        self._command_tasks.add(task)
        task.add_done_callback(self._command_tasks.discard)

    def _bad_command(self, device_id: str, payload: bytes, exc: BadMessage) -> None:
        self.counters.bad_commands += 1
        allowed, suppressed = self._log_limiter.allow("bad_command", device_id, exc.reason.value)
        if allowed:
            log.warning(
                "bad command agent=%s device=%s reason=%s detail=%s suppressed=%d",
                self.agent_id,
                device_id,
                exc.reason.value,
                exc.detail[:200],
                suppressed,
            )
        command_id = _command_id_of(payload)
        if command_id is not None:  # answer, so the sender need not wait for its deadline
            result = CommandResult(
                id=command_id, ok=False, error=f"bad command: {exc.reason.value}", ts=self._clock()
            )
            self._publish_result(device_id, result)

    async def _run_command(self, device_id: str, cmd: Command) -> None:
        result = await self._execute(device_id, cmd)
        self._finish_command(device_id, cmd, result)

    def _finish_command(self, device_id: str, cmd: Command, result: CommandResult) -> None:
        if result.ok:
            self.counters.commands_ok += 1
        else:
            self.counters.commands_failed += 1
        log.info(
            "command done agent=%s device=%s id=%s name=%s ok=%s error=%s",
            self.agent_id,
            device_id,
            cmd.id[:64],
            cmd.name[:64],
            result.ok,
            result.error,
        )
        self._publish_result(device_id, result)

    async def _execute(self, device_id: str, cmd: Command) -> CommandResult:
        now = self._clock()
        if cmd.deadline_ms <= now:
            return self._failure(cmd, "deadline expired")
        if device_id == AGENT_DEVICE_ID:
            run: Callable[[], Any] = lambda: self._agent_command(cmd)  # noqa: E731
        elif device_id in self._drivers:
            driver = self._drivers[device_id]
            run = lambda: driver.execute(cmd.name, cmd.args)  # noqa: E731
        else:
            return self._failure(cmd, f"unknown device {device_id!r}")
        try:
            async with asyncio.timeout((cmd.deadline_ms - now) / 1000) as deadline:
                value = await run()
        except TimeoutError:
            if deadline.expired():
                return self._failure(cmd, "deadline expired while running")
            log.exception(
                "command raised TimeoutError agent=%s device=%s", self.agent_id, device_id
            )
            return self._failure(cmd, "internal error: TimeoutError")
        except CommandError as exc:  # includes UnknownCommand
            return self._failure(cmd, str(exc) or type(exc).__name__)
        except Exception as exc:
            log.exception(
                "command crashed agent=%s device=%s name=%s",
                self.agent_id,
                device_id,
                cmd.name[:64],
            )
            return self._failure(cmd, f"internal error: {type(exc).__name__}")
        return CommandResult(id=cmd.id, ok=True, result=value, ts=self._clock())

    async def _agent_command(self, cmd: Command) -> Any:
        if cmd.name == "ping":
            return {"pong": True, "ts": self._clock()}
        if cmd.name == "stats":
            return self.stats
        raise UnknownCommand(f"unknown command {cmd.name[:64]!r} for device {AGENT_DEVICE_ID!r}")

    def _failure(self, cmd: Command, error: str) -> CommandResult:
        return CommandResult(id=cmd.id, ok=False, error=error, ts=self._clock())

    def _publish_result(self, device_id: str, result: CommandResult) -> None:
        try:
            payload = encode(result)
        except (TypeError, ValueError, msgspec.EncodeError):
            log.error(
                "command result not JSON agent=%s device=%s id=%s",
                self.agent_id,
                device_id,
                result.id[:64],
            )
            payload = encode(
                CommandResult(
                    id=result.id, ok=False, error="internal error: result is not JSON", ts=result.ts
                )
            )
        link = self._link
        if link is None:
            return
        try:
            link.publish(self._topic(TopicKind.COMMAND_RESULT, device_id), payload, qos=1)
        except ConnectionError as exc:
            log.warning(
                "command result lost agent=%s device=%s id=%s error=%s",
                self.agent_id,
                device_id,
                result.id[:64],
                exc,
            )

    # small helpers ------------------------------------------------------------------------------------
    def _topic(self, kind: TopicKind, device: str | None = None) -> str:
        return topics.build(kind, self.agent_id, device)


async def run_agent(config: AgentConfig, stop: asyncio.Event, **kwargs: Any) -> dict[str, Any]:
    """Run an agent until ``stop`` is set, then stop it cleanly; returns its final stats.

    ``kwargs`` go to :class:`EdgeAgent` (``create_driver``, ``clock``, ...).
    """
    agent = EdgeAgent(config, **kwargs)
    await agent.start()
    try:
        await stop.wait()
    finally:
        await agent.stop()
    return agent.stats


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            log.error("task ended with error during stop: %r", result)


def _as_number(value: Any) -> float | None:
    """A finite float, or None (bools count as 0/1; strings are not numbers)."""
    if isinstance(value, bool | int | float):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def _as_historical(topic: str, payload: bytes) -> bytes:
    """Rewrite a stored telemetry/event payload with ``historical: true``."""
    try:
        kind = topics.parse(topic).kind
        msg = decode(kind, payload)
    except BadMessage:
        log.error("stored message unreadable topic=%s; sent as stored", topic[:120])
        return payload
    if isinstance(msg, Telemetry | Event):
        return encode(msgspec.structs.replace(msg, historical=True))
    return payload


def _command_id_of(payload: bytes) -> str | None:
    """Best effort: the ``id`` of a command that failed validation, to answer it."""
    try:
        data = msgspec.json.decode(payload[:65536])
    except msgspec.DecodeError:
        return None
    if isinstance(data, dict):
        value = data.get("id")
        if isinstance(value, str) and 0 < len(value) <= 200:
            return value
    return None
