"""Shared parts of the recorder's integration tests: simulated cameras, a whole hub recording
them (run_hub with [recorder] cameras, own Mosquitto, console on a free port), condition
waits and ffprobe."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hub.app import HubRuntime, VideoParts, run_hub
from hub.config import HubConfig, hub_config_from_dict
from hub.recording_index import SegmentRecord
from simulators.camera import CameraSimConfig, SimulatedCamera

WIDTH, HEIGHT, FPS = 320, 240, 10.0
VENUE = "court-1"
MJPEG_CAM = "court-1-cam-1"
H264_CAM = "court-1-cam-2"
#: small, fast settings: short segments, quick outage detection and reconnects
FAST_RECORDER: dict[str, Any] = {
    "segment_s": 2,
    "stall_timeout_s": 3,
    "reconnect_interval_s": 1,
    "health_interval_s": 1,
    "retention_sweep_s": 1,
    "headroom_mb": 0,
}


async def start_camera(name: str, codec: str) -> SimulatedCamera:
    """A simulated 320x240 10 fps camera serving ``codec`` (mjpeg | h264)."""
    camera = SimulatedCamera(
        CameraSimConfig(name=name, codec=codec, width=WIDTH, height=HEIGHT, fps=FPS)  # type: ignore[arg-type]
    )
    await camera.start()
    return camera


def camera_entry(camera_id: str, url: str) -> dict[str, Any]:
    """One ``[[recorder.cameras]]`` table for a simulated camera in venue court-1."""
    return {"id": camera_id, "venue": VENUE, "venue_kind": "tech_courtroom", "url": url, "fps": FPS}


def hub_config(data_dir: Path, cameras: list[dict[str, Any]], **recorder: Any) -> dict[str, Any]:
    """A hub config dict recording ``cameras`` with :data:`FAST_RECORDER` (+ overrides)."""
    return {
        "hub": {"data_dir": str(data_dir)},
        "api": {"port": 0},
        "recorder": {**FAST_RECORDER, **recorder, "cameras": cameras},
    }


class HubRunner:
    """Runs the whole hub in this process (own Mosquitto), stoppable and restartable."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config: HubConfig = hub_config_from_dict(config)
        self._running: tuple[asyncio.Event, asyncio.Task[None]] | None = None

    async def start(self) -> HubRuntime:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[HubRuntime] = loop.create_future()
        stop = asyncio.Event()
        task = asyncio.create_task(run_hub(self.config, stop, on_ready=ready.set_result))
        self._running = (stop, task)
        waiter: set[asyncio.Future[Any]] = {ready, task}
        async with asyncio.timeout(30):
            await asyncio.wait(waiter, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            task.result()  # raises why the hub did not start
        return ready.result()

    async def stop(self) -> None:
        if self._running is not None:
            stop, task = self._running
            self._running = None
            stop.set()
            async with asyncio.timeout(60):
                await task


def video_of(runtime: HubRuntime) -> VideoParts:
    """The hub's recorder parts (always started by run_hub)."""
    assert runtime.video is not None
    return runtime.video


async def wait_for(
    probe: Callable[[], Any], *, timeout: float, what: str, every: float = 0.2
) -> Any:
    """Poll ``probe`` (sync or async) until it returns something truthy; fail after ``timeout``."""
    last: Any = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = probe()
                if asyncio.iscoroutine(value):
                    value = await value
                last = value
                if value:
                    return value
                await asyncio.sleep(every)
    except TimeoutError:
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what}; last={last!r}"
        ) from None


async def wait_segments(
    video: VideoParts, camera: str, count: int, *, timeout: float = 40.0, after_ms: int = 0
) -> list[SegmentRecord]:
    """Wait until ``camera`` has ``count`` indexed segments starting at or after ``after_ms``."""

    async def enough() -> list[SegmentRecord] | None:
        rows = [s for s in await video.index.segments(camera=camera) if s.start_ms >= after_ms]
        return rows if len(rows) >= count else None

    rows: list[SegmentRecord] = await wait_for(
        enough, timeout=timeout, what=f"{count} segments of {camera}"
    )
    return rows


def ffprobe(path: Path) -> dict[str, Any]:
    """codec_name, width, height and nb_read_frames (decoded) of the first video stream."""
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    streams = json.loads(out.stdout)["streams"]
    assert streams, f"no video stream in {path}"
    info: dict[str, Any] = streams[0]
    info["nb_read_frames"] = int(info.get("nb_read_frames", 0))
    return info


def ffmpeg_mentioning(text: str) -> list[int]:
    """Pids of running ffmpeg processes whose command line contains ``text`` (e.g. a data dir)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        is_ffmpeg = state != "Z" and argv and Path(argv[0].decode()).name == "ffmpeg"
        if is_ffmpeg and any(text.encode() in a for a in argv):
            found.append(int(proc.name))
    return found
