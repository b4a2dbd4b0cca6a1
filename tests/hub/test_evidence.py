"""Evidence checks on real files and a real recordings.db: tampering is named exactly."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.evidence import (
    EvidenceError,
    EvidenceReport,
    export_bundle,
    verify_bundle,
    verify_recordings,
    write_manifest,
)
from hub.recording_index import RecordingIndex, SegmentRecord, chain_entry_hash

T0 = 1_795_000_000_000
OLD = time.time() - 3600  # mtime of files that settled long ago


@dataclass
class Store:
    index: RecordingIndex
    db: Path
    root: Path
    data: Path

    def verify(self, **kwargs: object) -> EvidenceReport:
        return verify_recordings(self.db, self.root, **kwargs)  # type: ignore[arg-type]


def segment_file(root: Path, camera: str, start_ms: int, size: int = 3000) -> Path:
    when = datetime.fromtimestamp(start_ms / 1000, UTC)
    stamp = when.strftime("%Y%m%dT%H%M%S") + f"{start_ms % 1000:03d}"
    path = root / camera / when.strftime("%Y%m%d") / f"{camera}_{stamp}Z.mkv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    os.utime(path, (OLD, OLD))
    return path


async def add(store: Store, camera: str, start_ms: int, session: str | None) -> SegmentRecord:
    path = segment_file(store.root, camera, start_ms)
    return await store.index.add_segment(
        camera=camera,
        venue="court-1",
        session_id=session,
        path=path,
        start_ms=start_ms,
        end_ms=start_ms + 10_000,
        frames=250,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """Two cameras, three segments each, session ``s1`` then ``s2``."""
    data = tmp_path / "data"
    root = data / "recordings"
    index = await RecordingIndex.open(data / "recordings.db", root)
    s = Store(index, data / "recordings.db", root, data)
    for i in range(3):
        for cam in ("cam-1", "cam-2"):
            await add(s, cam, T0 + i * 10_000, "s1" if i < 2 else "s2")
    yield s
    await index.close()


def flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def kinds(report: EvidenceReport) -> list[tuple[str, str]]:
    return [(p.kind, p.path) for p in report.problems]


async def test_intact_recordings_verify_with_progress(store: Store) -> None:
    seen: list[tuple[int, int]] = []
    report = store.verify(progress=lambda done, total: seen.append((done, total)))
    assert report.ok, report.problems
    assert report.segments_checked == 6 and report.bytes_hashed == 6 * 3000
    assert seen[-1] == (18000, 18000)
    assert report.summary().startswith("OK: 6 segments verified")
    assert json.loads(json.dumps(report.to_json()))["ok"] is True


async def test_one_flipped_byte_names_exactly_that_segment(store: Store) -> None:
    victim = (await store.index.segments(camera="cam-2"))[1]
    flip_byte(store.root / victim.path)
    report = store.verify()
    assert not report.ok
    assert kinds(report) == [("ALTERED", victim.path)]
    (problem,) = report.problems
    actual = hashlib.sha256((store.root / victim.path).read_bytes()).hexdigest()
    assert problem.camera == "cam-2"
    assert f"expected sha256 {victim.sha256}" in problem.detail and actual in problem.detail
    assert "ALTERED 1" in report.summary()
    # narrowed to the other camera, everything is fine
    assert store.verify(camera="cam-1").ok


async def test_missing_added_and_in_progress_files(store: Store) -> None:
    gone = (await store.index.segments(camera="cam-1"))[0]
    (store.root / gone.path).unlink()
    stray = segment_file(store.root, "cam-1", T0 + 500_000)
    fresh = store.root / "cam-2" / "20261118" / "cam-2_20261118T080000000Z.mkv"
    fresh.write_bytes(b"being written")  # mtime now: the segment being recorded
    report = store.verify()
    assert kinds(report) == [
        ("MISSING", gone.path),
        ("ADDED", stray.relative_to(store.root).as_posix()),
    ]
    assert [(i.kind, i.path) for i in report.infos if i.kind == "IN_PROGRESS"] == [
        ("IN_PROGRESS", "cam-2/20261118/cam-2_20261118T080000000Z.mkv")
    ]
    # with no settle time the fresh file is a stray too
    assert ("ADDED", "cam-2/20261118/cam-2_20261118T080000000Z.mkv") in kinds(
        store.verify(settle_s=0, now=time.time() + 1)
    )


async def test_retention_deletion_is_info_not_failure(store: Store) -> None:
    old = (await store.index.segments())[0]
    await store.index.delete_segment(old.id, reason="retention", at_ms=T0 + 1)
    report = store.verify()
    assert report.ok and report.segments_checked == 5
    assert [(i.kind, i.path) for i in report.infos if i.kind == "DELETED"] == [
        ("DELETED", old.path)
    ]


async def test_session_scope_checks_only_its_segments(store: Store) -> None:
    s2 = await store.index.segments(session_id="s2")
    flip_byte(store.root / s2[0].path)
    segment_file(store.root, "cam-1", T0 + 900_000)  # a stray: not looked for by session
    assert store.verify(session_id="s1").ok
    report = store.verify(session_id="s2")
    assert kinds(report) == [("ALTERED", s2[0].path)] and report.segments_checked == 2
    one = store.verify(segment_path=s2[0].path)
    assert kinds(one) == [("ALTERED", s2[0].path)] and one.segments_checked == 1


def tamper(db_path: Path, *sql: str) -> None:
    db = sqlite3.connect(db_path)
    for statement in sql:
        db.execute(statement)
    db.commit()
    db.close()


async def test_edited_chain_row_is_named(store: Store) -> None:
    victim = (await store.index.segments(camera="cam-1"))[1]
    tamper(
        store.db,
        "DROP TRIGGER segments_only_mark_deleted",
        f"UPDATE segments SET end_ms = end_ms + 5000 WHERE id = {victim.id}",
    )
    report = store.verify()
    assert kinds(report)[0] == ("SCHEMA", "")
    assert "segments_only_mark_deleted" in report.problems[0].detail
    assert kinds(report)[1:] == [("EDITED", victim.path)]
    assert "chain seq 2: row edited" in report.problems[1].detail


async def test_altered_file_with_recomputed_hashes_is_still_caught(store: Store) -> None:
    """Someone swaps a file and rewrites its sha256 and entry hash: the next link breaks."""
    victim = (await store.index.segments(camera="cam-1"))[1]
    path = store.root / victim.path
    path.write_bytes(os.urandom(3000))
    os.utime(path, (OLD, OLD))
    forged_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    db = sqlite3.connect(store.db)
    (prev,) = db.execute(
        "SELECT prev_hash FROM chain WHERE segment_id = ?", (victim.id,)
    ).fetchone()
    db.close()
    forged_entry = chain_entry_hash(
        camera="cam-1", seq=2, path=victim.path, sha256=forged_sha, bytes=3000,
        start_ms=victim.start_ms, end_ms=victim.end_ms, frames=250, prev_hash=prev,
    )  # fmt: skip
    tamper(
        store.db,
        "DROP TRIGGER segments_only_mark_deleted",
        "DROP TRIGGER chain_no_update",
        f"UPDATE segments SET sha256 = '{forged_sha}' WHERE id = {victim.id}",
        f"UPDATE chain SET entry_hash = '{forged_entry}' WHERE segment_id = {victim.id}",
    )
    report = store.verify()
    chain_problems = [p for p in report.problems if p.kind != "SCHEMA"]
    assert [(p.kind, p.path) for p in chain_problems] == [("INSERTED", victim.path)]
    assert "recomputed hash" in chain_problems[0].detail


async def test_removed_chain_entries_are_named(store: Store) -> None:
    cam1 = await store.index.segments(camera="cam-1")
    cam2_last = (await store.index.segments(camera="cam-2"))[2]
    tamper(
        store.db,
        "DROP TRIGGER chain_no_delete",
        "DROP TRIGGER segments_no_delete",
        f"DELETE FROM chain WHERE segment_id = {cam1[1].id}",
        f"DELETE FROM segments WHERE id = {cam1[1].id}",
        # and the last entry of cam-2: only the head record can tell
        f"DELETE FROM chain WHERE segment_id = {cam2_last.id}",
    )
    report = store.verify()
    removed = [p for p in report.problems if p.kind == "REMOVED"]
    assert [(p.camera, p.detail) for p in removed] == [
        ("cam-1", "chain entry seq 2 removed (missing between seq 1 and seq 3)"),
        ("cam-2", "chain entry seq 3 removed from the end (the head names seq 3)"),
    ]
    # cam-1's file of seq 2 is now a stray, cam-2's last segment row has no chain entry
    assert ("ADDED", cam1[1].path) in kinds(report)
    assert any(p.kind == "INSERTED" and p.camera == "cam-2" for p in report.problems)


# manifests and bundles -------------------------------------------------------------------------


async def seal(store: Store, session: str, transcripts_root: Path | None = None) -> Path:
    segments = await store.index.segments(session_id=session)
    transcripts = [] if transcripts_root is None else [write_transcript(transcripts_root, session)]
    manifest = store.data / "manifests" / f"{session}.json"
    write_manifest(
        manifest,
        session={"id": session, "case_no": "(2026)京0105民初1234号", "judge": "王法官"},
        segments=segments,
        transcripts=transcripts,
        root=store.root,
        transcripts_root=transcripts_root,
    )
    return manifest


async def test_manifest_lists_everything_and_is_written_once(store: Store) -> None:
    manifest_path = await seal(store, "s1", store.data / "transcripts")
    data = manifest_path.read_bytes()
    manifest = json.loads(data)
    assert manifest["session"]["case_no"] == "(2026)京0105民初1234号"
    segs = await store.index.segments(session_id="s1")
    assert [s["path"] for s in manifest["segments"]] == [s.path for s in segs]
    first = manifest["segments"][0]
    assert first["start_utc"] == "2026-11-18T11:06:40.000Z"
    assert first["media"] == f"media/{segs[0].camera}/{Path(segs[0].path).name}"
    assert {k for k in first} >= {"frames", "bytes", "sha256", "chain_seq", "entry_hash"}
    assert manifest["transcripts"][0]["path"] == "s1.txt"
    last_cam1 = [s for s in segs if s.camera == "cam-1"][-1]
    assert manifest["chain_heads"]["cam-1"] == {
        "seq": last_cam1.chain_seq,
        "entry_hash": last_cam1.entry_hash,
    }
    with pytest.raises(FileExistsError):
        write_manifest(manifest_path, session={}, segments=[], root=store.root)
    assert manifest_path.read_bytes() == data
    assert not list(manifest_path.parent.glob(".*tmp"))


async def test_manifest_refuses_missing_media(store: Store) -> None:
    segs = await store.index.segments(session_id="s2")
    (store.root / segs[0].path).unlink()
    with pytest.raises(EvidenceError, match="missing"):
        write_manifest(store.data / "m.json", session={"id": "s2"}, segments=segs, root=store.root)
    assert not (store.data / "m.json").exists()


def write_transcript(folder: Path, session: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{session}.txt"
    path.write_text("审判长：现在开庭。\n", encoding="utf-8")
    return path


def unzip(bundle: Path, dest: Path) -> Path:
    subprocess.run(["unzip", "-q", str(bundle), "-d", str(dest)], check=True, timeout=30)
    return dest


def leftovers(folder: Path, pattern: str) -> list[Path]:
    return list(folder.glob(pattern))


def run_sh(script: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},  # nothing but sh and coreutils
    )


async def test_bundle_verifies_elsewhere_and_names_a_flipped_byte(
    store: Store, tmp_path: Path
) -> None:
    transcripts_root = store.data / "transcripts"
    manifest = await seal(store, "s1", transcripts_root)
    out = tmp_path / "out" / "s1.zip"
    seen: list[tuple[int, int]] = []
    export_bundle(
        out,
        manifest_path=manifest,
        root=store.root,
        transcripts_root=transcripts_root,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen[-1][0] == seen[-1][1] > 4 * 3000
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        media = [i for i in zf.infolist() if i.filename.startswith("media/")]
        sums = zf.read("SHA256SUMS").decode()
        readme = zf.read("README.txt").decode()
    assert len(media) == 4 and all(i.compress_type == zipfile.ZIP_STORED for i in media)
    assert {"manifest.json", "SHA256SUMS", "verify.sh", "README.txt", "transcripts/s1.txt"} <= names
    assert f"{hashlib.sha256(manifest.read_bytes()).hexdigest()}  manifest.json" in sums
    assert readme.index("在另一台电脑上校验") < readme.index("To verify on another machine")
    assert verify_bundle(out).ok

    elsewhere = unzip(out, tmp_path / "elsewhere")
    ok = run_sh(elsewhere / "verify.sh")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK: bundle intact" in ok.stdout
    assert verify_bundle(elsewhere).ok

    victim = f"media/cam-2/{Path(media[1].filename).name}"
    flip_byte(elsewhere / victim)
    bad = run_sh(elsewhere / "verify.sh")
    assert bad.returncode == 1
    assert f"{victim}: FAILED" in bad.stdout
    failed = [line for line in bad.stdout.splitlines() if line.endswith(": FAILED")]
    assert failed == [f"{victim}: FAILED"]
    report = verify_bundle(elsewhere)
    assert kinds(report) == [("ALTERED", victim)]


async def test_bundle_missing_and_added_files(store: Store, tmp_path: Path) -> None:
    manifest = await seal(store, "s2")
    out = export_bundle(tmp_path / "s2.zip", manifest_path=manifest, root=store.root)
    folder = unzip(out, tmp_path / "x")
    media = sorted((folder / "media").rglob("*.mkv"))
    gone = media[0].relative_to(folder).as_posix()
    media[0].unlink()
    (folder / "media" / "cam-1" / "extra.mkv").write_bytes(b"planted")
    result = run_sh(folder / "verify.sh")
    assert result.returncode == 1
    assert f"MISSING {gone}" in result.stdout and "ADDED media/cam-1/extra.mkv" in result.stdout
    report = verify_bundle(folder)
    assert sorted(kinds(report)) == [("ADDED", "media/cam-1/extra.mkv"), ("MISSING", gone)]

    # media and its SHA256SUMS line changed together: the sealed manifest still catches it
    folder2 = unzip(out, tmp_path / "y")
    target = sorted((folder2 / "media").rglob("*.mkv"))[0]
    rel = target.relative_to(folder2).as_posix()
    flip_byte(target)
    lines = (folder2 / "SHA256SUMS").read_text().splitlines()
    new_hash = hashlib.sha256(target.read_bytes()).hexdigest()
    lines = [f"{new_hash}  {rel}" if line.endswith(rel) else line for line in lines]
    (folder2 / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    report = verify_bundle(folder2)
    assert kinds(report) == [("ALTERED", rel)] and "sealed manifest" in report.problems[0].detail


async def test_zip_with_a_flipped_byte_fails_in_python(store: Store, tmp_path: Path) -> None:
    manifest = await seal(store, "s2")
    out = export_bundle(tmp_path / "s2.zip", manifest_path=manifest, root=store.root)
    raw = bytearray(out.read_bytes())
    with zipfile.ZipFile(out) as zf:
        info = next(i for i in zf.infolist() if i.filename.startswith("media/cam-2"))
    raw[info.header_offset + 30 + len(info.filename.encode()) + 50] ^= 0x01
    out.write_bytes(bytes(raw))
    report = verify_bundle(out)
    assert [(p.kind, p.path) for p in report.problems] == [("ALTERED", info.filename)]


async def test_export_refuses_media_changed_since_sealing(store: Store, tmp_path: Path) -> None:
    manifest = await seal(store, "s2")
    victim = (await store.index.segments(session_id="s2"))[0]
    flip_byte(store.root / victim.path)
    out = tmp_path / "s2.zip"
    with pytest.raises(EvidenceError, match="changed since sealing"):
        export_bundle(out, manifest_path=manifest, root=store.root)
    assert not out.exists() and not leftovers(tmp_path, ".*part")
    with pytest.raises(EvidenceError, match="transcripts_root"):
        export_bundle(out, manifest_path=await seal(store, "s1", store.data / "t"), root=store.root)


async def test_verify_beside_a_recording_hub_sees_no_false_alarm(store: Store) -> None:
    """The hub keeps appending while verify runs: the chain and head always agree."""

    async def record() -> None:
        for i in range(30):
            cam = ("cam-1", "cam-2")[i % 2]
            start = T0 + 100_000 + i * 10_000
            path = await asyncio.to_thread(fresh_segment, store.root, cam, start)
            await store.index.add_segment(
                camera=cam, venue="court-1", session_id=None, path=path,
                start_ms=start, end_ms=start + 10_000, frames=250,
            )  # fmt: skip

    recorder = asyncio.create_task(record())
    reports = []
    while not recorder.done():
        reports.append(await asyncio.to_thread(store.verify))
    await recorder
    reports.append(await asyncio.to_thread(store.verify))
    assert [r.problems for r in reports if not r.ok] == []
    assert len(reports) > 1
    assert reports[-1].segments_checked == 36


def fresh_segment(root: Path, camera: str, start_ms: int) -> Path:
    """Like :func:`segment_file`, but just written: in progress until it is indexed."""
    when = datetime.fromtimestamp(start_ms / 1000, UTC)
    path = root / camera / when.strftime("%Y%m%d") / f"{camera}_{start_ms}Z.mkv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(3000))
    return path
