"""A simulated RTSP network camera (H.264 or H.265), served by GStreamer's RTSP server.

Like a real IP camera, it listens and the recorder connects to it (pull): DESCRIBE, SETUP (TCP
interleaved or UDP, as the client asks), PLAY. Three processes, all killed by the kernel with
the simulator (``PR_SET_PDEATHSIG``), all with their stderr drained into the log:

- this process renders the synthetic picture (:class:`simulators.camera.FrameRenderer`: name,
  UTC clock, frame counter, moving bar) on an absolute schedule and pipes raw BGR frames into
- ``ffmpeg`` (libx264 or libx265, keyframe every second, Annex-B elementary stream on stdout);
  this process copies that stream into
- ``/usr/bin/python3 simulators/rtsp_camera_server.py`` (GStreamer's RTSP server through
  PyGObject, which the venv lacks), which serves it at ``rtsp://HOST:PORT/live``.

Why GStreamer: Debian's ``rtsp-server-perl`` relay serves UDP transport only and ffmpeg's own
RTSP "server" (``-rtsp_flags listen``) takes one pushing client, not viewers; the recorder
pulls with ``-rtsp_transport tcp`` as it would from a camera behind a firewall.

Faults: :meth:`~SimulatedRtspCamera.stall` / :meth:`~SimulatedRtspCamera.resume` (sessions
stay open, no frames), :meth:`~SimulatedRtspCamera.cut` (the server dies: sessions drop, the
port refuses connections, as when a camera loses power) and
:meth:`~SimulatedRtspCamera.restore` (it serves again on the same port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Final

from hub.child_process import preexec, stop_process
from simulators.camera import MAX_FPS, FrameRenderer, VideoCodec, encoder_args

log = logging.getLogger(__name__)

#: Debian's python3, which has PyGObject (python3-gi) and the GstRtspServer typelib
SYSTEM_PYTHON: Final = "/usr/bin/python3"
SERVER_SCRIPT: Final = Path(__file__).with_name("rtsp_camera_server.py")
#: how long the server may take to import GStreamer and listen
SERVER_START_TIMEOUT_S: Final = 15.0
INSTALL_HINT: Final = (
    "the RTSP camera needs GStreamer's RTSP server for the system python3: "
    "run scripts/install-system-deps.sh (gir1.2-gst-rtsp-server-1.0, python3-gi, "
    "gstreamer1.0-plugins-base/-good/-bad)"
)
_ELEMENTARY = {"h264": "h264", "h265": "hevc"}  # ffmpeg's muxer names


class SimulatedRtspCamera:
    """One simulated RTSP camera (see the module docstring)."""

    def __init__(
        self,
        name: str,
        width: int = 640,
        height: int = 360,
        fps: float = 10.0,
        codec: VideoCodec = "h264",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/live",
        python: str = SYSTEM_PYTHON,
    ) -> None:
        if not name:
            raise ValueError("camera name must not be empty")
        if codec not in _ELEMENTARY:
            raise ValueError(f"unknown codec {codec!r} (known: h264, h265)")
        if not (16 <= width <= 7680 and 16 <= height <= 4320) or width % 2 or height % 2:
            raise ValueError(f"frame size {width}x{height} must be even and in 16x16..7680x4320")
        if not 0 < fps <= MAX_FPS:
            raise ValueError(f"fps {fps} not in (0, {MAX_FPS}]")
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
        if not path.startswith("/"):
            raise ValueError(f"path {path!r} must start with /")
        self.name, self.width, self.height, self.fps = name, width, height, fps
        self.codec: VideoCodec = codec
        self.host, self.port, self.path, self.python = host, port, path, python
        self.url = ""
        self._renderer = FrameRenderer(name, width, height)
        self._encoder: asyncio.subprocess.Process | None = None
        self._server: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._server_tasks: list[asyncio.Task[None]] = []
        self._stalled = False
        self._wake = asyncio.Event()
        self.frames_sent = 0
        #: bytes of encoded stream handed to the server (dropped while cut)
        self.bytes_served = 0
        self.server_errors: list[str] = []

    # --- state ---------------------------------------------------------------------------
    @property
    def ffmpeg_pid(self) -> int | None:
        """The encoder's pid, or None."""
        return self._encoder.pid if self._encoder is not None else None

    @property
    def server_pid(self) -> int | None:
        """The RTSP server's pid, or None (stopped or cut)."""
        return self._server.pid if self._server is not None else None

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> str:
        """Start the encoder and the RTSP server; returns ``rtsp://HOST:PORT/PATH``."""
        if self._encoder is not None:
            return self.url
        try:
            await self._start_server()
            await self._start_encoder()
        except BaseException:
            await self.stop()
            raise
        log.info("rtsp camera started name=%s codec=%s url=%s", self.name, self.codec, self.url)
        return self.url

    async def stop(self) -> None:
        """Stop rendering, kill the encoder and the server."""
        encoder, self._encoder = self._encoder, None
        if encoder is not None:
            await _kill(encoder)
        tasks, self._tasks = self._tasks, []
        await _cancel(tasks)
        await self._stop_server()
        log.info("rtsp camera stopped name=%s frames_sent=%d", self.name, self.frames_sent)

    # --- faults --------------------------------------------------------------------------
    def stall(self) -> None:
        """Keep RTSP sessions open but send no frames until :meth:`resume`."""
        log.info("camera fault name=%s fault=stall", self.name)
        self._stalled = True

    def resume(self) -> None:
        """Send frames again after :meth:`stall`."""
        log.info("camera fault name=%s fault=resume", self.name)
        self._stalled = False
        self._wake.set()

    async def cut(self) -> None:
        """Power loss: the server dies, every session drops, connections are refused."""
        log.info("camera fault name=%s fault=cut", self.name)
        await self._stop_server(abrupt=True)

    async def restore(self) -> None:
        """Power back after :meth:`cut`: serve again on the same port."""
        log.info("camera fault name=%s fault=restore", self.name)
        if self._server is None:
            await self._start_server()

    # --- RTSP server -----------------------------------------------------------------------
    async def _start_server(self) -> None:
        cmd = [
            self.python, str(SERVER_SCRIPT), "--host", self.host, "--port", str(self.port),
            "--path", self.path, "--codec", self.codec,
        ]  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                preexec_fn=preexec(),
            )
        except OSError as exc:
            raise RuntimeError(f"cannot run {self.python}: {exc}; {INSTALL_HINT}") from exc
        assert proc.stdout is not None and proc.stderr is not None
        stderr_task = asyncio.create_task(self._drain_server_stderr(proc.stderr))
        try:
            async with asyncio.timeout(SERVER_START_TIMEOUT_S):
                line = await proc.stdout.readline()
        except TimeoutError:
            line = b""
        words = line.decode(errors="replace").split()
        if len(words) != 2 or words[0] != "ready":
            await _kill(proc)
            await _cancel([stderr_task], grace_s=1.0)
            detail = " | ".join(self.server_errors[-3:]) or "no output"
            raise RuntimeError(
                f"RTSP server did not start name={self.name}: {detail}; {INSTALL_HINT}"
            )
        # the port the kernel picked for port=0 is kept, so restore() comes back at the same URL
        self.port = int(words[1])
        self.url = f"rtsp://{self.host}:{self.port}{self.path}"
        self._server = proc
        self._server_tasks = [stderr_task]
        log.info("rtsp server listening name=%s url=%s pid=%d", self.name, self.url, proc.pid)

    async def _stop_server(self, *, abrupt: bool = False) -> None:
        proc, self._server = self._server, None
        tasks, self._server_tasks = self._server_tasks, []
        if proc is not None and abrupt:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # no goodbye to the clients, as with a power cut
            await proc.wait()
        elif proc is not None:
            await _kill(proc)
        await _cancel(tasks, grace_s=1.0)

    async def _drain_server_stderr(self, stderr: asyncio.StreamReader) -> None:
        while line := await stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self.server_errors.append(text)
            del self.server_errors[:-20]
            log.info("rtsp server name=%s: %s", self.name, text)

    # --- encoder -------------------------------------------------------------------------
    async def _start_encoder(self) -> None:
        cmd = encoder_command(self.codec, self.width, self.height, self.fps)
        log.info("ffmpeg starting name=%s cmd=%s", self.name, " ".join(cmd))
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=preexec(),
        )
        self._encoder = proc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self._spawn(self._render(proc.stdin), "render")
        self._spawn(self._forward(proc.stdout), "forward")
        self._spawn(self._drain_encoder_stderr(proc.stderr), "ffmpeg-stderr")

    def _spawn(self, coro: Coroutine[object, object, None], what: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=f"rtsp-camera-{self.name}-{what}"))

    async def _render(self, stdin: asyncio.StreamWriter) -> None:
        """Raw BGR frames into ffmpeg on an absolute schedule (a late frame moves it)."""
        loop = asyncio.get_running_loop()
        period = 1.0 / self.fps
        next_t = loop.time()
        try:
            while True:
                if not self._stalled:
                    ts_ms = time.time_ns() // 1_000_000
                    frame = await asyncio.to_thread(self._render_bytes, self.frames_sent, ts_ms)
                    stdin.write(frame)
                    await stdin.drain()
                    self.frames_sent += 1
                next_t += period
                now = loop.time()
                if next_t < now - period:
                    next_t = now
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, next_t - now))
                if self._wake.is_set():
                    next_t = loop.time()
        except (BrokenPipeError, ConnectionResetError):
            log.error("ffmpeg stdin closed name=%s: encoder gone", self.name)

    def _render_bytes(self, index: int, ts_ms: int) -> bytes:
        # a copy: the renderer reuses its buffer while the pipe may still hold this frame
        return self._renderer.render(index, ts_ms).tobytes()

    async def _forward(self, stdout: asyncio.StreamReader) -> None:
        """The encoded stream into the server's stdin; dropped while the server is cut."""
        while data := await stdout.read(1 << 16):
            server = self._server
            if server is None or server.stdin is None:
                continue
            try:
                server.stdin.write(data)
                await server.stdin.drain()
                self.bytes_served += len(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server is being cut or stopped: the camera is "off"
        if self._encoder is not None:  # not stopped by stop()
            log.error("ffmpeg exited name=%s: the camera sends nothing", self.name)

    async def _drain_encoder_stderr(self, stderr: asyncio.StreamReader) -> None:
        while line := await stderr.readline():
            log.warning(
                "ffmpeg name=%s stderr=%s", self.name, line.decode(errors="replace").rstrip()
            )


def encoder_command(codec: VideoCodec, width: int, height: int, fps: float) -> list[str]:
    """ffmpeg: raw BGR frames on stdin -> H.264/H.265 Annex-B elementary stream on stdout."""
    # frame-counter timestamps, not wall-clock ones: an elementary stream carries none (the
    # RTSP server stamps each frame as it arrives), and two frames read in one clock tick made
    # ffmpeg's muxer log "non monotonically increasing dts" (nothing was lost)
    raw_in = [
        "-f", "rawvideo", "-pix_fmt", "bgr24", "-video_size", f"{width}x{height}",
        "-framerate", f"{fps:g}", "-i", "-",
    ]  # fmt: skip
    out = ["-fps_mode", "passthrough", "-f", _ELEMENTARY[codec], "-flush_packets", "1", "-"]
    encode = encoder_args(codec, fps)
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", *raw_in, "-an", *encode, *out]


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    await stop_process(proc, grace_s=2.0)


async def _cancel(tasks: list[asyncio.Task[None]], *, grace_s: float | None = None) -> None:
    """Cancel ``tasks`` (or, with ``grace_s``, let them finish reading first) and await them."""
    for task in tasks:
        if grace_s is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), grace_s)
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _serve(camera: SimulatedRtspCamera) -> None:
    url = await camera.start()
    log.info("serving rtsp camera name=%s url=%s (Ctrl-C stops)", camera.name, url)
    try:
        await asyncio.Event().wait()
    finally:
        await camera.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m simulators.rtsp_camera --name cam --codec h265 --port 8554``: serve one camera."""
    parser = argparse.ArgumentParser(prog="python -m simulators.rtsp_camera", description=__doc__)
    parser.add_argument("--name", default="sim-rtsp-cam")
    parser.add_argument("--codec", choices=sorted(_ELEMENTARY), default="h264")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="/live")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        camera = SimulatedRtspCamera(
            args.name, args.width, args.height, args.fps, args.codec,
            host=args.host, port=args.port, path=args.path,
        )  # fmt: skip
    except ValueError as exc:
        parser.error(str(exc))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(camera))


if __name__ == "__main__":
    main()
