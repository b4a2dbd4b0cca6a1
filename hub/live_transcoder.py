"""Live JPEG frames for stream-copy cameras, decoded only while somebody watches.

Recording an H.264 camera never decodes it (that is what makes stream copy cheap). The wall
needs JPEGs, so while a camera has viewers one ffmpeg decodes it at ``live_fps``, scaled to
``live_width``, into ``mpjpeg`` parts that go to the camera's :class:`FrameChannel` — one
connection whatever the number of viewers. Without viewers, the wall's still frame comes from
the first frame of each closed segment (:func:`still_from_segment`: one keyframe decode).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from hub.camera_worker import now_ms
from hub.child_process import preexec, stop_process
from hub.live_video import FrameChannel
from hub.recorder_config import CameraConfig

log = logging.getLogger(__name__)

#: wait before restarting a live decoder that ended (camera down)
RETRY_S = 2.0
MAX_PART = 8 * 1024 * 1024


def live_args(camera: CameraConfig, fps: float, width: int) -> list[str]:
    """ffmpeg decoding ``camera`` into multipart JPEG on stdout."""
    args = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
    if camera.url.lower().startswith("rtsp"):
        args += ["-rtsp_transport", "tcp"]
    args += ["-fflags", "nobuffer", "-analyzeduration", "1000000", "-i", camera.url, "-an"]
    args += ["-vf", f"fps={fps:g},scale='min({width},iw)':-2", "-q:v", "5", "-f", "mpjpeg", "-"]
    return args


class LiveTranscoder:
    """Decodes one camera into its frame channel between :meth:`start` and :meth:`stop`."""

    def __init__(self, camera: CameraConfig, channel: FrameChannel, *, fps: float, width: int):
        self.camera = camera
        self.channel = channel
        self.fps = fps
        self.width = width
        self.frames = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether a decoder is (meant to be) running."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start decoding (no-op when running)."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> Coroutine[Any, Any, None]:
        """Stop decoding now; await the result to wait for ffmpeg to end.

        The decoder is cancelled when this is *called*, not when the returned coroutine first
        runs: a last viewer's ``spawn(stop())`` followed in the same loop turn by a new viewer's
        :meth:`start` must not cancel the new viewer's decoder (it did when ``stop`` was a plain
        ``async def``: ``start`` saw the old task still running, then ``stop`` cancelled it).
        """
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        return _wait_cancelled(task)

    async def _run(self) -> None:
        while True:
            try:
                await self._decode_once()
            except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                log.info("live decoder ended camera=%s error=%s", self.camera.id, exc)
            await asyncio.sleep(RETRY_S)

    async def _decode_once(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *live_args(self.camera, self.fps, self.width),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=preexec(),
        )
        assert proc.stdout is not None
        log.info("live decoder started camera=%s pid=%s", self.camera.id, proc.pid)
        try:
            while True:
                jpeg = await read_mpjpeg_part(proc.stdout)
                if jpeg is None:
                    return
                self.frames += 1
                self.channel.publish(jpeg, now_ms())
        finally:
            await stop_process(proc, grace_s=1.0)


async def _wait_cancelled(task: asyncio.Task[None] | None) -> None:
    """Wait until a cancelled decoder task (and its ffmpeg) has ended."""
    if task is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def read_mpjpeg_part(stream: asyncio.StreamReader) -> bytes | None:
    """The next JPEG of an ffmpeg ``mpjpeg`` stream (None at its end)."""
    try:
        head = await stream.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = -1
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if not 0 < length <= MAX_PART:
        raise ValueError(f"bad mpjpeg part length {length}")
    body = await stream.readexactly(length)
    return body


def still_from_segment(path: Path, width: int) -> bytes | None:
    """The first frame of a closed segment as a JPEG (a segment starts at a keyframe)."""
    args = ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-frames:v", "1"]
    args += ["-vf", f"scale='min({width},iw)':-2", "-q:v", "5", "-f", "mjpeg", "-"]
    try:
        out = subprocess.run(args, capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("no still from segment path=%s error=%s", path, exc)
        return None
    return out.stdout if out.returncode == 0 and out.stdout[:2] == b"\xff\xd8" else None
