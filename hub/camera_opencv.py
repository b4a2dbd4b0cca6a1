"""OpenCV recording of MJPEG-over-HTTP and USB cameras.

These cameras send frames, not an H.264 stream, so there is nothing to stream-copy: frames are
decoded by ``cv2.VideoCapture``, stamped with a burnt-in time code and written by
``cv2.VideoWriter`` as MJPG ``.avi`` (an MJPG AVI stays playable after a ``kill -9``; an
``mp4v`` MP4 keeps nothing), or piped to ffmpeg's libx264 when ``encode = "x264"``. OpenCV's AVI
writer buffers 256 kB, so a ``kill -9`` loses the open segment's unflushed tail: a few frames at
1080p, up to ~3 s at 320x240 (measured by tests/integration/test_recorder_crash.py).

Two threads per camera, so a slow disk never stalls the camera's connection:

- the *capture* thread reads frames, counts them, hands each to the live feed and queues it;
  when the queue is full (the writer is behind) the frame is dropped and counted;
- the *writer* thread cuts segments every ``segment_s`` seconds of wall time and reports each
  closed one to the recorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import shutil
import subprocess
import threading
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np

from hub.camera_worker import (
    CameraStats,
    CaptureSettings,
    ClosedSegment,
    RecorderSink,
    incoming_dir,
    now_ms,
)
from hub.child_process import die_with_parent
from hub.recorder_config import CameraConfig

log = logging.getLogger(__name__)

Image = np.ndarray[Any, Any]
#: called from the capture thread for every frame (the live feed); must be quick
FrameCallback = Callable[[Image, int], None]
#: a segment is not started with less free space than this (the writer pauses instead)
MIN_FREE_BYTES = 64 * 1024 * 1024


class _Break:
    """Queue marker: the connection ended, close the open segment."""


_BREAK = _Break()


@dataclass
class _Segment:
    path: Path
    start_ms: int
    end_ms: int
    frames: int
    size: tuple[int, int]
    writer: Any  # cv2.VideoWriter | subprocess.Popen[bytes]


class OpenCvWorker:
    """Records one MJPEG/USB camera through OpenCV, forever, reconnecting after outages."""

    def __init__(
        self,
        camera: CameraConfig,
        settings: CaptureSettings,
        sink: RecorderSink,
        stats: CameraStats,
        *,
        on_frame: FrameCallback | None = None,
        min_free_bytes: int = MIN_FREE_BYTES,
    ) -> None:
        self.camera = camera
        self.settings = settings
        self.sink = sink
        self.stats = stats
        self.on_frame = on_frame
        self.min_free_bytes = min_free_bytes
        self._dir = incoming_dir(settings.storage_root, camera.id)
        self._zone = zoneinfo.ZoneInfo(settings.timezone)
        # two seconds of frames: the writer may lag that much (a busy disk, a CPU burst from
        # another camera) before frames are dropped and counted
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(4, int(2 * camera.fps)))
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._disk_full = False
        self._writer_done = asyncio.Event()

    async def run(self) -> None:
        """Record until cancelled; then the open segment is closed and indexed."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._dir.mkdir, parents=True, exist_ok=True)
        # own daemon threads, not the loop's executor: a capture blocked in a read (up to
        # stall_timeout_s) must not hold up the hub's shutdown
        name = f"camera-{self.camera.id}"
        capture = threading.Thread(target=self._capture_loop, name=f"{name}-capture", daemon=True)
        writer = threading.Thread(target=self._write_loop, name=f"{name}-writer", daemon=True)
        self._writer_done = asyncio.Event()
        writer.start()
        capture.start()
        try:
            await self._writer_done.wait()
            log.error("camera writer thread ended camera=%s", self.camera.id)
        finally:
            self._stop.set()
            await asyncio.to_thread(writer.join, 60)

    # capture thread -----------------------------------------------------------------------------
    def _capture_loop(self) -> None:
        down_since = now_ms()
        first = True
        while not self._stop.is_set():
            if not first:
                self.stats.note_reconnect()
            first = False
            cap = self._open()
            reason = "cannot connect"
            if cap is not None:
                reason = self._read_frames(cap)
                cap.release()
                if self.stats.last_frame_ms is not None and self.stats.last_frame_ms > down_since:
                    down_since = self.stats.last_frame_ms
            self._put(_BREAK)
            if self._stop.is_set():
                break
            self._threadsafe(self.sink.camera_down, self.camera, down_since, reason)
            self._stop.wait(self.settings.reconnect_interval_s)

    def _put(self, item: object) -> None:
        """Queue a marker, waiting for room (markers are never dropped) unless stopping."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _open(self) -> Any:
        url = self.camera.url
        timeout_ms = int(self.settings.stall_timeout_s * 1000)
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            timeout_ms,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            timeout_ms,
        ]
        if url.lower().startswith("usb:"):
            cap = cv2.VideoCapture(int(url[4:] or 0))
        elif url.startswith("/dev/video"):
            cap = cv2.VideoCapture(url, cv2.CAP_V4L2)
        else:
            cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            log.info("camera not reachable camera=%s", self.camera.id)
            cap.release()
            return None
        return cap

    def _read_frames(self, cap: Any) -> str:
        """Read until the stream fails or stops; returns why it ended."""
        up = False
        while not self._stop.is_set():
            ok, frame = cap.read()
            if not ok or frame is None:
                return "stream ended or stalled"
            ts = now_ms()
            stats = self.stats
            stats.frames_received += 1
            stats.last_frame_ms = ts
            stats.height, stats.width = frame.shape[:2]
            if not up:
                up = True
                log.info(
                    "camera up camera=%s size=%dx%d", self.camera.id, stats.width, stats.height
                )
                self._threadsafe(self.sink.camera_up, self.camera, ts)
            if self.on_frame is not None:
                try:
                    self.on_frame(frame, ts)
                except Exception:
                    log.exception("live frame callback failed camera=%s", self.camera.id)
            try:
                self._queue.put_nowait((frame, ts))
            except queue.Full:
                stats.frames_dropped += 1
        return "stopped"

    # writer thread ------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        try:
            self._write_segments()
        finally:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._writer_done.set)

    def _write_segments(self) -> None:
        segment: _Segment | None = None
        segment_ms = int(self.settings.segment_s * 1000)
        index = 0
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    break
                continue
            if isinstance(item, _Break):
                self._close(segment)
                segment = None
                continue
            frame, ts = cast(tuple[Image, int], item)
            size = (frame.shape[1], frame.shape[0])
            if segment is not None and (
                ts - segment.start_ms >= segment_ms or size != segment.size
            ):
                self._close(segment)
                segment = None
            if segment is None:
                index += 1
                segment = self._start(ts, size, index)
                if segment is None:
                    self.stats.frames_dropped += 1
                    continue
            self._stamp(frame, ts)
            if self._write(segment, frame):
                segment.frames += 1
                segment.end_ms = ts
                self.stats.frames_written += 1
            else:
                self.stats.frames_dropped += 1
        self._close(segment)

    def _start(self, ts: int, size: tuple[int, int], index: int) -> _Segment | None:
        if not self._has_room():
            return None
        suffix = ".ts" if self.camera.encode == "x264" else ".avi"
        path = self._dir / f"{self.camera.id}_{ts}_{index:06d}{suffix}"
        try:
            writer = self._open_writer(path, size)
        except (OSError, RuntimeError) as exc:
            log.error("cannot open segment camera=%s path=%s error=%s", self.camera.id, path, exc)
            self._threadsafe(self.sink.camera_fault, self.camera, f"cannot write: {exc}")
            return None
        return _Segment(path, ts, ts, 0, size, writer)

    def _has_room(self) -> bool:
        try:
            free = shutil.disk_usage(self._dir).free
        except OSError:
            free = 0
        full = free < self.min_free_bytes
        if full and not self._disk_full:
            log.error("disk full: pausing camera=%s free_bytes=%d", self.camera.id, free)
            self._threadsafe(self.sink.camera_fault, self.camera, "disk full")
        elif not full and self._disk_full:
            log.info("disk has room again camera=%s", self.camera.id)
        self._disk_full = full
        return not full

    def _open_writer(self, path: Path, size: tuple[int, int]) -> Any:
        fps = self.camera.fps
        if self.camera.encode == "x264":
            width, height = size
            args = ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "rawvideo"]
            args += ["-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "-"]
            args += ["-c:v", "libx264", "-preset", "ultrafast", "-f", "mpegts", str(path)]
            return subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - prctl only, resolved before fork
            )
        fourcc = cv2.VideoWriter.fourcc(*"MJPG")
        writer = cv2.VideoWriter(str(path), fourcc, fps, size)
        if not writer.isOpened():
            raise RuntimeError("VideoWriter did not open")
        return writer

    def _write(self, segment: _Segment, frame: Image) -> bool:
        writer = segment.writer
        if isinstance(writer, subprocess.Popen):
            try:
                assert writer.stdin is not None
                writer.stdin.write(frame.tobytes())
            except (BrokenPipeError, OSError) as exc:
                log.error("x264 writer failed camera=%s error=%s", self.camera.id, exc)
                return False
            return True
        writer.write(frame)
        return True

    def _close(self, segment: _Segment | None) -> None:
        if segment is None:
            return
        writer = segment.writer
        if isinstance(writer, subprocess.Popen):
            with contextlib.suppress(OSError):
                assert writer.stdin is not None
                writer.stdin.close()
            writer.wait()
        else:
            writer.release()
        # the last frame lasts one frame time: the segment ends when the next one begins
        end_ms = segment.end_ms + int(1000 / self.camera.fps)
        self.stats.segments_closed += 1
        self.stats.last_segment_end_ms = end_ms
        closed = ClosedSegment(self.camera, segment.path, segment.start_ms, end_ms, segment.frames)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self.sink.segment_closed(closed), loop)
            # wait, so segments are indexed in order and none is lost at shutdown
            with contextlib.suppress(Exception):
                future.result(timeout=60)

    def _stamp(self, frame: Image, ts: int) -> None:
        """Burn the court's local time (with its UTC offset) and the camera id into the frame."""
        local = datetime.fromtimestamp(ts / 1000, self._zone)
        text = f"{local:%Y-%m-%d %H:%M:%S}.{ts % 1000:03d} {local:%z} {self.camera.id}"
        scale = max(0.4, frame.shape[0] / 900)
        origin = (8, frame.shape[0] - 10)
        cv2.putText(frame, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(
            frame, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA
        )

    def _threadsafe(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)
