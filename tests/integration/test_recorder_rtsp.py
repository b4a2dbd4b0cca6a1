"""The stream-copy recorder (CopyWorker, real ffmpeg) records RTSP cameras and H.265 cameras:
segments that ffprobe reads as h264/hevc with frames; an RTSP camera that loses power is
reported down and, once it serves again, up, with new segments; a stalled one (session open, no
frames) likewise."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from recorder_harness import ffprobe, wait_for

from hub.camera_copy import CopyWorker
from hub.camera_worker import CameraStats, CaptureSettings, ClosedSegment, now_ms
from hub.recorder_config import CameraConfig
from simulators.camera import CameraSimConfig, SimulatedCamera
from simulators.rtsp_camera import SimulatedRtspCamera

pytestmark = pytest.mark.slow

WIDTH, HEIGHT, FPS = 320, 240, 10.0


@dataclass
class Event:
    kind: str  # up | down | fault
    at_ms: int
    reason: str = ""


@dataclass
class CollectingSink:
    """The recorder's side, reduced to lists: closed segments are moved out of ``.incoming/``
    (as the recorder does, so a later run does not hand them over again as recovered)."""

    done: Path
    segments: list[ClosedSegment] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    async def segment_closed(self, segment: ClosedSegment) -> None:
        target = self.done / segment.path.name
        await asyncio.to_thread(shutil.move, segment.path, target)
        self.segments.append(
            ClosedSegment(
                segment.camera, target, segment.start_ms, segment.end_ms, segment.frames,
                recovered=segment.recovered,
            )
        )  # fmt: skip

    def camera_up(self, camera: CameraConfig, at_ms: int) -> None:
        self.events.append(Event("up", at_ms))

    def camera_down(self, camera: CameraConfig, at_ms: int, reason: str) -> None:
        self.events.append(Event("down", at_ms, reason))

    def camera_fault(self, camera: CameraConfig, reason: str) -> None:
        self.events.append(Event("fault", now_ms(), reason))

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def with_frames(self, after_ms: int = 0) -> list[ClosedSegment]:
        return [s for s in self.segments if s.frames > 0 and s.start_ms >= after_ms]


@contextlib.asynccontextmanager
async def recording(tmp_path: Path, camera_id: str, url: str) -> AsyncIterator[CollectingSink]:
    """A CopyWorker recording ``url`` with short segments and quick outage detection."""
    camera = CameraConfig(id=camera_id, venue="court-1", url=url, fps=FPS)
    assert camera.capture_path == "copy"
    settings = CaptureSettings(
        storage_root=tmp_path / "storage",
        segment_s=1,
        stall_timeout_s=3,
        reconnect_interval_s=0.5,
    )
    done = tmp_path / "done" / camera_id
    done.mkdir(parents=True)
    sink = CollectingSink(done)
    worker = CopyWorker(camera, settings, sink, CameraStats())
    task = asyncio.create_task(worker.run(), name=f"copy-{camera_id}")
    try:
        yield sink
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def start(camera: SimulatedRtspCamera | SimulatedCamera) -> str:
    return await camera.start()


@pytest.fixture
async def cameras() -> AsyncIterator[dict[str, SimulatedRtspCamera | SimulatedCamera]]:
    cams: dict[str, SimulatedRtspCamera | SimulatedCamera] = {
        "rtsp-h264": SimulatedRtspCamera("court-1-cam-5", WIDTH, HEIGHT, FPS, "h264"),
        "rtsp-h265": SimulatedRtspCamera("court-1-cam-6", WIDTH, HEIGHT, FPS, "h265"),
        "http-h265": SimulatedCamera(
            CameraSimConfig(name="court-1-cam-7", codec="h265", width=WIDTH, height=HEIGHT, fps=FPS)
        ),
    }
    try:
        await asyncio.gather(*(start(c) for c in cams.values()))
        yield cams
    finally:
        await asyncio.gather(*(c.stop() for c in cams.values()))


async def test_rtsp_and_h265_cameras_recorded_by_stream_copy(
    tmp_path: Path, cameras: dict[str, SimulatedRtspCamera | SimulatedCamera]
) -> None:
    expected = {"rtsp-h264": "h264", "rtsp-h265": "hevc", "http-h265": "hevc"}
    async with contextlib.AsyncExitStack() as stack:
        sinks = {
            cid: await stack.enter_async_context(recording(tmp_path, cid, cam.url))
            for cid, cam in cameras.items()
        }
        # the first segment starts with the connection and may be short: wait for two
        for cid, sink in sinks.items():
            await wait_for(
                lambda s=sink: len(s.with_frames()) >= 2, timeout=20, what=f"2 segments of {cid}"
            )
    for cid, sink in sinks.items():
        assert sink.kinds()[0] == "up", (cid, sink.events)
        assert not [s for s in sink.segments if s.recovered], cid
        for segment in sink.with_frames():
            info = await asyncio.to_thread(ffprobe, segment.path)
            assert info["codec_name"] == expected[cid], (cid, info)
            assert (info["width"], info["height"]) == (WIDTH, HEIGHT), (cid, info)
            assert info["nb_read_frames"] > 0, (cid, segment.path)
            assert segment.end_ms > segment.start_ms, (cid, segment)


async def test_rtsp_camera_cut_is_down_then_up_with_new_segments(tmp_path: Path) -> None:
    camera = SimulatedRtspCamera("court-1-cam-8", WIDTH, HEIGHT, FPS, "h264")
    url = await camera.start()
    try:
        async with recording(tmp_path, "rtsp-cut", url) as sink:
            await wait_for(sink.with_frames, timeout=20, what="a first segment")
            assert sink.kinds() == ["up"], sink.events

            await camera.cut()
            cut_ms = now_ms()
            down = await wait_for(
                lambda: [e for e in sink.events if e.kind == "down"],
                timeout=15,
                what="camera_down after the cut",
            )
            # the outage starts at the last frame received: no later than the cut
            assert down[0].at_ms <= cut_ms + 2000, (down[0], cut_ms)
            # reconnect attempts while the camera is off are refused, and never count as up
            await wait_for(
                lambda: "refused" in " ".join(e.reason for e in sink.events).lower(),
                timeout=15,
                what="a refused reconnect",
            )
            assert sink.kinds().count("up") == 1, sink.events

            await camera.restore()
            back_ms = now_ms()
            await wait_for(
                lambda: sink.kinds()[-1] == "up" and sink.kinds().count("up") == 2,
                timeout=20,
                what="camera_up after restore",
            )
            assert [e for e in sink.events if e.kind == "up"][-1].at_ms >= back_ms
            fresh = await wait_for(
                lambda: sink.with_frames(after_ms=back_ms),
                timeout=20,
                what="a segment recorded after the restore",
            )
            info = await asyncio.to_thread(ffprobe, fresh[0].path)
            assert info["codec_name"] == "h264" and info["nb_read_frames"] > 0, info
    finally:
        await camera.stop()


async def test_rtsp_camera_stall_is_down_then_up_on_resume(tmp_path: Path) -> None:
    camera = SimulatedRtspCamera("court-1-cam-9", WIDTH, HEIGHT, FPS, "h265")
    url = await camera.start()
    try:
        async with recording(tmp_path, "rtsp-stall", url) as sink:
            await wait_for(sink.with_frames, timeout=20, what="a first segment")
            camera.stall()  # the session stays open, no frames arrive
            await wait_for(
                lambda: [e for e in sink.events if e.kind == "down"],
                timeout=15,
                what="camera_down while stalled",
            )
            assert sink.kinds().count("up") == 1, sink.events
            camera.resume()
            back_ms = now_ms()
            await wait_for(
                lambda: sink.kinds().count("up") == 2, timeout=20, what="camera_up after resume"
            )
            fresh = await wait_for(
                lambda: sink.with_frames(after_ms=back_ms),
                timeout=20,
                what="a segment recorded after the resume",
            )
            info = await asyncio.to_thread(ffprobe, fresh[0].path)
            assert info["codec_name"] == "hevc" and info["nb_read_frames"] > 0, info
    finally:
        await camera.stop()
