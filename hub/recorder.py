"""The video recorder: every configured camera recorded into hashed, chained, indexed segments.

One capture worker per camera (:mod:`hub.camera_copy` for H.264 network cameras,
:mod:`hub.camera_opencv` for MJPEG and USB ones) writes segments into the camera's
``.incoming/`` folder. For each closed segment the recorder (this module):

1. moves it to ``<camera>/<YYYYMMDD>/<camera>_<UTC start>Z.<ext>``;
2. hashes it into the camera's evidence chain and the index (:class:`RecordingIndex`), tagged
   with the hearing open in its venue — within a second of the writer closing it;
3. refreshes the camera's still frame for the video wall.

Outages are first-class: a camera without frames for ``stall_timeout_s`` gets a gap record
(camera, from, to, reason) and an alert; it is retried every ``reconnect_interval_s``. Files an
earlier run left in ``.incoming/`` (the hub was killed mid-segment) are indexed as *recovered*
at start — never deleted. Camera health goes to the registry every ``health_interval_s`` as the
devices of a pseudo agent ``video-<venue>`` (technician grid, telemetry listeners).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2

from hub.alerts import AlertBoard, Severity
from hub.camera_copy import CopyWorker, count_frames_in
from hub.camera_opencv import MIN_FREE_BYTES, Image, OpenCvWorker
from hub.camera_worker import (
    CameraStats,
    CaptureSettings,
    ClosedSegment,
    final_path,
    incoming_dir,
    now_ms,
)
from hub.live_transcoder import LiveTranscoder, still_from_segment
from hub.live_video import CameraView, FrameChannel, LiveVideo
from hub.recorder_config import CameraConfig, RecorderConfig
from hub.recording_index import RecordingIndex
from protocol.messages import DeviceInfo, DeviceStatus, Venue, VenueKind

log = logging.getLogger(__name__)

#: a still frame for the wall is refreshed this often even when nobody watches (OpenCV path)
STILL_EVERY_S = 2.0
#: a stream-copy camera's still is decoded from a closed segment at most this often (a 1080p
#: keyframe decode costs ~0.17 s of CPU: for every segment of 16 cameras, a quarter of a core)
STILL_COPY_EVERY_S = 60.0
JPEG_QUALITY = 75


class SessionLookup(Protocol):
    """Which hearing is open in a venue (:class:`hub.hearings.HearingService`)."""

    def active_session(self, venue: str) -> str | None:
        """The open hearing's id, or None."""


class DeviceReporter(Protocol):
    """Where camera health goes (:class:`hub.service.HubService`)."""

    def report_local_agent(self, agent_id: str, venue: Venue, devices: list[DeviceInfo]) -> None:
        """Register the pseudo agent of a venue's cameras."""

    def report_local_state(
        self, agent_id: str, device_id: str, state: DeviceStatus, reason: str = ""
    ) -> None:
        """A camera's state."""

    def report_local_telemetry(
        self, agent_id: str, device_id: str, metrics: dict[str, float]
    ) -> None:
        """A camera's health figures."""


def writer_min_free_bytes(headroom_mb: float) -> int:
    """Free space below which the OpenCV writer pauses instead of starting a segment.

    Below the configured headroom retention makes room, so the writer must not give up before
    retention acts: a fixed 64 MB stop with ``headroom_mb`` under 64 stopped the camera for good
    ("disk full") while retention saw nothing to do. Half the headroom (room left for the
    sweep to act), 256 kB at least, 64 MB at most.
    """
    half = int(headroom_mb * 1024 * 1024) // 2
    return min(MIN_FREE_BYTES, max(256 * 1024, half))


def video_agent_id(venue: str) -> str:
    """The pseudo agent whose devices are a venue's recorded cameras."""
    return f"video-{venue}"[:64]


#: a disk-full pause shorter than this between two segments is not a gap (segment boundaries
#: of continuous recording match within milliseconds)
DISK_FULL_GAP_MIN_MS = 250


@dataclass
class _Camera:
    """The recorder's runtime view of one camera."""

    config: CameraConfig
    stats: CameraStats = field(default_factory=CameraStats)
    channel: FrameChannel | None = None
    transcoder: LiveTranscoder | None = None
    task: asyncio.Task[None] | None = None
    down_since_ms: int | None = None
    gap_id: int | None = None
    fault: str = ""
    #: end of the last segment indexed, and where the hole of a "disk full" pause starts
    last_end_ms: int | None = None
    fault_from_ms: int | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_still: float = 0.0
    last_segment: Path | None = None
    last_live: float = 0.0
    # for rates between two health reports
    prev_at: float = field(default_factory=time.monotonic)
    prev_received: int = 0
    prev_written: int = 0
    prev_bytes: int = 0
    bytes_indexed: int = 0
    index_lag_s: float = 0.0
    index_lag_max_s: float = 0.0


class Recorder:
    """Records the configured cameras; implements :class:`hub.camera_worker.RecorderSink`."""

    def __init__(
        self,
        config: RecorderConfig,
        *,
        storage_root: Path,
        index: RecordingIndex,
        live: LiveVideo,
        alerts: AlertBoard | None = None,
        sessions: SessionLookup | None = None,
        reporter: DeviceReporter | None = None,
        timezone: str = "Asia/Shanghai",
    ) -> None:
        self.config = config
        self.storage_root = storage_root
        self.index = index
        self.live = live
        self.alerts = alerts
        self.sessions = sessions
        self.reporter = reporter
        self.settings = CaptureSettings(
            storage_root=storage_root,
            segment_s=config.segment_s,
            stall_timeout_s=config.stall_timeout_s,
            reconnect_interval_s=config.reconnect_interval_s,
            timezone=timezone,
        )
        self._cameras = {c.id: _Camera(c) for c in config.cameras}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._indexing: set[asyncio.Future[None]] = set()
        self.index_failures = 0
        self.segments_indexed = 0
        self.outages = 0

    # lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Recover what a crash left, then start every camera and the health reports."""
        self._register_devices()
        for cam in self._cameras.values():
            self._add_live(cam)
            await self._recover(cam)
            if cam.config.record:
                cam.task = asyncio.create_task(self._supervise(cam), name=f"camera-{cam.config.id}")
        self._spawn(self._report_forever())
        log.info("recorder started cameras=%d root=%s", len(self._cameras), self.storage_root)

    async def stop(self) -> None:
        """Stop every camera; open segments are closed and indexed before this returns."""
        tasks = [c.task for c in self._cameras.values() if c.task is not None]
        for task in tasks:
            task.cancel()
        for cam in self._cameras.values():
            if cam.transcoder is not None:
                await cam.transcoder.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        # segments being indexed finish (never cancelled half way)
        await asyncio.gather(*self._indexing, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("recorder stopped segments_indexed=%d", self.segments_indexed)

    def summary(self) -> dict[str, Any]:
        """Totals for the demo and the CLI."""
        return {
            "cameras": len(self._cameras),
            "segments_indexed": self.segments_indexed,
            "index_failures": self.index_failures,
            "outages": self.outages,
            "frames_received": {c: cam.stats.frames_received for c, cam in self._cameras.items()},
            # the slowest close → hashed-into-the-chain of any segment since start
            "index_lag_max_s": max((c.index_lag_max_s for c in self._cameras.values()), default=0),
        }

    def camera_ids(self) -> list[str]:
        """The configured cameras."""
        return list(self._cameras)

    def stats(self, camera_id: str) -> CameraStats | None:
        """A camera's live counters."""
        cam = self._cameras.get(camera_id)
        return cam.stats if cam else None

    def camera_config(self, camera_id: str) -> CameraConfig | None:
        """A configured camera (None for other tracks, e.g. audio seats)."""
        cam = self._cameras.get(camera_id)
        return cam.config if cam else None

    def live_transcoder(self, camera_id: str) -> LiveTranscoder | None:
        """The on-demand live decoder of a stream-copy camera (None for OpenCV cameras)."""
        cam = self._cameras.get(camera_id)
        return cam.transcoder if cam else None

    def status(self) -> list[dict[str, Any]]:
        """Per-camera state and health figures for the API."""
        return [
            {"camera": cam.config.id, "venue": cam.config.venue, **self._health(cam, peek=True)}
            for cam in self._cameras.values()
        ]

    async def _supervise(self, cam: _Camera) -> None:
        """Run the camera's worker; a crashed worker is logged and restarted, never fatal."""
        while True:
            worker: CopyWorker | OpenCvWorker
            if cam.config.capture_path == "copy":
                worker = CopyWorker(cam.config, self.settings, self, cam.stats)
            else:
                worker = OpenCvWorker(
                    cam.config,
                    self.settings,
                    self,
                    cam.stats,
                    on_frame=self._frame_hook(cam),
                    min_free_bytes=writer_min_free_bytes(self.config.headroom_mb),
                )
            try:
                await worker.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("camera worker crashed camera=%s; restarting", cam.config.id)
            await asyncio.sleep(self.config.reconnect_interval_s)

    # RecorderSink -------------------------------------------------------------------------------
    async def segment_closed(self, segment: ClosedSegment) -> None:
        """Move, hash, chain and index a closed segment; failures keep the file and alert.

        Shielded: a hub stopping mid-way must not leave a moved but unindexed file.
        """
        task = asyncio.ensure_future(self._index_segment(segment))
        self._indexing.add(task)
        task.add_done_callback(self._indexing.discard)
        await asyncio.shield(task)

    async def _index_segment(self, segment: ClosedSegment) -> None:
        cam = self._cameras[segment.camera.id]
        try:
            dest = await asyncio.to_thread(self._move_into_place, segment)
            session = self.sessions.active_session(cam.config.venue) if self.sessions else None
            record = await self.index.add_segment(
                camera=cam.config.id,
                venue=cam.config.venue,
                session_id=session,
                path=dest,
                start_ms=segment.start_ms,
                end_ms=max(segment.end_ms, segment.start_ms),
                frames=segment.frames,
                recovered=segment.recovered,
            )
        except (OSError, ValueError) as exc:
            self.index_failures += 1
            log.error(
                "segment not indexed camera=%s path=%s error=%s", cam.config.id, segment.path, exc
            )
            await self._alert(
                f"index-failed:{cam.config.id}", f"录像未入索引 / segment not indexed: {exc}"
            )
            return
        self.segments_indexed += 1
        cam.bytes_indexed += record.bytes
        if not segment.recovered:
            # closed → chained: the evidence promise is "within 1 s" (the worst one is kept)
            lag_s = max(0.0, (now_ms() - segment.closed_ms) / 1000)
            cam.index_lag_s = lag_s
            cam.index_lag_max_s = max(cam.index_lag_max_s, lag_s)
        if cam.fault == "disk full":
            self._set_fault(cam, "")
            self._spawn(self._disk_full_gap(cam, record.start_ms))
        cam.last_end_ms = max(cam.last_end_ms or 0, record.end_ms)
        cam.last_segment = dest
        if self._wants_still(cam):
            cam.last_still = time.monotonic()
            self._spawn(self._still_from(cam, dest))

    def camera_up(self, camera: CameraConfig, at_ms: int) -> None:
        """Frames arrive: end the outage (gap closed, alert cleared, wall shows it live)."""
        cam = self._cameras[camera.id]
        was_down = cam.down_since_ms is not None
        cam.down_since_ms = None
        self.live.update(camera.id, state="online", recording=camera.record, offline_since_ms=None)
        self._report_state(cam)
        if was_down:
            self._spawn(self._end_outage(cam, at_ms))

    def camera_down(self, camera: CameraConfig, at_ms: int, reason: str) -> None:
        """No frames since ``at_ms``: one gap and one alert per outage."""
        cam = self._cameras[camera.id]
        if cam.down_since_ms is not None:
            return
        cam.down_since_ms = at_ms
        self.outages += 1
        log.warning("camera down camera=%s since_ms=%d reason=%s", camera.id, at_ms, reason)
        self.live.update(camera.id, state="offline", recording=False, offline_since_ms=at_ms)
        self._report_state(cam, reason)
        self._spawn(self._start_outage(cam, at_ms, reason))
        if cam.config.capture_path == "copy" and cam.last_segment is not None:
            # the wall's "offline since" tile shows the last picture recorded
            self._spawn(self._still_from(cam, cam.last_segment))

    def camera_fault(self, camera: CameraConfig, reason: str) -> None:
        """Frames arrive but cannot be recorded (disk full, unwritable folder)."""
        self._set_fault(self._cameras[camera.id], reason)

    # outages and alerts -------------------------------------------------------------------------
    async def _start_outage(self, cam: _Camera, at_ms: int, reason: str) -> None:
        async with cam.lock:
            try:
                gap = await self.index.open_gap(
                    camera=cam.config.id, venue=cam.config.venue, from_ms=at_ms, reason=reason
                )
                cam.gap_id = gap.id
            except Exception:
                log.exception("gap not recorded camera=%s", cam.config.id)
            message = f"摄像机离线 {cam.config.display_name} / camera lost: {reason}"
            await self._alert(f"camera-lost:{cam.config.id}", message)

    async def _end_outage(self, cam: _Camera, at_ms: int) -> None:
        async with cam.lock:
            if cam.gap_id is not None:
                try:
                    await self.index.close_gap(cam.gap_id, at_ms)
                except (ValueError, KeyError) as exc:
                    log.error("gap not closed camera=%s error=%s", cam.config.id, exc)
                cam.gap_id = None
            if self.alerts is not None:
                await self.alerts.clear(f"camera-lost:{cam.config.id}")

    def _set_fault(self, cam: _Camera, reason: str) -> None:
        if cam.fault == reason:
            return
        if reason == "disk full":
            cam.fault_from_ms = cam.last_end_ms
        cam.fault = reason
        self.live.update(cam.config.id, state="fault" if reason else "online")
        self._report_state(cam, reason)
        key = f"camera-fault:{cam.config.id}"
        if reason:
            message = f"录像故障 {cam.config.display_name} / recording fault: {reason}"
            self._spawn(self._alert(key, message, Severity.CRITICAL))
        elif self.alerts is not None:
            self._spawn(self.alerts.clear(key))

    async def _disk_full_gap(self, cam: _Camera, resumed_ms: int) -> None:
        """The stretch a full disk kept from being recorded is a gap: from the end of the last
        segment before the pause to the first one after it (the first full chaos run found
        11-14 s holes without a gap record)."""
        from_ms, cam.fault_from_ms = cam.fault_from_ms, None
        if from_ms is None or resumed_ms - from_ms < DISK_FULL_GAP_MIN_MS:
            return
        try:
            gap = await self.index.open_gap(
                camera=cam.config.id,
                venue=cam.config.venue,
                from_ms=from_ms,
                reason="磁盘已满，未录制 / not recorded: disk full",
            )
            await self.index.close_gap(gap.id, resumed_ms)
        except Exception:
            log.exception("disk-full gap not recorded camera=%s", cam.config.id)

    async def _alert(self, key: str, message: str, severity: Severity = Severity.WARNING) -> None:
        if self.alerts is not None:
            await self.alerts.raise_alert(key, message, source="recorder", severity=severity)

    # files --------------------------------------------------------------------------------------
    def _move_into_place(self, segment: ClosedSegment) -> Path:
        """Move a closed segment to its dated folder (atomic rename; never overwrites)."""
        dest = final_path(
            self.storage_root, segment.camera.id, segment.start_ms, segment.path.suffix
        )
        dest.parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while dest.exists():  # two segments starting in the same millisecond (clock step)
            dest = dest.with_name(f"{dest.stem}-{n}{dest.suffix}")
            n += 1
        segment.path.rename(dest)
        return dest

    async def _recover(self, cam: _Camera) -> None:
        """Index what an earlier run left in ``.incoming/`` (the hub died mid-segment)."""
        folder = incoming_dir(self.storage_root, cam.config.id)
        leftovers = await asyncio.to_thread(_leftover_media, folder)
        for path in leftovers:
            st = await asyncio.to_thread(path.stat)
            if st.st_size == 0:
                # no byte of video: nothing to keep, and left there a later verify would report
                # it as a file no chain entry knows (ADDED)
                log.info("empty leftover segment removed path=%s", path)
                await asyncio.to_thread(path.unlink, missing_ok=True)
                continue
            frames = await asyncio.to_thread(count_frames_in, path)
            end_ms = int(st.st_mtime * 1000)
            start_ms = end_ms - int(frames / cam.config.fps * 1000)
            log.warning("recovering segment left by a crash camera=%s path=%s", cam.config.id, path)
            await self.segment_closed(
                ClosedSegment(cam.config, path, start_ms, end_ms, frames, recovered=True)
            )

    # live and stills ----------------------------------------------------------------------------
    def _add_live(self, cam: _Camera) -> None:
        config = cam.config
        view = CameraView(
            id=config.id,
            name=config.display_name,
            venue=config.venue,
            venue_kind=config.venue_kind,
            state="starting" if config.record else "offline",
            recording=False,
            last_frame_ms=None,
            offline_since_ms=None,
            live_roles=config.allowed_live_roles(),
        )
        if config.capture_path != "copy":
            cam.channel = self.live.add_camera(view)
            return
        # a stream-copy camera is decoded for the wall only while somebody watches

        def first_viewer() -> None:
            if cam.transcoder is not None:
                cam.transcoder.start()

        def last_viewer() -> None:
            if cam.transcoder is not None:
                self._spawn(cam.transcoder.stop())

        cam.channel = self.live.add_camera(
            view, on_first_viewer=first_viewer, on_last_viewer=last_viewer
        )
        cam.transcoder = LiveTranscoder(
            config, cam.channel, fps=self.config.live_fps, width=self.config.live_width
        )

    def _frame_hook(self, cam: _Camera) -> Callable[[Image, int], None]:
        """OpenCV path: JPEG-encode a frame for the wall when watched (at live_fps) or for the
        still (every STILL_EVERY_S) — one encode shared by every viewer."""
        live_every = 1.0 / self.config.live_fps
        width = self.config.live_width

        def on_frame(frame: Image, ts_ms: int) -> None:
            channel = cam.channel
            if channel is None:
                return
            now = time.monotonic()
            watched = channel.viewers > 0 and now - cam.last_live >= live_every
            if not watched and now - cam.last_still < STILL_EVERY_S:
                return
            cam.last_live = cam.last_still = now
            if frame.shape[1] > width:
                height = int(frame.shape[0] * width / frame.shape[1]) // 2 * 2
                frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if ok:
                channel.publish_threadsafe(jpeg.tobytes(), ts_ms)

        return on_frame

    def _wants_still(self, cam: _Camera) -> bool:
        """A stream-copy camera nobody watches: refresh its wall still now and then."""
        if cam.config.capture_path != "copy" or cam.channel is None:
            return False
        if cam.transcoder is not None and cam.transcoder.running:
            return False  # live frames flow
        never = cam.channel.latest() is None
        return never or time.monotonic() - cam.last_still >= STILL_COPY_EVERY_S

    async def _still_from(self, cam: _Camera, path: Path) -> None:
        jpeg = await asyncio.to_thread(still_from_segment, path, self.config.live_width)
        if jpeg is not None and cam.channel is not None:
            cam.channel.publish(jpeg, cam.stats.last_frame_ms or now_ms())

    # health -------------------------------------------------------------------------------------
    def _register_devices(self) -> None:
        if self.reporter is None:
            return
        by_venue: dict[str, list[CameraConfig]] = {}
        for cam in self._cameras.values():
            by_venue.setdefault(cam.config.venue, []).append(cam.config)
        for venue, cameras in by_venue.items():
            devices = [
                DeviceInfo(
                    id=c.id,
                    kind="camera",
                    model=f"{c.capture_path}:{c.container if c.capture_path == 'copy' else c.encode}",
                    heartbeat_s=self.config.health_interval_s,
                )
                for c in cameras
            ]
            kind = VenueKind(cameras[0].venue_kind)
            self.reporter.report_local_agent(
                video_agent_id(venue), Venue(id=venue, kind=kind, name=venue), devices
            )

    def _report_state(self, cam: _Camera, reason: str = "") -> None:
        if self.reporter is None:
            return
        if cam.fault:
            state, reason = DeviceStatus.FAULT, cam.fault
        elif cam.down_since_ms is not None:
            state = DeviceStatus.OFFLINE
        else:
            state = DeviceStatus.ONLINE
        self.reporter.report_local_state(
            video_agent_id(cam.config.venue), cam.config.id, state, reason
        )

    async def _report_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            for cam in self._cameras.values():
                try:
                    metrics = self._health(cam)
                    self.live.update(cam.config.id, last_frame_ms=cam.stats.last_frame_ms)
                    if self.reporter is not None:
                        self.reporter.report_local_telemetry(
                            video_agent_id(cam.config.venue), cam.config.id, metrics
                        )
                except Exception:
                    log.exception("camera health report failed camera=%s", cam.config.id)

    def _health(self, cam: _Camera, *, peek: bool = False) -> dict[str, float]:
        """Health figures since the last report (``peek``: without starting a new interval)."""
        stats = cam.stats
        now = time.monotonic()
        dt = max(now - cam.prev_at, 1e-3)
        received = (stats.frames_received - cam.prev_received) / dt
        written = (stats.frames_written - cam.prev_written) / dt
        rate = (cam.bytes_indexed - cam.prev_bytes) / dt
        if not peek:
            cam.prev_at = now
            cam.prev_received = stats.frames_received
            cam.prev_written = stats.frames_written
            cam.prev_bytes = cam.bytes_indexed
        last_end = stats.last_segment_end_ms
        state = 2.0 if cam.fault else (0.0 if cam.down_since_ms is not None else 1.0)
        return {
            "expected_fps": cam.config.fps,
            "received_fps": round(received, 2),
            "written_fps": round(written, 2),
            "dropped_frames": float(stats.frames_dropped),
            "reconnects_1h": float(stats.reconnects_last_hour()),
            "segment_age_s": round((now_ms() - last_end) / 1000, 1) if last_end else -1.0,
            "bytes_per_s": round(rate, 1),
            # seconds from a segment's close to its hash in the chain (last one)
            "index_lag_s": round(cam.index_lag_s, 3),
            "recording": 1.0 if cam.task is not None and state == 1.0 else 0.0,
            # numeric state code: 0 offline, 1 online, 2 fault (telemetry is numbers only)
            "state": state,
        }

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _leftover_media(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix in {".ts", ".mkv", ".mp4", ".avi"}
    )
