"""Run the whole hub in one process: broker (own or external), hub core and JSON API.

``courthub hub --config hub.toml`` calls :func:`run_hub`; so do the simulator and the demo, which
use ``on_ready`` to learn the broker URL, the API URL and token, and the agents' passwords.
Start order: credentials → own broker → hub service → API; stop order is the reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from dashboards import (
    admin_api,
    alerts_api,
    metrics_endpoint,
    pages_board,
    pages_counter,
    pages_hearing,
    pages_telemetry,
    pages_video,
    queue_api,
    recordings_api,
    sessions,
    telemetry_api,
    transcript_api,
)
from dashboards.alerts_api import install_alerts
from dashboards.app import ConsoleOptions, create_console_app
from dashboards.auth import (
    Authenticator,
    BearerTokenAuthenticator,
    Principal,
    Role,
    load_or_create_api_token,
)
from dashboards.live import LIVE_KEY, Topic
from dashboards.metrics_endpoint import install_metrics
from dashboards.pages import DEFAULT_NAV, PASSWORD_CHANGE_PAGES
from dashboards.pages_board import install_board
from dashboards.pages_telemetry import install_telemetry_pages
from dashboards.pages_video import install_live_video
from dashboards.queue_api import QUEUE_KEY
from dashboards.recordings_api import RECORDINGS_KEY, RecordingsContext
from dashboards.sessions import (
    ACCOUNTS_KEY,
    AUDIT_KEY,
    ApiTokenAuthenticator,
    SessionAuthenticator,
    csrf_middleware,
)
from dashboards.transcript_api import TRANSCRIPT_KEY, TranscriptContext
from hub.accounts import AccountStore
from hub.alert_rules import AlertRuleEngine, AlertRuleRunner, disk_metrics
from hub.alerts import AlertBoard
from hub.audio_recorder import AudioRecorder
from hub.audit import AuditLog
from hub.broker import OwnedBroker, owned_broker
from hub.case_lookup import CaseDirectory
from hub.clock_skew import SkewAlerter
from hub.config import HubConfig
from hub.credentials import MQTT_DIR, Credentials
from hub.downtime_gaps import DowntimeGaps
from hub.embedded_tsdb import EmbeddedStore
from hub.hall_displays import HallDisplays
from hub.hall_kiosks import HallKiosks
from hub.hall_printer import HallPrinter
from hub.hearing_record import RecordWriter
from hub.hearings import HearingService
from hub.influx_reader import InfluxQLReader
from hub.influx_sink import InfluxSink
from hub.live_transcriber import LiveTranscriber
from hub.live_video import LiveVideo
from hub.provisioning import client_url, credentials_for, owned_broker_tls
from hub.queue_service import QueueService
from hub.recorder import Recorder
from hub.recorder_config import RecorderConfig
from hub.recording_index import DB_FILE, RecordingIndex
from hub.retention import RetentionSweeper
from hub.service import HubService
from hub.sink_process import SinkProcess
from hub.telemetry_config import TelemetrySection
from hub.telemetry_pipeline import TelemetryPipeline
from hub.telemetry_points import TelemetryReader, TelemetrySink
from hub.transcript_store import TranscriptStore
from hub.voice_follow import VoiceFollow, follow_loudest_seats
from protocol.mqtt_link import BrokerUrl

log = logging.getLogger(__name__)

#: How long start-up waits for the hub's first MQTT session before reporting ready anyway.
CONNECT_WAIT_S = 10.0
#: ``data_dir/runtime.json``: where a running hub listens (no secrets), for tools started beside
#: it (``courthub simulate --hub-config``) when the broker or API port was chosen at random.
RUNTIME_FILE = "runtime.json"


class HubStartError(RuntimeError):
    """The hub could not start (broker, password file, port in use…)."""


@dataclass
class TelemetryParts:
    """Telemetry sinks, the pipeline feeding them, the alert board and its rules (issue 7)."""

    alerts: AlertBoard
    rules: AlertRuleRunner
    pipeline: TelemetryPipeline
    sinks: list[TelemetrySink]
    #: the embedded store (None when disabled)
    store: EmbeddedStore | None
    #: what the technician's charts read (``[telemetry] charts``); None: no charts
    reader: TelemetryReader | None = None


@dataclass
class VideoParts:
    """The recorded venues' services: index, hearings, alerts, live feeds, recorder, retention."""

    index: RecordingIndex
    alerts: AlertBoard
    hearings: HearingService
    live: LiveVideo
    recorder: Recorder
    retention: RetentionSweeper
    #: turns a venue's PTZ camera to the loudest seat (the hearing service calls it)
    voice_follow: VoiceFollow
    #: per-seat audio of the courtroom microphones (``[[recorder.microphones]]``)
    audio: AudioRecorder
    #: hearing transcripts (final segments, corrections, notes) and the live transcriber
    transcripts: TranscriptStore
    transcriber: LiveTranscriber


@dataclass
class HubRuntime:
    """What a running hub exposes to whoever started it."""

    config: HubConfig
    service: HubService
    broker_url: BrokerUrl
    api_url: str
    api_token: str = field(repr=False)
    #: The broker the hub started (mode "own"), else ``None``.
    broker: OwnedBroker | None = None
    #: The generated MQTT passwords (mode "own"), else ``None``.
    credentials: Credentials | None = None
    #: Web console accounts and the audit trail.
    accounts: AccountStore | None = None
    audit: AuditLog | None = None
    #: The first admin's one-time password when this start created it (print it once, never log).
    first_admin_password: str | None = field(default=None, repr=False)
    #: The hall queue (tickets, counters) and the bridge answering kiosks' ticket requests.
    queue: QueueService | None = None
    #: The recorder, its index, hearings, alerts and live feeds.
    video: VideoParts | None = None
    #: Telemetry sinks, alert board and rules.
    telemetry: TelemetryParts | None = None

    @property
    def data_dir(self) -> Path:
        """The hub's data folder."""
        return self.config.data_dir


OnReady = Callable[[HubRuntime], Any]


async def run_hub(
    config: HubConfig, stop: asyncio.Event, *, on_ready: OnReady | None = None
) -> None:
    """Run the hub until ``stop`` is set; ``on_ready(runtime)`` (sync or async) once it serves.

    Every part registers its own shutdown as it starts, so whatever started is stopped in
    reverse order, each step even if an earlier one failed.
    """
    data_dir = config.data_dir
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as parts:
        parts.callback(log.info, "hub stopped")
        broker: OwnedBroker | None = None
        credentials: Credentials | None = None
        username: str | None
        password: str | None
        if config.broker.mode == "own":
            credentials, broker = await _start_own_broker(config)
            parts.push_async_callback(_logged, "broker shutdown", asyncio.to_thread, broker.stop)
            broker_url = broker.url
            username, password = credentials.hub_username, credentials.hub_password
        else:
            broker_url = BrokerUrl.parse(config.broker.url)
            username = config.broker.username
            password = await asyncio.to_thread(_external_password, config)
        service = HubService(config, broker_url, username, password)
        parts.push_async_callback(_logged, "hub service shutdown", service.stop)
        # connected only once every listener is attached (telemetry, hall, recorder): the
        # broker hands over what it queued for the hub at once (HubService.start)
        await service.start(connect=False)
        token = await asyncio.to_thread(load_or_create_api_token, data_dir)
        accounts = await AccountStore.open(data_dir)
        parts.push_async_callback(_logged, "account store close", accounts.close)
        audit = await AuditLog.open(data_dir)
        parts.push_async_callback(_logged, "audit log close", audit.close)
        first_admin_password = await accounts.ensure_first_admin()
        queue = await QueueService.open(data_dir, config.queue)
        parts.push_async_callback(_logged, "queue close", queue.close)
        kiosks = _start_hall_bridges(config, service, queue, parts)
        telemetry = await _start_telemetry(config, service, audit, parts)
        # an agent's clock off by more than 2 s: clock-skew:<agent> for the technicians
        parts.callback(service.clock_skew.add_listener(SkewAlerter(telemetry.alerts)))
        video = await _start_video(config, service, audit, telemetry.alerts, parts)
        kiosks.case_lookup = CaseDirectory(
            video.hearings.all, _venue_namer(service), config.hub.timezone, time.time
        ).lookup
        telemetry.rules.set_hearing_venues(video.hearings.recording_venues)
        await service.connect()
        if not await service.wait_connected(CONNECT_WAIT_S):
            log.warning("hub not connected to the broker yet broker=%s; retrying", broker_url)
        runner, api_url = await _start_api(
            config,
            service,
            token,
            accounts,
            audit,
            queue=queue,
            video=video,
            telemetry=telemetry,
        )
        parts.push_async_callback(_logged, "API shutdown", runner.cleanup)
        await asyncio.to_thread(_write_runtime_file, data_dir, broker_url, api_url)
        parts.push_async_callback(asyncio.to_thread, _remove_runtime_file, data_dir)
        log.info("hub ready broker=%s api=%s data_dir=%s", broker_url, api_url, data_dir)
        if on_ready is not None:
            runtime = HubRuntime(
                config,
                service,
                broker_url,
                api_url,
                token,
                broker,
                credentials,
                accounts,
                audit,
                first_admin_password,
                queue,
                video,
                telemetry,
            )
            result = on_ready(runtime)
            if inspect.isawaitable(result):
                await result
        await stop.wait()


def _venue_namer(service: HubService) -> Callable[[str], str]:
    """A venue id's display name, from the agents' births (the id when none names it)."""

    def name(venue: str) -> str:
        for agent in service.registry.agents():
            if agent.venue_id == venue and agent.venue_name:
                return agent.venue_name
        return venue

    return name


def _start_hall_bridges(
    config: HubConfig, service: HubService, queue: QueueService, parts: contextlib.AsyncExitStack
) -> HallKiosks:
    """Kiosk requests → tickets and case answers, calls → LED panels, tickets → the printer."""
    kiosks = HallKiosks(service, queue)
    kiosks.start()
    parts.push_async_callback(_logged, "kiosk bridge stop", kiosks.stop)
    displays = HallDisplays(service, queue, config.queue)
    displays.start()
    parts.push_async_callback(_logged, "hall displays stop", displays.stop)
    printer = _start_hall_printer(config, service, queue)
    parts.push_async_callback(_logged, "hall printer stop", printer.stop)
    return kiosks


def _start_hall_printer(config: HubConfig, service: HubService, queue: QueueService) -> HallPrinter:
    """Print every issued ticket on ``[queue] ticket_printer`` (nothing when unset)."""
    printer = HallPrinter(
        service,
        queue,
        config.queue,
        court_name=config.hub.court_name,
        timezone=config.hub.timezone,
    )
    printer.start()
    return printer


async def _start_telemetry(
    config: HubConfig, service: HubService, audit: AuditLog, parts: contextlib.AsyncExitStack
) -> TelemetryParts:
    """Open the alert board, start the telemetry sinks, the pipeline and the alert rules."""
    data_dir = config.data_dir
    section = config.telemetry
    publish = None
    if config.alerts.publish_mqtt:

        def publish(topic: str, payload: bytes) -> None:
            service.ingest.link.publish(topic, payload, qos=1)

    alerts = await AlertBoard.open(data_dir, audit=audit, publish=publish)
    parts.push_async_callback(_logged, "alerts close", alerts.close)
    sinks = _telemetry_sinks(section, data_dir)
    for sink in sinks:
        await sink.start()
        # stopped after the pipeline's listener is gone (exit stack: reverse order)
        parts.push_async_callback(_logged, f"telemetry sink {sink.name} stop", sink.stop)
    for sink in sinks:
        if isinstance(sink, SinkProcess):
            # the broker's acks wait until the batch's points are in this sink's pipe
            service.ingest.hand_overs.append(sink.handed_over)
            parts.callback(service.ingest.hand_overs.remove, sink.handed_over)
    store = next((s for s in sinks if isinstance(s, EmbeddedStore)), None)
    if store is None and section.embedded.enabled:
        # the writer is a child process: the charts read telemetry.db beside it
        store = await EmbeddedStore.open(section.embedded, data_dir, read_only=True)
        parts.push_async_callback(_logged, "telemetry reader close", store.stop)
    pipeline = TelemetryPipeline(
        service.registry,
        sinks,
        sample_interval_s=section.sample_interval_s,
        hub_stats=service.stats,
        device_points=section.device_points == "hub",
    )
    parts.callback(service.add_listener(pipeline.on_change))
    sampler = asyncio.create_task(pipeline.run(), name="telemetry-sampler")
    parts.push_async_callback(_cancel, sampler)
    storage = config.recorder.storage_path(data_dir)

    async def hub_metrics() -> dict[str, float]:
        metrics = await asyncio.to_thread(_disk_metrics, storage)
        for sink in sinks:
            stats = sink.stats()
            metrics.update({f"telemetry_{sink.name}_{k}": float(v) for k, v in stats.items()})
        return metrics

    rules = AlertRuleRunner(
        AlertRuleEngine(config.alerts.effective_rules(), alerts),
        service.registry,
        interval_s=config.alerts.evaluate_interval_s,
        hub_metrics=hub_metrics,
    )
    evaluator = asyncio.create_task(rules.run(), name="alert-rules")
    parts.push_async_callback(_cancel, evaluator)
    return TelemetryParts(
        alerts, rules, pipeline, sinks, store, _chart_reader(section, store, parts)
    )


def _chart_reader(
    section: TelemetrySection, store: EmbeddedStore | None, parts: contextlib.AsyncExitStack
) -> TelemetryReader | None:
    """The embedded store, or an InfluxQL reader of ``[telemetry.influxdb]`` (closed with
    ``parts``) when ``charts = "influxdb"``."""
    if section.charts != "influxdb":
        return store
    reader = InfluxQLReader(section.influxdb)
    parts.push_async_callback(_logged, "influxdb chart reader close", reader.close)
    return reader


def _telemetry_sinks(section: TelemetrySection, data_dir: Path) -> list[TelemetrySink]:
    """The configured sinks, each in its own process unless ``sink_processes`` is off."""
    sinks: list[TelemetrySink] = []
    if section.embedded.enabled:
        sinks.append(
            SinkProcess("embedded", section.embedded, data_dir)
            if section.sink_processes
            else EmbeddedStore(section.embedded, data_dir)
        )
    if section.influxdb.url:
        sinks.append(
            SinkProcess("influxdb", section.influxdb, data_dir)
            if section.sink_processes
            else InfluxSink(section.influxdb, data_dir=data_dir)
        )
    return sinks


def _disk_metrics(storage: Path) -> dict[str, float]:
    """Free space where recordings go (the data dir when the storage folder is not made yet)."""
    path = storage
    while not path.exists() and path.parent != path:
        path = path.parent
    return disk_metrics(path)


async def _start_video(
    config: HubConfig,
    service: HubService,
    audit: AuditLog,
    alerts: AlertBoard,
    parts: contextlib.AsyncExitStack,
) -> VideoParts:
    """Open the recordings index and hearings; start the recorder and retention."""
    data_dir = config.data_dir
    storage = config.recorder.storage_path(data_dir)
    await asyncio.to_thread(storage.mkdir, parents=True, exist_ok=True)
    index = await RecordingIndex.open(data_dir / DB_FILE, storage)
    parts.push_async_callback(_logged, "recordings index close", index.close)
    # the hole a restart left in every track is a gap too (before the recorders add segments)
    downtime = DowntimeGaps(index)
    cameras = [c.id for c in config.recorder.cameras if c.record]
    await downtime.snapshot([*cameras, *audio_tracks(config.recorder)])
    parts.callback(index.add_segment_listener(downtime.on_segment))
    parts.push_async_callback(_logged, "downtime gaps", downtime.wait)
    hearings = await HearingService.open(data_dir, index, audit)
    parts.push_async_callback(_logged, "hearings close", hearings.close)
    live = LiveVideo()
    parts.callback(live.close)
    recorder = Recorder(
        config.recorder,
        storage_root=storage,
        index=index,
        live=live,
        alerts=alerts,
        sessions=hearings,
        reporter=service,
        timezone=config.hub.timezone,
    )
    parts.push_async_callback(_logged, "recorder stop", recorder.stop)
    await recorder.start()
    audio = AudioRecorder(
        config.recorder, storage_root=storage, index=index, alerts=alerts, sessions=hearings
    )
    parts.push_async_callback(_logged, "audio recorder stop", audio.stop)
    await audio.start()
    parts.callback(service.add_listener(audio.on_change))
    transcripts = await TranscriptStore.open(data_dir)
    parts.push_async_callback(_logged, "transcript store close", transcripts.close)
    transcriber = LiveTranscriber(
        model_dir=config.transcription.model_dir,
        threads=config.transcription.threads,
        phrases=config.transcription.phrases,
        audio=audio,
        sessions=hearings,
        store=transcripts,
        venues=audio_tracks(config.recorder),
        alerts=alerts,
        endpoint_silence_s=config.transcription.endpoint_silence_s,
    )
    parts.push_async_callback(_logged, "live transcriber stop", transcriber.stop)
    await transcriber.start()
    # a seal writes the checked transcript's files first, so the manifest hashes them
    hearings.prepare_seal = RecordWriter(transcripts, hearings, data_dir, config.hub.timezone)
    retention = RetentionSweeper(config.recorder, index, alerts=alerts, audit=audit)
    sweeper = asyncio.create_task(retention.run(), name="retention")
    parts.push_async_callback(_cancel, sweeper)
    ptz = config.recorder.ptz_by_venue()
    voice_follow = VoiceFollow(service.call_command, ptz)
    parts.push_async_callback(_logged, "voice follow close", voice_follow.close)
    if ptz:  # the loudest seat of an open hearing turns its courtroom's camera
        follower = asyncio.create_task(
            follow_loudest_seats(
                voice_follow,
                sorted(ptz),
                loudest_seat=audio.loudest_seat,
                recording=lambda venue: hearings.active_session(venue) is not None,
            ),
            name="voice-follow",
        )
        parts.push_async_callback(_cancel, follower)
    return VideoParts(
        index,
        alerts,
        hearings,
        live,
        recorder,
        retention,
        voice_follow,
        audio,
        transcripts,
        transcriber,
    )


def audio_tracks(recorder: RecorderConfig) -> dict[str, str]:
    """Seat track id (``<agent>-<device>-<seat>``) → venue, for every configured microphone."""
    return {
        f"{m.agent}-{m.device}-{seat}": m.venue for m in recorder.microphones for seat in m.seats
    }


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _logged(what: str, fn: Callable[..., Any], *args: Any) -> None:
    """Run one shutdown step; a failure is logged and does not stop the other steps."""
    try:
        result = fn(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("%s failed", what)


def read_runtime_file(data_dir: Path) -> dict[str, Any] | None:
    """What a running hub wrote to ``data_dir/runtime.json``, or ``None`` when it is not running.

    Keys: ``broker_url`` (no credentials in it), ``api_url``, ``pid``.
    """
    try:
        data = json.loads((data_dir / RUNTIME_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_runtime_file(data_dir: Path, broker_url: BrokerUrl, api_url: str) -> None:
    path = data_dir / RUNTIME_FILE
    tmp = path.with_name(path.name + ".tmp")
    # client_url keeps ?ca= for a TLS broker (never credentials): tools beside the hub need it
    info = {"broker_url": client_url(broker_url), "api_url": api_url, "pid": os.getpid()}
    tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
    tmp.replace(path)


def _remove_runtime_file(data_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (data_dir / RUNTIME_FILE).unlink()


async def _start_own_broker(config: HubConfig) -> tuple[Credentials, OwnedBroker]:
    mqtt_dir = config.data_dir / MQTT_DIR
    # hub.toml's accounts and the provisioned ones (`courthub provision agent`): loading only
    # hub.toml's would drop the provisioned agents' passwords
    credentials = await asyncio.to_thread(credentials_for, config)
    tls = await asyncio.to_thread(owned_broker_tls, config)
    broker = owned_broker(mqtt_dir, credentials.accounts(), port=config.broker.port, tls=tls)
    try:
        await asyncio.to_thread(broker.start)
    except Exception as exc:
        raise HubStartError(f"own MQTT broker did not start: {exc}") from exc
    return credentials, broker


def broker_login(config: HubConfig) -> tuple[BrokerUrl, str | None, str | None]:
    """Where and as whom a process beside the hub (an ingest worker) reaches the broker.

    ``mode = "url"``: the configured URL and account. ``mode = "own"``: the running hub's broker
    (``runtime.json``) with the hub's generated account. Raises :class:`HubStartError`.
    """
    if config.broker.mode != "own":
        return (
            BrokerUrl.parse(config.broker.url),
            config.broker.username,
            _external_password(config),
        )
    runtime = read_runtime_file(config.data_dir)
    if runtime is None or "broker_url" not in runtime:
        raise HubStartError(
            f"no running hub in {config.data_dir} (its broker is the hub's own: start the hub "
            'first, or use [broker] mode = "url")'
        )
    credentials = credentials_for(config)
    url = BrokerUrl.parse(str(runtime["broker_url"]))
    return url, credentials.hub_username, credentials.hub_password


def _external_password(config: HubConfig) -> str | None:
    """The hub's password for an external broker: inline, from a file, or none."""
    if config.broker.password_file:
        try:
            return Path(config.broker.password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise HubStartError(
                f"broker.password_file {config.broker.password_file}: {exc.strerror or exc}"
            ) from None
    return config.broker.password or None


def console_app(
    config: HubConfig,
    service: HubService,
    token: str,
    accounts: AccountStore,
    audit: AuditLog,
    *,
    queue: QueueService | None = None,
    video: VideoParts | None = None,
    telemetry: TelemetryParts | None = None,
) -> web.Application:
    """The web console: pages, JSON API, live updates, sign-in, admin — deny by default."""
    admin = Principal("api-token", frozenset({Role.ADMIN}))
    authenticators: list[Authenticator] = [
        # a user with a one-time password may still open the page where they change it
        SessionAuthenticator(accounts, allowed_while_password_change=PASSWORD_CHANGE_PAGES),
        ApiTokenAuthenticator(accounts),
        BearerTokenAuthenticator(token, admin),
    ]

    def setup(app: web.Application) -> None:
        app[ACCOUNTS_KEY] = accounts
        app[AUDIT_KEY] = audit
        if queue is not None:
            app[QUEUE_KEY] = queue
        install_board(app)  # the hall board's anonymous live channel follows the queue
        if video is not None:
            install_live_video(app, video.live)
            app[RECORDINGS_KEY] = RecordingsContext(
                video.index,
                video.hearings,
                video.recorder,
                video.alerts,
                config.data_dir / DB_FILE,
            )
            app[TRANSCRIPT_KEY] = TranscriptContext(
                video.transcripts, video.hearings, video.transcriber, config.hub.timezone
            )
            _publish_transcript(app, video.transcriber)
        if telemetry is not None:
            install_alerts(
                app,
                telemetry.alerts,
                rules=config.alerts.effective_rules(),
                evaluate_interval_s=config.alerts.evaluate_interval_s,
            )
            if telemetry.reader is not None:
                install_telemetry_pages(app, telemetry.reader)
        install_metrics(
            app,
            service,
            sinks=telemetry.sinks if telemetry is not None else (),
            recorder=video.recorder if video is not None else None,
            transcriber=video.transcriber if video is not None else None,
            audio=video.audio if video is not None else None,
        )

    return create_console_app(
        service,
        authenticators,
        options=ConsoleOptions(
            timezone=config.hub.timezone,
            court_name=config.hub.court_name,
            nav=(
                *DEFAULT_NAV,
                *pages_counter.QUEUE_NAV,
                pages_video.WALL_NAV,
                pages_hearing.HEARING_NAV,
            ),
        ),
        extra_routes=(
            *sessions.ROUTES,
            *admin_api.ROUTES,
            *queue_api.ROUTES,
            *pages_counter.ROUTES,
            *pages_board.ROUTES,
            *pages_video.ROUTES,
            *pages_hearing.ROUTES,
            *recordings_api.ROUTES,
            *transcript_api.ROUTES,
            *alerts_api.ROUTES,
            *telemetry_api.ROUTES,
            *pages_telemetry.ROUTES,
            *metrics_endpoint.ROUTES,
        ),
        extra_middlewares=[csrf_middleware],
        setup=setup,
    )


def _publish_transcript(app: web.Application, transcriber: LiveTranscriber) -> None:
    """Live partial and final segments to the console's ``transcript`` topic while it runs."""
    live = app[LIVE_KEY]
    remove = transcriber.add_listener(lambda message: live.publish(Topic.TRANSCRIPT, message))

    async def unhook(_app: web.Application) -> None:
        remove()

    app.on_cleanup.append(unhook)


async def _start_api(
    config: HubConfig,
    service: HubService,
    token: str,
    accounts: AccountStore,
    audit: AuditLog,
    *,
    queue: QueueService | None = None,
    video: VideoParts | None = None,
    telemetry: TelemetryParts | None = None,
) -> tuple[web.AppRunner, str]:
    app = console_app(
        config, service, token, accounts, audit, queue=queue, video=video, telemetry=telemetry
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, config.api.host, config.api.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise HubStartError(
            f"API cannot listen on {config.api.host}:{config.api.port}: {exc.strerror or exc}"
        ) from None
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in str(host) else host
    return runner, f"http://{shown}:{port}"
