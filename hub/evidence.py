"""Evidence checks of the recordings: chain and file verification, sealed manifests, export bundles.

Everything here blocks (hashing gigabytes, SQLite reads): callers run it in a thread. Long jobs
report ``progress(done_bytes, total_bytes)``.

- :func:`verify_recordings` walks each camera's chain in ``recordings.db`` (recomputing every
  entry hash and link, comparing the end with the head record) and re-hashes every file. Each
  problem names the camera, the path and what is wrong: ``ALTERED`` (hash differs), ``MISSING``
  (gone, not by retention), ``ADDED`` (a file no chain entry knows), ``EDITED`` / ``REMOVED`` /
  ``INSERTED`` (chain rows), ``SCHEMA`` (an append-only trigger was dropped). Files deleted by
  retention (``DELETED``) and the segment being written now (``IN_PROGRESS``) are infos.
- :func:`write_manifest` seals a hearing: one JSON file listing its segments, transcripts and
  chain heads, written once.
- :func:`export_bundle` packs a sealed hearing into a zip that verifies on any machine with
  ``sh verify.sh`` (``sha256sum`` and coreutils only); :func:`verify_bundle` checks one in Python.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import sqlite3
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, Final
from urllib.parse import quote

from hub.recording_index import (
    HASH_CHUNK,
    HEAD_FILE,
    ZERO_HASH,
    SegmentRecord,
    chain_entry_hash,
    flock,
    hash_file,
    missing_triggers,
    parse_head,
)

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

MANIFEST_FORMAT: Final = "courthub-evidence-manifest/1"
SUMS_FILE: Final = "SHA256SUMS"
MANIFEST_NAME: Final = "manifest.json"
#: more problems than this are summarised (a wiped disk would list every file otherwise)
MAX_PROBLEMS: Final = 1000
#: segments read from the index per short read transaction (a long verify never pins the WAL)
PAGE: Final = 500
_SAFE_PART: Final = re.compile(r"[A-Za-z0-9._-]+")
_SUMS_LINE: Final = re.compile(r"([0-9a-f]{64})  (.+)")

# problem kinds (failures) and info kinds
ALTERED: Final = "ALTERED"
MISSING: Final = "MISSING"
ADDED: Final = "ADDED"
EDITED: Final = "EDITED"
REMOVED: Final = "REMOVED"
INSERTED: Final = "INSERTED"
SCHEMA: Final = "SCHEMA"
DELETED: Final = "DELETED"
IN_PROGRESS: Final = "IN_PROGRESS"
NOTE: Final = "NOTE"


class EvidenceError(ValueError):
    """A manifest or bundle cannot be made (media changed since sealing, bad manifest…)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: a failure in :attr:`EvidenceReport.problems`, or an info."""

    kind: str
    camera: str
    path: str
    detail: str

    def line(self) -> str:
        """``KIND path: detail`` for a terminal."""
        where = self.path or (f"camera {self.camera}" if self.camera else "")
        return f"{self.kind} {where}: {self.detail}" if where else f"{self.kind} {self.detail}"

    def to_json(self) -> dict[str, str]:
        """A JSON-ready dict."""
        return {"kind": self.kind, "camera": self.camera, "path": self.path, "detail": self.detail}


@dataclass(slots=True)
class EvidenceReport:
    """The outcome of a verification; ``ok`` when there is no problem (infos are fine)."""

    problems: list[Problem] = field(default_factory=list)
    infos: list[Problem] = field(default_factory=list)
    segments_checked: int = 0
    bytes_hashed: int = 0
    #: bundles: the manifest's SHA-256, to compare with the seal record
    manifest_sha256: str | None = None
    _dropped: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing was altered, removed or added."""
        return not self.problems and not self._dropped

    def problem(self, kind: str, camera: str, path: str, detail: str) -> None:
        """Record a failure (the first :data:`MAX_PROBLEMS` are kept, the rest counted)."""
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(kind, camera, path, detail))
        else:
            self._dropped += 1

    def info(self, kind: str, camera: str, path: str, detail: str) -> None:
        """Record an info (not a failure)."""
        if len(self.infos) < MAX_PROBLEMS:
            self.infos.append(Problem(kind, camera, path, detail))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "ok": self.ok,
            "segments_checked": self.segments_checked,
            "bytes_hashed": self.bytes_hashed,
            "manifest_sha256": self.manifest_sha256,
            "problems": [p.to_json() for p in self.problems],
            "problems_not_listed": self._dropped,
            "infos": [p.to_json() for p in self.infos],
        }

    def summary(self) -> str:
        """One line for a human."""
        size = _human_bytes(self.bytes_hashed)
        if self.ok:
            extra = Counter(i.kind for i in self.infos if i.kind != NOTE)
            tail = "".join(f", {n} {k.lower().replace('_', ' ')}" for k, n in sorted(extra.items()))
            return f"OK: {self.segments_checked} segments verified ({size} hashed){tail}"
        kinds = Counter(p.kind for p in self.problems)
        listed = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        more = f", {self._dropped} more not listed" if self._dropped else ""
        total = len(self.problems) + self._dropped
        return (
            f"FAILED: {total} problem(s) ({listed}{more}) in {self.segments_checked} segments "
            f"({size} hashed)"
        )


# verifying the recordings ----------------------------------------------------------------------


@dataclass(slots=True)
class _ChainRow:
    camera: str
    seq: int
    segment_id: int
    prev_hash: str
    entry_hash: str
    # from the segment row; None when it is gone
    seg_camera: str | None
    path: str | None
    sha256: str | None
    bytes: int | None
    start_ms: int | None
    end_ms: int | None
    frames: int | None

    def where(self) -> str:
        return self.path or f"(segment id {self.segment_id})"

    def computed(self, seq: int | None = None) -> str:
        """The hash this entry's contents give (as if at ``seq``), "" when its segment is gone."""
        if self.path is None or self.seg_camera != self.camera:
            return ""
        try:
            return chain_entry_hash(
                camera=self.camera,
                seq=self.seq if seq is None else seq,
                path=self.path,
                sha256=str(self.sha256),
                bytes=int(self.bytes or 0),
                start_ms=int(self.start_ms or 0),
                end_ms=int(self.end_ms or 0),
                frames=int(self.frames or 0),
                prev_hash=self.prev_hash,
            )
        except (TypeError, ValueError):
            return ""


_CHAIN_SQL: Final = (
    "SELECT c.camera, c.seq, c.segment_id, c.prev_hash, c.entry_hash, s.camera, s.path, "
    "s.sha256, s.bytes, s.start_ms, s.end_ms, s.frames "
    "FROM chain c LEFT JOIN segments s ON s.id = c.segment_id WHERE c.camera = ? ORDER BY c.seq"
)


def verify_recordings(
    db_path: Path,
    storage_root: Path,
    *,
    camera: str | None = None,
    session_id: str | None = None,
    segment_path: str | None = None,
    progress: Progress | None = None,
    settle_s: float = 30.0,
    now: float | None = None,
) -> EvidenceReport:
    """Check the chains of ``recordings.db`` and re-hash the files under ``storage_root``.

    Narrow it to one ``camera``, one hearing ``session_id`` (its segments; stray files are not
    looked for) or one ``segment_path`` (relative to the storage root). Files modified less than
    ``settle_s`` seconds before ``now`` and not indexed are the segment being written now
    (``IN_PROGRESS``), not ``ADDED``. Raises :class:`FileNotFoundError` when there is no index.
    """
    if not db_path.is_file():
        raise FileNotFoundError(f"no recordings index at {db_path}")
    report = EvidenceReport()
    with _read_only(db_path) as db:
        for name in missing_triggers(db):
            report.problem(SCHEMA, "", "", f"append-only trigger {name} was removed")
        cameras = _cameras_in_scope(db, camera, session_id, segment_path)
        full = camera is None and session_id is None and segment_path is None
        _check_chains(db, db_path.with_name(HEAD_FILE), cameras, full, report)
        _check_unchained(db, cameras, report)
        _check_files(
            db,
            storage_root,
            cameras,
            report,
            session_id=session_id,
            segment_path=segment_path,
            progress=progress,
        )
        if session_id is None:
            stamp = time.time() if now is None else now
            _check_strays(
                db,
                storage_root,
                report,
                camera=camera,
                segment_path=segment_path,
                settled_before=stamp - settle_s,
            )
    log.info(
        "recordings verified db=%s ok=%s segments=%d bytes=%d problems=%d",
        db_path,
        report.ok,
        report.segments_checked,
        report.bytes_hashed,
        len(report.problems),
    )
    return report


@contextmanager
def _read_only(db_path: Path) -> Iterator[sqlite3.Connection]:
    # mode=rw: never create a database while checking one (ro would fail on a WAL without -shm)
    db = sqlite3.connect(
        f"file:{quote(str(db_path.resolve()))}?mode=rw", uri=True, isolation_level=None
    )
    try:
        db.execute("PRAGMA busy_timeout=10000")
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"segments", "chain"} <= tables:
            raise FileNotFoundError(f"{db_path} is not a recordings index (no segments/chain)")
        yield db
    finally:
        db.close()


def _cameras_in_scope(
    db: sqlite3.Connection, camera: str | None, session_id: str | None, segment_path: str | None
) -> list[str]:
    if segment_path is not None:
        return [PurePosixPath(segment_path).parts[0]]
    if camera is not None:
        return [camera]
    if session_id is not None:
        rows = db.execute(
            "SELECT DISTINCT camera FROM segments WHERE session_id = ? ORDER BY camera",
            (session_id,),
        )
        return [c for (c,) in rows]
    rows = db.execute("SELECT camera FROM chain UNION SELECT camera FROM segments ORDER BY camera")
    return [c for (c,) in rows]


def _check_chains(
    db: sqlite3.Connection,
    head_path: Path,
    cameras: list[str],
    full: bool,
    report: EvidenceReport,
) -> None:
    """Every camera's chain: a fast streaming pass; a full diagnosis only where it breaks."""
    heads, note = _read_head_consistently(db, head_path)
    if note:
        report.info(NOTE, "", "", note)
    scope = set(cameras)
    if heads is not None and full:  # a camera whose every row was removed is still named
        scope |= set(heads)
    for cam in sorted(scope):
        last_seq, last_hash, clean = 0, ZERO_HASH, True
        for row in db.execute(_CHAIN_SQL, (cam,)):
            raw = _ChainRow(*row)
            if clean and (
                raw.seq != last_seq + 1
                or raw.prev_hash != last_hash
                or raw.computed() != raw.entry_hash
            ):
                clean = False
            last_seq, last_hash = raw.seq, raw.entry_hash
        if not clean:
            rows = [_ChainRow(*r) for r in db.execute(_CHAIN_SQL, (cam,))]
            _diagnose(cam, rows, report)
        if heads is not None:
            _check_head(cam, heads.get(cam), last_seq, last_hash, report)
    db.execute("COMMIT")


def _read_head_consistently(
    db: sqlite3.Connection, head_path: Path
) -> tuple[dict[str, tuple[int, str]] | None, str]:
    """The head record, read together with the start of a read transaction on ``db``.

    Writers hold the head's lock from reading the last entry until the head is rewritten, so
    under a shared lock the database snapshot and the head agree.
    """
    try:
        fd = os.open(head_path, os.O_RDONLY)
    except FileNotFoundError:
        db.execute("BEGIN")
        db.execute("SELECT COUNT(*) FROM chain").fetchone()
        return None, "no head record (recordings.head): entries removed at the end cannot be seen"
    try:
        with flock(fd, fcntl.LOCK_SH):
            db.execute("BEGIN")
            db.execute("SELECT COUNT(*) FROM chain").fetchone()  # pins the snapshot
            text = os.pread(fd, 1 << 20, 0).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    if not text:
        return None, "the head record is empty: entries removed at the end cannot be seen"
    heads = parse_head(text)
    if heads is None:
        return None, "the head record is unreadable (edited?): not compared"
    return heads, ""


def _diagnose(camera: str, rows: list[_ChainRow], report: EvidenceReport) -> None:
    """Name every tampered entry of one camera's chain, first broken entry first."""
    content_ok = [r.computed() == r.entry_hash for r in rows]
    by_hash = {r.entry_hash: i for i, r in reversed(list(enumerate(rows)))}
    referenced = {r.prev_hash for r in rows}
    prev: _ChainRow | None = None
    prev_reported = False
    for i, row in enumerate(rows):
        before = len(report.problems) + report._dropped
        expected_seq = prev.seq + 1 if prev else 1
        gap = row.seq != expected_seq
        if row.seq > expected_seq:
            first, last = expected_seq, row.seq - 1
            span = f"seq {first}" if first == last else f"seq {first}..{last}"
            report.problem(
                REMOVED,
                camera,
                "",
                f"chain entry {span} removed (missing between seq {first - 1} and seq {row.seq})",
            )
        if row.path is None:
            report.problem(
                REMOVED,
                camera,
                row.where(),
                f"chain seq {row.seq}: its segment row (id {row.segment_id}) was removed",
            )
        elif not content_ok[i]:
            moved_from = _written_as(row, rows, by_hash)
            if moved_from is not None and moved_from != row.seq:
                detail = f"chain seq {row.seq}: moved or renumbered (written as seq {moved_from})"
            elif row.seg_camera != camera:
                detail = f"chain seq {row.seq}: segment row edited (camera {row.seg_camera!r})"
            else:
                detail = f"chain seq {row.seq}: row edited (its fields do not match its entry hash)"
            report.problem(EDITED, camera, row.where(), detail)
        else:
            linked = row.prev_hash == (prev.entry_hash if prev else ZERO_HASH)
            follows = i + 1 < len(rows) and rows[i + 1].seq == row.seq + 1
            if row.entry_hash not in referenced and follows:
                report.problem(
                    INSERTED,
                    camera,
                    row.where(),
                    f"chain seq {row.seq}: inserted, replaced or edited with a recomputed hash "
                    f"(seq {rows[i + 1].seq} does not link to it)",
                )
            elif not linked and not gap and not prev_reported:
                report.problem(
                    EDITED,
                    camera,
                    row.where(),
                    f"chain seq {row.seq}: link broken (its prev_hash is not the hash of seq "
                    f"{prev.seq if prev else 0})",
                )
        # a row already named explains its successor's broken link: not reported twice
        prev, prev_reported = row, len(report.problems) + report._dropped > before


def _written_as(row: _ChainRow, rows: list[_ChainRow], by_hash: dict[str, int]) -> int | None:
    """The seq a hash-failing row was written with, when its link and hash tell."""
    if row.prev_hash == ZERO_HASH:
        candidate = 1
    elif (pred := by_hash.get(row.prev_hash)) is not None:
        candidate = rows[pred].seq + 1
    else:
        return None
    return candidate if row.computed(candidate) == row.entry_hash else None


def _check_head(
    camera: str,
    head: tuple[int, str] | None,
    last_seq: int,
    last_hash: str,
    report: EvidenceReport,
) -> None:
    if head is None:
        if last_seq:
            report.problem(
                INSERTED,
                camera,
                "",
                f"chain seq 1..{last_seq}: not in the head record (written outside courthub?)",
            )
        return
    seq, digest = head
    if seq > last_seq:
        first = last_seq + 1
        span = f"seq {first}" if first == seq else f"seq {first}..{seq}"
        report.problem(
            REMOVED,
            camera,
            "",
            f"chain entry {span} removed from the end (the head names seq {seq})",
        )
    elif seq < last_seq:
        first = seq + 1
        span = f"seq {first}" if first == last_seq else f"seq {first}..{last_seq}"
        report.problem(
            INSERTED,
            camera,
            "",
            f"chain entry {span} not in the head record (appended outside courthub, "
            "or the hub stopped before updating the head)",
        )
    elif seq > 0 and digest != last_hash:
        report.problem(
            EDITED,
            camera,
            "",
            f"chain seq {seq}: differs from the head record (edited or replaced)",
        )


def _check_unchained(db: sqlite3.Connection, cameras: list[str], report: EvidenceReport) -> None:
    """Segment rows no chain entry covers were inserted behind courthub's back."""
    for cam in cameras:
        rows = db.execute(
            "SELECT s.id, s.path FROM segments s WHERE s.camera = ? AND NOT EXISTS "
            "(SELECT 1 FROM chain c WHERE c.segment_id = s.id) ORDER BY s.id",
            (cam,),
        )
        for seg_id, path in rows:
            report.problem(
                INSERTED, cam, path, f"segment row {seg_id} has no chain entry (inserted)"
            )


def _check_files(
    db: sqlite3.Connection,
    root: Path,
    cameras: list[str],
    report: EvidenceReport,
    *,
    session_id: str | None,
    segment_path: str | None,
    progress: Progress | None,
) -> None:
    """Re-hash every indexed file in scope, page by page (short read transactions)."""
    where, params = ["camera = ?"], []
    if session_id is not None:
        where.append("session_id = ?")
        params.append(session_id)
    if segment_path is not None:
        where.append("path = ?")
        params.append(segment_path)
    cond = " AND ".join(where)
    total = 0
    for cam in cameras:
        row = db.execute(
            f"SELECT COALESCE(SUM(bytes), 0) FROM segments WHERE {cond} AND deleted_at_ms IS NULL",
            (cam, *params),
        ).fetchone()
        total += int(row[0])
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, max(total, done))

    for cam in cameras:
        last_id = 0
        while True:
            page = db.execute(
                f"SELECT id, path, bytes, sha256, deleted_at_ms, deleted_reason FROM segments "
                f"WHERE {cond} AND id > ? ORDER BY id LIMIT {PAGE}",
                (cam, *params, last_id),
            ).fetchall()
            if not page:
                break
            last_id = page[-1][0]
            for _id, path, size, sha256, deleted_at_ms, reason in page:
                _check_one_file(
                    root / path,
                    cam,
                    report,
                    expected=(path, size, sha256),
                    deleted=(deleted_at_ms, reason),
                    advance=advance,
                )
    if progress is not None:
        progress(done, max(total, done))


def _check_one_file(
    full: Path,
    camera: str,
    report: EvidenceReport,
    *,
    expected: tuple[str, int, str],
    deleted: tuple[int | None, str | None],
    advance: Callable[[int], None],
) -> None:
    path, size, sha256 = expected
    deleted_at_ms, reason = deleted
    if deleted_at_ms is not None:
        when = _iso(deleted_at_ms)
        if full.exists():
            report.info(
                DELETED, camera, path, f"marked deleted ({reason}, {when}) but still on disk"
            )
        else:
            report.info(DELETED, camera, path, f"deleted by {reason or 'retention'} at {when}")
        return
    report.segments_checked += 1
    try:
        actual, actual_size = hash_file(full, advance)
    except FileNotFoundError:
        report.problem(MISSING, camera, path, "file is gone and was not deleted by retention")
        return
    except OSError as exc:
        report.problem(MISSING, camera, path, f"file cannot be read: {exc.strerror or exc}")
        return
    report.bytes_hashed += actual_size
    if actual != sha256 or actual_size != size:
        report.problem(
            ALTERED,
            camera,
            path,
            f"expected sha256 {sha256} ({size} bytes), actual {actual} ({actual_size} bytes)",
        )


def _check_strays(
    db: sqlite3.Connection,
    root: Path,
    report: EvidenceReport,
    *,
    camera: str | None,
    segment_path: str | None,
    settled_before: float,
) -> None:
    """Files in a camera folder that no segment row names: ADDED, or IN_PROGRESS when fresh."""
    if segment_path is not None:
        candidates: Iterator[tuple[str, list[Path]]] = iter(
            [(str(PurePosixPath(segment_path).parent), [root / segment_path])]
        )
    else:
        folders = [root / camera] if camera is not None else _subdirs(root)
        candidates = (item for folder in folders for item in _files_by_folder(root, folder))
    for folder, files in candidates:
        known = _known_paths(db, folder)
        for full in files:
            rel = full.relative_to(root).as_posix()
            if rel in known:
                continue
            try:
                mtime = full.stat().st_mtime
            except FileNotFoundError:
                continue  # renamed or removed while we looked
            cam = rel.split("/", 1)[0]
            if mtime >= settled_before:
                report.info(IN_PROGRESS, cam, rel, "being written (not indexed yet)")
            else:
                report.problem(ADDED, cam, rel, "file is in no chain entry (added)")


def _subdirs(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []


def _files_by_folder(root: Path, folder: Path) -> Iterator[tuple[str, list[Path]]]:
    """(folder relative to root, its files) for ``folder`` and every folder below it."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        here = Path(dirpath)
        yield here.relative_to(root).as_posix(), [here / n for n in sorted(filenames)]


def _known_paths(db: sqlite3.Connection, folder: str) -> set[str]:
    """Indexed paths directly in ``folder`` (a range on the path index, not a table scan)."""
    prefix = folder.rstrip("/") + "/"
    rows = db.execute(
        "SELECT path FROM segments WHERE path >= ? AND path < ?", (prefix, prefix[:-1] + "0")
    )
    return {p for (p,) in rows if "/" not in p[len(prefix) :]}


# sealed manifests ------------------------------------------------------------------------------


def write_manifest(
    path: Path,
    *,
    session: Mapping[str, Any],
    segments: Sequence[SegmentRecord],
    transcripts: Sequence[Path] = (),
    root: Path,
    transcripts_root: Path | None = None,
    chain_heads: Mapping[str, tuple[int, str]] | None = None,
    created_ms: int | None = None,
) -> str:
    """Seal a hearing: write its manifest JSON at ``path`` once and return the file's SHA-256.

    Lists the ``session`` fields, every segment (camera, path, media name in a bundle, start and
    end in UTC ms and ISO, frames, bytes, sha256, chain seq and entry hash), every transcript
    (path relative to ``transcripts_root``, or its name, with its sha256) and the chain head per
    camera (``chain_heads`` when the caller has the index's, else each camera's last segment
    here). Segment files must be present under ``root`` with their indexed size
    (:class:`EvidenceError` otherwise). Written atomically; :class:`FileExistsError` when a
    manifest is already there (a sealed record is never rewritten).
    """
    if path.exists():
        raise FileExistsError(f"manifest {path} already exists (the session is sealed)")
    ordered = sorted(segments, key=lambda s: (s.start_ms, s.camera, s.chain_seq))
    media: set[str] = set()
    for seg in ordered:
        _check_segment_for_seal(seg, root, media)
    heads = dict(chain_heads or {})
    for seg in ordered:
        if chain_heads is None and seg.chain_seq > heads.get(seg.camera, (0, ""))[0]:
            heads[seg.camera] = (seg.chain_seq, seg.entry_hash)
    stamp = int(time.time() * 1000) if created_ms is None else created_ms
    manifest = {
        "format": MANIFEST_FORMAT,
        "created_ms": stamp,
        "created_utc": _iso(stamp),
        "session": dict(session),
        "segments": [_segment_entry(seg) for seg in ordered],
        "transcripts": [_transcript_entry(t, transcripts_root) for t in transcripts],
        "chain_heads": {
            cam: {"seq": seq, "entry_hash": digest} for cam, (seq, digest) in sorted(heads.items())
        },
    }
    data = (
        json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=False, default=str) + "\n"
    ).encode()
    _write_once(path, data)
    digest = hashlib.sha256(data).hexdigest()
    log.info(
        "manifest sealed path=%s segments=%d transcripts=%d sha256=%s",
        path,
        len(ordered),
        len(transcripts),
        digest,
    )
    return digest


def _check_segment_for_seal(seg: SegmentRecord, root: Path, media: set[str]) -> None:
    parts = PurePosixPath(seg.path).parts
    if not parts or not all(_SAFE_PART.fullmatch(p) for p in parts) or ".." in parts:
        raise EvidenceError(f"segment path {seg.path!r} has characters a bundle cannot carry")
    name = _media_name(seg)
    if name in media:
        raise EvidenceError(f"two segments would both be {name} in a bundle")
    media.add(name)
    if seg.deleted_at_ms is not None:
        raise EvidenceError(f"segment {seg.path} was deleted ({seg.deleted_reason})")
    try:
        size = (root / seg.path).stat().st_size
    except FileNotFoundError:
        raise EvidenceError(f"segment file {seg.path} is missing under {root}") from None
    if size != seg.bytes:
        raise EvidenceError(
            f"segment file {seg.path} has {size} bytes, the index says {seg.bytes} (altered?)"
        )


def _media_name(seg: SegmentRecord) -> str:
    return f"media/{seg.camera}/{PurePosixPath(seg.path).name}"


def _segment_entry(seg: SegmentRecord) -> dict[str, Any]:
    return {
        "camera": seg.camera,
        "venue": seg.venue,
        "path": seg.path,
        "media": _media_name(seg),
        "start_ms": seg.start_ms,
        "start_utc": _iso(seg.start_ms),
        "end_ms": seg.end_ms,
        "end_utc": _iso(seg.end_ms),
        "frames": seg.frames,
        "bytes": seg.bytes,
        "sha256": seg.sha256,
        "chain_seq": seg.chain_seq,
        "entry_hash": seg.entry_hash,
        "recovered": seg.recovered,
    }


def _transcript_entry(path: Path, transcripts_root: Path | None) -> dict[str, Any]:
    if transcripts_root is not None:
        full = path if path.is_absolute() else transcripts_root / path
        rel = full.relative_to(transcripts_root).as_posix()
    else:
        full, rel = path, path.name
    if "\n" in rel or "\\" in rel or ".." in PurePosixPath(rel).parts:
        raise EvidenceError(f"transcript name {rel!r} cannot go into a bundle")
    sha256, size = hash_file(full)
    return {"path": rel, "bytes": size, "sha256": sha256}


def _write_once(path: Path, data: bytes) -> None:
    """tmp + fsync, then link(2) into place: atomic, and never replaces an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # FileExistsError when someone sealed first
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# export bundles --------------------------------------------------------------------------------

VERIFY_SH: Final = r"""#!/bin/sh
# courthub evidence bundle check. Needs only sh, sha256sum, sed, grep and find.
# Usage: sh verify.sh    exit 0: intact; 1: a file was altered, removed or added.
cd "$(dirname "$0")" || exit 2
status=0
if [ ! -f SHA256SUMS ] || [ ! -f manifest.json ]; then
    echo "FAILED: SHA256SUMS or manifest.json is missing"
    exit 1
fi
echo "== 1. SHA-256 of every listed file"
sha256sum -c SHA256SUMS || status=1
echo "== 2. every media file of the manifest is present and listed"
listed=$(sed 's/^[0-9a-f]\{64\}  //' SHA256SUMS)
for f in $(sed -n 's/^ *"media": "\([^"]*\)",\{0,1\}$/\1/p' manifest.json); do
    if [ ! -f "$f" ]; then
        echo "MISSING $f"
        status=1
    elif ! printf '%s\n' "$listed" | grep -qxF -- "$f"; then
        echo "NOT LISTED $f"
        status=1
    fi
done
echo "== 3. no file was added"
added=$(find . -type f ! -path ./SHA256SUMS | sed 's|^\./||' | while IFS= read -r f; do
    printf '%s\n' "$listed" | grep -qxF -- "$f" || printf 'ADDED %s\n' "$f"
done)
if [ -n "$added" ]; then
    printf '%s\n' "$added"
    status=1
fi
echo "manifest.json sha256: $(sha256sum manifest.json | sed 's/ .*//')"
echo "  (compare with the seal record in the court's audit log / 与审计日志中的封存记录比对)"
if [ "$status" -eq 0 ]; then
    echo "OK: bundle intact / 证据包完整"
else
    echo "FAILED: see the lines above / 校验失败，见上方"
fi
exit "$status"
"""

README_TXT: Final = """courthub 庭审录像证据包
========================

本压缩包是一次庭审（或远程提讯）的录像证据导出件，由 courthub 在封存后生成：
  media/<摄像机>/<文件>   原始录像片段，逐字节原样保存（未重新编码、未压缩）
  transcripts/            庭审笔录 / 语音转写文件
  manifest.json           封存清单：庭审信息、每个片段的摄像机、起止时间（UTC）、帧数、
                          大小、SHA-256、哈希链序号与链哈希，以及每台摄像机的链头
  SHA256SUMS              包内每个文件的 SHA-256（sha256sum 标准格式）
  verify.sh               校验脚本（只需要 sh 与 sha256sum 等基本命令，不需要 Python）

在另一台电脑上校验：
  1. unzip 证据包.zip -d bundle
  2. sh bundle/verify.sh
  退出码 0 且最后一行为 "OK" 表示所有文件完好；否则脚本会列出被修改（FAILED）、
  缺失（MISSING）或多出（ADDED）的文件，退出码为 1。
  脚本最后打印 manifest.json 的 SHA-256，请与法院审计日志中的封存记录比对，
  以确认清单本身未被替换。

courthub evidence bundle (recorded hearing)
===========================================

This archive is the video evidence of one hearing (or remote interrogation), exported by
courthub after the record was sealed:
  media/<camera>/<file>   the original video segments, byte for byte (not re-encoded, not
                          compressed)
  transcripts/            transcripts of the hearing
  manifest.json           the sealed manifest: session details; for every segment its camera,
                          start/end (UTC), frames, size, SHA-256, hash-chain sequence number and
                          entry hash; the chain head of every camera
  SHA256SUMS              the SHA-256 of every file in the bundle (sha256sum format)
  verify.sh               the check (needs only sh, sha256sum and coreutils; no Python)

To verify on another machine:
  1. unzip bundle.zip -d bundle
  2. sh bundle/verify.sh
  Exit status 0 and a last line "OK" mean every file is intact; otherwise the script names
  each altered (FAILED), missing (MISSING) or added (ADDED) file and exits 1.
  It prints the SHA-256 of manifest.json last: compare it with the seal record in the court's
  audit log to make sure the manifest itself was not replaced.
"""


def export_bundle(
    out_zip: Path,
    *,
    manifest_path: Path,
    root: Path,
    transcripts_root: Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """Pack a sealed hearing into ``out_zip`` (see :data:`README_TXT` for its layout).

    Media are stored, not deflated (video is already compressed). Every file is hashed while it
    is copied and must match the manifest (:class:`EvidenceError` naming the file otherwise:
    it changed since sealing). The zip is written to a temporary name and renamed when
    complete; :class:`FileExistsError` when ``out_zip`` exists.
    """
    if out_zip.exists():
        raise FileExistsError(f"{out_zip} already exists")
    manifest_bytes = manifest_path.read_bytes()
    manifest = _parse_manifest(manifest_bytes, str(manifest_path))
    jobs = _bundle_jobs(manifest, root, transcripts_root)
    total = sum(size for _, _, size, _, _ in jobs)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    out_zip.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_zip.with_name(f".{out_zip.name}.{os.getpid()}.part")
    sums: list[tuple[str, str]] = []
    try:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            for arcname, source, size, sha256, compress in jobs:
                actual = _copy_into_zip(zf, (arcname, source, size, sha256, compress), advance)
                if actual != sha256:
                    raise EvidenceError(
                        f"{source} changed since sealing: sha256 {actual}, manifest says {sha256}"
                    )
                sums.append((actual, arcname))
            for arcname, data, mode in (
                (MANIFEST_NAME, manifest_bytes, 0o644),
                ("README.txt", README_TXT.encode(), 0o644),
                ("verify.sh", VERIFY_SH.encode(), 0o755),
            ):
                _write_small(zf, arcname, data, mode)
                sums.append((hashlib.sha256(data).hexdigest(), arcname))
            lines = "".join(f"{digest}  {name}\n" for digest, name in sums)
            _write_small(zf, SUMS_FILE, lines.encode(), 0o644)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out_zip)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(out_zip.parent)
    log.info("bundle exported out=%s files=%d bytes=%d", out_zip, len(sums), total)
    return out_zip


def _parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise EvidenceError(f"{where}: not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise EvidenceError(f"{where}: not a courthub manifest ({MANIFEST_FORMAT})")
    return manifest


_Job = tuple[str, Path, int, str, int]  # arcname, source, size, sha256, compression


def _bundle_jobs(
    manifest: Mapping[str, Any], root: Path, transcripts_root: Path | None
) -> list[_Job]:
    jobs: list[_Job] = []
    try:
        for seg in manifest["segments"]:
            jobs.append(
                (
                    seg["media"],
                    root / seg["path"],
                    int(seg["bytes"]),
                    seg["sha256"],
                    zipfile.ZIP_STORED,
                )
            )
        transcripts = manifest.get("transcripts", [])
        if transcripts and transcripts_root is None:
            raise EvidenceError("the manifest lists transcripts: give transcripts_root")
        for t in transcripts:
            assert transcripts_root is not None
            jobs.append(
                (
                    f"transcripts/{t['path']}",
                    transcripts_root / t["path"],
                    int(t["bytes"]),
                    t["sha256"],
                    zipfile.ZIP_DEFLATED,
                )
            )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, EvidenceError):
            raise
        raise EvidenceError(f"malformed manifest: {exc!r}") from None
    for _, source, _, _, _ in jobs:
        if not source.is_file():
            raise EvidenceError(f"{source} is missing: the bundle cannot be complete")
    return jobs


def _copy_into_zip(zf: zipfile.ZipFile, job: _Job, advance: Callable[[int], None]) -> str:
    arcname, source, size, _, compress = job
    info = zipfile.ZipInfo(arcname, _zip_time(source.stat().st_mtime))
    info.compress_type = compress
    info.external_attr = 0o644 << 16
    digest = hashlib.sha256()
    with source.open("rb") as src, zf.open(info, "w", force_zip64=size > 0x7FFFFFFF) as dst:
        while chunk := src.read(HASH_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            advance(len(chunk))
    return digest.hexdigest()


def _write_small(zf: zipfile.ZipFile, arcname: str, data: bytes, mode: int) -> None:
    info = zipfile.ZipInfo(arcname, _zip_time(time.time()))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = mode << 16
    zf.writestr(info, data)


def _zip_time(ts: float) -> tuple[int, int, int, int, int, int]:
    t = datetime.fromtimestamp(max(ts, 315532800), UTC)  # zip cannot hold times before 1980
    return (t.year, t.month, t.day, t.hour, t.minute, t.second)


# verifying a bundle ----------------------------------------------------------------------------


class _Bundle:
    """A bundle as a zip or an extracted folder: names and readers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self.sizes = {
                p.relative_to(path).as_posix(): p.stat().st_size
                for p in sorted(path.rglob("*"))
                if p.is_file()
            }
        else:
            self.zip = zipfile.ZipFile(path)
            self.sizes = {i.filename: i.file_size for i in self.zip.infolist() if not i.is_dir()}

    def open(self, name: str) -> IO[bytes]:
        if self.zip is not None:
            return self.zip.open(name)
        return (self.path / name).open("rb")

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def verify_bundle(path: Path, *, progress: Progress | None = None) -> EvidenceReport:
    """Check a bundle (zip or extracted folder): every file against SHA256SUMS, every manifest
    entry against its file, and nothing added. Raises :class:`FileNotFoundError` /
    :class:`EvidenceError` when ``path`` is no bundle at all."""
    if not path.exists():
        raise FileNotFoundError(f"no bundle at {path}")
    try:
        bundle = _Bundle(path)
    except zipfile.BadZipFile as exc:
        raise EvidenceError(f"{path} is not a zip file ({exc})") from None
    report = EvidenceReport()
    try:
        _verify_bundle(bundle, report, progress)
    finally:
        bundle.close()
    log.info("bundle verified path=%s ok=%s problems=%d", path, report.ok, len(report.problems))
    return report


def _verify_bundle(bundle: _Bundle, report: EvidenceReport, progress: Progress | None) -> None:
    if SUMS_FILE not in bundle.sizes:
        report.problem(MISSING, "", SUMS_FILE, "the list of checksums is missing")
        return
    listed: dict[str, str] = {}
    for n, line in enumerate(bundle.read(SUMS_FILE).decode("utf-8", "replace").splitlines(), 1):
        m = _SUMS_LINE.fullmatch(line)
        if m is None or ".." in PurePosixPath(m.group(2)).parts or m.group(2).startswith("/"):
            report.problem(ALTERED, "", SUMS_FILE, f"line {n} is not '<sha256>  <path>'")
            continue
        listed[m.group(2)] = m.group(1)
    manifest = _bundle_manifest(bundle, listed, report)
    total = sum(bundle.sizes.get(name, 0) for name in listed)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    for name, expected in listed.items():
        camera = _camera_of(name)
        if name not in bundle.sizes:
            report.problem(MISSING, camera, name, "listed in SHA256SUMS but not in the bundle")
            continue
        if name.startswith("media/"):
            report.segments_checked += 1
        actual = _hash_member(bundle, name, advance, report)
        if actual is None:
            report.problem(ALTERED, camera, name, "unreadable (the zip's CRC does not match)")
        elif actual != expected:
            report.problem(ALTERED, camera, name, f"expected sha256 {expected}, actual {actual}")
    for name in bundle.sizes:
        if name not in listed and name != SUMS_FILE:
            report.problem(ADDED, _camera_of(name), name, "not listed in SHA256SUMS (added)")
    if manifest is not None:
        _check_manifest_entries(manifest, listed, bundle, report)


def _bundle_manifest(
    bundle: _Bundle, listed: Mapping[str, str], report: EvidenceReport
) -> dict[str, Any] | None:
    if MANIFEST_NAME not in bundle.sizes:
        report.problem(MISSING, "", MANIFEST_NAME, "the manifest is missing")
        return None
    data = bundle.read(MANIFEST_NAME)
    report.manifest_sha256 = hashlib.sha256(data).hexdigest()
    report.info(
        NOTE,
        "",
        MANIFEST_NAME,
        f"sha256 {report.manifest_sha256}: compare with the seal record in the audit log",
    )
    if MANIFEST_NAME not in listed:
        report.problem(ADDED, "", MANIFEST_NAME, "the manifest is not listed in SHA256SUMS")
    try:
        return _parse_manifest(data, MANIFEST_NAME)
    except EvidenceError as exc:
        report.problem(ALTERED, "", MANIFEST_NAME, str(exc))
        return None


def _check_manifest_entries(
    manifest: Mapping[str, Any], listed: Mapping[str, str], bundle: _Bundle, report: EvidenceReport
) -> None:
    """Each manifest entry must be in the bundle with the manifest's own hash (the manifest is
    the sealed record: a media file and its SHA256SUMS line changed together are still caught)."""
    entries: list[tuple[str, str]] = []
    try:
        entries += [(str(s["media"]), str(s["sha256"])) for s in manifest["segments"]]
        entries += [
            (f"transcripts/{t['path']}", str(t["sha256"])) for t in manifest.get("transcripts", [])
        ]
    except (KeyError, TypeError) as exc:
        report.problem(ALTERED, "", MANIFEST_NAME, f"malformed manifest: {exc!r}")
        return
    for name, sha256 in entries:
        camera = _camera_of(name)
        if name not in bundle.sizes:
            if name in listed:
                continue  # already reported as MISSING
            report.problem(MISSING, camera, name, "in the manifest but not in the bundle")
        elif listed.get(name) != sha256:
            if name not in listed:
                detail = "in the manifest but not listed in SHA256SUMS"
            else:
                detail = f"SHA256SUMS says {listed[name]}, the sealed manifest says {sha256}"
            report.problem(ALTERED, camera, name, detail)


def _hash_member(
    bundle: _Bundle, name: str, advance: Callable[[int], None], report: EvidenceReport
) -> str | None:
    digest = hashlib.sha256()
    try:
        with bundle.open(name) as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
                report.bytes_hashed += len(chunk)
                advance(len(chunk))
    except zipfile.BadZipFile:
        return None
    return digest.hexdigest()


def _camera_of(name: str) -> str:
    parts = name.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "media" else ""


# helpers ---------------------------------------------------------------------------------------


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"
