"""What both capture paths (stream copy, OpenCV) share: file layout, health counters, the sink.

A capture worker owns one camera's upstream connection. It writes segments into the camera's
``.incoming/`` folder and hands each closed one to the :class:`RecorderSink` (the recorder), which
moves it to its dated folder, hashes it into the evidence chain and indexes it. A worker never
deletes a file: whatever is in ``.incoming/`` after a crash is indexed as *recovered* at start.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from hub.recorder_config import CameraConfig

INCOMING = ".incoming"
#: reconnects counted over this window for the health report
RECONNECT_WINDOW_S = 3600.0


def now_ms() -> int:
    """Wall-clock UTC milliseconds."""
    return int(time.time() * 1000)


def incoming_dir(storage_root: Path, camera_id: str) -> Path:
    """Where a camera's open segments are written."""
    return storage_root / camera_id / INCOMING


def final_path(storage_root: Path, camera_id: str, start_ms: int, suffix: str) -> Path:
    """``<root>/<camera>/<YYYYMMDD>/<camera>_<YYYYMMDDTHHMMSSmmm>Z<suffix>`` (UTC)."""
    start = datetime.fromtimestamp(start_ms / 1000, UTC)
    stamp = start.strftime("%Y%m%dT%H%M%S") + f"{start_ms % 1000:03d}Z"
    return storage_root / camera_id / start.strftime("%Y%m%d") / f"{camera_id}_{stamp}{suffix}"


@dataclass(frozen=True)
class CaptureSettings:
    """The recorder-wide knobs a capture worker needs."""

    storage_root: Path
    segment_s: float = 10.0
    stall_timeout_s: float = 10.0
    reconnect_interval_s: float = 5.0
    #: the OpenCV path burns this zone's local time (and the camera id) into every frame
    timezone: str = "Asia/Shanghai"


@dataclass
class CameraStats:
    """Counters a worker updates (from its threads too: plain ints, read racily by design)."""

    frames_received: int = 0
    frames_written: int = 0
    frames_dropped: int = 0
    bytes_written: int = 0
    segments_closed: int = 0
    last_frame_ms: int | None = None
    last_segment_end_ms: int | None = None
    width: int = 0
    height: int = 0
    reconnects: collections.deque[float] = field(default_factory=collections.deque)

    def note_reconnect(self, at: float | None = None) -> None:
        """Count one reconnect attempt (kept for :data:`RECONNECT_WINDOW_S`)."""
        self.reconnects.append(time.monotonic() if at is None else at)

    def reconnects_last_hour(self) -> int:
        """Reconnect attempts in the last hour."""
        horizon = time.monotonic() - RECONNECT_WINDOW_S
        while self.reconnects and self.reconnects[0] < horizon:
            self.reconnects.popleft()
        return len(self.reconnects)


@dataclass(frozen=True)
class ClosedSegment:
    """A segment file the worker finished writing (still in ``.incoming/``)."""

    camera: CameraConfig
    path: Path
    start_ms: int
    end_ms: int
    frames: int
    #: the file was not closed by its writer (the hub or the writer died): indexed as recovered
    recovered: bool = False
    #: when the writer closed it (UTC ms): the index reports how long hashing it took
    closed_ms: int = field(default_factory=now_ms)


class RecorderSink(Protocol):
    """What a capture worker reports to (implemented by :class:`hub.recorder.Recorder`)."""

    async def segment_closed(self, segment: ClosedSegment) -> None:
        """Index a closed segment (move, hash, chain). Must not raise."""

    def camera_up(self, camera: CameraConfig, at_ms: int) -> None:
        """Frames arrive (again): close the open gap."""

    def camera_down(self, camera: CameraConfig, at_ms: int, reason: str) -> None:
        """No frames since ``at_ms``: open a gap, raise an alert."""

    def camera_fault(self, camera: CameraConfig, reason: str) -> None:
        """Frames arrive but cannot be recorded (e.g. disk full)."""
