"""Playback of recorded segments (``GET /api/v1/recordings/segments/{id}/media``) over real HTTP:
who may play, a seat's WAV with HTTP ranges, an H.264 ``.ts`` remuxed by a real ffmpeg to MP4
that ffprobe reads, an MJPEG ``.avi`` transcoded, unknown ids and unplayable files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from test_console_app_harness import auth, console, make_service

from dashboards import recordings_api
from dashboards.auth import Role
from dashboards.recordings_api import RECORDINGS_KEY, RecordingsContext
from dashboards.sessions import AUDIT_KEY
from hub.audit import AuditLog
from hub.hearings import HearingService
from hub.recorder import Recorder
from hub.recorder_config import CameraConfig
from hub.recording_index import DB_FILE, RecordingIndex, SegmentRecord
from hub.segment_media import STALE_PART_S, _evict

SESSION = "h-20261123-1"
TRACK = "court-1-mic-1-judge"
CAMERA = "court-1-cam-1"


@dataclass
class Rig:
    client: TestClient[web.Request, web.Application]
    index: RecordingIndex
    root: Path

    async def add(self, camera: str, name: str, data: bytes, start_ms: int) -> SegmentRecord:
        path = self.root / camera / "20261123" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return await self.index.add_segment(
            camera=camera,
            venue="court-1",
            session_id=SESSION,
            path=path,
            start_ms=start_ms,
            end_ms=start_ms + 2_000,
            frames=0,
        )

    async def get(
        self, segment_id: int | str, role: Role = Role.JUDGE, **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        r = await self.client.get(
            f"/api/v1/recordings/segments/{segment_id}/media", headers=auth(role, **headers)
        )
        return r.status, dict(r.headers), await r.read()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    data_dir = tmp_path / "hub"
    root = data_dir / "recordings"
    index = await RecordingIndex.open(data_dir / DB_FILE, root)
    audit = await AuditLog.open(data_dir)
    hearings = await HearingService.open(data_dir, index, audit)

    def setup(app: web.Application) -> None:
        app[AUDIT_KEY] = audit
        app[RECORDINGS_KEY] = RecordingsContext(index, hearings, None, None, data_dir / DB_FILE)

    try:
        async with console(
            make_service(tmp_path / "svc"), extra_routes=recordings_api.ROUTES, setup=setup
        ) as client:
            yield Rig(client, index, root)
    finally:
        await hearings.close()
        await audit.close()
        await index.close()


def wav_bytes(tmp: Path, seconds: float = 2.0, rate: int = 16_000) -> bytes:
    """A mono 16-bit WAV with a ramp in it (every byte different enough to check a range)."""
    path = tmp / "seat.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(i % 251 for i in range(int(seconds * rate) * 2)))
    return path.read_bytes()


async def ffmpeg_clip(tmp: Path, name: str, *codec: str) -> bytes:
    """A 2 s 320×240 test picture encoded by ffmpeg with ``codec`` into ``name``."""
    out = tmp / name
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=10:duration=2",
        *codec,
        "-y",
        str(out),
    )
    assert await proc.wait() == 0
    return out.read_bytes()


async def ffprobe_stdin(data: bytes) -> dict[str, object]:
    """ffprobe's view of ``data`` piped in."""
    proc = await asyncio.create_subprocess_exec(
        "ffprobe",
        "-v",
        "error",
        "-show_streams",
        "-show_format",
        "-of",
        "json",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate(data)
    assert proc.returncode == 0
    result: dict[str, object] = json.loads(out)
    return result


async def test_only_the_bench_may_play_recordings(rig: Rig, tmp_path: Path) -> None:
    segment = await rig.add(TRACK, f"{TRACK}_1.wav", wav_bytes(tmp_path), 1_000)
    for role in (Role.JUDGE, Role.CLERK, Role.ADMIN):
        status, _, _ = await rig.get(segment.id, role)
        assert status == 200, role
    for role in (Role.TECHNICIAN, Role.COMMANDER, Role.COUNTER):
        status, _, _ = await rig.get(segment.id, role)
        assert status == 403, role
    r = await rig.client.get(f"/api/v1/recordings/segments/{segment.id}/media")
    assert r.status == 401


async def test_a_seat_wav_is_served_as_is_with_ranges(rig: Rig, tmp_path: Path) -> None:
    data = wav_bytes(tmp_path)
    segment = await rig.add(TRACK, f"{TRACK}_1.wav", data, 1_000)
    status, headers, body = await rig.get(segment.id)
    assert status == 200 and body == data
    assert headers["Content-Type"] == "audio/wav"
    assert headers.get("Accept-Ranges") == "bytes"
    status, headers, body = await rig.get(segment.id, Range="bytes=1000-1999")
    assert status == 206
    assert body == data[1000:2000]
    assert headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    # the file is never touched
    assert (rig.root / segment.path).read_bytes() == data


async def test_unknown_and_missing_segments_are_404(rig: Rig, tmp_path: Path) -> None:
    assert (await rig.get(99_999))[0] == 404
    assert (await rig.get("not-a-number"))[0] == 404
    segment = await rig.add(TRACK, f"{TRACK}_1.wav", wav_bytes(tmp_path), 1_000)
    (rig.root / segment.path).unlink()
    status, _, body = await rig.get(segment.id)
    assert status == 404 and b"not on disk" in body


async def test_an_h264_ts_comes_back_as_mp4(rig: Rig, tmp_path: Path) -> None:
    ts = await ffmpeg_clip(
        tmp_path, "clip.ts", "-c:v", "libx264", "-preset", "ultrafast", "-f", "mpegts"
    )
    segment = await rig.add(CAMERA, f"{CAMERA}_1.ts", ts, 1_000)
    status, headers, body = await rig.get(segment.id)
    assert status == 200
    assert headers["Content-Type"] == "video/mp4"
    assert body[4:8] == b"ftyp"
    probe = await ffprobe_stdin(body)
    streams = probe["streams"]
    assert isinstance(streams, list) and [s["codec_name"] for s in streams] == ["h264"]
    assert streams[0]["width"] == 320
    assert (rig.root / segment.path).read_bytes() == ts
    # converted once, then served from the cache with ranges (the player seeks in it)
    status, headers, part = await rig.get(segment.id, Range="bytes=100-199")
    assert status == 206 and part == body[100:200]
    assert headers["Content-Type"] == "video/mp4"


async def test_an_mjpeg_avi_is_transcoded_to_h264(rig: Rig, tmp_path: Path) -> None:
    avi = await ffmpeg_clip(tmp_path, "clip.avi", "-c:v", "mjpeg", "-q:v", "5")
    segment = await rig.add(CAMERA, f"{CAMERA}_2.avi", avi, 3_000)
    status, headers, body = await rig.get(segment.id)
    assert status == 200 and headers["Content-Type"] == "video/mp4"
    probe = await ffprobe_stdin(body)
    streams = probe["streams"]
    assert isinstance(streams, list) and [s["codec_name"] for s in streams] == ["h264"]


async def test_unplayable_files_are_refused_clearly(rig: Rig, tmp_path: Path) -> None:
    odd = await rig.add(CAMERA, f"{CAMERA}_3.flv", b"not video", 5_000)
    status, _, body = await rig.get(odd.id)
    assert status == 415 and b"cannot be played" in body
    broken = await rig.add(CAMERA, f"{CAMERA}_4.ts", b"\x00" * 4096, 7_000)
    status, _, body = await rig.get(broken.id)
    assert status == 415 and b"cannot be converted" in body


def ffmpeg_reading(path: Path) -> list[int]:
    """Pids of ffmpeg processes whose command line names ``path``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"ffmpeg") and str(path).encode() in argv:
            found.append(int(proc.name))
    return found


@pytest.mark.slow
async def test_ffmpeg_stops_when_the_viewer_goes_away(
    rig: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hub.segment_media")
    # a long MJPEG clip: transcoding it takes a second or more
    out = tmp_path / "long.avi"
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
        "-i", "testsrc=size=640x360:rate=25:duration=30", "-c:v", "mjpeg", "-q:v", "10",
        "-y", str(out),
    )  # fmt: skip
    assert await proc.wait() == 0
    segment = await rig.add(CAMERA, f"{CAMERA}_9.avi", out.read_bytes(), 9_000)
    path = rig.root / segment.path
    request = asyncio.ensure_future(rig.get(segment.id))

    async def converting() -> list[int]:
        while not (pids := ffmpeg_reading(path)):
            assert not request.done(), "the conversion ended before the viewer could leave"
            await asyncio.sleep(0.02)
        return pids

    pids = await asyncio.wait_for(converting(), 10)
    request.cancel()  # the viewer goes away while the hub converts

    def finished() -> bool:
        return any(f"playback ffmpeg finished pid={pids[0]} " in m for m in caplog.messages)

    async def gone() -> None:
        while not finished():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(gone(), 10)  # stopped and reaped (logged after the wait)
    assert not ffmpeg_reading(path)
    cache = rig.root.parent / recordings_api.PLAYBACK_CACHE
    assert not list(cache.iterdir()), "nothing half-converted is left in the cache"


class _Cameras:
    """The part of the recorder the media route asks: which roles may see a camera."""

    def __init__(self, *cameras: CameraConfig) -> None:
        self.cameras = {c.id: c for c in cameras}

    def camera_config(self, camera_id: str) -> CameraConfig | None:
        return self.cameras.get(camera_id)


async def test_an_interrogation_rooms_recordings_are_for_its_roles(tmp_path: Path) -> None:
    """Recorded interrogation video follows the camera's live roles (judges by default): a
    clerk, who may play the courtroom's recordings, gets 403 for it."""
    data_dir = tmp_path / "hub"
    root = data_dir / "recordings"
    index = await RecordingIndex.open(data_dir / DB_FILE, root)
    hearings = await HearingService.open(data_dir, index)
    room = CameraConfig(
        id="interro-1-cam-1", venue="interro-1", venue_kind="interrogation_room", url="usb:0"
    )
    recorder = cast(Recorder, _Cameras(room))

    def setup(app: web.Application) -> None:
        app[RECORDINGS_KEY] = RecordingsContext(index, hearings, recorder, None, data_dir / DB_FILE)

    try:
        async with console(
            make_service(tmp_path / "svc"), extra_routes=recordings_api.ROUTES, setup=setup
        ) as client:
            rig = Rig(client, index, root)
            segment = await rig.add(room.id, "x.wav", wav_bytes(tmp_path), 1_000)
            assert (await rig.get(segment.id, Role.JUDGE))[0] == 200
            status, _, body = await rig.get(segment.id, Role.CLERK)
            assert status == 403 and b"interro-1-cam-1" in body
    finally:
        await hearings.close()
        await index.close()


def test_the_playback_cache_stays_within_its_count_and_bytes(tmp_path: Path) -> None:
    """Converted copies share the disk with the evidence: bounded by count and by bytes, the
    newest kept; a killed hub's stale .part files go, a running conversion's stays."""
    now = time.time()
    made = []
    for n in range(6):  # 6 conversions of 100 bytes, n = 5 the newest
        path = tmp_path / f"seg{n}.mp4"
        path.write_bytes(b"x" * 100)
        os.utime(path, (now - 60 + n, now - 60 + n))
        made.append(path)
    stale, running = tmp_path / ".old.mp4.1-2.part", tmp_path / ".new.mp4.1-3.part"
    for part, age in ((stale, STALE_PART_S + 5), (running, 1)):
        part.write_bytes(b"x")
        os.utime(part, (now - age, now - age))

    _evict(tmp_path, 4, 10_000, made[5])  # the count binds
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == [f"seg{n}.mp4" for n in (2, 3, 4, 5)]
    assert not stale.exists() and running.exists()

    _evict(tmp_path, 4, 250, made[5])  # the bytes bind
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["seg4.mp4", "seg5.mp4"]

    big = tmp_path / "seg9.mp4"  # larger than the whole budget: the viewer still gets it
    big.write_bytes(b"x" * 300)
    _evict(tmp_path, 4, 250, big)
    assert [p.name for p in tmp_path.glob("*.mp4")] == ["seg9.mp4"]
