"""A whole simulated court: every venue run by a real edge-agent process whose drivers talk to
simulated devices (MQTT kiosks, HTTP sensors, WAV-file microphones), plus the fault injector.

Agents run as child processes (``python -m edge_agents --config …``) so that "kill an agent"
is a real ``kill -9`` and the broker publishes the agent's will, exactly as in a court.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import tomli_w

from protocol.messages import Telemetry, encode, now_ms
from protocol.mqtt_link import BrokerUrl, MqttLink
from protocol.topics import TopicKind, build
from simulators.court_cameras import CourtCameras
from simulators.court_microphones import prepare_microphone
from simulators.escpos_printer import SimulatedPrinter
from simulators.http_sensor import SensorServer
from simulators.kiosk import KioskProfile, SimulatedKiosk
from simulators.led_display import SimulatedLedBus, SimulatedPanel
from simulators.scenario import CAMERA_FAULTS, CourtScenario, FaultAction, FaultSpec, VenueSpec

log = logging.getLogger(__name__)

PasswordFor = Callable[[str], str]

#: Malformed messages the ``garbage`` fault publishes with an agent's own credentials.
GARBAGE_MESSAGES: tuple[tuple[str, bytes], ...] = (
    ("telemetry", b"{not json"),
    ("telemetry", b'{"ts": 1, "seq": "seven", "metrics": {}}'),
    ("event", b'{"ts": 1}'),
    ("telemetry", b'{"ts":1,"seq":1,"metrics":{},"pad":"' + b"x" * 70_000 + b'"}'),
    ("audio", b"RIFF" + bytes(64)),
    ("firmware", b"{}"),
)


def sensor_server_id(agent: str, device: str) -> str:
    """Sensor id on the shared simulated sensor server (unique across venues)."""
    return f"{agent}-{device}"


def agent_config_dict(
    venue: VenueSpec,
    *,
    broker_url: BrokerUrl,
    password: str,
    data_dir: Path,
    sensors: SensorServer,
    led_port: str | None = None,
    printer_port: str | None = None,
    microphone: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The venue config (same shape as a venue TOML file) of one simulated venue's agent;
    ``microphone``: its microphone device entry (:func:`prepare_microphone`)."""
    devices: list[dict[str, Any]] = [
        {
            "id": f"kiosk-{i + 1}",
            "driver": "kiosk_mqtt",
            "options": {
                "broker_url": str(broker_url),
                "kiosk_id": kiosk_id,
                "username": venue.agent,
                "password": password,
                "offline_after_s": max(3.5 * venue.status_interval_s, 5.0),
            },
        }
        for i, kiosk_id in enumerate(venue.kiosk_ids())
    ]
    devices += [
        {
            "id": device_id,
            "driver": "http_sensor",
            "options": {
                "url": sensors.url_for(sensor_server_id(venue.agent, device_id)),
                "interval_s": venue.sensor_interval_s,
                "max_backoff_s": max(2 * venue.sensor_interval_s, 4.0),
                "kind": f"{kind.value}_sensor",
            },
        }
        for device_id, kind in venue.sensor_ids()
    ]
    if led_port is not None:
        devices += [
            {
                "id": device_id,
                "driver": "led_call_display",
                "options": {"port": led_port, "address": address, "poll_interval_s": 5.0},
            }
            for device_id, address in venue.led_panels()
        ]
    if printer_port is not None:
        devices.append(
            {
                "id": "printer-1",
                "driver": "escpos_printer",
                "options": {"port": printer_port, "status_interval_s": 5.0},
            }
        )
    if microphone is not None:
        devices.append(microphone)
    return {
        "agent": {"id": venue.agent, "data_dir": str(data_dir), "heartbeat_s": 5.0},
        "venue": {"id": venue.venue_id, "kind": venue.kind.value, "name": venue.name},
        "broker": {"url": str(broker_url), "username": venue.agent, "password": password},
        "devices": devices,
    }


class AgentProcess:
    """One agent child process, restarted by its supervisor when it dies."""

    def __init__(self, agent: str, config_path: Path, log_path: Path) -> None:
        self.agent = agent
        self.config_path = config_path
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.kills = 0
        self._released = asyncio.Event()  # cleared while a fault keeps the agent dead
        self._released.set()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self.proc is not None and self.proc.returncode is None

    def start(self) -> None:
        """Start supervising (and launch the process)."""
        self._task = asyncio.create_task(self._supervise(), name=f"agent-{self.agent}")

    async def _spawn(self) -> asyncio.subprocess.Process:
        with self.log_path.open("ab") as logfile:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edge_agents",
                "--config",
                str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=logfile,
                start_new_session=True,  # Ctrl-C goes to the demo, which stops agents itself
            )
        self.starts += 1
        log.info("agent process started agent=%s pid=%s", self.agent, proc.pid)
        return proc

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            self.proc = await self._spawn()
            code = await self.proc.wait()
            if self._stopping:
                return
            log.warning("agent process exited agent=%s code=%s", self.agent, code)
            await self._released.wait()
            if code not in (0, -signal.SIGKILL):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def kill(self, down_s: float) -> None:
        """``kill -9`` the agent, keep it dead ``down_s`` seconds, then let it restart."""
        if not self.running or self.proc is None:
            return
        self._released.clear()
        self.kills += 1
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        log.info("fault: agent killed agent=%s down_s=%s", self.agent, down_s)
        await asyncio.sleep(down_s)
        self._released.set()

    async def stop(self) -> None:
        """Stop the agent cleanly (SIGTERM: it publishes its death and flushes its outbox)."""
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class SimulatedCourt:
    """Runs the devices and agents of a :class:`CourtScenario` against a broker."""

    def __init__(
        self,
        scenario: CourtScenario,
        broker_url: BrokerUrl,
        password_for: PasswordFor,
        work_dir: Path,
        *,
        restart_broker: Callable[[float], Awaitable[None]] | None = None,
        cameras: CourtCameras | None = None,
    ) -> None:
        self.scenario = scenario
        #: the venues' IP cameras (started by whoever built the hub's recorder config)
        self.cameras = cameras
        self.broker_url = broker_url
        self.password_for = password_for
        self.work_dir = work_dir
        self.restart_broker = restart_broker
        self.sensors = SensorServer(seed=scenario.court.seed)
        self.kiosks: dict[tuple[str, str], SimulatedKiosk] = {}
        #: each venue's RS-485 bus of LED call displays (a pty), by agent id
        self.led_buses: dict[str, SimulatedLedBus] = {}
        #: each venue's thermal ticket printer (a pty), by agent id
        self.printers: dict[str, SimulatedPrinter] = {}
        #: each venue's microphone device entry (its seat WAVs are written at start), by agent id
        self.microphones: dict[str, dict[str, Any]] = {}
        self.agents: dict[str, AgentProcess] = {}
        self.faults_done: Counter[str] = Counter()
        self._fault_tasks: list[asyncio.Task[None]] = []

    # lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start sensors, kiosks and one agent process per venue; schedule the faults."""
        for venue in self.scenario.venues:
            for device_id, kind in venue.sensor_ids():
                self.sensors.add(sensor_server_id(venue.agent, device_id), kind.value)
        await self.sensors.start()
        for venue in self.scenario.venues:
            if venue.led_panels():
                bus = SimulatedLedBus([SimulatedPanel(address=a) for _, a in venue.led_panels()])
                await bus.start()
                self.led_buses[venue.agent] = bus
            if venue.printer:
                printer = SimulatedPrinter()
                await printer.start()
                self.printers[venue.agent] = printer
            if venue.microphone is not None:
                self.microphones[venue.agent] = await asyncio.to_thread(
                    prepare_microphone,
                    self.work_dir / "agents" / venue.agent / "microphone",
                    venue.microphone,
                    seed=self.scenario.court.seed,
                )
        for index, venue in enumerate(self.scenario.venues):
            self._start_agent(venue)
            await self._start_kiosks(venue, seed=self.scenario.court.seed + index)
        for fault in self.scenario.faults:
            self._fault_tasks.append(asyncio.create_task(self._fault_at(fault)))

    def _start_agent(self, venue: VenueSpec) -> None:
        agent_dir = self.work_dir / "agents" / venue.agent
        agent_dir.mkdir(parents=True, exist_ok=True)
        config = agent_config_dict(
            venue,
            broker_url=self.broker_url,
            password=self.password_for(venue.agent),
            data_dir=agent_dir / "state",
            sensors=self.sensors,
            led_port=self.led_buses[venue.agent].path if venue.agent in self.led_buses else None,
            printer_port=(
                self.printers[venue.agent].path if venue.agent in self.printers else None
            ),
            microphone=self.microphones.get(venue.agent),
        )
        config_path = agent_dir / "venue.toml"
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:  # holds the agent's password: owner-only
            tomli_w.dump(config, fh)
        process = AgentProcess(venue.agent, config_path, agent_dir / "agent.log")
        process.start()
        self.agents[venue.agent] = process

    async def _start_kiosks(self, venue: VenueSpec, seed: int) -> None:
        rate = venue.arrivals_per_min / 4
        profile = KioskProfile(
            arrivals_per_min={"filing": rate, "consult": rate, "payment": rate, "materials": rate},
            status_interval_s=venue.status_interval_s,
        )
        for i, kiosk_id in enumerate(venue.kiosk_ids()):
            username = f"kiosk-{kiosk_id}"
            kiosk = SimulatedKiosk(
                self.broker_url,
                kiosk_id=kiosk_id,
                username=username,
                password=self.password_for(username),
                profile=profile,
                seed=seed * 100 + i,
            )
            await kiosk.start()
            self.kiosks[(venue.agent, f"kiosk-{i + 1}")] = kiosk

    async def stop(self) -> None:
        """Stop faults, kiosks, agents (cleanly) and sensors."""
        for task in self._fault_tasks:
            task.cancel()
        await asyncio.gather(*self._fault_tasks, return_exceptions=True)
        await asyncio.gather(*(k.stop() for k in self.kiosks.values()), return_exceptions=True)
        await asyncio.gather(*(a.stop() for a in self.agents.values()), return_exceptions=True)
        await self.sensors.stop()
        await asyncio.gather(*(b.stop() for b in self.led_buses.values()), return_exceptions=True)
        await asyncio.gather(*(p.stop() for p in self.printers.values()), return_exceptions=True)

    def summary(self) -> dict[str, Any]:
        """What the simulated devices did (for the demo's report)."""
        kiosk_stats: Counter[str] = Counter()
        for kiosk in self.kiosks.values():
            kiosk_stats.update(kiosk.stats)
        panels = [p for bus in self.led_buses.values() for p in bus.panels.values()]
        return {
            "agent_restarts": sum(max(a.starts - 1, 0) for a in self.agents.values()),
            "faults_injected": dict(self.faults_done),
            "kiosk": dict(kiosk_stats),
            "led": {
                "chimes": sum(p.chimes for p in panels),
                "showing": {str(p.address): p.text[0] for p in panels if p.text and p.text[0]},
            },
            "printer": {"tickets": sum(len(p.tickets) for p in self.printers.values())},
        }

    # faults ---------------------------------------------------------------------------------
    async def _fault_at(self, fault: FaultSpec) -> None:
        await asyncio.sleep(fault.at_s)
        try:
            await self.inject(fault)
        except Exception:  # a broken fault must not stop the court
            log.exception("fault failed action=%s target=%s", fault.action.value, fault.target)

    async def inject(self, fault: FaultSpec) -> None:
        """Inject one fault now."""
        log.info("fault: %s target=%s", fault.action.value, fault.target or "-")
        self.faults_done[fault.action.value] += 1
        agent, _, device = fault.target.partition("/")
        if fault.action in CAMERA_FAULTS:
            if self.cameras is None:
                raise RuntimeError("this court runs no cameras")
            await self.cameras.inject(fault.action, fault.target, fault.duration_s)
            return
        match fault.action:
            case FaultAction.KILL_AGENT:
                await self.agents[agent].kill(fault.duration_s)
            case FaultAction.RESTART_BROKER:
                if self.restart_broker is None:
                    raise RuntimeError("this court does not own its broker")
                await self.restart_broker(fault.duration_s)
            case FaultAction.DROP_DEVICE:
                await self._drop(agent, device)
            case FaultAction.RESTORE_DEVICE:
                await self._restore(agent, device)
            case FaultAction.GARBAGE:
                await self._garbage(agent, device, fault.duration_s)
            case FaultAction.JAM_PRINTER:
                self.kiosks[(agent, device)].jam_printer(clear_after_s=fault.duration_s)

    async def _drop(self, agent: str, device: str) -> None:
        kiosk = self.kiosks.get((agent, device))
        if kiosk is not None:
            await kiosk.drop()
        else:
            self.sensors.drop(sensor_server_id(agent, device))

    async def _restore(self, agent: str, device: str) -> None:
        kiosk = self.kiosks.get((agent, device))
        if kiosk is not None:
            await kiosk.reconnect()
        else:
            self.sensors.restore(sensor_server_id(agent, device))

    async def _garbage(self, agent: str, device: str, duration_s: float) -> None:
        kiosk = self.kiosks.get((agent, device))
        if kiosk is not None:
            kiosk.send_garbage()
        elif device:
            sensor = sensor_server_id(agent, device)
            self.sensors.garbage(sensor)
            await asyncio.sleep(duration_s)
            self.sensors.garbage(sensor, on=False)
        else:
            await self.send_mqtt_garbage(agent)

    async def send_mqtt_garbage(self, agent: str, device: str = "garbage-1") -> int:
        """Publish malformed contract messages with ``agent``'s credentials; returns the count.

        A real agent with a bug (or a compromised one) can only write its own topics (ACL), so
        this is the worst it can do: the hub must count every message and keep running.
        """
        link = MqttLink(
            self.broker_url,
            client_id=f"{agent}-garbage",
            username=agent,
            password=self.password_for(agent),
        )
        await link.start()
        sent = 0
        try:
            if not await link.wait_connected(5):
                return 0
            for leaf, payload in GARBAGE_MESSAGES:
                topic = f"courthub/v1/{agent}/{device}/{leaf}"
                await link.publish_acked(topic, payload)
                sent += 1
            # and a valid-looking message from a device the agent never announced
            orphan = Telemetry(ts=now_ms(), seq=0, metrics={"x": 1.0})
            await link.publish_acked(build(TopicKind.TELEMETRY, agent, device), encode(orphan))
        finally:
            await link.stop()
        return sent


class CourtSetupError(RuntimeError):
    """The simulated court cannot run against the given hub; the message says what to fix."""


async def simulate_against_hub(
    court_path: Path,
    hub_config_path: Path,
    stop: asyncio.Event,
    faults: list[FaultSpec] | None = None,
) -> None:
    """``courthub simulate``: run the court of ``court_path`` against the hub of ``hub_config_path``.

    The hub must be running (it writes ``runtime.json`` in its data dir) and own its broker with
    every account the scenario needs (``[[broker.accounts]]``): this command reads the agents'
    and kiosks' passwords from the hub's credential store, as a technician provisioning a venue
    would.
    """
    from hub.app import read_runtime_file
    from hub.config import load_hub_config
    from hub.credentials import Credentials
    from simulators.scenario import load_scenario, with_faults

    scenario = load_scenario(court_path)
    if faults:
        scenario = with_faults(scenario, faults)
    config = load_hub_config(hub_config_path)
    runtime = await asyncio.to_thread(read_runtime_file, config.data_dir)
    if runtime is None:
        raise CourtSetupError(f"no hub is running with data dir {config.data_dir}; start it first")
    if config.broker.mode != "own":
        raise CourtSetupError("simulate needs a hub that owns its broker (broker.mode = 'own')")
    have = {a.username for a in config.broker.accounts}
    missing = [a for a in scenario.broker_accounts() if a["username"] not in have]
    if missing:
        names = ", ".join(a["username"] for a in missing)
        raise CourtSetupError(f"{hub_config_path}: add [[broker.accounts]] for: {names}")
    # read-only: writing a password the running broker does not know would lock agents out
    credentials = await asyncio.to_thread(Credentials.of_hub, config)
    # the hub's [[recorder.cameras]] must name these cameras' fixed ports (court.toml `port`)
    cameras = CourtCameras(scenario)
    await cameras.start()
    court = SimulatedCourt(
        scenario,
        BrokerUrl.parse(str(runtime["broker_url"])),
        credentials.password_for,
        config.data_dir.parent / "simulated-court",
        cameras=cameras,
    )
    try:
        await court.start()
        await stop.wait()
    finally:
        await court.stop()
        await cameras.stop()
