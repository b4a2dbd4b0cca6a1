"""The recorder in the running hub records an MJPEG camera (OpenCV path) and an H.264 camera
(stream copy) at once: playable segments of the right codec and size in dated folders with UTC
names, an intact evidence chain, and camera health in the hub's device registry."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from recorder_harness import (
    FPS,
    H264_CAM,
    HEIGHT,
    MJPEG_CAM,
    VENUE,
    WIDTH,
    HubRunner,
    camera_entry,
    ffprobe,
    hub_config,
    start_camera,
    video_of,
    wait_for,
    wait_segments,
)

from hub.camera_worker import now_ms
from hub.evidence import verify_recordings
from hub.recorder import video_agent_id
from hub.recording_index import DB_FILE, GapRecord
from simulators.camera import SimulatedCamera

pytestmark = pytest.mark.slow

NAME = re.compile(r"^(?P<cam>[a-z0-9-]+)_(?P<stamp>\d{8}T\d{6}\d{3})Z(-\d+)?\.(?P<ext>avi|ts)$")


@pytest.fixture
async def cameras() -> AsyncIterator[tuple[SimulatedCamera, SimulatedCamera]]:
    mjpeg = await start_camera(MJPEG_CAM, "mjpeg")
    h264 = await start_camera(H264_CAM, "h264")
    yield mjpeg, h264
    await asyncio.gather(mjpeg.stop(), h264.stop())


async def test_two_cameras_recorded_into_verified_segments_with_health(
    tmp_path: Path, cameras: tuple[SimulatedCamera, SimulatedCamera]
) -> None:
    mjpeg, h264 = cameras
    config = hub_config(
        tmp_path / "hub",
        [camera_entry(MJPEG_CAM, mjpeg.url), camera_entry(H264_CAM, h264.url)],
    )
    hub = HubRunner(config)
    runtime = await hub.start()
    try:
        video = video_of(runtime)
        storage = video.index.storage_root
        # the first segment of a run may be short (it starts with the connection): skip it
        mj_rows, h_rows = await asyncio.gather(
            wait_segments(video, MJPEG_CAM, 4), wait_segments(video, H264_CAM, 4)
        )

        def health() -> dict[str, dict[str, float]] | None:
            both: dict[str, dict[str, float]] = {}
            for cam in (MJPEG_CAM, H264_CAM):
                device = runtime.service.registry.device(video_agent_id(VENUE), cam)
                if device is None or device.metrics.get("received_fps", 0) <= 0:
                    return None
                both[cam] = device.metrics
            return both

        metrics = await wait_for(health, timeout=10, what="camera telemetry in the registry")
        for cam in (MJPEG_CAM, H264_CAM):
            assert metrics[cam]["expected_fps"] == FPS
            assert metrics[cam]["state"] == 1.0  # online
            assert metrics[cam]["recording"] == 1.0
    finally:
        await hub.stop()

    for rows, codec, ext in ((mj_rows, "mjpeg", "avi"), (h_rows, "h264", "ts")):
        for seg in rows:
            path = storage / seg.path
            assert path.is_file(), seg.path
            camera, day, name = Path(seg.path).parts
            match = NAME.match(name)
            assert match and match["cam"] == camera == seg.camera and match["ext"] == ext, seg.path
            start = datetime.fromtimestamp(seg.start_ms / 1000, UTC)
            assert day == start.strftime("%Y%m%d")
            expected_stamp = start.strftime("%Y%m%dT%H%M%S") + f"{seg.start_ms % 1000:03d}"
            assert match["stamp"] == expected_stamp  # UTC start in the name
            info = await asyncio.to_thread(ffprobe, path)
            assert info["codec_name"] == codec, (seg.path, info)
            assert (info["width"], info["height"]) == (WIDTH, HEIGHT), (seg.path, info)
            assert info["nb_read_frames"] > 0, (seg.path, info)
            # the index's frame count is the file's (allow a frame or two of decoder slack)
            assert abs(info["nb_read_frames"] - seg.frames) <= 2, (seg.path, info, seg.frames)
            assert not seg.recovered
        # full-length segments hold about segment_s of frames (the first may be short)
        assert any(seg.frames >= FPS for seg in rows[1:]), [s.frames for s in rows]

    report = await asyncio.to_thread(
        verify_recordings, runtime.data_dir / DB_FILE, storage, settle_s=0
    )
    assert report.ok, [p.line() for p in report.problems]
    assert report.segments_checked >= 8
    # nothing left in .incoming/ after a clean stop: every segment was closed and indexed
    for cam in (MJPEG_CAM, H264_CAM):
        leftovers = [
            p for p in (storage / cam / ".incoming").iterdir() if p.suffix in {".avi", ".ts"}
        ]
        assert leftovers == []


async def test_a_lost_camera_gets_a_gap_and_an_alert_until_it_is_back(
    tmp_path: Path, cameras: tuple[SimulatedCamera, SimulatedCamera]
) -> None:
    mjpeg, h264 = cameras
    config = hub_config(
        tmp_path / "hub",
        [camera_entry(MJPEG_CAM, mjpeg.url), camera_entry(H264_CAM, h264.url)],
    )
    hub = HubRunner(config)
    runtime = await hub.start()
    try:
        video = video_of(runtime)
        await asyncio.gather(wait_segments(video, MJPEG_CAM, 1), wait_segments(video, H264_CAM, 1))
        cut_ms = now_ms()
        for sim in (mjpeg, h264):  # the camera goes dark: connections dropped, new ones refused
            sim.refuse(True)
        await asyncio.gather(mjpeg.disconnect(), h264.disconnect())

        async def open_gaps() -> dict[str, GapRecord] | None:
            gaps = {g.camera: g for g in await video.index.gaps(open_only=True)}
            return gaps if set(gaps) == {MJPEG_CAM, H264_CAM} else None

        gaps = await wait_for(open_gaps, timeout=15, what="an open gap per camera")
        for gap in gaps.values():
            assert gap.venue == VENUE and gap.to_ms is None and gap.reason, gap
            # the gap starts at the last frame received, before we cut the camera (+ clock slack)
            assert gap.from_ms <= cut_ms + 1000, gap
        await wait_for(
            lambda: all(video.alerts.is_active(f"camera-lost:{c}") for c in gaps),
            timeout=10,
            what="camera-lost alerts",
        )
        # the wall and the registry say the cameras are down
        assert {v.id: v.state for v in video.live.cameras()} == {
            MJPEG_CAM: "offline",
            H264_CAM: "offline",
        }
        device = runtime.service.registry.device(video_agent_id(VENUE), MJPEG_CAM)
        assert device is not None and device.reported_state.value == "offline"

        back_ms = now_ms()
        for sim in (mjpeg, h264):
            sim.refuse(False)

        async def closed_gaps() -> list[GapRecord] | None:
            rows = [g for g in await video.index.gaps() if g.id in {x.id for x in gaps.values()}]
            return rows if rows and all(g.to_ms is not None for g in rows) else None

        closed = await wait_for(closed_gaps, timeout=20, what="the gaps to be closed")
        for gap in closed:
            assert gap.to_ms is not None and gap.from_ms < gap.to_ms and gap.to_ms >= back_ms
        await wait_for(
            lambda: not any(video.alerts.is_active(f"camera-lost:{c}") for c in gaps),
            timeout=10,
            what="camera-lost alerts to clear",
        )
        history = {a.key for a in await video.alerts.history() if a.cleared_ms is not None}
        assert {f"camera-lost:{c}" for c in gaps} <= history
        # recording goes on after the outage
        await asyncio.gather(
            wait_segments(video, MJPEG_CAM, 1, after_ms=back_ms),
            wait_segments(video, H264_CAM, 1, after_ms=back_ms),
        )
        assert len(await video.index.gaps()) == 2  # one gap per camera and outage
    finally:
        await hub.stop()
