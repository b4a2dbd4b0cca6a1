"""A small disk: the recorder keeps recording on a nearly full file system because retention
deletes the oldest unheld segments (marked deleted, audited, alerted) — and never a segment of
a hearing under legal hold.

The storage is a real 16 MB tmpfs (``mount -t tmpfs``) mostly taken by a ballast file, so the
disk fills within seconds. Where mounting is not permitted, the same test runs on the ordinary
disk with ``quota_mb`` instead (the test id says which).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from recorder_harness import (
    H264_CAM,
    MJPEG_CAM,
    VENUE,
    HubRunner,
    camera_entry,
    hub_config,
    start_camera,
    video_of,
    wait_for,
    wait_segments,
)

from hub.audit import Action
from hub.evidence import DELETED, verify_recordings
from hub.recording_index import DB_FILE, SegmentRecord
from hub.retention import HEADROOM_ALERT

pytestmark = pytest.mark.slow

MB = 1024 * 1024
TMPFS_MB = 16
#: free space left beside the ballast when recording starts, and the headroom kept
FREE_AT_START = 2 * MB
HEADROOM_MB = 1.0


def _mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _mount_permitted() -> bool:
    """Whether this process may mount a tmpfs (root in a privileged container, here)."""
    with tempfile.TemporaryDirectory() as folder:
        if not _mount_tmpfs(Path(folder)):
            return False
        subprocess.run(["umount", folder], check=False)
        return True


#: the test id says which limit is exercised: a real full file system, or the quota fallback
LIMIT = "tmpfs-16mb" if _mount_permitted() else "quota-fallback-mount-not-permitted"


@pytest.fixture(params=[LIMIT])
def small_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(storage dir, how it is limited): a 16 MB tmpfs nearly filled by ballast, else quota."""
    where = tmp_path / "small-disk"
    if request.param.startswith("tmpfs") and _mount_tmpfs(where):
        ballast = where / "ballast.bin"  # not a camera folder: verify never looks at it
        with ballast.open("wb") as f:
            f.write(b"\0" * (shutil.disk_usage(where).free - FREE_AT_START))
        try:
            yield where / "recordings", "tmpfs"
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False)
    else:
        yield where / "recordings", "quota"


async def test_full_disk_deletes_oldest_unheld_segments_never_held_ones(
    tmp_path: Path, small_disk: tuple[Path, str]
) -> None:
    storage, limited_by = small_disk
    mjpeg = await start_camera(MJPEG_CAM, "mjpeg")
    h264 = await start_camera(H264_CAM, "h264")
    limits: dict[str, float] = (
        {"headroom_mb": HEADROOM_MB}
        if limited_by == "tmpfs"
        else {"headroom_mb": 0, "quota_mb": FREE_AT_START / MB - HEADROOM_MB}
    )
    config = hub_config(
        tmp_path / "hub",
        [camera_entry(MJPEG_CAM, mjpeg.url), camera_entry(H264_CAM, h264.url)],
        storage_dir=str(storage),
        **limits,
    )
    hub = HubRunner(config)
    try:
        runtime = await hub.start()
        video = video_of(runtime)
        # a little unheld footage first, then a hearing that goes under legal hold
        await asyncio.gather(wait_segments(video, MJPEG_CAM, 1), wait_segments(video, H264_CAM, 1))
        hearings = video.hearings
        hearing = await hearings.open_hearing(
            title="held", case_no="(2026)京0101刑初7号", venues=[VENUE], by="judge1"
        )

        async def held_rows() -> list[SegmentRecord] | None:
            rows = await video.index.segments(session_id=hearing.id)
            cams = {r.camera for r in rows}
            return rows if len(rows) >= 3 and cams == {MJPEG_CAM, H264_CAM} else None

        await wait_for(held_rows, timeout=30, what="hearing segments of both cameras")
        await hearings.close_hearing(hearing.id, by="judge1")
        await hearings.set_hold(hearing.id, True, by="judge1")
        held = {r.id: r for r in await video.index.segments(session_id=hearing.id)}

        # record on until more than the free space was written: only retention makes room
        async def written_past_full() -> list[SegmentRecord] | None:
            rows = await video.index.segments(include_deleted=True)
            total = sum(r.bytes for r in rows)
            deleted = [r for r in rows if r.deleted_at_ms is not None]
            return rows if total > FREE_AT_START and len(deleted) >= 4 else None

        rows = await wait_for(written_past_full, timeout=60, what="disk filled past its size")
        deleted = [r for r in rows if r.deleted_at_ms is not None]
        kept = [r for r in rows if r.deleted_at_ms is None]

        # never a held segment; each deletion keeps its row with a reason, and the file is gone
        assert not {r.id for r in deleted} & set(held), "a held segment was deleted"
        for r in held.values():
            assert (storage / r.path).is_file(), r.path
        for r in deleted:
            assert r.deleted_reason and "headroom" in r.deleted_reason, r
            assert not (storage / r.path).exists(), r.path
        # the oldest unheld segments went first: no kept unheld segment (of the time before the
        # newest deletion) is older than a deleted one
        newest_deleted = max(r.start_ms for r in deleted)
        unheld_kept = [r for r in kept if r.id not in held]
        assert all(r.start_ms >= min(d.start_ms for d in deleted) for r in unheld_kept)
        assert not [r for r in unheld_kept if r.start_ms < newest_deleted - 3000], [
            (r.path, r.start_ms) for r in unheld_kept if r.start_ms < newest_deleted
        ]

        history = await video.alerts.history()
        assert any(a.key == HEADROOM_ALERT for a in history), [a.key for a in history]
        assert runtime.audit is not None
        audited = await runtime.audit.entries(action=Action.RETENTION_DELETE.value)
        audited_paths = {p for e in audited for p in e.detail.get("paths", [])}
        assert {r.path for r in deleted} <= audited_paths

        # the recorder is alive: both cameras still index new segments
        mark = max(r.end_ms for r in rows)
        await asyncio.gather(
            wait_segments(video, MJPEG_CAM, 1, after_ms=mark),
            wait_segments(video, H264_CAM, 1, after_ms=mark),
        )
        for cam in (MJPEG_CAM, H264_CAM):
            assert not video.alerts.is_active(f"camera-fault:{cam}"), video.alerts.active()
        report = await asyncio.to_thread(
            verify_recordings, runtime.data_dir / DB_FILE, video.index.storage_root
        )
        assert report.ok, [p.line() for p in report.problems]
        assert sum(1 for i in report.infos if i.kind == DELETED) >= len(deleted)
        assert shutil.disk_usage(storage).free > 0
    finally:
        await hub.stop()
        await asyncio.gather(mjpeg.stop(), h264.stop())
