"""``GET /metrics``: the hub's live state in the Prometheus text format, for a scraper.

Every number is read at scrape time by one :class:`HubCollector` (a custom
``prometheus_client`` collector registered on a :class:`~prometheus_client.CollectorRegistry`
built per app — nothing global, no counters duplicated beside the hub's own):

| family (``courthub_…``)                                  | from                                 |
|----------------------------------------------------------|--------------------------------------|
| ``hub_connected``, ``messages_in_total``,                | :meth:`hub.service.HubService.stats` |
| ``messages_accepted_total``, ``bad_messages_total{reason}``, |                                  |
| ``duplicates_total``, ``lost_total``, ``ingest_pending``, |                                     |
| ``store_flush_failures_total``, ``outbox_replayed_total``, |                                    |
| ``commands_sent_total``, ``commands_expired_total``, …   |                                      |
| ``loop_lag_seconds{quantile}``, ``loop_stalls_total``,   | :class:`hub.loop_monitor.LoopMonitor` |
| ``mqtt_process_up``, ``mqtt_process_restarts_total``     | :class:`hub.mqtt_process.MqttProcess` |
| ``agents``/``devices{state}``                            | the registry                         |
| ``agent_clock_offset_seconds{agent}``, ``agent_clock_steps_total{agent}``, | :class:`hub.clock_skew.ClockSkew` |
| ``agent_clock_corrected_total{agent}``                   |                                      |
| ``device_up``, ``device_state{state}``,                  | the registry, one series per device  |
| ``device_state_code``, ``device_last_seen_seconds``,     | (labels ``agent, device, venue,      |
| ``device_heartbeat_age_seconds``, ``device_metric{metric}`` | kind``)                           |
| ``telemetry_sink_<stat>{sink}``                          | each sink's ``stats()``              |
| ``camera_fps_received``/``_expected``, ``camera_frames_dropped_total``, | :class:`hub.recorder.Recorder` |
| ``camera_reconnects_last_hour``, ``camera_segment_age_seconds``, ``camera_index_lag_seconds`` | |
| ``transcriber_model_loaded``, ``transcriber_channels``, ``transcriber_rtf{track}`` | :class:`hub.live_transcriber.LiveTranscriber` |
| ``mic_frames_received_total{mic}``, ``mic_frames_lost_total``, …  | :class:`hub.audio_recorder.AudioRecorder` |
| ``websocket_clients``                                    | the console's live hub               |
| ``scrape_source_up{source}``                             | 0 when a source raised during this scrape |

``device_up`` is 1 only while the hub's verdict is ``online``; ``device_state_code`` uses the
telemetry codes (0 offline, 1 online, 2 stale, 3 fault) of :data:`hub.telemetry_points.HEALTH_CODES`.
``device_heartbeat_age_seconds`` is what to alert on: a device that stops reporting keeps its
last values, and Grafana treats a vanished series as "normal".

Access: the route opens to ``admin`` and ``technician`` only, like the technician's pages.
Prometheus cannot sign in with a cookie; it sends a technician's personal API token
(``POST /api/v1/me/api-tokens`` from a signed-in session, shown once; see docs/TELEMETRY.md)
as ``Authorization: Bearer``::

    scrape_configs:
      - job_name: courthub
        scrape_interval: 15s
        metrics_path: /metrics
        authorization:
          type: Bearer
          credentials_file: /etc/prometheus/courthub.token   # a technician account's API token
        static_configs:
          - targets: ["hub.court.local:8080"]

(``bearer_token_file:`` in Prometheus before 2.26.) The scrape runs on the event loop: every
source here is loop-owned state (the registry has no locks), and reading it is a few dict walks.

Wiring: add :data:`ROUTES` to the console's ``extra_routes`` and call :func:`install_metrics` in
its ``setup``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from dashboards.auth import Role
from dashboards.live import LIVE_KEY
from dashboards.routes import Route
from hub.registry import HealthState
from hub.service import HubService
from hub.telemetry_points import DEVICE_TAGS, HEALTH_CODES

log = logging.getLogger(__name__)

PREFIX: Final = "courthub_"
METRICS_PATH: Final = "/metrics"
#: who may scrape: the people who watch device health (a scraper uses one of their API tokens)
SCRAPERS: Final = frozenset({Role.ADMIN, Role.TECHNICIAN})

_NOT_A_NAME = re.compile(r"[^a-zA-Z0-9_]")


# what the collector reads (duck-typed so each service keeps its own API) -----------------------


class StatsSource(Protocol):
    """A telemetry sink, or anything else with a name and flat numeric counters."""

    @property
    def name(self) -> str:
        """Label value of the ``sink`` label."""

    def stats(self) -> Mapping[str, float]:
        """Counters: written, queued, spooled, dropped, errors…"""


class CameraHealth(Protocol):
    """:class:`hub.recorder.Recorder`."""

    def status(self) -> list[dict[str, Any]]:
        """Per camera: ``camera``, ``venue`` and the health figures."""

    def summary(self) -> dict[str, Any]:
        """Totals: segments indexed, index failures, outages."""


class TranscriberStats(Protocol):
    """:class:`hub.live_transcriber.LiveTranscriber`."""

    @property
    def running(self) -> bool:
        """The model is loaded."""

    def stats(self) -> dict[str, Any]:
        """Counters and each track's figures."""


class AudioSummary(Protocol):
    """:class:`hub.audio_recorder.AudioRecorder`."""

    def summary(self) -> dict[str, Any]:
        """Totals and per-microphone counters (``by_device``)."""


class LiveStats(Protocol):
    """:class:`dashboards.live.LiveHub`."""

    def stats(self) -> dict[str, int]:
        """``clients``, ``published``, ``dropped``, ``queued``."""


@dataclass(frozen=True)
class MetricsSources:
    """Everything ``/metrics`` reads; only ``service`` is required.

    ``sinks`` is read at every scrape, so a list the telemetry pipeline fills later is seen.
    """

    service: HubService
    sinks: Sequence[StatsSource] = ()
    recorder: CameraHealth | None = None
    transcriber: TranscriberStats | None = None
    audio: AudioSummary | None = None
    live: LiveStats | None = None
    #: wall clock (seconds) for heartbeat ages; a test may pass a fake one
    clock: Callable[[], float] = field(default=time.time)


# the collector -----------------------------------------------------------------------------------

#: ``HubService.stats()`` key → (family name without prefix, type, help)
_HUB_COUNTERS: Final[tuple[tuple[str, str, str], ...]] = (
    ("messages_in", "messages_in", "MQTT messages received by the hub"),
    ("accepted", "messages_accepted", "Messages that passed validation"),
    ("retained_in", "retained_messages_in", "Retained messages received (at connect)"),
    ("duplicates", "duplicates", "Stream messages dropped as duplicates (seq already seen)"),
    ("lost", "lost", "Stream messages declared lost (seq gap never filled)"),
    ("recovered", "recovered", "Seq gaps filled late (by outbox replay)"),
    ("seq_resets", "seq_resets", "Agent seq counters that restarted"),
    ("outbox_replayed", "outbox_replayed", "Historical messages replayed from agents' outboxes"),
    ("rebirths_requested", "rebirths_requested", "Rebirth requests sent to agents"),
    ("ignored_deaths", "ignored_deaths", "Deaths ignored because their bdseq was stale"),
    ("unknown_agent_messages", "unknown_agent_messages", "Data from agents without a birth"),
    ("commands_sent", "commands_sent", "Device commands sent"),
    ("commands_expired", "commands_expired", "Device commands that got no result in time"),
    ("command_late_results", "command_late_results", "Command results after the deadline"),
    ("store_flushes", "store_flushes", "Registry flushes to the hub's SQLite store"),
    ("store_failures", "store_flush_failures", "Registry flushes that failed"),
)
_LABELS: Final = list(DEVICE_TAGS)


class HubCollector(Collector):
    """Reads :class:`MetricsSources` at every ``collect()``; keeps no state of its own."""

    def __init__(self, sources: MetricsSources) -> None:
        self.sources = sources

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: the registry must not call ``collect()`` at registration time."""
        return ()

    def collect(self) -> Iterable[Metric]:
        """Every family; a source that raises is logged and marked down, the scrape goes on."""
        up = GaugeMetricFamily(
            PREFIX + "scrape_source_up",
            "1 when the source could be read during this scrape, 0 when it raised",
            labels=["source"],
        )
        parts: list[tuple[str, Callable[[], Iterator[Metric]]]] = [
            ("hub", self._hub),
            ("registry", self._devices),
            ("sinks", self._sinks),
        ]
        src = self.sources
        if src.recorder is not None:
            parts.append(("recorder", self._recorder))
        if src.transcriber is not None:
            parts.append(("transcriber", self._transcriber))
        if src.audio is not None:
            parts.append(("audio", self._audio))
        if src.live is not None:
            parts.append(("live", self._live))
        for name, part in parts:
            try:
                families = list(part())  # all or nothing: no half-filled family on a bug
            except Exception:
                log.exception("metrics source failed source=%s", name)
                up.add_metric([name], 0.0)
                continue
            up.add_metric([name], 1.0)
            yield from families
        yield up

    # hub internals -------------------------------------------------------------------------------
    def _hub(self) -> Iterator[Metric]:
        service = self.sources.service
        stats = service.stats()
        yield _gauge("hub_connected", "1 while the hub's MQTT session is up", stats["connected"])
        for key, name, help_ in _HUB_COUNTERS:
            yield CounterMetricFamily(PREFIX + name, help_, value=float(stats[key]))
        bad = CounterMetricFamily(
            PREFIX + "bad_messages", "Messages rejected at the door, by reason", labels=["reason"]
        )
        for reason, count in sorted(stats["bad_by_reason"].items()):
            bad.add_metric([reason], float(count))
        yield bad
        yield _gauge(
            "ingest_pending", "Validated messages waiting for the loop", stats["ingest_pending"]
        )
        yield _gauge("commands_pending", "Commands waiting for a result", service.commands.pending)
        yield from _loop_and_link(stats)
        agents = GaugeMetricFamily(PREFIX + "agents", "Edge agents known", labels=["online"])
        agents.add_metric(["true"], float(stats["agents_online"]))
        agents.add_metric(["false"], float(stats["agents_total"] - stats["agents_online"]))
        yield agents
        devices = GaugeMetricFamily(
            PREFIX + "devices", "Devices by the hub's health verdict", labels=["state"]
        )
        for state in HealthState:
            devices.add_metric([state.value], float(stats[f"devices_{state.value}"]))
        yield devices
        yield from self._clock_skew()

    def _clock_skew(self) -> Iterator[Metric]:
        """Each agent's clock against the hub's (0 while within the skew threshold)."""
        offset = GaugeMetricFamily(
            PREFIX + "agent_clock_offset_seconds",
            "Agent clock minus hub clock, as measured from live messages (0: within threshold)",
            labels=["agent"],
        )
        steps = CounterMetricFamily(
            PREFIX + "agent_clock_steps",
            "Clock steps of the agent the hub adopted (away and back)",
            labels=["agent"],
        )
        corrected = CounterMetricFamily(
            PREFIX + "agent_clock_corrected",
            "Messages filed on the hub's clock because the agent's clock was off",
            labels=["agent"],
        )
        for agent, figures in sorted(self.sources.service.clock_skew.stats().items()):
            offset.add_metric([agent], figures["offset_ms"] / 1000)
            steps.add_metric([agent], float(figures["steps"]))
            corrected.add_metric([agent], float(figures["corrected"]))
        yield offset
        yield steps
        yield corrected

    # per device ----------------------------------------------------------------------------------
    def _devices(self) -> Iterator[Metric]:
        registry = self.sources.service.registry
        now = self.sources.clock()
        up = GaugeMetricFamily(
            PREFIX + "device_up", "1 while the hub's verdict is online, else 0", labels=_LABELS
        )
        state = GaugeMetricFamily(
            PREFIX + "device_state",
            "The device's health: 1 on the series of its current state",
            labels=[*_LABELS, "state"],
        )
        code = GaugeMetricFamily(
            PREFIX + "device_state_code",
            "Health as a number: 0 offline, 1 online, 2 stale, 3 fault",
            labels=_LABELS,
        )
        last_seen = GaugeMetricFamily(
            PREFIX + "device_last_seen_seconds",
            "Unix time of the last live message from or about the device",
            labels=_LABELS,
        )
        age = GaugeMetricFamily(
            PREFIX + "device_heartbeat_age_seconds",
            "Seconds since the device was last heard of (alert on this, not on missing series)",
            labels=_LABELS,
        )
        interval = GaugeMetricFamily(
            PREFIX + "device_heartbeat_interval_seconds",
            "The heartbeat the device's agent declared",
            labels=_LABELS,
        )
        bad = CounterMetricFamily(
            PREFIX + "device_bad_messages",
            "Rejected messages blamed on the device",
            labels=_LABELS,
        )
        values = GaugeMetricFamily(
            PREFIX + "device_metric",
            "The device's last reported telemetry values",
            labels=[*_LABELS, "metric"],
        )
        venues = {a.id: a.venue_id for a in registry.agents()}
        for device in registry.devices():
            labels = [device.agent, device.id, venues.get(device.agent, ""), device.kind]
            up.add_metric(labels, 1.0 if device.state is HealthState.ONLINE else 0.0)
            for s in HealthState:
                state.add_metric([*labels, s.value], 1.0 if device.state is s else 0.0)
            code.add_metric(labels, float(HEALTH_CODES[device.state.value]))
            interval.add_metric(labels, device.heartbeat_s)
            bad.add_metric(labels, float(device.bad_messages))
            if device.last_seen_ms > 0:
                seen_s = device.last_seen_ms / 1000
                last_seen.add_metric(labels, seen_s)
                age.add_metric(labels, max(0.0, now - seen_s))
            for metric, value in sorted(device.metrics.items()):
                values.add_metric([*labels, metric], float(value))
        yield from (up, state, code, last_seen, age, interval, bad, values)

    # telemetry sinks -----------------------------------------------------------------------------
    def _sinks(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for sink in self.sources.sinks:
            for key, value in sink.stats().items():
                number = _number(value)
                if number is None:
                    continue
                stat = _NOT_A_NAME.sub("_", key)
                family = families.get(stat)
                if family is None:
                    family = families[stat] = GaugeMetricFamily(
                        f"{PREFIX}telemetry_sink_{stat}",
                        f"Telemetry sink statistic {key!r}",
                        labels=["sink"],
                    )
                family.add_metric([sink.name], number)
        yield from (families[k] for k in sorted(families))

    # recorder, transcriber, microphones, live sockets ---------------------------------------------
    def _recorder(self) -> Iterator[Metric]:
        recorder = self.sources.recorder
        assert recorder is not None
        labels = ["camera", "venue"]
        specs = (
            ("expected_fps", "camera_fps_expected", "Configured frame rate"),
            ("received_fps", "camera_fps_received", "Frames per second received (last interval)"),
            ("written_fps", "camera_fps_written", "Frames per second written (last interval)"),
            ("reconnects_1h", "camera_reconnects_last_hour", "Reconnect attempts in the last hour"),
            ("segment_age_s", "camera_segment_age_seconds", "Seconds since the last segment ended"),
            ("index_lag_s", "camera_index_lag_seconds", "Segment close to hash-in-chain, last one"),
            ("recording", "camera_recording", "1 while the camera records"),
            ("state", "camera_state_code", "0 offline, 1 online, 2 fault"),
        )
        gauges = {key: GaugeMetricFamily(PREFIX + n, h, labels=labels) for key, n, h in specs}
        dropped = CounterMetricFamily(
            PREFIX + "camera_frames_dropped", "Frames the recorder dropped", labels=labels
        )
        for cam in recorder.status():
            values = [str(cam["camera"]), str(cam["venue"])]
            for key, family in gauges.items():
                number = _number(cam.get(key))
                if number is None or (key == "segment_age_s" and number < 0):
                    continue  # -1: no segment yet
                family.add_metric(values, number)
            dropped.add_metric(values, float(cam.get("dropped_frames", 0.0)))
        yield from gauges.values()
        yield dropped
        summary = recorder.summary()
        yield CounterMetricFamily(
            PREFIX + "recorder_segments_indexed",
            "Segments hashed into the evidence chain",
            value=float(summary["segments_indexed"]),
        )
        yield CounterMetricFamily(
            PREFIX + "recorder_index_failures",
            "Segments that could not be indexed",
            value=float(summary["index_failures"]),
        )
        yield CounterMetricFamily(
            PREFIX + "recorder_outages", "Camera outages (gaps)", value=float(summary["outages"])
        )

    def _transcriber(self) -> Iterator[Metric]:
        transcriber = self.sources.transcriber
        assert transcriber is not None
        stats = transcriber.stats()
        tracks: Mapping[str, Mapping[str, Any]] = stats.get("tracks", {})
        yield _gauge(
            "transcriber_model_loaded", "1 when the speech model is loaded", transcriber.running
        )
        yield _gauge("transcriber_channels", "Seat channels being transcribed", len(tracks))
        yield CounterMetricFamily(
            PREFIX + "transcriber_finals", "Final segments stored", value=float(stats["finals"])
        )
        yield CounterMetricFamily(
            PREFIX + "transcriber_partials",
            "Partial hypotheses announced",
            value=float(stats["partials"]),
        )
        rtf = GaugeMetricFamily(
            PREFIX + "transcriber_rtf",
            "Real-time factor of a channel (decode time / audio time; above 1 falls behind)",
            labels=["track"],
        )
        dropped = CounterMetricFamily(
            PREFIX + "transcriber_dropped_chunks",
            "Audio chunks dropped because the channel's queue was full",
            labels=["track"],
        )
        for track, figures in sorted(tracks.items()):
            number = _number(figures.get("rtf"))
            if number is not None:
                rtf.add_metric([track], number)
            dropped.add_metric([track], float(figures.get("dropped", 0)))
        yield rtf
        yield dropped

    def _audio(self) -> Iterator[Metric]:
        audio = self.sources.audio
        assert audio is not None
        by_device: Mapping[str, Mapping[str, Any]] = audio.summary().get("by_device", {})
        specs = (
            ("frames_received", "mic_frames_received", "Audio frames received"),
            ("frames_lost", "mic_frames_lost", "Audio frames lost (gaps in the recording)"),
            ("gaps", "mic_gaps", "Gaps in a microphone's audio"),
            ("late", "mic_frames_late", "Frames that came after their slot was played out"),
            ("dropped_queue_full", "mic_frames_dropped", "Frames dropped: writer queue full"),
        )
        families = {key: CounterMetricFamily(PREFIX + n, h, labels=["mic"]) for key, n, h in specs}
        for mic, stats in sorted(by_device.items()):
            for key, family in families.items():
                family.add_metric([mic], float(stats.get(key, 0)))
        yield from families.values()

    def _live(self) -> Iterator[Metric]:
        live = self.sources.live
        assert live is not None
        stats = live.stats()
        yield _gauge("websocket_clients", "Console live sockets connected", stats["clients"])
        yield _gauge(
            "websocket_queued", "Messages waiting in live sockets' queues", stats["queued"]
        )


def _gauge(name: str, help_: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, help_, value=float(value))


def _number(value: Any) -> float | None:
    """The value as a float (NaN and infinities included), or ``None`` for a non-number."""
    if isinstance(value, bool | int | float):
        return float(value)
    return None


# the route ----------------------------------------------------------------------------------------

METRICS_KEY: Final = web.AppKey("metrics_registry", CollectorRegistry)


def build_registry(sources: MetricsSources) -> CollectorRegistry:
    """A fresh registry holding one :class:`HubCollector` (no process-wide default registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(sources))
    return registry


def install_metrics(
    app: web.Application,
    service: HubService,
    *,
    sinks: Sequence[StatsSource] = (),
    recorder: CameraHealth | None = None,
    transcriber: TranscriberStats | None = None,
    audio: AudioSummary | None = None,
) -> CollectorRegistry:
    """Serve ``/metrics`` of ``app`` from these sources (call it in the console's ``setup``).

    The console's live hub, when the app has one, is added for the WebSocket client count.
    Returns the registry (the app keeps it under :data:`METRICS_KEY`).
    """
    live = app.get(LIVE_KEY)
    registry = build_registry(
        MetricsSources(
            service,
            sinks=sinks,
            recorder=recorder,
            transcriber=transcriber,
            audio=audio,
            live=live,
        )
    )
    app[METRICS_KEY] = registry
    return registry


class _Snapshot:
    """Metric families already collected, for ``generate_latest`` (it only calls ``collect``)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


async def metrics(request: web.Request) -> web.Response:
    """The exposition text (Prometheus text format)."""
    registry = request.config_dict.get(METRICS_KEY)
    if registry is None:
        return web.json_response({"error": "metrics are not set up on this hub"}, status=503)
    # the numbers are read on the loop (the registry and the services are not thread-safe) and
    # the text is made in a thread: formatting a large court's samples took up to 0.6 s of the
    # loop during a telemetry flood (bench telemetry polls /metrics twice a second)
    snapshot = _Snapshot(list(registry.collect()))
    body = await asyncio.to_thread(generate_latest, snapshot)
    return web.Response(
        body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}
    )


ROUTES: Final[tuple[Route, ...]] = (Route("GET", METRICS_PATH, metrics, SCRAPERS),)


def _loop_and_link(stats: dict[str, Any]) -> Iterator[Metric]:
    """The loop's lateness (hub/loop_monitor.py) and the MQTT process (hub/mqtt_process.py)."""
    lag = GaugeMetricFamily(
        PREFIX + "loop_lag_seconds",
        "How late the hub's event loop ran what was due, over the last minute",
        labels=["quantile"],
    )
    for label, key in (
        ("0.5", "loop_lag_p50_ms"),
        ("0.99", "loop_lag_p99_ms"),
        ("1", "loop_lag_max_ms"),
    ):
        lag.add_metric([label], float(stats.get(key, 0.0)) / 1000)
    yield lag
    yield CounterMetricFamily(
        PREFIX + "loop_stalls",
        "Times the hub's loop ran 250 ms or more late",
        value=float(stats.get("loop_stalls", 0.0)),
    )
    if "mqtt_process_up" in stats:
        yield _gauge(
            "mqtt_process_up",
            "1 while the hub's MQTT connection process runs",
            stats["mqtt_process_up"],
        )
        yield CounterMetricFamily(
            PREFIX + "mqtt_process_restarts",
            "Times the hub's MQTT connection process died and was started again",
            value=float(stats["mqtt_process_restarts"]),
        )
