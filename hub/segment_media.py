"""Playing back a recorded segment in a browser: which file, which content type, which ffmpeg.

A seat track's ``.wav`` and a finished ``.mp4`` play as they are (served with HTTP ranges). An
H.264 stream copy in ``.ts`` or ``.mkv`` does not play in browsers' ``<video>``: it is remuxed on
demand (``-c copy``, no re-encoding: well under a second for a segment) to an MP4 in a small
playback cache. An OpenCV camera's MJPEG ``.avi`` is transcoded the same way with libx264
``ultrafast``: a judge must be able to play every camera the hearing recorded, and ultrafast at
the recorders' sizes runs many times faster than real time, so the cost is paid once per segment
watched.

Why a file and not ffmpeg's fragmented MP4 on a pipe: a response without ranges is not seekable
in Chromium (``seekable`` stays empty, setting ``currentTime`` is ignored), and playback synced
to the transcript is all seeking. The cached MP4 is served with ranges like the WAVs.

The recorded file is only ever read; the cache lives outside the storage root (the recorder's
crash recovery scans the camera folders). The segment is looked up read-only in the index's
database (the index's own connection belongs to its DB thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final
from urllib.parse import quote

from hub.child_process import preexec, stop_process
from hub.recording_index import SEGMENT_COLUMNS, SEGMENT_FROM, SegmentRecord, segment_from_row

#: served as they are, with ranges
AS_IS_TYPES: Final = {".wav": "audio/wav", ".mp4": "video/mp4"}
log = logging.getLogger(__name__)

#: converted to MP4 first: H.264 stream copy or MJPEG transcode
_COPY: Final = ("-c:v", "copy")
_TRANSCODE: Final = (
    "-c:v",
    "libx264",
    "-preset",
    "ultrafast",
    "-tune",
    "zerolatency",
    "-pix_fmt",
    "yuv420p",
)
PIPED_CODECS: Final = {".ts": _COPY, ".mkv": _COPY, ".avi": _TRANSCODE}
#: a conversion's ``.part`` file older than this belongs to a hub that was killed
STALE_PART_S: Final = 3600.0


class MediaError(Exception):
    """The segment cannot be played back: its file is gone (deleted by retention, moved)."""


class UnplayableMedia(MediaError):
    """The segment's file is of a kind the console cannot play."""


@dataclass(frozen=True, slots=True)
class MediaPlan:
    """How to send one segment: the file as is (``codec`` is None) or converted to MP4."""

    path: Path
    content_type: str
    codec: tuple[str, ...] | None
    #: name of the converted copy in the playback cache (id and hash: a new file, a new name)
    cache_name: str = ""

    def command(self, out: Path, *, ffmpeg: str = "ffmpeg") -> tuple[str, ...]:
        """The ffmpeg command writing the playable MP4 to ``out``."""
        assert self.codec is not None
        return (
            ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-i", str(self.path), "-map", "0:v:0", *self.codec, "-an",
            "-movflags", "+faststart", "-f", "mp4", str(out),
        )  # fmt: skip


def plan_media(storage_root: Path, segment: SegmentRecord) -> MediaPlan:
    """The way to play ``segment`` back; :class:`MediaError` if the file is gone or unplayable."""
    rel = PurePosixPath(segment.path)
    if rel.is_absolute() or ".." in rel.parts:
        raise MediaError(f"segment {segment.id} has a path outside the storage root")
    path = storage_root.joinpath(*rel.parts)
    if segment.deleted_at_ms is not None or not path.is_file():
        raise MediaError(f"segment {segment.id} file is not on disk")
    suffix = path.suffix.lower()
    if suffix in AS_IS_TYPES:
        return MediaPlan(path, AS_IS_TYPES[suffix], None)
    codec = PIPED_CODECS.get(suffix)
    if codec is None:
        raise UnplayableMedia(
            f"segment {segment.id}: {suffix or 'no suffix'} files cannot be played"
        )
    return MediaPlan(path, "video/mp4", codec, f"{segment.id}-{segment.sha256[:16]}.mp4")


def segment_by_id(db_path: Path, segment_id: int) -> SegmentRecord | None:
    """The indexed segment ``segment_id`` (deleted ones too), read-only; blocking."""
    db = sqlite3.connect(f"file:{quote(str(db_path.resolve()))}?mode=ro", uri=True)
    try:
        row = db.execute(
            f"SELECT {SEGMENT_COLUMNS} FROM {SEGMENT_FROM} WHERE s.id = ?", (segment_id,)
        ).fetchone()
    finally:
        db.close()
    return segment_from_row(row) if row is not None else None


async def converted(
    plan: MediaPlan,
    cache_dir: Path,
    *,
    client_gone: Callable[[], bool],
    keep: int = 16,
    keep_bytes: int = 512 * 1024 * 1024,
    ffmpeg: str = "ffmpeg",
) -> Path:
    """The playable MP4 of ``plan`` in ``cache_dir``, converting it first if needed.

    ffmpeg writes a private ``.part`` file renamed into place when done (two viewers of the same
    segment may both convert; the last rename wins, both results are the same). It dies with the
    hub (``PR_SET_PDEATHSIG``) and is stopped when ``client_gone()`` turns true (polled) or the
    caller is cancelled. The ``keep`` most recent conversions stay, and no more than
    ``keep_bytes`` of them (the cache shares the disk with the evidence: retention's headroom
    must never delete recordings to make room for copies). :class:`MediaError` if ffmpeg fails.
    """
    target = cache_dir / plan.cache_name
    if await asyncio.to_thread(target.is_file):
        await asyncio.to_thread(os.utime, target)  # recently watched: evicted last
        return target
    await asyncio.to_thread(cache_dir.mkdir, parents=True, exist_ok=True)
    part = cache_dir / f".{plan.cache_name}.{os.getpid()}-{id(plan)}.part"
    proc = await asyncio.create_subprocess_exec(
        *plan.command(part, ffmpeg=ffmpeg),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec(),
    )
    assert proc.stderr is not None
    stderr = asyncio.ensure_future(proc.stderr.read())
    try:
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), 0.25)
                break
            except TimeoutError:
                if client_gone():
                    log.info("playback conversion abandoned path=%s", plan.path)
                    raise MediaError("the viewer went away") from None
        error = (await stderr).decode(errors="replace").strip()[-300:]
        if proc.returncode != 0:
            log.warning(
                "playback conversion failed path=%s rc=%s error=%s",
                plan.path,
                proc.returncode,
                error,
            )
            raise UnplayableMedia(f"segment file cannot be converted for playback: {error}")
        await asyncio.to_thread(os.replace, part, target)
    finally:
        # shielded: a second cancellation must not leave ffmpeg or its pipe behind
        await asyncio.shield(_finish(proc, stderr, part))
    await asyncio.to_thread(_evict, cache_dir, keep, keep_bytes, target)
    return target


async def _finish(
    proc: asyncio.subprocess.Process, stderr: asyncio.Future[bytes], part: Path
) -> None:
    await stop_process(proc, grace_s=1.0)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(stderr, 2)
    await asyncio.to_thread(part.unlink, missing_ok=True)
    log.info("playback ffmpeg finished pid=%s rc=%s", proc.pid, proc.returncode)


def _evict(cache_dir: Path, keep: int, keep_bytes: int, current: Path) -> None:
    """Keep the ``keep`` most recently used conversions within ``keep_bytes`` (``current``, just
    made, always stays); remove ``.part`` files a killed hub left behind (older than an hour)."""
    now = time.time()
    for part in cache_dir.glob(".*.part"):
        with contextlib.suppress(OSError):
            if now - part.stat().st_mtime > STALE_PART_S:
                part.unlink()
    done = []
    for p in cache_dir.glob("*.mp4"):
        with contextlib.suppress(OSError):
            st = p.stat()
            done.append((st.st_mtime, st.st_size, p))
    done.sort(reverse=True)
    total = 0
    for n, (_mtime, size, path) in enumerate(done):
        total += size
        if path != current and (n >= keep or total > keep_bytes):
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
