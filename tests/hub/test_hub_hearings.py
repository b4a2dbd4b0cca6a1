"""Hearing sessions on real SQLite and real segment files: open, close, hold, seal, export, audit."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.audit import AuditLog
from hub.hearings import HearingError, HearingService
from hub.recording_index import RecordingIndex

T0 = 1_795_000_000_000  # 2026-11-18, UTC ms
DAY = "20261118"


@dataclass
class Court:
    data_dir: Path
    index: RecordingIndex
    audit: AuditLog
    hearings: HearingService


def write_segment(root: Path, camera: str, start_ms: int, size: int = 2048) -> Path:
    """A segment file where the recorder would put it."""
    when = datetime.fromtimestamp(start_ms / 1000, UTC)
    path = root / camera / when.strftime("%Y%m%d") / f"{camera}_{start_ms}.ts"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


async def add(court: Court, camera: str, start_ms: int, session: str | None) -> str:
    path = write_segment(court.index.storage_root, camera, start_ms)
    record = await court.index.add_segment(
        camera=camera,
        venue="court-1",
        session_id=session,
        path=path,
        start_ms=start_ms,
        end_ms=start_ms + 10_000,
        frames=250,
    )
    return record.path


@pytest.fixture
async def court(tmp_path: Path) -> AsyncIterator[Court]:
    data_dir = tmp_path / "hub"
    index = await RecordingIndex.open(
        data_dir / "recordings.db", data_dir / "recordings", clock=lambda: T0 / 1000
    )
    audit = await AuditLog.open(data_dir)
    hearings = await HearingService.open(data_dir, index, audit, clock=lambda: T0 / 1000)
    yield Court(data_dir, index, audit, hearings)
    await hearings.close()
    await audit.close()
    await index.close()


async def actions(audit: AuditLog) -> list[tuple[str, str, str]]:
    return [(e.action, e.actor, e.target) for e in reversed(await audit.entries())]


async def test_a_venue_is_in_one_open_hearing_at_a_time(court: Court) -> None:
    h = court.hearings
    first = await h.open_hearing(
        title="张三诉李四", case_no="(2026)民1号", venues=["court-1"], by="j"
    )
    second = await h.open_hearing(title="B", case_no="2", venues=["court-2", "room-2"], by="j")
    assert (first.id, second.id) == (f"h{DAY}-0001", f"h{DAY}-0002")
    assert h.active_session("court-1") == first.id
    assert h.active_session("court-2") == h.active_session("room-2") == second.id
    assert h.active_session("court-9") is None
    with pytest.raises(HearingError, match="court-2"):
        await h.open_hearing(title="C", case_no="3", venues=["court-3", "court-2"], by="j")
    assert h.active_session("court-3") is None  # the refused hearing took nothing
    with pytest.raises(HearingError):
        await h.open_hearing(title="D", case_no="4", venues=[], by="j")
    closed = await h.close_hearing(first.id, by="clerk")
    assert closed.closed_ms == T0 and not closed.is_open
    assert h.active_session("court-1") is None
    again = await h.open_hearing(title="E", case_no="5", venues=["court-1"], by="j")
    assert again.id == f"h{DAY}-0003" and h.active_session("court-1") == again.id
    with pytest.raises(HearingError, match="no hearing"):
        await h.close_hearing("h00000000-0001", by="j")


async def test_seal_export_and_hold_of_a_hearing_are_audited(court: Court, tmp_path: Path) -> None:
    h = court.hearings
    hearing = await h.open_hearing(title="T", case_no="C", venues=["court-1"], by="judge1")
    mine = [
        await add(court, "cam-1", T0, hearing.id),
        await add(court, "cam-2", T0 + 10_000, hearing.id),
    ]
    await add(court, "cam-1", T0 + 60_000, None)  # between hearings: not in its record
    with pytest.raises(HearingError, match="still open"):
        await h.seal(hearing.id, by="judge1")
    with pytest.raises(HearingError, match="not sealed"):
        await h.export(hearing.id, tmp_path / "early.zip", by="judge1")
    await h.close_hearing(hearing.id, by="judge1")
    held = await h.set_hold(hearing.id, True, by="judge1")
    assert held.held and hearing.id in await court.index.held_sessions()

    sealed = await h.seal(hearing.id, by="judge1")
    manifest_path = court.data_dir / "manifests" / f"{hearing.id}.json"
    assert h.manifest_path(hearing.id) == manifest_path and manifest_path.is_file()
    assert sealed.manifest_sha256 == hashlib.sha256(manifest_path.read_bytes()).hexdigest()
    manifest = json.loads(manifest_path.read_text())
    assert sorted(s["path"] for s in manifest["segments"]) == sorted(mine)
    with pytest.raises(HearingError, match="already sealed"):
        await h.seal(hearing.id, by="judge1")

    out = await h.export(hearing.id, tmp_path / "out" / "bundle.zip", by="clerk1")
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        names = set(zf.namelist())
        assert {"manifest.json", "SHA256SUMS", "verify.sh"} <= names
        media = {s["media"] for s in manifest["segments"]}
        assert len(media) == 2 and media <= names
        assert zf.read("manifest.json") == manifest_path.read_bytes()

    # a sealed record stays under legal hold
    with pytest.raises(HearingError, match="sealed"):
        await h.set_hold(hearing.id, False, by="admin1")
    assert hearing.id in await court.index.held_sessions()
    assert await actions(court.audit) == [
        ("hearing_opened", "judge1", hearing.id),
        ("hearing_closed", "judge1", hearing.id),
        ("legal_hold", "judge1", hearing.id),
        ("seal", "judge1", hearing.id),
        ("export", "clerk1", hearing.id),
    ]
    entries = await court.audit.entries(action="seal")
    assert (
        entries[0].detail["segments"] == 2 and entries[0].detail["sha256"] == sealed.manifest_sha256
    )


async def test_hearings_survive_a_restart(court: Court) -> None:
    h = court.hearings
    a = await h.open_hearing(title="甲", case_no="1", venues=["court-1", "room-1"], by="j")
    b = await h.open_hearing(title="乙", case_no="2", venues=["court-2"], by="j")
    await h.close_hearing(b.id, by="j")
    await h.set_hold(b.id, True, by="j")
    await h.seal(b.id, by="j")  # a hearing with no segments seals too: an empty record
    await h.close()

    again = await HearingService.open(
        court.data_dir, court.index, court.audit, clock=lambda: T0 / 1000
    )
    try:
        assert {x.id for x in again.all()} == {a.id, b.id}
        assert again.get(a.id) == a
        assert again.active_session("room-1") == a.id
        assert again.active_session("court-2") is None
        restored = again.get(b.id)
        assert restored is not None and restored.held and restored.sealed_ms == T0
        assert restored.manifest_sha256 == h.get(b.id).manifest_sha256  # type: ignore[union-attr]
        with pytest.raises(HearingError, match="court-1"):
            await again.open_hearing(title="x", case_no="3", venues=["court-1"], by="j")
        c = await again.open_hearing(title="丙", case_no="3", venues=["court-2"], by="j")
        assert c.id == f"h{DAY}-0003"  # numbering continues after the restart
    finally:
        await again.close()


async def test_lifecycle_scheduled_open_recess_resumed_closed_sealed(court: Court) -> None:
    """Each transition is an event with time, user and reason; a recess records into nothing."""
    h = court.hearings
    hearing = await h.schedule_hearing(
        title="T", case_no="C", venues=["court-1"], by="clerk1", at_ms=T0 + 3_600_000
    )
    assert hearing.state == "scheduled" and h.active_session("court-1") is None
    with pytest.raises(HearingError, match="never started"):
        await h.close_hearing(hearing.id, by="judge1")
    await h.start_hearing(hearing.id, by="judge1")
    assert h.active_session("court-1") == hearing.id
    with pytest.raises(HearingError, match="already in hearing"):
        await h.open_hearing(title="X", case_no="Y", venues=["court-1"], by="judge2")
    with pytest.raises(HearingError, match="must be one of"):
        await h.recess(hearing.id, reason="lunch", by="judge1")
    await h.recess(hearing.id, reason="mediation", by="judge1")
    # during the break the venue's segments belong to no hearing, and the venue stays taken
    assert h.active_session("court-1") is None
    assert h.current("court-1") is not None
    with pytest.raises(HearingError, match="not open"):
        await h.recess(hearing.id, reason="recess", by="judge1")
    await h.resume(hearing.id, by="judge1")
    assert h.active_session("court-1") == hearing.id
    await h.close_hearing(hearing.id, by="judge1")
    sealed = await h.seal(hearing.id, by="clerk1")
    # sealing puts it under legal hold and makes it read-only
    assert sealed.state == "sealed" and sealed.held and h.is_read_only(hearing.id)
    assert hearing.id in await court.index.held_sessions()
    events = await h.events(hearing.id)
    assert [(e.state, e.by) for e in events] == [
        ("scheduled", "clerk1"),
        ("open", "judge1"),
        ("recess", "judge1"),
        ("open", "judge1"),
        ("closed", "judge1"),
        ("sealed", "clerk1"),
    ]
    assert events[2].reason == "mediation"
    assert [e.ts_ms for e in events] == sorted(e.ts_ms for e in events)
    (recess,) = await h.recesses(hearing.id)
    assert recess == (events[2].ts_ms, events[3].ts_ms, "mediation")
    # the record survives a restart, transitions included
    await h.close()
    again = await HearingService.open(court.data_dir, court.index, court.audit)
    try:
        assert again.get(hearing.id) == sealed
        assert [e.state for e in await again.events(hearing.id)][-1] == "sealed"
    finally:
        await again.close()
