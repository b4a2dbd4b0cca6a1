"""kill -9 of the hub mid-segment: no ffmpeg outlives it, and the next start indexes what was
left half-written as *recovered* (at most one segment per camera), every closed segment still
verifies, and recording goes on."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from recorder_harness import (
    H264_CAM,
    MJPEG_CAM,
    HubRunner,
    camera_entry,
    ffmpeg_mentioning,
    hub_config,
    start_camera,
    video_of,
    wait_for,
    wait_segments,
)

from hub.broker import PID_FILE
from hub.credentials import MQTT_DIR
from hub.evidence import verify_recordings
from hub.recording_index import DB_FILE

pytestmark = pytest.mark.slow

MEDIA = {".avi", ".ts"}
REPO = Path(__file__).resolve().parents[2]


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(config: dict[str, object]) -> str:
    """Just enough TOML for the hub config dicts of these tests (tables, arrays of tables)."""
    lines: list[str] = []
    for table, body in config.items():
        assert isinstance(body, dict)
        lines.append(f"[{table}]")
        arrays = {k: v for k, v in body.items() if isinstance(v, list)}
        for key, value in body.items():
            if key not in arrays:
                lines.append(f"{key} = {toml_value(value)}")
        for key, items in arrays.items():
            for item in items:
                lines.append(f"[[{table}.{key}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def segment_counts(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return dict(conn.execute("SELECT camera, COUNT(*) FROM segments GROUP BY camera"))
    except sqlite3.OperationalError:  # the hub is still creating the schema
        return {}


def segment_ids(db: Path) -> set[int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {int(r[0]) for r in conn.execute("SELECT id FROM segments")}


def open_segments(storage: Path, camera: str, *, with_data: bool = True) -> list[Path]:
    """The camera's segment files in .incoming (with at least one byte)."""
    folder = storage / camera / ".incoming"
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.suffix in MEDIA]
    return [p for p in files if p.stat().st_size > 0 or not with_data]


def start_hub_process(config_file: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """``courthub hub --config FILE`` in its own process, output to ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "hub.cli", "hub", "--config", str(config_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


def stop_orphan_broker(data_dir: Path) -> None:
    """SIGTERM the Mosquitto the killed hub started (its pid file), if it still runs."""
    pid_file = data_dir / MQTT_DIR / PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists() and str(data_dir).encode() in cmdline.read_bytes():
        os.kill(pid, signal.SIGTERM)


async def test_kill_9_mid_segment_then_restart_recovers_and_records_on(tmp_path: Path) -> None:
    mjpeg = await start_camera(MJPEG_CAM, "mjpeg")
    h264 = await start_camera(H264_CAM, "h264")
    data_dir = tmp_path / "hub"
    config = hub_config(
        data_dir, [camera_entry(MJPEG_CAM, mjpeg.url), camera_entry(H264_CAM, h264.url)]
    )
    config_file = tmp_path / "hub.toml"
    config_file.write_text(to_toml(config), encoding="utf-8")
    assert tomllib.loads(config_file.read_text(encoding="utf-8"))["recorder"]["cameras"]
    storage, db = data_dir / "recordings", data_dir / DB_FILE
    proc = start_hub_process(config_file, tmp_path / "hub.log")
    hub: HubRunner | None = None
    try:
        await wait_for(
            lambda: all(segment_counts(db).get(c, 0) >= 2 for c in (MJPEG_CAM, H264_CAM)),
            timeout=40,
            what="2 segments per camera from the hub process",
        )
        # kill it while the stream-copy camera has a segment open with data in it (the OpenCV
        # AVI writer buffers 256 kB: at this bitrate its open segment is still empty on disk)
        await wait_for(
            lambda: open_segments(storage, H264_CAM),
            timeout=10,
            what="a half-written H.264 segment",
        )
        assert ffmpeg_mentioning(str(storage)), "the stream-copy camera's ffmpeg is running"
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
        # segments starting after this were recorded by the restarted hub (its start-up may take
        # long enough for its first segment to close before hub.start() returns)
        killed_ms = int(time.time() * 1000)
        before = segment_counts(db)  # read after the kill: a segment may close up to the signal
        old_ids = segment_ids(db)
        # the hub's own Mosquitto does not die with it (hub/broker.py sets no PDEATHSIG; not
        # the recorder's business): stop the orphan this test caused
        stop_orphan_broker(data_dir)
        # its ffmpeg children die with it (PR_SET_PDEATHSIG), nothing keeps writing
        await wait_for(
            lambda: not ffmpeg_mentioning(str(storage)), timeout=5, what="ffmpeg to die too"
        )
        leftovers = {c: open_segments(storage, c, with_data=False) for c in (MJPEG_CAM, H264_CAM)}
        # the segment seen with data may have closed just before the kill (a segment boundary
        # between the check and the signal, on a busy machine): then the open one is empty and
        # recovery removes it instead of indexing it
        h264_had_data = bool(open_segments(storage, H264_CAM))

        hub = HubRunner(config)  # the same config and data dir, in this process
        runtime = await hub.start()
        video = video_of(runtime)
        rows = await video.index.segments()
        recovered = [s for s in rows if s.recovered]
        # at most the one segment open at the kill is affected per camera; the H.264 one had data
        for cam in (MJPEG_CAM, H264_CAM):
            mine = [s for s in recovered if s.camera == cam]
            assert len(mine) <= 1, (cam, [s.path for s in mine])
            assert all(s.frames > 0 and s.bytes > 0 for s in mine), mine
            assert sum(1 for s in rows if s.camera == cam) == before[cam] + len(mine)
        assert [s.camera for s in recovered if s.camera == H264_CAM] == (
            [H264_CAM] if h264_had_data else []
        )
        # indexed (moved to its dated folder) or, when empty, removed: nothing stays behind
        for path in (p for files in leftovers.values() for p in files):
            assert not path.exists(), f"{path} left in .incoming after recovery"
        # recording goes on, and everything (recovered segments too) verifies
        await asyncio.gather(
            wait_segments(video, MJPEG_CAM, 2, after_ms=killed_ms),
            wait_segments(video, H264_CAM, 2, after_ms=killed_ms),
        )
        report = await asyncio.to_thread(verify_recordings, db, storage)
        assert report.ok, [p.line() for p in report.problems]
        # the time the hub was dead is a gap of each camera, from its last segment before the
        # kill (recovered ones included) to its first one after the restart
        for cam in (MJPEG_CAM, H264_CAM):
            mine = await video.index.segments(camera=cam)
            old = [s for s in mine if s.id in old_ids or s.recovered]
            last_before = max(s.end_ms for s in old)
            first_after = min(s.start_ms for s in mine if s not in old)
            covering = []
            for _ in range(100):  # the gap is written just after the first new segment
                gaps = await video.index.gaps(camera=cam)
                covering = [
                    g for g in gaps if g.from_ms <= last_before and (g.to_ms or 0) >= first_after
                ]
                if covering:
                    break
                await asyncio.sleep(0.05)
            assert covering, (cam, last_before, first_after, gaps)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
            stop_orphan_broker(data_dir)
        if hub is not None:
            await hub.stop()
        await asyncio.gather(mjpeg.stop(), h264.stop())
