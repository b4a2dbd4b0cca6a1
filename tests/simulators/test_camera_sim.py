"""SimulatedCamera over real HTTP: OpenCV and ffmpeg read it, and every fault does what it says."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest

from simulators.camera import CameraSimConfig, FrameRenderer, SimulatedCamera, make_h264_clip

READ_TIMEOUT = 5.0


@pytest.fixture
async def mjpeg_cam() -> AsyncIterator[SimulatedCamera]:
    cam = SimulatedCamera(CameraSimConfig(name="court-1-cam-1", width=320, height=180, fps=20))
    await cam.start()
    try:
        yield cam
    finally:
        await cam.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=READ_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


async def read_part(resp: aiohttp.ClientResponse) -> tuple[dict[str, str], bytes]:
    """One multipart part: its headers and body (by Content-Length)."""
    content = resp.content
    line = await asyncio.wait_for(content.readline(), READ_TIMEOUT)
    assert line == b"--frame\r\n", line
    headers: dict[str, str] = {}
    while (line := await asyncio.wait_for(content.readline(), READ_TIMEOUT)) != b"\r\n":
        key, _, value = line.decode().partition(":")
        headers[key.strip().lower()] = value.strip()
    body = await asyncio.wait_for(content.readexactly(int(headers["content-length"])), READ_TIMEOUT)
    assert await content.readexactly(2) == b"\r\n"
    return headers, body


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="even"):
        CameraSimConfig(name="c", width=641)
    with pytest.raises(ValueError, match="fps"):
        CameraSimConfig(name="c", fps=0)
    with pytest.raises(ValueError, match="codec"):
        CameraSimConfig(name="c", codec="vp9")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="source_file"):
        CameraSimConfig(name="c", source_file=__file__)  # type: ignore[arg-type]


def test_frames_move_and_reuse_one_buffer() -> None:
    r = FrameRenderer("cam", 320, 180)
    a = r.render(0, 1_700_000_000_000).copy()
    b = r.render(10, 1_700_000_000_100)
    assert a.shape == (180, 320, 3) and a.dtype == np.uint8
    assert np.count_nonzero(a != b) > 1000  # the bar, clock and counter changed
    assert r.render(11, 0) is b  # no per-frame allocation


async def test_mjpeg_parts_are_jpegs(
    mjpeg_cam: SimulatedCamera, http: aiohttp.ClientSession
) -> None:
    assert mjpeg_cam.url.endswith("/stream.mjpg")
    async with http.get(mjpeg_cam.url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
        for _ in range(3):
            headers, body = await read_part(resp)
            assert headers["content-type"] == "image/jpeg"
            img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
            assert img is not None and img.shape == (180, 320, 3)
        assert mjpeg_cam.clients == 1
    await wait_for(lambda: mjpeg_cam.clients == 0)
    assert mjpeg_cam.frames_sent >= 3


async def test_opencv_reads_the_stream(mjpeg_cam: SimulatedCamera) -> None:
    def grab(url: str) -> list[tuple[int, int]]:
        cap = cv2.VideoCapture(url)
        try:
            assert cap.isOpened()
            shapes = []
            for _ in range(5):
                ok, frame = cap.read()
                assert ok
                shapes.append(frame.shape[:2])
            return shapes
        finally:
            cap.release()

    assert await asyncio.to_thread(grab, mjpeg_cam.url) == [(180, 320)] * 5


async def test_two_clients_share_one_producer(
    mjpeg_cam: SimulatedCamera, http: aiohttp.ClientSession
) -> None:
    async with http.get(mjpeg_cam.url) as a, http.get(mjpeg_cam.url) as b:
        _, body_a = await read_part(a)
        await wait_for(lambda: mjpeg_cam.clients == 2)
        # the same encoded frame reaches both: find a part of b equal to a later part of a
        seen_a = {(await read_part(a))[1] for _ in range(5)}
        seen_b = {(await read_part(b))[1] for _ in range(5)}
        assert seen_a & seen_b
        assert body_a


async def test_stall_then_resume(mjpeg_cam: SimulatedCamera, http: aiohttp.ClientSession) -> None:
    async with http.get(mjpeg_cam.url) as resp:
        await read_part(resp)
        mjpeg_cam.stall()
        # drain what was queued before the stall, then nothing arrives for a while
        with pytest.raises(TimeoutError):
            while True:
                await asyncio.wait_for(resp.content.readany(), 0.7)
        assert resp.connection is not None and mjpeg_cam.clients == 1  # still connected
        mjpeg_cam.resume()
        # resync on the next boundary, then whole parts flow again
        await asyncio.wait_for(resp.content.readuntil(b"\r\n--frame\r\n"), READ_TIMEOUT)
        assert await asyncio.wait_for(resp.content.readuntil(b"\r\n\r\n"), READ_TIMEOUT)


async def test_disconnect_closes_and_allows_reconnect(
    mjpeg_cam: SimulatedCamera, http: aiohttp.ClientSession
) -> None:
    async with http.get(mjpeg_cam.url) as resp:
        await read_part(resp)
        await mjpeg_cam.disconnect()
        assert mjpeg_cam.clients == 0
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            while await asyncio.wait_for(resp.content.read(65536), READ_TIMEOUT):
                pass
            raise aiohttp.ClientConnectionError("EOF")  # a clean EOF counts as closed too
    async with http.get(mjpeg_cam.url) as resp:
        await read_part(resp)


async def test_refuse_until_turned_off(
    mjpeg_cam: SimulatedCamera, http: aiohttp.ClientSession
) -> None:
    mjpeg_cam.refuse(True)
    async with http.get(mjpeg_cam.url) as resp:
        assert resp.status == 503
    ok = await asyncio.to_thread(lambda: cv2.VideoCapture(mjpeg_cam.url).isOpened())
    assert not ok
    mjpeg_cam.refuse(False)
    async with http.get(mjpeg_cam.url) as resp:
        assert resp.status == 200
        await read_part(resp)


async def count_parts(resp: aiohttp.ClientResponse, window_s: float) -> int:
    n = 0
    deadline = time.monotonic() + window_s
    with pytest.raises(TimeoutError):
        while True:
            await asyncio.wait_for(read_part(resp), max(0.001, deadline - time.monotonic()))
            n += 1
    return n


async def test_set_fps_lowers_the_frame_rate(
    mjpeg_cam: SimulatedCamera, http: aiohttp.ClientSession
) -> None:
    async with http.get(mjpeg_cam.url) as resp:
        await read_part(resp)
        normal = await count_parts(resp, 1.0)
        mjpeg_cam.set_fps(2.0)
        await read_part(resp)  # let the queue drain to the new pace
        low = await count_parts(resp, 1.0)
        mjpeg_cam.resume()
        await read_part(resp)
        back = await count_parts(resp, 1.0)
    # 20 fps vs 2 fps: loose bounds, counted in frames, not timed tightly
    assert normal >= 8 and low <= 4 and back >= 8, (normal, low, back)
    assert mjpeg_cam.fps == 20


async def test_garbage_arrives_and_the_stream_goes_on(
    mjpeg_cam: SimulatedCamera, http: aiohttp.ClientSession
) -> None:
    async with http.get(mjpeg_cam.url) as resp:
        await read_part(resp)
        mjpeg_cam.garbage(3000)
        for _ in range(20):
            _, body = await read_part(resp)
            if body == mjpeg_cam.last_garbage:
                break
        else:
            pytest.fail("the junk never arrived")
        assert len(body) == 3000
        _, body = await read_part(resp)
        assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR) is not None


# --- H.264 ---------------------------------------------------------------------------------


@pytest.fixture
async def h264_cam() -> AsyncIterator[SimulatedCamera]:
    cam = SimulatedCamera(
        CameraSimConfig(name="court-1-cam-2", codec="h264", width=320, height=240)
    )
    await cam.start()
    try:
        yield cam
    finally:
        await cam.stop()


async def read_ts(resp: aiohttp.ClientResponse, nbytes: int) -> bytes:
    data = b""
    while len(data) < nbytes:
        chunk = await asyncio.wait_for(resp.content.read(nbytes - len(data)), READ_TIMEOUT)
        assert chunk, "stream ended"
        data += chunk
    return data


def is_ts(data: bytes) -> bool:
    return all(data[i] == 0x47 for i in range(0, len(data), 188))


def starts_at_keyframe(data: bytes) -> bool:
    """PAT first, then (after the PMT) a packet flagged random_access_indicator."""
    pids = [((data[i + 1] & 0x1F) << 8) | data[i + 2] for i in range(0, 4 * 188, 188)]
    rai = [
        bool(data[i + 3] & 0x20 and data[i + 4] and data[i + 5] & 0x40)
        for i in range(0, 4 * 188, 188)
    ]
    return pids[0] == 0 and any(rai)


def ffmpeg_children() -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == os.getpid() and "(ffmpeg)" in stat.read_text():
                pids.append(int(stat.parent.name))
    return pids


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def run(*cmd: str, timeout: float = 30) -> str:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def probe(path: Path) -> tuple[str, int, int, int]:
    """codec, width, height, packet count of the first video stream."""
    out = await run(
        "ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
        "-show_entries", "stream=codec_name,width,height,nb_read_packets", "-of", "json",
        str(path),
    )  # fmt: skip
    stream = json.loads(out)["streams"][0]
    return stream["codec_name"], stream["width"], stream["height"], int(stream["nb_read_packets"])


async def record(url: str, out_dir: Path, seconds: float) -> Path:
    """Record like the hub's recorder: ffmpeg stream copy into segments."""
    pattern = out_dir / "seg_%05d.ts"
    await run(
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-i", url, "-t", f"{seconds}",
        "-c", "copy", "-map", "0", "-f", "segment", "-segment_time", "10",
        "-reset_timestamps", "1", "-segment_format", "mpegts", str(pattern),
    )  # fmt: skip
    return out_dir / "seg_00000.ts"


async def test_h264_is_one_ffmpeg_fanned_out_in_ts_packets(
    h264_cam: SimulatedCamera, http: aiohttp.ClientSession
) -> None:
    assert h264_cam.url.endswith("/stream.ts")
    async with http.get(h264_cam.url) as a, http.get(h264_cam.url) as b:
        assert a.headers["Content-Type"] == "video/mp2t"
        # both start on a packet boundary at a keyframe, whenever they joined
        first_a, first_b = await read_ts(a, 188 * 20), await read_ts(b, 188 * 20)
        assert is_ts(first_a) and is_ts(first_b)
        assert starts_at_keyframe(first_a) and starts_at_keyframe(first_b)
        assert h264_cam.clients == 2
        assert ffmpeg_children() == [h264_cam.ffmpeg_pid]
    assert h264_cam.frames_sent > 0
    # a late joiner decodes from its first bytes: no "non-existing PPS" errors
    proc = await asyncio.create_subprocess_exec(
        "ffprobe", "-v", "error", "-analyzeduration", "1000000", "-show_entries",
        "stream=codec_name", "-of", "csv=p=0", h264_cam.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert "h264" in out.decode() and not err.strip(), err.decode()
    pid = h264_cam.ffmpeg_pid
    assert pid is not None
    await h264_cam.stop()
    assert not pid_alive(pid)


@pytest.mark.slow
async def test_ffmpeg_records_the_h264_stream(h264_cam: SimulatedCamera, tmp_path: Path) -> None:
    segment = await record(h264_cam.url, tmp_path, 3)
    codec, width, height, packets = await probe(segment)
    assert (codec, width, height) == ("h264", 320, 240)
    assert packets >= 15  # ~3 s at 10 fps, loosely


async def test_h264_faults(h264_cam: SimulatedCamera, http: aiohttp.ClientSession) -> None:
    async with http.get(h264_cam.url) as resp:
        await read_ts(resp, 188 * 10)
        # stall: the connection stays open, nothing arrives; resume: bytes flow again
        h264_cam.stall()
        with pytest.raises(TimeoutError):
            while True:
                await asyncio.wait_for(resp.content.readany(), 0.7)
        assert h264_cam.clients == 1
        h264_cam.resume()
        assert await read_ts(resp, 188)
        # garbage: the junk is inside the stream, and the stream goes on
        h264_cam.garbage(1000)
        junk = h264_cam.last_garbage
        data = b""
        while junk not in data:
            data += await read_ts(resp, 188 * 10)
            assert len(data) < 10_000_000, "the junk never arrived"
        assert await read_ts(resp, 188 * 10)
        # disconnect: the connection closes
        await h264_cam.disconnect()
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            while await asyncio.wait_for(resp.content.read(65536), READ_TIMEOUT):
                pass
            raise aiohttp.ClientConnectionError("EOF")
    h264_cam.refuse(True)
    async with http.get(h264_cam.url) as resp:
        assert resp.status == 503
    h264_cam.refuse(False)
    async with http.get(h264_cam.url) as resp:
        assert is_ts(await read_ts(resp, 188 * 4))


@pytest.mark.slow
async def test_source_file_is_looped(tmp_path: Path) -> None:
    clip = await asyncio.to_thread(
        make_h264_clip, tmp_path / "clip.ts", width=320, height=240, fps=10, seconds=1
    )
    assert (await probe(clip))[:3] == ("h264", 320, 240)
    cam = SimulatedCamera(CameraSimConfig(name="bench", codec="h264", source_file=clip))
    await cam.start()
    try:
        rec = tmp_path / "rec"
        rec.mkdir()
        segment = await record(cam.url, rec, 2.5)
    finally:
        await cam.stop()
    codec, width, height, packets = await probe(segment)
    assert (codec, width, height) == ("h264", 320, 240)
    assert packets > 10  # more than the 1 s clip holds: it looped


@pytest.mark.slow
async def test_ffmpeg_dies_when_python_is_killed(tmp_path: Path) -> None:
    script = (
        "import asyncio, sys\n"
        "from simulators.camera import CameraSimConfig, SimulatedCamera\n"
        "async def main():\n"
        "    cam = SimulatedCamera(CameraSimConfig(name='x', codec='h264', width=160, height=120))\n"
        "    await cam.start()\n"
        "    print(cam.ffmpeg_pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    pid = int(line)
    assert pid_alive(pid)
    proc.kill()
    await proc.wait()
    await wait_for(lambda: not pid_alive(pid))
