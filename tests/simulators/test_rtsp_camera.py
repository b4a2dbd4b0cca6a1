"""SimulatedRtspCamera: ffprobe reads it over RTSP (TCP and UDP), H.264 and H.265; a cut refuses
connections and a restore serves the same URL again; its processes die with the simulator."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from simulators.rtsp_camera import SimulatedRtspCamera

WIDTH, HEIGHT, FPS = 320, 240, 10.0


def probe(url: str, transport: str = "tcp") -> dict[str, Any]:
    """ffprobe's first video stream of ``url`` (codec_name, width, height); raises on failure."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-rtsp_transport", transport, "-timeout", "5000000",
         "-select_streams", "v:0", "-show_entries", "stream=codec_name,width,height",
         "-of", "json", url],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"ffprobe {url} failed: {out.stderr.strip()}")
    streams: list[dict[str, Any]] = json.loads(out.stdout)["streams"]
    assert streams, f"no video stream at {url}"
    return streams[0]


@pytest.fixture
async def h264_cam() -> AsyncIterator[SimulatedRtspCamera]:
    cam = SimulatedRtspCamera("court-1-cam-3", WIDTH, HEIGHT, FPS, "h264")
    await cam.start()
    try:
        yield cam
    finally:
        await cam.stop()


async def test_h264_over_tcp_and_udp(h264_cam: SimulatedRtspCamera) -> None:
    assert h264_cam.url.startswith("rtsp://127.0.0.1:") and h264_cam.url.endswith("/live")
    for transport in ("tcp", "udp"):
        info = await asyncio.to_thread(probe, h264_cam.url, transport)
        assert (info["codec_name"], info["width"], info["height"]) == ("h264", WIDTH, HEIGHT)
    assert h264_cam.frames_sent > 0


async def test_h265_over_tcp() -> None:
    cam = SimulatedRtspCamera("court-1-cam-4", WIDTH, HEIGHT, FPS, "h265")
    url = await cam.start()
    try:
        info = await asyncio.to_thread(probe, url)
    finally:
        await cam.stop()
    assert (info["codec_name"], info["width"], info["height"]) == ("hevc", WIDTH, HEIGHT)


async def test_cut_refuses_then_restore_serves_the_same_url(h264_cam: SimulatedRtspCamera) -> None:
    url = h264_cam.url
    await h264_cam.cut()
    assert h264_cam.server_pid is None
    with pytest.raises(RuntimeError, match="Connection refused"):
        await asyncio.to_thread(probe, url)
    await h264_cam.restore()
    assert h264_cam.url == url
    info = await asyncio.to_thread(probe, url)
    assert info["codec_name"] == "h264"


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="codec"):
        SimulatedRtspCamera("c", codec="mjpeg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="even"):
        SimulatedRtspCamera("c", 321, 240)
    with pytest.raises(ValueError, match="fps"):
        SimulatedRtspCamera("c", fps=0)
    with pytest.raises(ValueError, match="empty"):
        SimulatedRtspCamera("")


async def test_missing_server_python_is_a_clear_error() -> None:
    cam = SimulatedRtspCamera("c", WIDTH, HEIGHT, FPS, python="/nonexistent/python3")
    with pytest.raises(RuntimeError, match="install-system-deps"):
        await cam.start()
    assert cam.ffmpeg_pid is None and cam.server_pid is None


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(c) for c in (task / "children").read_text().split())
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_encoder_and_server_die_with_a_killed_simulator() -> None:
    """SIGKILL the simulator process: the kernel kills its ffmpeg and RTSP server too."""
    root = Path(__file__).resolve().parents[2]
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulators.rtsp_camera", "--width", "160", "--height", "120"],
        cwd=root, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    try:
        assert sim.stderr is not None
        for line in sim.stderr:  # ends when the simulator dies: then the assert below fails
            if "serving rtsp camera" in line:
                break
        children = _children(sim.pid)
        assert len(children) == 2, f"expected ffmpeg and the RTSP server, got {children}"
        os.kill(sim.pid, signal.SIGKILL)
        sim.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(c) for c in children):
            assert time.monotonic() < deadline, "children outlived the simulator"
            time.sleep(0.05)
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
