"""Retention on a real index and real files: age by venue kind, disk headroom and quota, holds."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hub.alerts import AlertBoard, Severity
from hub.audit import AuditLog
from hub.recorder_config import CameraConfig, RecorderConfig
from hub.recording_index import RecordingIndex
from hub.retention import DAY_MS, HEADROOM_ALERT, MB, RetentionSweeper

T0 = 1_795_000_000_000  # 2026-11-18, UTC ms
KB = 1024
SIZE = 256 * KB  # one segment


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


class Disk:
    """A disk of ``capacity`` bytes holding nothing but the recordings under ``root``."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root = root
        self.capacity = capacity

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def __call__(self, path: Path) -> int:
        assert path == self.root
        return self.capacity - self.used()


@dataclass
class Store:
    root: Path
    index: RecordingIndex
    alerts: AlertBoard
    audit: AuditLog
    clock: Clock
    paths: dict[str, Path]  # name → file

    async def add(
        self, name: str, camera: str, venue: str, start_ms: int, session: str | None
    ) -> None:
        path = self.root / camera / f"{name}.ts"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(SIZE))
        await self.index.add_segment(
            camera=camera,
            venue=venue,
            session_id=session,
            path=path,
            start_ms=start_ms,
            end_ms=start_ms + 10_000,
            frames=250,
        )
        self.paths[name] = path

    def left(self) -> set[str]:
        return {name for name, path in self.paths.items() if path.exists()}

    def sweeper(self, config: RecorderConfig, disk: Disk | None = None) -> RetentionSweeper:
        return RetentionSweeper(
            config,
            self.index,
            alerts=self.alerts,
            audit=self.audit,
            disk_free=disk or (lambda _: 10**12),
            clock=self.clock,
        )


CAMERAS = [
    CameraConfig(id="hall-cam", venue="hall-1", venue_kind="litigation_hall", url="usb:0"),
    CameraConfig(id="court-cam", venue="court-1", venue_kind="tech_courtroom", url="rtsp://x/1"),
]


FOREVER = {"litigation_hall": 0, "tech_courtroom": 0}


def config(**kw: object) -> RecorderConfig:
    fields: dict[str, object] = {
        "headroom_mb": 0,
        "retention_days": {"litigation_hall": 30, "tech_courtroom": 365},
        **kw,
    }
    return RecorderConfig(cameras=CAMERAS, **fields)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    clock = Clock(T0)
    root = tmp_path / "recordings"
    root.mkdir()
    index = await RecordingIndex.open(tmp_path / "recordings.db", root, clock=clock)
    alerts = await AlertBoard.open(tmp_path, clock=clock)
    audit = await AuditLog.open(tmp_path, clock=clock)
    yield Store(root, index, alerts, audit, clock, {})
    await audit.close()
    await alerts.close()
    await index.close()


async def fill(store: Store) -> None:
    """Per venue: two old segments (one in a hearing held later), one recent."""
    await store.add("hall-old", "hall-cam", "hall-1", T0, None)
    await store.add("hall-old-held", "hall-cam", "hall-1", T0 + 10_000, "h20261118-0001")
    await store.add("court-old", "court-cam", "court-1", T0 + 20_000, None)
    await store.add("court-old-held", "court-cam", "court-1", T0 + 30_000, "h20261118-0002")
    store.clock.ms = T0 + 40 * DAY_MS
    await store.add("hall-new", "hall-cam", "hall-1", store.clock.ms, None)
    await store.add("court-new", "court-cam", "court-1", store.clock.ms + 10_000, None)
    await store.index.set_hold("h20261118-0001", True, by="judge")
    await store.index.set_hold("h20261118-0002", True, by="judge")


async def test_age_deletes_only_the_expired_kind_and_never_held_segments(store: Store) -> None:
    await fill(store)
    result = await store.sweeper(config()).sweep()
    # 40 days on: only the hall's 30 days have passed; its held segment stays
    assert (result.deleted_for_age, result.deleted_for_room) == (1, 0)
    assert result.bytes_freed == SIZE
    assert store.left() == set(store.paths) - {"hall-old"}
    deleted = await store.index.segments(include_deleted=True, camera="hall-cam")
    row = next(s for s in deleted if s.path.endswith("hall-old.ts"))
    assert row.deleted_at_ms == store.clock.ms
    assert row.deleted_reason is not None and "30 days" in row.deleted_reason
    assert "litigation_hall" in row.deleted_reason
    assert len(await store.index.segments()) == 5

    (entry,) = await store.audit.entries(action="retention_delete")
    assert entry.actor == "recorder" and entry.detail["paths"] == ["hall-cam/hall-old.ts"]
    assert entry.detail["bytes"] == SIZE

    store.clock.ms = T0 + 400 * DAY_MS  # past the courtroom's year as well
    result = await store.sweeper(config()).sweep()
    assert result.deleted_for_age == 2  # court-old, hall-new (court-new is not a year old)
    assert store.left() == {"hall-old-held", "court-old-held", "court-new"}
    assert not store.alerts.is_active(HEADROOM_ALERT)

    # lifting the hold lets the rule take it on the next sweep
    await store.index.set_hold("h20261118-0002", False, by="judge")
    await store.sweeper(config()).sweep()
    assert store.left() == {"hall-old-held", "court-new"}


async def test_headroom_deletes_the_oldest_unheld_first_then_alerts(store: Store) -> None:
    await fill(store)  # six segments of 256 KiB: 1.5 MiB
    disk = Disk(store.root, capacity=2 * MB)  # 0.5 MiB free
    sweeper = store.sweeper(
        config(headroom_mb=1, retention_days=FOREVER), disk
    )  # wants 1 MiB free: 2 segments must go
    result = await sweeper.sweep()
    assert (result.deleted_for_age, result.deleted_for_room) == (0, 2)
    assert result.short_bytes == 0 and disk(store.root) == MB
    assert store.left() == {"hall-old-held", "court-old-held", "hall-new", "court-new"}
    alert = store.alerts.active()[0]
    assert alert.key == HEADROOM_ALERT and alert.severity is Severity.WARNING
    assert "2 oldest" in alert.message
    rows = await store.index.segments(include_deleted=True)
    reasons = {r.path: r.deleted_reason for r in rows if r.deleted_at_ms is not None}
    assert set(reasons) == {"hall-cam/hall-old.ts", "court-cam/court-old.ts"}
    assert all(r is not None and r.startswith("headroom") for r in reasons.values())
    (entry,) = await store.audit.entries(action="retention_delete")
    assert sorted(entry.detail["paths"]) == sorted(reasons)

    # the disk shrinks: everything unheld goes, and still 1.25 MiB are missing
    disk.capacity = MB + 256 * KB
    result = await sweeper.sweep()
    assert result.deleted_for_room == 2
    assert store.left() == {"hall-old-held", "court-old-held"}
    assert result.short_bytes == MB - (disk.capacity - disk.used())
    alert = store.alerts.active()[0]
    assert alert.severity is Severity.CRITICAL
    assert result.short_bytes == 256 * KB
    assert "1 MB short" in alert.message and "仍缺 1 MB" in alert.message  # rounded up

    # room again (a bigger disk): the alert clears
    disk.capacity = 10 * MB
    result = await sweeper.sweep()
    assert result.deleted_for_room == 0 and not store.alerts.is_active(HEADROOM_ALERT)
    assert [a.cleared_ms is not None for a in await store.alerts.history()] == [True]


async def test_quota_caps_the_recordings_without_touching_the_disk_rule(store: Store) -> None:
    await fill(store)  # 1.5 MiB stored
    result = await store.sweeper(config(quota_mb=1, retention_days=FOREVER)).sweep()
    assert result.deleted_for_room == 2 and result.short_bytes == 0
    assert await store.index.stored_bytes() == MB
    assert store.left() == {"hall-old-held", "court-old-held", "hall-new", "court-new"}


async def test_a_segment_that_cannot_be_deleted_does_not_hang_the_sweep(store: Store) -> None:
    await fill(store)
    # the oldest segment's file became a directory: unlinking it fails every time
    stuck = store.paths["hall-old"]
    stuck.unlink()
    stuck.mkdir()
    result = await asyncio.wait_for(
        store.sweeper(config(quota_mb=0.25, retention_days=FOREVER)).sweep(), timeout=10
    )
    rows = await store.index.segments(include_deleted=True)
    assert {r.path for r in rows if r.deleted_at_ms} == {
        "court-cam/court-old.ts",
        "hall-cam/hall-new.ts",
        "court-cam/court-new.ts",
    }  # the rest went; the stuck one stays indexed, undeleted, for the next sweep
    assert result.short_bytes > 0
    assert store.alerts.active()[0].severity is Severity.CRITICAL
    result = await asyncio.wait_for(store.sweeper(config()).sweep(), timeout=10)
    assert result.deleted_for_age == 0  # tried, failed, counted as nothing
