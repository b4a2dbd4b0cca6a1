"""The recordings index on a real SQLite file with real segment files."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.recording_index import (
    HEAD_FILE,
    ZERO_HASH,
    HeldError,
    RecordingIndex,
    chain_entry_hash,
)

T0 = 1_795_000_000_000  # 2026-11-18, UTC ms


def write_segment(root: Path, camera: str, start_ms: int, size: int = 4096) -> Path:
    """A segment file with random bytes where the recorder would put it."""
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(start_ms / 1000, UTC)
    stamp = when.strftime("%Y%m%dT%H%M%S") + f"{start_ms % 1000:03d}"
    path = root / camera / when.strftime("%Y%m%d") / f"{camera}_{stamp}Z.ts"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "recordings"


@pytest.fixture
async def index(tmp_path: Path, root: Path) -> AsyncIterator[RecordingIndex]:
    idx = await RecordingIndex.open(tmp_path / "recordings.db", root, clock=lambda: T0 / 1000)
    yield idx
    await idx.close()


async def add(
    index: RecordingIndex,
    camera: str,
    start_ms: int,
    *,
    session: str | None = None,
    venue: str = "court-1",
    size: int = 4096,
) -> Path:
    path = write_segment(index.storage_root, camera, start_ms, size)
    await index.add_segment(
        camera=camera,
        venue=venue,
        session_id=session,
        path=path,
        start_ms=start_ms,
        end_ms=start_ms + 10_000,
        frames=250,
    )
    return path


async def test_segments_chain_per_camera_with_file_hashes(index: RecordingIndex) -> None:
    path = write_segment(index.storage_root, "cam-1", T0)
    first = await index.add_segment(
        camera="cam-1",
        venue="court-1",
        session_id="s1",
        path=path,
        start_ms=T0,
        end_ms=T0 + 10_000,
        frames=250,
    )
    assert first.path == path.relative_to(index.storage_root).as_posix()
    assert first.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert first.bytes == 4096 and first.chain_seq == 1 and not first.recovered
    assert first.entry_hash == chain_entry_hash(
        camera="cam-1",
        seq=1,
        path=first.path,
        sha256=first.sha256,
        bytes=4096,
        start_ms=T0,
        end_ms=T0 + 10_000,
        frames=250,
        prev_hash=ZERO_HASH,
    )
    # a relative path (to the storage root) is accepted too; the other camera starts its own chain
    other = write_segment(index.storage_root, "cam-2", T0)
    second = await index.add_segment(
        camera="cam-2",
        venue="court-1",
        session_id="s1",
        path=other.relative_to(index.storage_root),
        start_ms=T0,
        end_ms=T0 + 10_000,
        frames=250,
        recovered=True,
    )
    assert second.chain_seq == 1 and second.recovered
    await add(index, "cam-1", T0 + 10_000, session="s1")
    listed = await index.segments(camera="cam-1")
    assert [s.chain_seq for s in listed] == [1, 2]
    assert await index.chain_heads() == {
        "cam-1": (2, listed[1].entry_hash),
        "cam-2": (1, second.entry_hash),
    }
    head = json.loads((index.path.parent / HEAD_FILE).read_text())
    assert head["cameras"]["cam-1"] == {"seq": 2, "hash": listed[1].entry_hash}
    assert await index.indexed_paths("cam-1") == {s.path for s in listed}
    assert await index.stored_bytes() == 3 * 4096


async def test_bad_segments_are_refused(index: RecordingIndex) -> None:
    path = await add(index, "cam-1", T0)
    with pytest.raises(ValueError, match="already indexed"):
        await index.add_segment(
            camera="cam-1", venue="v", session_id=None, path=path,
            start_ms=T0, end_ms=T0 + 1, frames=1,
        )  # fmt: skip
    with pytest.raises(ValueError, match="not in the folder of camera"):
        await index.add_segment(
            camera="cam-2", venue="v", session_id=None, path=path,
            start_ms=T0, end_ms=T0 + 1, frames=1,
        )  # fmt: skip
    with pytest.raises(ValueError, match="not under the storage root"):
        await index.add_segment(
            camera="cam-1", venue="v", session_id=None, path=Path("/etc/hostname"),
            start_ms=T0, end_ms=T0 + 1, frames=1,
        )  # fmt: skip
    with pytest.raises(FileNotFoundError):
        await index.add_segment(
            camera="cam-1", venue="v", session_id=None, path=Path("cam-1/nope.ts"),
            start_ms=T0, end_ms=T0 + 1, frames=1,
        )  # fmt: skip
    assert len(await index.segments()) == 1


async def test_concurrent_adds_keep_one_gapless_chain(index: RecordingIndex) -> None:
    paths = [write_segment(index.storage_root, "cam-1", T0 + i * 10_000) for i in range(20)]
    await asyncio.gather(
        *(
            index.add_segment(
                camera="cam-1", venue="court-1", session_id=None, path=p,
                start_ms=T0 + i * 10_000, end_ms=T0 + (i + 1) * 10_000, frames=250,
            )
            for i, p in enumerate(paths)
        )
    )  # fmt: skip
    segments = await index.segments(camera="cam-1")
    by_seq = sorted(segments, key=lambda s: s.chain_seq)
    assert [s.chain_seq for s in by_seq] == list(range(1, 21))
    prev = ZERO_HASH
    db = sqlite3.connect(index.path)
    for s in by_seq:
        (linked,) = db.execute(
            "SELECT prev_hash FROM chain WHERE segment_id = ?", (s.id,)
        ).fetchone()
        assert linked == prev
        prev = s.entry_hash
    db.close()


async def test_segment_queries_filter_by_time_session_and_deletion(index: RecordingIndex) -> None:
    for i in range(4):
        await add(index, "cam-1", T0 + i * 10_000, session="s1" if i < 2 else "s2")
    assert len(await index.segments(session_id="s1")) == 2
    window = await index.segments(from_ms=T0 + 15_000, to_ms=T0 + 25_000)
    assert [s.start_ms for s in window] == [T0 + 10_000, T0 + 20_000]
    first = (await index.segments())[0]
    await index.delete_segment(first.id, reason="retention", at_ms=T0 + 99)
    assert len(await index.segments()) == 3
    everything = await index.segments(include_deleted=True)
    assert everything[0].deleted_at_ms == T0 + 99 and everything[0].deleted_reason == "retention"


async def test_gaps_open_close_once(index: RecordingIndex) -> None:
    gap = await index.open_gap(camera="cam-1", venue="court-1", from_ms=T0, reason="stalled")
    assert [g.id for g in await index.gaps(open_only=True)] == [gap.id]
    with pytest.raises(ValueError, match="before it starts"):
        await index.close_gap(gap.id, T0 - 1)
    await index.close_gap(gap.id, T0 + 5000)
    with pytest.raises(ValueError, match="already closed"):
        await index.close_gap(gap.id, T0 + 6000)
    with pytest.raises(ValueError, match="no gap"):
        await index.close_gap(999, T0)
    assert await index.gaps(open_only=True) == []
    (closed,) = await index.gaps(camera="cam-1", since_ms=T0 + 5000)
    assert closed.to_ms == T0 + 5000 and closed.reason == "stalled"
    assert await index.gaps(since_ms=T0 + 5001) == []
    assert await index.gaps(camera="cam-2") == []


async def test_retention_deletes_files_but_never_held_sessions(index: RecordingIndex) -> None:
    held_path = await add(index, "cam-1", T0, session="hearing-1")
    free_path = await add(index, "cam-1", T0 + 10_000, session="hearing-2")
    await add(index, "cam-1", T0 + 20_000, session=None, venue="hall-1")
    await index.set_hold("hearing-1", True, by="judge-wang")
    assert await index.held_sessions() == {"hearing-1"}

    candidates = await index.deletable(older_than_ms=T0 + 100_000)
    assert [c.path for c in candidates] == [
        free_path.relative_to(index.storage_root).as_posix(),
        (await index.segments(camera="cam-1"))[2].path,
    ]
    assert [c.venue for c in await index.deletable(venues=["hall-1"])] == ["hall-1"]
    assert await index.deletable(venues=[]) == []
    assert await index.deletable(older_than_ms=T0 + 10_000) == []  # nothing ended that early

    held = (await index.segments(session_id="hearing-1"))[0]
    with pytest.raises(HeldError, match="legal hold"):
        await index.delete_segment(held.id, reason="retention", at_ms=T0)
    assert held_path.exists()
    assert (await index.segments(session_id="hearing-1"))[0].deleted_at_ms is None

    deleted = await index.delete_segment(candidates[0].id, reason="retention", at_ms=T0 + 1)
    assert deleted.deleted_at_ms == T0 + 1 and not free_path.exists()
    assert await index.stored_bytes() == 2 * 4096
    # twice is harmless, and a file already gone is fine
    again = await index.delete_segment(candidates[0].id, reason="other", at_ms=T0 + 2)
    assert again.deleted_reason == "retention"
    (index.storage_root / candidates[1].path).unlink()
    await index.delete_segment(candidates[1].id, reason="headroom", at_ms=T0 + 3)
    with pytest.raises(KeyError):
        await index.delete_segment(12345, reason="x", at_ms=T0)

    # lifting the hold makes the session deletable again; the hold history is kept
    await index.set_hold("hearing-1", False, by="judge-wang")
    assert await index.held_sessions() == set()
    assert [c.session_id for c in await index.deletable()] == ["hearing-1"]
    db = sqlite3.connect(index.path)
    assert db.execute("SELECT COUNT(*) FROM hold_log").fetchone()[0] == 2
    db.close()


async def test_triggers_refuse_deletes_and_edits(index: RecordingIndex) -> None:
    await add(index, "cam-1", T0)
    gap = await index.open_gap(camera="cam-1", venue="court-1", from_ms=T0, reason="down")
    await index.set_hold("s", True, by="x")
    db = sqlite3.connect(index.path)
    try:
        for sql in (
            "DELETE FROM segments",
            "DELETE FROM chain",
            "DELETE FROM gaps",
            "DELETE FROM hold_log",
            "UPDATE segments SET sha256 = 'x'",
            "UPDATE segments SET session_id = 'other'",
            "UPDATE chain SET entry_hash = 'x'",
            "UPDATE gaps SET reason = 'x'",
            "UPDATE hold_log SET held = 0",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(sql)
        # allowed once: marking deleted, closing a gap
        db.execute("UPDATE segments SET deleted_at_ms = 1, deleted_reason = 'r'")
        db.commit()
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE segments SET deleted_at_ms = 2")
        db.execute("UPDATE gaps SET to_ms = ? WHERE id = ?", (T0 + 1, gap.id))
        db.commit()
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE gaps SET to_ms = ?", (T0 + 2,))
    finally:
        db.close()


async def test_reopen_keeps_chain_and_restores_dropped_triggers(tmp_path: Path, root: Path) -> None:
    idx = await RecordingIndex.open(tmp_path / "recordings.db", root)
    await add(idx, "cam-1", T0)
    await idx.close()
    db = sqlite3.connect(tmp_path / "recordings.db")
    db.execute("DROP TRIGGER chain_no_delete")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()
    idx = await RecordingIndex.open(tmp_path / "recordings.db", root)
    try:
        await add(idx, "cam-1", T0 + 10_000)
        assert [s.chain_seq for s in await idx.segments()] == [1, 2]
    finally:
        await idx.close()
    db = sqlite3.connect(tmp_path / "recordings.db")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("DELETE FROM chain")
    db.close()
