"""Frames counted from MPEG-TS headers match ffprobe's count, without starting a process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hub.camera_copy import count_frames_in, count_video_packets
from hub.ts_frames import count_ts_video_frames


def _encode(path: Path, frames: int, codec: str = "libx264") -> Path:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
         "-frames:v", str(frames), "-c:v", codec, "-f", "mpegts", str(path)],
        check=True,
    )  # fmt: skip
    return path


@pytest.mark.parametrize("frames", [1, 37, 100])
def test_count_matches_ffprobe(tmp_path: Path, frames: int) -> None:
    path = _encode(tmp_path / "seg.ts", frames)
    assert count_ts_video_frames(path) == frames == count_video_packets(path)


def test_h265_with_audio_counts_only_video(tmp_path: Path) -> None:
    path = tmp_path / "av.ts"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440", "-frames:v", "50", "-t", "2",
         "-c:v", "libx265", "-x265-params", "log-level=error", "-c:a", "aac",
         "-f", "mpegts", str(path)],
        check=True,
    )  # fmt: skip
    assert count_ts_video_frames(path) == count_video_packets(path) == 50


def test_a_cut_off_segment_counts_its_whole_frames(tmp_path: Path) -> None:
    """A hub killed mid-segment leaves a truncated file: counted, not an error."""
    path = _encode(tmp_path / "seg.ts", 50)
    data = path.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: len(data) // 2 + 77])
    frames = count_ts_video_frames(cut)
    assert frames is not None and 0 < frames < 50


def test_not_ts_falls_back_to_ffprobe(tmp_path: Path) -> None:
    junk = tmp_path / "x.ts"
    junk.write_bytes(bytes(range(256)) * 40)
    assert count_ts_video_frames(junk) is None
    assert count_frames_in(junk) == 0  # ffprobe finds no video either
    empty = tmp_path / "empty.ts"
    empty.write_bytes(b"")
    assert count_ts_video_frames(empty) == 0
