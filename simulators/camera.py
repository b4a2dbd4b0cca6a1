"""Simulated IP cameras: MJPEG over HTTP and H.264/H.265 (MPEG-TS) over HTTP, with fault injection.

A :class:`SimulatedCamera` renders synthetic frames (a sweeping bar over a gradient, the camera
name, a burnt-in UTC clock with milliseconds and a frame counter) on an absolute schedule and
serves them like an IP camera:

- ``mjpeg``: ``GET /stream.mjpg`` answers ``multipart/x-mixed-replace; boundary=frame``; each
  frame is JPEG-encoded once and shared by every client; each client has a small bounded queue,
  so a slow client skips frames instead of slowing the camera.
- ``h264``: raw BGR frames are piped into one ``ffmpeg`` (libx264, keyframe every second, MPEG-TS
  on stdout) per camera; ``GET /stream.ts`` fans its output out to every client in 188-byte
  aligned chunks; each new client starts at the PAT/PMT before the next keyframe, so its
  first bytes decode. With
  :attr:`CameraSimConfig.source_file` ffmpeg loops an existing clip (``-re -stream_loop -1
  -c copy``) instead of encoding live, for benchmarks with many 1080p streams.
- ``h265``: the same with libx265 (HEVC in MPEG-TS), for recorders that must not assume H.264.

RTSP cameras are in :mod:`simulators.rtsp_camera`.

Faults (for the simulated court and the recorder's tests): :meth:`~SimulatedCamera.stall`,
:meth:`~SimulatedCamera.resume`, :meth:`~SimulatedCamera.disconnect`,
:meth:`~SimulatedCamera.refuse`, :meth:`~SimulatedCamera.set_fps` and
:meth:`~SimulatedCamera.garbage`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import cv2
import numpy as np
import numpy.typing as npt
from aiohttp import web

log = logging.getLogger(__name__)

Codec = Literal["mjpeg", "h264", "h265"]
VideoCodec = Literal["h264", "h265"]
Frame = npt.NDArray[np.uint8]

BOUNDARY: Final = "frame"
TS_PACKET: Final = 188
#: frames a slow MJPEG client may lag behind before it skips frames
MJPEG_CLIENT_QUEUE: Final = 4
#: TS chunks a slow H.264 client may lag behind before it is dropped (skipping TS data would
#: corrupt the stream silently; a real camera's TCP send buffer would overflow the same way)
TS_CLIENT_QUEUE: Final = 512
MAX_FPS: Final = 120.0
#: a new H.264 client gets the stream from the next keyframe, or after this many chunks anyway
KEYFRAME_WAIT_CHUNKS: Final = 200
_PR_SET_PDEATHSIG: Final = 1
#: loaded once at import, so preexec_fn (run between fork and exec) only makes a system call
_LIBC: Final = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class CameraSimConfig:
    """What a simulated camera serves and where."""

    #: burnt into every frame, e.g. ``court-1-cam-1``
    name: str
    codec: Codec = "mjpeg"
    width: int = 640
    height: int = 360
    fps: float = 10.0
    host: str = "127.0.0.1"
    #: 0 picks a free port
    port: int = 0
    jpeg_quality: int = 80
    #: h264/h265 only: loop this H.264/H.265 MPEG-TS/MP4 clip (``-re -stream_loop -1 -c copy``) instead of
    #: encoding live
    source_file: Path | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("camera name must not be empty")
        if self.codec not in ("mjpeg", "h264", "h265"):
            raise ValueError(f"unknown codec {self.codec!r} (known: mjpeg, h264, h265)")
        # even sizes: libx264 encodes yuv420p, which halves both dimensions for chroma
        if not (16 <= self.width <= 7680 and 16 <= self.height <= 4320):
            raise ValueError(f"frame size {self.width}x{self.height} out of range")
        if self.width % 2 or self.height % 2:
            raise ValueError(f"frame size {self.width}x{self.height} must be even")
        _check_fps(self.fps)
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality {self.jpeg_quality} not in 1..100")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} out of range")
        if self.source_file is not None and self.codec == "mjpeg":
            raise ValueError("source_file is only for codec='h264' or 'h265'")


def _check_fps(fps: float) -> None:
    if not 0 < fps <= MAX_FPS:
        raise ValueError(f"fps {fps} not in (0, {MAX_FPS}]")


class FrameRenderer:
    """Draws the synthetic picture into one preallocated buffer (cheap: a copy, a fill, text)."""

    def __init__(self, name: str, width: int, height: int) -> None:
        self.name = name
        self.width = width
        self.height = height
        # a fixed diagonal gradient background, computed once
        ys = np.linspace(0, 160, height, dtype=np.float32)[:, None]
        xs = np.linspace(0, 160, width, dtype=np.float32)[None, :]
        bg = np.empty((height, width, 3), np.uint8)
        bg[..., 0] = (xs + ys * 0.5).astype(np.uint8)
        bg[..., 1] = (ys + 40).astype(np.uint8)
        bg[..., 2] = (200 - xs * 0.8).astype(np.uint8)
        self._background = bg
        self._frame: Frame = np.empty_like(bg)
        self._bar_w = max(4, width // 16)
        self._scale = max(0.4, height / 720)
        self._thick = max(1, round(self._scale * 2))

    def render(self, index: int, ts_ms: int) -> Frame:
        """The frame ``index`` stamped with ``ts_ms``; the returned array is reused next call."""
        frame = self._frame
        np.copyto(frame, self._background)
        # a bar sweeping left to right once every 64 frames: motion a viewer (and a
        # frame-difference check) notices
        x = (index % 64) * (self.width - self._bar_w) // 63
        frame[:, x : x + self._bar_w] = (255, 255, 255)
        clock = datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        s, t = self._scale, self._thick
        line = round(40 * s)
        for row, text in enumerate((self.name, f"{clock} UTC", f"#{index}")):
            org = (round(16 * s), line * (row + 1))
            cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, s, (0, 0, 0), t + 2)
            cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, s, (255, 255, 255), t)
        return frame


@dataclass(eq=False)
class _Client:
    """One connected viewer: its queue of byte strings (``None`` = close now)."""

    request: web.Request
    queue: asyncio.Queue[bytes | None]
    skipped: int = 0
    dropped: bool = False
    #: H.264 only: TS chunks seen while waiting for the first keyframe
    waiting: int | None = None


@dataclass
class _Stats:
    frames_sent: int = 0
    skipped: int = 0
    refused: int = 0
    slow_clients_dropped: int = 0
    ts_bytes: int = 0
    ffmpeg_errors: list[str] = field(default_factory=list)


class SimulatedCamera:
    """One simulated IP camera (see the module docstring)."""

    def __init__(self, config: CameraSimConfig) -> None:
        self.config = config
        self.url = ""
        self._fps = config.fps
        self._stats = _Stats()
        self._stopping = False
        self._clients: set[_Client] = set()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._stalled = False
        self._refusing = False
        self._wake = asyncio.Event()
        self._no_clients = asyncio.Event()
        self._no_clients.set()
        self._renderer = FrameRenderer(config.name, config.width, config.height)
        #: the junk most recently injected by :meth:`garbage` (tests look for it in the stream)
        self.last_garbage = b""

    # --- state ---------------------------------------------------------------------------
    @property
    def frames_sent(self) -> int:
        """Frames produced for the clients (not counted while stalled; 0 with source_file)."""
        return self._stats.frames_sent

    @property
    def clients(self) -> int:
        """Clients currently connected to the stream."""
        return len(self._clients)

    @property
    def fps(self) -> float:
        """The current frame rate (changed by :meth:`set_fps`)."""
        return self._fps

    @property
    def ffmpeg_pid(self) -> int | None:
        """The pid of this camera's ffmpeg (h264/h265), or None."""
        return self._proc.pid if self._proc is not None else None

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> str:
        """Start producing and listening; returns the stream URL."""
        if self._runner is not None:
            return self.url
        cfg = self.config
        path = "/stream.mjpg" if cfg.codec == "mjpeg" else "/stream.ts"
        app = web.Application()
        app.router.add_get(path, self._handle_stream)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        try:
            site = web.TCPSite(runner, cfg.host, cfg.port)
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        port = int(runner.addresses[0][1])
        self.url = f"http://{cfg.host}:{port}{path}"
        if cfg.codec == "mjpeg":
            self._spawn(self._run_mjpeg(), "mjpeg")
        else:
            try:
                await self._start_ffmpeg()
            except BaseException:
                await self.stop()
                raise
        log.info("camera started name=%s codec=%s url=%s", cfg.name, cfg.codec, self.url)
        return self.url

    async def stop(self) -> None:
        """Stop producing, close every client, kill ffmpeg and stop listening."""
        self._stopping = True  # the producer then sees its encoder go as expected
        await self._kill_ffmpeg()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for client in list(self._clients):
            self._close_client(client)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        log.info(
            "camera stopped name=%s frames_sent=%d skipped=%d",
            self.config.name,
            self._stats.frames_sent,
            self._stats.skipped,
        )

    # --- faults --------------------------------------------------------------------------
    def stall(self) -> None:
        """Keep connections open but send nothing until :meth:`resume`."""
        log.info("camera fault name=%s fault=stall", self.config.name)
        self._stalled = True

    def resume(self) -> None:
        """Back to normal: undo :meth:`stall` and a lowered frame rate."""
        log.info("camera fault name=%s fault=resume", self.config.name)
        self._stalled = False
        self._fps = self.config.fps
        self._wake.set()

    async def disconnect(self) -> None:
        """Drop every connected client now (they may reconnect)."""
        log.info("camera fault name=%s fault=disconnect clients=%d", self.config.name, self.clients)
        for client in list(self._clients):
            self._close_client(client, abort=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_clients.wait(), 2.0)

    def refuse(self, on: bool) -> None:
        """While on, new connections get ``503 Service Unavailable`` (camera "down")."""
        log.info("camera fault name=%s fault=refuse on=%s", self.config.name, on)
        self._refusing = on

    def set_fps(self, fps: float) -> None:
        """Change the frame rate (e.g. drop to 1 fps); :meth:`resume` restores the configured one."""
        _check_fps(fps)
        if self.config.source_file is not None:
            log.warning("set_fps ignored name=%s reason=source_file", self.config.name)
            return
        log.info("camera fault name=%s fault=set_fps fps=%s", self.config.name, fps)
        self._fps = fps
        self._wake.set()

    def garbage(self, nbytes: int = 4096) -> None:
        """Send ``nbytes`` random bytes inside the stream once.

        MJPEG: as one multipart part whose "JPEG" body is junk (a corrupt frame). H.264: raw junk
        between two TS chunks (a demuxer must resync on the next 0x47 sync byte).
        """
        if nbytes <= 0:
            raise ValueError(f"nbytes must be positive, got {nbytes}")
        junk = os.urandom(nbytes)
        self.last_garbage = junk
        log.info("camera fault name=%s fault=garbage nbytes=%d", self.config.name, nbytes)
        self._publish(_mjpeg_part(junk) if self.config.codec == "mjpeg" else junk)

    # --- HTTP ----------------------------------------------------------------------------
    async def _handle_stream(self, request: web.Request) -> web.StreamResponse:
        if self._refusing:
            self._stats.refused += 1
            raise web.HTTPServiceUnavailable(text="camera unavailable\n")
        mjpeg = self.config.codec == "mjpeg"
        resp = web.StreamResponse(
            headers={
                "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}"
                if mjpeg
                else "video/mp2t",
                "Cache-Control": "no-cache, no-store",
                "Connection": "close",
            }
        )
        if not mjpeg:
            resp.enable_chunked_encoding()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(
            MJPEG_CLIENT_QUEUE if mjpeg else TS_CLIENT_QUEUE
        )
        client = _Client(request, queue, waiting=None if mjpeg else 0)
        await resp.prepare(request)
        self._clients.add(client)
        self._no_clients.clear()
        peer = request.remote
        log.info("camera client connected name=%s peer=%s", self.config.name, peer)
        try:
            while (data := await queue.get()) is not None:
                await resp.write(data)
        except (ConnectionError, RuntimeError) as exc:
            # RuntimeError: aiohttp's "Cannot write to closing transport"
            log.info("camera client gone name=%s peer=%s error=%s", self.config.name, peer, exc)
        finally:
            self._clients.discard(client)
            if not self._clients:
                self._no_clients.set()
            if client.dropped and request.transport is not None:
                request.transport.abort()
        log.info(
            "camera client disconnected name=%s peer=%s skipped=%d",
            self.config.name,
            peer,
            client.skipped,
        )
        return resp

    def _publish(self, data: bytes, entry: bytes | None = None) -> None:
        """Hand ``data`` to every client; a full MJPEG queue drops its oldest frame.

        A new H.264 client waits for ``entry`` (the stream from the PAT/PMT before a keyframe),
        so its first bytes decode; a source without flagged keyframes starts it anyway soon.
        """
        mjpeg = self.config.codec == "mjpeg"
        for client in list(self._clients):
            if client.dropped:
                continue
            if client.waiting is not None:
                client.waiting += 1
                if entry is None and client.waiting < KEYFRAME_WAIT_CHUNKS:
                    continue
                client.waiting = None
                client.queue.put_nowait(entry or data)
                continue
            q = client.queue
            if q.full():
                if not mjpeg:
                    self._stats.slow_clients_dropped += 1
                    log.warning("slow client dropped name=%s", self.config.name)
                    self._close_client(client, abort=True)
                    continue
                q.get_nowait()
                client.skipped += 1
                self._stats.skipped += 1
            q.put_nowait(data)

    def _close_client(self, client: _Client, *, abort: bool = False) -> None:
        client.dropped = abort or client.dropped
        if abort and client.request.transport is not None:
            # abort, not close: the peer sees the connection cut, as when a camera reboots
            client.request.transport.abort()
        while not client.queue.empty():
            client.queue.get_nowait()
        client.queue.put_nowait(None)

    # --- MJPEG producer ------------------------------------------------------------------
    async def _run_mjpeg(self) -> None:
        quality = [int(cv2.IMWRITE_JPEG_QUALITY), self.config.jpeg_quality]

        def render_encode(index: int, ts_ms: int) -> bytes:
            frame = self._renderer.render(index, ts_ms)
            ok, jpeg = cv2.imencode(".jpg", frame, quality)
            if not ok:
                raise RuntimeError("cv2.imencode failed")
            return _mjpeg_part(jpeg.tobytes())

        async def produce(index: int, ts_ms: int) -> None:
            part = await asyncio.to_thread(render_encode, index, ts_ms)
            self._publish(part)

        await self._paced(produce)

    async def _paced(self, produce: Callable[[int, int], Awaitable[None]]) -> None:
        """Call ``produce`` on an absolute schedule of the loop clock (no drift); while
        stalled, produce nothing; a late frame moves the schedule instead of bursting."""
        loop = asyncio.get_running_loop()
        index = 0
        next_t = loop.time()
        while True:
            if not self._stalled:
                await produce(index, time.time_ns() // 1_000_000)
                self._stats.frames_sent += 1
                index += 1
            next_t += 1.0 / self._fps
            now = loop.time()
            if next_t < now - 1.0 / self._fps:
                next_t = now
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_t - now))
            if self._wake.is_set():
                # resume / set_fps: start the new schedule now
                next_t = loop.time()

    # --- H.264 ---------------------------------------------------------------------------
    async def _start_ffmpeg(self) -> None:
        cfg = self.config
        if cfg.source_file is not None and not cfg.source_file.is_file():
            raise FileNotFoundError(f"camera source_file not found: {cfg.source_file}")
        cmd = ffmpeg_command(cfg)
        log.info("ffmpeg starting name=%s cmd=%s", cfg.name, " ".join(cmd))
        live = cfg.source_file is None
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE if live else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        self._spawn(self._pump_ts(proc, proc.stdout), "ts-pump")
        self._spawn(self._drain_stderr(proc.stderr), "ffmpeg-stderr")
        if live:
            assert proc.stdin is not None
            self._spawn(self._run_h264(proc.stdin), "h264")

    def _spawn(self, coro: Coroutine[object, object, None], what: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=f"camera-{self.config.name}-{what}"))

    async def _run_h264(self, stdin: asyncio.StreamWriter) -> None:
        """Render raw BGR frames and pipe them into ffmpeg on the camera's schedule."""

        def render(index: int, ts_ms: int) -> bytes:
            # a copy: the renderer reuses its buffer while the pipe may still hold this frame
            return self._renderer.render(index, ts_ms).tobytes()

        async def produce(index: int, ts_ms: int) -> None:
            stdin.write(await asyncio.to_thread(render, index, ts_ms))
            await stdin.drain()

        try:
            await self._paced(produce)
        except (BrokenPipeError, ConnectionResetError):
            if not self._stopping:
                log.error("ffmpeg stdin closed name=%s: encoder gone", self.config.name)

    async def _pump_ts(
        self, proc: asyncio.subprocess.Process, stdout: asyncio.StreamReader
    ) -> None:
        """Fan ffmpeg's MPEG-TS out to the clients in whole 188-byte packets."""
        pending = tail = b""
        while data := await stdout.read(1 << 16):
            pending += data
            cut = len(pending) - len(pending) % TS_PACKET
            if not cut:
                continue
            chunk, pending = pending[:cut], pending[cut:]
            self._stats.ts_bytes += cut
            if not self._stalled:
                self._publish(chunk, keyframe_entry(tail, chunk))
            tail = chunk[-2 * TS_PACKET :]
        rc = await proc.wait()
        if self._proc is proc:  # not killed by stop()
            log.error("ffmpeg exited name=%s rc=%s: closing clients", self.config.name, rc)
            for client in list(self._clients):
                self._close_client(client)

    async def _drain_stderr(self, stderr: asyncio.StreamReader) -> None:
        # ffmpeg runs with -loglevel error: every line is worth a log record
        while line := await stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self._stats.ffmpeg_errors.append(text)
            del self._stats.ffmpeg_errors[:-20]
            log.warning("ffmpeg name=%s stderr=%s", self.config.name, text)

    async def _kill_ffmpeg(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def keyframe_entry(tail: bytes, chunk: bytes) -> bytes | None:
    """Where a new viewer should join: from the PAT just before the first keyframe in ``chunk``.

    ffmpeg's MPEG-TS muxer writes PAT and PMT right before each video keyframe and flags the
    keyframe's first packet with random_access_indicator. ``tail`` (the end of the previous
    chunk) catches a PAT/PMT that a read split from its keyframe. None: no keyframe in chunk.
    """
    data = tail + chunk
    last_pat: int | None = None
    for off in range(0, len(data) - TS_PACKET + 1, TS_PACKET):
        pid = ((data[off + 1] & 0x1F) << 8) | data[off + 2]
        if pid == 0:
            last_pat = off
            continue
        has_adaptation = (data[off + 3] >> 4) & 0x2
        random_access = has_adaptation and data[off + 4] > 0 and data[off + 5] & 0x40
        if random_access and off >= len(tail):
            if last_pat is not None and off - last_pat <= 3 * TS_PACKET:
                return data[last_pat:]
            return data[off:]
    return None


def ffmpeg_command(config: CameraSimConfig) -> list[str]:
    """The ffmpeg command line of an H.264/H.265 camera (MPEG-TS on stdout)."""
    head = ["ffmpeg", "-hide_banner", "-loglevel", "error"]
    tail = ["-f", "mpegts", "-flush_packets", "1", "-"]
    if config.source_file is not None:
        loop = ["-nostdin", "-re", "-stream_loop", "-1", "-i", str(config.source_file)]
        return [*head, *loop, "-map", "0:v:0", "-c", "copy", *tail]
    # -framerate (the rawvideo demuxer's option), not -r: with -r ffmpeg would stamp frames at
    # a fixed rate, and set_fps/stall would make the video play fast; with wall-clock
    # timestamps a slowed or stalled camera looks exactly like one in the recording
    raw_in = [
        "-f", "rawvideo", "-pix_fmt", "bgr24",
        "-video_size", f"{config.width}x{config.height}",
        "-framerate", f"{config.fps:g}",
        "-use_wallclock_as_timestamps", "1",
        "-i", "-",
    ]  # fmt: skip
    assert config.codec != "mjpeg", "mjpeg cameras encode with OpenCV"
    encode = encoder_args(config.codec, config.fps)
    return [*head, *raw_in, "-an", *encode, "-fps_mode", "passthrough", *tail]


def encoder_args(codec: VideoCodec, fps: float) -> list[str]:
    """ffmpeg output options encoding ``codec`` live, with a keyframe every second."""
    if codec == "h264":
        return _x264_args(fps)
    gop = str(max(1, round(fps)))
    return [
        "-c:v", "libx265", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
        "-g", gop, "-force_key_frames", "expr:gte(t,n_forced*1)",
        # x265 prints its banner and statistics to stderr whatever ffmpeg's -loglevel says;
        # repeat-headers puts VPS/SPS/PPS before every keyframe, so a late joiner can decode
        "-x265-params", "log-level=error:repeat-headers=1",
    ]  # fmt: skip


def _x264_args(fps: float) -> list[str]:
    gop = str(max(1, round(fps)))
    return [
        "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
        # a keyframe every second of video time, even when set_fps lowers the rate
        "-g", gop, "-force_key_frames", "expr:gte(t,n_forced*1)",
    ]  # fmt: skip


def make_h264_clip(path: Path, *, width: int, height: int, fps: float, seconds: float) -> Path:
    """Encode a test clip (moving pattern, clock, keyframe every second) with Debian's ffmpeg.

    For benchmarks: serve it with ``CameraSimConfig(codec="h264", source_file=path)``. The
    container follows the suffix (``.ts`` MPEG-TS, ``.mp4`` MP4). Blocking: call it in a thread
    from async code.
    """
    _check_fps(fps)
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    CameraSimConfig(name=path.stem or "clip", codec="h264", width=width, height=height, fps=fps)
    renderer = FrameRenderer(path.stem or "clip", width, height)
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "bgr24", "-video_size", f"{width}x{height}",
        "-framerate", f"{fps:g}", "-i", "-", "-an", *_x264_args(fps),
    ]  # fmt: skip
    if path.suffix == ".mp4":
        cmd += ["-movflags", "+faststart"]
    cmd.append(str(path))
    frames = max(1, round(seconds * fps))
    start_ms = time.time_ns() // 1_000_000
    with subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 (only a prctl call, see _die_with_parent)
    ) as proc:
        assert proc.stdin is not None and proc.stderr is not None
        try:
            for i in range(frames):
                proc.stdin.write(renderer.render(i, start_ms + round(i * 1000 / fps)).data)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg failed: its stderr says why
        err = proc.stderr.read().decode(errors="replace").strip()
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"ffmpeg could not encode {path} (rc={rc}): {err}")
    return path


def _mjpeg_part(body: bytes) -> bytes:
    head = (
        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body + b"\r\n"


def _die_with_parent() -> None:
    """preexec_fn: the kernel kills the child (ffmpeg) when this process dies, even by SIGKILL."""
    # only a prctl call here: the child of a threaded process must not load libraries or lock
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


async def _serve(config: CameraSimConfig) -> None:
    camera = SimulatedCamera(config)
    url = await camera.start()
    log.info("serving camera name=%s url=%s (Ctrl-C stops)", config.name, url)
    try:
        await asyncio.Event().wait()
    finally:
        await camera.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m simulators.camera --name cam --codec h264 --port 8554``: serve one camera."""
    parser = argparse.ArgumentParser(prog="python -m simulators.camera", description=__doc__)
    parser.add_argument("--name", default="sim-cam")
    parser.add_argument("--codec", choices=("mjpeg", "h264", "h265"), default="mjpeg")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--jpeg-quality", type=int, default=80)
    parser.add_argument("--source-file", type=Path, help="h264/h265: loop this clip instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = CameraSimConfig(
            name=args.name,
            codec=args.codec,
            width=args.width,
            height=args.height,
            fps=args.fps,
            host=args.host,
            port=args.port,
            jpeg_quality=args.jpeg_quality,
            source_file=args.source_file,
        )
    except ValueError as exc:
        parser.error(str(exc))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config))


if __name__ == "__main__":
    main()
