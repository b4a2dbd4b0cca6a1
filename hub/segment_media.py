"""Playing back a recorded segment in a browser: which file, which content type, which ffmpeg.

A seat track's ``.wav`` and a finished ``.mp4`` play as they are (served with HTTP ranges). An
H.264 stream copy in ``.ts`` or ``.mkv`` does not play in browsers' ``<video>``: it is remuxed on
the fly (``-c copy``, no re-encoding, cheap) to fragmented MP4 written to a pipe. An OpenCV
camera's MJPEG ``.avi`` is transcoded on the fly with libx264 ``ultrafast``: a judge must be able
to play every camera the hearing recorded, and ultrafast at the recorder's sizes runs many times
faster than real time on one core, so the cost is paid only while somebody watches.

The file is only ever read. The segment is looked up read-only in the index's database (the
index's own connection belongs to its DB thread).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final
from urllib.parse import quote

from hub.recording_index import SEGMENT_COLUMNS, SEGMENT_FROM, SegmentRecord, segment_from_row

#: served as they are, with ranges
AS_IS_TYPES: Final = {".wav": "audio/wav", ".mp4": "video/mp4"}
#: fragmented MP4 from ffmpeg's stdout: H.264 stream copy or MJPEG transcode
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


class MediaError(Exception):
    """The segment cannot be played back: its file is gone (deleted by retention, moved)."""


class UnplayableMedia(MediaError):
    """The segment's file is of a kind the console cannot play."""


@dataclass(frozen=True, slots=True)
class MediaPlan:
    """How to send one segment: the file as is (``command`` is None) or ffmpeg's stdout."""

    path: Path
    content_type: str
    command: tuple[str, ...] | None


def plan_media(storage_root: Path, segment: SegmentRecord, *, ffmpeg: str = "ffmpeg") -> MediaPlan:
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
    command = (
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-i",
        str(path),
        "-map",
        "0:v:0",
        *codec,
        "-an",
        "-movflags",
        "frag_keyframe+empty_moov+default_base_moof",
        "-f",
        "mp4",
        "pipe:1",
    )
    return MediaPlan(path, "video/mp4", command)


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
