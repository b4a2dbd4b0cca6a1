"""A camera paused by a full disk: the stretch it could not record is a gap in the index, from
the end of its last segment to its first one after the pause (the first full chaos run found
11-14 s holes without a gap record). A real RecordingIndex and real segment files; the camera
worker is left out (the recorder's sink interface is driven directly)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hub.camera_worker import ClosedSegment, incoming_dir
from hub.evidence import verify_recordings
from hub.live_video import LiveVideo
from hub.recorder import Recorder
from hub.recorder_config import CameraConfig, RecorderConfig
from hub.recording_index import DB_FILE, RecordingIndex

T0 = 1_795_000_000_000
# record=False: no capture worker (nothing to connect to); its segments are handed in below
CAM = CameraConfig(
    id="court-1-cam-1", venue="court-1", url="http://127.0.0.1:9/cam", fps=10, record=False
)


def segment(storage: Path, start_ms: int, end_ms: int) -> ClosedSegment:
    folder = incoming_dir(storage, CAM.id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{CAM.id}_{start_ms}.avi"
    path.write_bytes(b"frames" * 100)
    return ClosedSegment(CAM, path, start_ms, end_ms, 20)


async def test_a_disk_full_pause_is_a_gap(tmp_path: Path) -> None:
    storage = tmp_path / "recordings"
    index = await RecordingIndex.open(tmp_path / DB_FILE, storage)
    recorder = Recorder(
        RecorderConfig(cameras=[CAM]), storage_root=storage, index=index, live=LiveVideo()
    )
    await recorder.start()
    try:
        await recorder.segment_closed(segment(storage, T0, T0 + 2000))
        recorder.camera_fault(CAM, "disk full")
        await recorder.segment_closed(segment(storage, T0 + 9000, T0 + 11_000))
        # a short pause between two segments is not a hole
        recorder.camera_fault(CAM, "disk full")
        await recorder.segment_closed(segment(storage, T0 + 11_100, T0 + 13_000))
        async with asyncio.timeout(5):  # the gap is written by a task after the segment
            while not (gaps := await index.gaps(camera=CAM.id)):
                await asyncio.sleep(0.02)
        assert [(g.from_ms, g.to_ms) for g in gaps] == [(T0 + 2000, T0 + 9000)]
        assert "disk full" in gaps[0].reason
        assert verify_recordings(tmp_path / DB_FILE, storage).ok
    finally:
        await recorder.stop()
        await index.close()
