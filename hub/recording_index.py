"""The recordings index: every video segment on disk, its SHA-256, and a hash chain per camera.

``data_dir/recordings.db`` (SQLite, WAL, ``synchronous=FULL``) indexes the files the recorder
writes under the storage root (``data_dir/recordings/<camera>/<YYYYMMDD>/<camera>_<ts>Z.<ext>``).
Paths are stored relative to the storage root with POSIX separators, so a copied data folder
still verifies.

Each camera has its own evidence chain (table ``chain``): entry ``seq`` 1, 2, 3… of a camera
carries ``entry_hash`` = SHA-256 of the canonical JSON of ``{camera, seq, path, sha256, bytes,
start_ms, end_ms, frames, prev_hash}`` (see :func:`chain_entry_hash`), ``prev_hash`` being the
previous entry's hash (64 zeros for the first). Editing a segment's hashed fields, removing,
inserting or reordering entries is therefore evident; :mod:`hub.evidence` checks it, and re-hashes
the files.

Like the audit log (:mod:`hub.audit`), a *head record* ``recordings.head`` beside the database
holds each camera's last ``seq`` and hash, rewritten after every append under an exclusive
``flock`` (readers take it shared while they open their read transaction), so entries removed at
the end of a chain are caught too.

Append-only: SQLite triggers refuse ``DELETE`` on every table, and ``UPDATE`` except marking a
segment deleted once (``deleted_at_ms``, ``deleted_reason``: retention removed the file; the chain
entry stays) and closing a gap once (``to_ms``). Legal holds are an append-only log too: a
session is held while its latest hold entry says so, and a held session's segments are never
deleted.

All SQLite work runs on one :class:`~hub.db_thread.DbThread`; file hashing runs in a worker
thread of its own so a long hash never holds up other index calls.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Final, TypeVar

from hub.db_thread import DbThread
from protocol.topics import valid_id

log = logging.getLogger(__name__)

DB_FILE: Final = "recordings.db"
HEAD_FILE: Final = "recordings.head"
STORAGE_DIR: Final = "recordings"
SCHEMA_VERSION: Final = 1
ZERO_HASH: Final = "0" * 64
#: read size of the streamed file hashes
HASH_CHUNK: Final = 1 << 20
#: every append-only trigger; :mod:`hub.evidence` reports any that was dropped
TRIGGERS: Final = (
    "segments_no_delete",
    "segments_only_mark_deleted",
    "chain_no_update",
    "chain_no_delete",
    "gaps_no_delete",
    "gaps_only_close",
    "hold_log_no_update",
    "hold_log_no_delete",
)
T = TypeVar("T")

_APPEND_ONLY: Final = "'the recordings index is append-only'"
_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    camera TEXT NOT NULL,
    venue TEXT NOT NULL,
    session_id TEXT,
    path TEXT NOT NULL UNIQUE,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    frames INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    recovered INTEGER NOT NULL,
    deleted_at_ms INTEGER,
    deleted_reason TEXT
);
CREATE INDEX IF NOT EXISTS segments_by_camera ON segments (camera, start_ms);
CREATE INDEX IF NOT EXISTS segments_by_session ON segments (session_id, start_ms);
CREATE INDEX IF NOT EXISTS segments_by_start ON segments (start_ms);
CREATE TABLE IF NOT EXISTS chain (
    camera TEXT NOT NULL,
    seq INTEGER NOT NULL,
    segment_id INTEGER NOT NULL UNIQUE,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL,
    PRIMARY KEY (camera, seq)
);
CREATE TABLE IF NOT EXISTS gaps (
    id INTEGER PRIMARY KEY,
    camera TEXT NOT NULL,
    venue TEXT NOT NULL,
    from_ms INTEGER NOT NULL,
    to_ms INTEGER,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS gaps_by_camera ON gaps (camera, from_ms);
CREATE TABLE IF NOT EXISTS hold_log (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    held INTEGER NOT NULL,
    by TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS hold_log_by_session ON hold_log (session_id, id);
CREATE TRIGGER IF NOT EXISTS segments_no_delete BEFORE DELETE ON segments
BEGIN SELECT RAISE(ABORT, {_APPEND_ONLY}); END;
CREATE TRIGGER IF NOT EXISTS segments_only_mark_deleted BEFORE UPDATE ON segments
WHEN OLD.deleted_at_ms IS NOT NULL OR NEW.deleted_at_ms IS NULL
  OR NEW.id IS NOT OLD.id OR NEW.camera IS NOT OLD.camera OR NEW.venue IS NOT OLD.venue
  OR NEW.session_id IS NOT OLD.session_id OR NEW.path IS NOT OLD.path
  OR NEW.start_ms IS NOT OLD.start_ms OR NEW.end_ms IS NOT OLD.end_ms
  OR NEW.frames IS NOT OLD.frames OR NEW.bytes IS NOT OLD.bytes OR NEW.sha256 IS NOT OLD.sha256
  OR NEW.recovered IS NOT OLD.recovered
BEGIN SELECT RAISE(ABORT, {_APPEND_ONLY}); END;
CREATE TRIGGER IF NOT EXISTS chain_no_update BEFORE UPDATE ON chain
BEGIN SELECT RAISE(ABORT, {_APPEND_ONLY}); END;
CREATE TRIGGER IF NOT EXISTS chain_no_delete BEFORE DELETE ON chain
BEGIN SELECT RAISE(ABORT, {_APPEND_ONLY}); END;
CREATE TRIGGER IF NOT EXISTS gaps_no_delete BEFORE DELETE ON gaps
BEGIN SELECT RAISE(ABORT, {_APPEND_ONLY}); END;
CREATE TRIGGER IF NOT EXISTS gaps_only_close BEFORE UPDATE ON gaps
WHEN OLD.to_ms IS NOT NULL OR NEW.to_ms IS NULL
  OR NEW.id IS NOT OLD.id OR NEW.camera IS NOT OLD.camera OR NEW.venue IS NOT OLD.venue
  OR NEW.from_ms IS NOT OLD.from_ms OR NEW.reason IS NOT OLD.reason
BEGIN SELECT RAISE(ABORT, {_APPEND_ONLY}); END;
CREATE TRIGGER IF NOT EXISTS hold_log_no_update BEFORE UPDATE ON hold_log
BEGIN SELECT RAISE(ABORT, {_APPEND_ONLY}); END;
CREATE TRIGGER IF NOT EXISTS hold_log_no_delete BEFORE DELETE ON hold_log
BEGIN SELECT RAISE(ABORT, {_APPEND_ONLY}); END;
"""

SEGMENT_COLUMNS: Final = (
    "s.id, s.camera, s.venue, s.session_id, s.path, s.start_ms, s.end_ms, s.frames, s.bytes, "
    "s.sha256, c.seq, c.entry_hash, s.recovered, s.deleted_at_ms, s.deleted_reason"
)
SEGMENT_FROM: Final = "segments s JOIN chain c ON c.segment_id = s.id"
_HELD_SQL: Final = (
    "SELECT h.session_id FROM hold_log h WHERE h.held = 1 AND h.id = "
    "(SELECT MAX(id) FROM hold_log WHERE session_id = h.session_id)"
)


class HeldError(Exception):
    """Refusing to delete a segment of a session under legal hold."""


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    """One indexed video file and its chain entry."""

    id: int
    camera: str
    venue: str
    session_id: str | None
    #: relative to the storage root, POSIX separators
    path: str
    start_ms: int
    end_ms: int
    frames: int
    bytes: int
    sha256: str
    chain_seq: int
    entry_hash: str
    #: indexed after a crash (the file was still open when the hub died)
    recovered: bool
    deleted_at_ms: int | None
    deleted_reason: str | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "id": self.id,
            "camera": self.camera,
            "venue": self.venue,
            "session_id": self.session_id,
            "path": self.path,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "frames": self.frames,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "chain_seq": self.chain_seq,
            "entry_hash": self.entry_hash,
            "recovered": self.recovered,
            "deleted_at_ms": self.deleted_at_ms,
            "deleted_reason": self.deleted_reason,
        }


@dataclass(frozen=True, slots=True)
class GapRecord:
    """A span with no recording for a camera (camera down, disk full…); ``to_ms`` None: open."""

    id: int
    camera: str
    venue: str
    from_ms: int
    to_ms: int | None
    reason: str


def chain_entry_hash(
    *,
    camera: str,
    seq: int,
    path: str,
    sha256: str,
    bytes: int,
    start_ms: int,
    end_ms: int,
    frames: int,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of the canonical JSON (sorted keys, compact, UTF-8) of one chain entry."""
    payload = json.dumps(
        {
            "camera": camera,
            "seq": seq,
            "path": path,
            "sha256": sha256,
            "bytes": bytes,
            "start_ms": start_ms,
            "end_ms": end_ms,
            "frames": frames,
            "prev_hash": prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def hash_file(path: Path, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """(SHA-256 hex, size) of a file, streamed; ``progress(n)`` after each chunk of n bytes."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest(), size


def segment_from_row(row: tuple[Any, ...]) -> SegmentRecord:
    """A :class:`SegmentRecord` from a row of ``SELECT SEGMENT_COLUMNS FROM SEGMENT_FROM``."""
    (
        id_,
        camera,
        venue,
        session_id,
        path,
        start_ms,
        end_ms,
        frames,
        size,
        sha256,
        seq,
        digest,
        recovered,
        deleted_at_ms,
        deleted_reason,
    ) = row
    return SegmentRecord(
        id_,
        camera,
        venue,
        session_id,
        path,
        start_ms,
        end_ms,
        frames,
        size,
        sha256,
        seq,
        digest,
        bool(recovered),
        deleted_at_ms,
        deleted_reason,
    )


@dataclass(frozen=True, slots=True)
class _NewSegment:
    camera: str
    venue: str
    session_id: str | None
    path: str
    start_ms: int
    end_ms: int
    frames: int
    bytes: int
    sha256: str
    recovered: bool


@dataclass(frozen=True, slots=True)
class _SegmentQuery:
    camera: str | None
    session_id: str | None
    from_ms: int | None
    to_ms: int | None
    include_deleted: bool


class RecordingIndex:
    """The index of recorded segments in ``recordings.db`` (async API; SQLite on its thread)."""

    def __init__(self, db_path: Path, storage_root: Path, clock: Callable[[], float]) -> None:
        """Use :meth:`open`."""
        self.path = db_path
        self.head_path = db_path.with_name(HEAD_FILE)
        self.storage_root = storage_root
        self._clock = clock
        self._thread = DbThread("recordings-db")
        self._db: sqlite3.Connection | None = None
        self._head_fd: int | None = None
        self._segment_listeners: list[Callable[[SegmentRecord], None]] = []

    @classmethod
    async def open(
        cls, db_path: Path, storage_root: Path, *, clock: Callable[[], float] = time.time
    ) -> RecordingIndex:
        """Open (and create) the index at ``db_path`` for the files under ``storage_root``."""
        index = cls(db_path, storage_root, clock)
        index._thread.start()
        try:
            await index._thread.run(index._open_blocking)
        except BaseException:
            await index.close()
            raise
        log.info("recordings index open path=%s root=%s", db_path, storage_root)
        return index

    async def close(self) -> None:
        """Close the database and stop its thread (idempotent)."""
        if not self._thread.running:
            return
        try:
            await self._thread.run(self._close_blocking)
        finally:
            self._thread.stop()

    # segments -----------------------------------------------------------------------------------

    async def add_segment(
        self,
        *,
        camera: str,
        venue: str,
        session_id: str | None,
        path: Path,
        start_ms: int,
        end_ms: int,
        frames: int,
        recovered: bool = False,
    ) -> SegmentRecord:
        """Hash a finished segment file and append it to its camera's chain.

        ``path`` is absolute or relative to the storage root and must lie in the camera's folder.
        Raises :class:`ValueError` for bad arguments or a path that is already indexed, and
        :class:`OSError` when the file cannot be read.
        """
        rel = self._relative(path)
        if not valid_id(camera) or PurePosixPath(rel).parts[0] != camera:
            raise ValueError(f"segment {rel!r} is not in the folder of camera {camera!r}")
        if end_ms < start_ms or frames < 0:
            raise ValueError(f"segment {rel!r}: bad span {start_ms}..{end_ms} or frames {frames}")
        if rel in await self.indexed_paths(camera):  # cheap early refusal before a long hash
            raise ValueError(f"segment {rel!r} is already indexed")
        # hashing may take seconds: in a worker thread, never on the loop or the DB thread
        sha256, size = await asyncio.to_thread(hash_file, self.storage_root / rel)
        new = _NewSegment(
            camera, venue, session_id, rel, start_ms, end_ms, frames, size, sha256, recovered
        )
        record = await self._thread.run(self._append_blocking, new)
        log.info(
            "segment indexed camera=%s seq=%d path=%s bytes=%d recovered=%s",
            camera,
            record.chain_seq,
            rel,
            size,
            recovered,
        )
        for listener in list(self._segment_listeners):
            try:
                listener(record)
            except Exception:  # a listener's bug must not fail the indexing of evidence
                log.exception("segment listener failed camera=%s", camera)
        return record

    def add_segment_listener(self, fn: Callable[[SegmentRecord], None]) -> Callable[[], None]:
        """Call ``fn(record)`` (on the loop, must not block) after each segment is indexed;
        returns a function that removes it."""
        self._segment_listeners.append(fn)
        return lambda: self._segment_listeners.remove(fn) if fn in self._segment_listeners else None

    async def indexed_paths(self, camera: str) -> set[str]:
        """Every indexed path of ``camera`` (deleted ones too), for the crash-recovery scan."""
        return await self._thread.run(self._paths_blocking, camera)

    async def segments(
        self,
        *,
        camera: str | None = None,
        session_id: str | None = None,
        from_ms: int | None = None,
        to_ms: int | None = None,
        include_deleted: bool = False,
    ) -> list[SegmentRecord]:
        """Segments overlapping ``[from_ms, to_ms)`` matching every filter, oldest first."""
        query = _SegmentQuery(camera, session_id, from_ms, to_ms, include_deleted)
        return await self._thread.run(self._segments_blocking, query)

    async def chain_heads(self) -> dict[str, tuple[int, str]]:
        """Each camera's last chain entry: ``{camera: (seq, entry_hash)}``."""
        return await self._thread.run(self._heads_blocking)

    async def stored_bytes(self) -> int:
        """Total size of the segments not deleted."""
        return await self._thread.run(self._stored_bytes_blocking)

    # gaps ---------------------------------------------------------------------------------------

    async def open_gap(self, *, camera: str, venue: str, from_ms: int, reason: str) -> GapRecord:
        """Record that ``camera`` stopped recording at ``from_ms`` (closed by :meth:`close_gap`)."""
        gap = await self._thread.run(self._open_gap_blocking, camera, venue, from_ms, reason)
        log.info("gap opened camera=%s id=%d reason=%s", camera, gap.id, reason)
        return gap

    async def close_gap(self, gap_id: int, to_ms: int) -> None:
        """End an open gap; ValueError when unknown, already closed, or ending before it starts."""
        await self._thread.run(self._close_gap_blocking, gap_id, to_ms)
        log.info("gap closed id=%d to_ms=%d", gap_id, to_ms)

    async def gaps(
        self, *, camera: str | None = None, since_ms: int | None = None, open_only: bool = False
    ) -> list[GapRecord]:
        """Gaps of ``camera`` (all when None) still open or ending at or after ``since_ms``."""
        return await self._thread.run(self._gaps_blocking, camera, since_ms, open_only)

    # legal hold and retention -------------------------------------------------------------------

    async def set_hold(self, session_id: str, held: bool, *, by: str) -> None:
        """Put a hearing session's segments under legal hold (or lift it); logged, append-only."""
        at_ms = int(self._clock() * 1000)
        await self._thread.run(self._set_hold_blocking, session_id, held, by, at_ms)
        log.info("legal hold session=%s held=%s by=%s", session_id, held, by)

    async def held_sessions(self) -> set[str]:
        """The sessions under legal hold now."""
        return await self._thread.run(self._held_blocking)

    async def deletable(
        self,
        *,
        older_than_ms: int | None = None,
        venues: Collection[str] | None = None,
        limit: int = 100,
    ) -> list[SegmentRecord]:
        """Segments retention may delete, oldest first: not deleted, not in a held session,
        ended before ``older_than_ms`` and recorded in one of ``venues`` (when given)."""
        venue_list = None if venues is None else sorted(venues)
        return await self._thread.run(
            self._deletable_blocking, older_than_ms, venue_list, max(1, int(limit))
        )

    async def delete_segment(self, segment_id: int, *, reason: str, at_ms: int) -> SegmentRecord:
        """Delete a segment's file and mark its row deleted; its chain entry stays.

        The hold is re-checked in the same transaction (:class:`HeldError`); a file already
        gone is fine; a segment already deleted is returned unchanged. :class:`KeyError` for an
        unknown id.
        """
        record = await self._thread.run(self._delete_blocking, segment_id, reason, at_ms)
        log.info(
            "segment deleted id=%d camera=%s path=%s reason=%s",
            record.id,
            record.camera,
            record.path,
            reason,
        )
        return record

    # blocking side (DB thread only) -------------------------------------------------------------

    def _relative(self, path: Path) -> str:
        full = path if path.is_absolute() else self.storage_root / path
        try:
            rel = full.relative_to(self.storage_root)
        except ValueError:
            raise ValueError(f"{path} is not under the storage root {self.storage_root}") from None
        if not rel.parts or ".." in rel.parts:
            raise ValueError(f"bad segment path {path}")
        return rel.as_posix()

    def _open_blocking(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an indexed segment must survive a power cut
            db.execute("PRAGMA busy_timeout=10000")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise RuntimeError(
                    f"{self.path}: schema version {version}, expected {SCHEMA_VERSION}"
                )
            missing = missing_triggers(db)
            if version and missing:
                log.warning(
                    "recordings index triggers were removed; restoring them path=%s missing=%s",
                    self.path,
                    ",".join(missing),
                )
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._head_fd = os.open(self.head_path, os.O_RDWR | os.O_CREAT, 0o644)
        except BaseException:
            db.close()
            raise
        self._db = db

    def _close_blocking(self) -> None:
        db, self._db = self._db, None
        fd, self._head_fd = self._head_fd, None
        try:
            if db is not None:
                db.close()
        finally:
            if fd is not None:
                os.close(fd)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("recordings index is not open")
        return self._db

    def _append_blocking(self, new: _NewSegment) -> SegmentRecord:
        db = self._conn()
        assert self._head_fd is not None
        with flock(self._head_fd, fcntl.LOCK_EX):
            with _transaction(db):
                if db.execute("SELECT 1 FROM segments WHERE path = ?", (new.path,)).fetchone():
                    raise ValueError(f"segment {new.path!r} is already indexed")
                last = db.execute(
                    "SELECT seq, entry_hash FROM chain WHERE camera = ? ORDER BY seq DESC LIMIT 1",
                    (new.camera,),
                ).fetchone()
                seq, prev_hash = (last[0] + 1, last[1]) if last else (1, ZERO_HASH)
                digest = chain_entry_hash(
                    camera=new.camera,
                    seq=seq,
                    path=new.path,
                    sha256=new.sha256,
                    bytes=new.bytes,
                    start_ms=new.start_ms,
                    end_ms=new.end_ms,
                    frames=new.frames,
                    prev_hash=prev_hash,
                )
                cur = db.execute(
                    "INSERT INTO segments (camera, venue, session_id, path, start_ms, end_ms, "
                    "frames, bytes, sha256, recovered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        new.camera,
                        new.venue,
                        new.session_id,
                        new.path,
                        new.start_ms,
                        new.end_ms,
                        new.frames,
                        new.bytes,
                        new.sha256,
                        int(new.recovered),
                    ),
                )
                segment_id = cur.lastrowid
                assert segment_id is not None
                db.execute(
                    "INSERT INTO chain VALUES (?, ?, ?, ?, ?)",
                    (new.camera, seq, segment_id, prev_hash, digest),
                )
                heads = self._heads_blocking()
            # after the commit, still under the lock (readers see database and head agree): a
            # crash in between leaves the head one behind (reported), never ahead of the database
            try:
                _write_head(self._head_fd, heads)
            except OSError:
                log.exception(
                    "recordings head not updated path=%s camera=%s", self.head_path, new.camera
                )
        return SegmentRecord(
            segment_id,
            new.camera,
            new.venue,
            new.session_id,
            new.path,
            new.start_ms,
            new.end_ms,
            new.frames,
            new.bytes,
            new.sha256,
            seq,
            digest,
            new.recovered,
            None,
            None,
        )

    def _paths_blocking(self, camera: str) -> set[str]:
        rows = self._conn().execute("SELECT path FROM segments WHERE camera = ?", (camera,))
        return {path for (path,) in rows}

    def _segments_blocking(self, q: _SegmentQuery) -> list[SegmentRecord]:
        where: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("s.camera = ?", q.camera),
            ("s.session_id = ?", q.session_id),
            ("s.end_ms > ?", q.from_ms),
            ("s.start_ms < ?", q.to_ms),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        if not q.include_deleted:
            where.append("s.deleted_at_ms IS NULL")
        sql = f"SELECT {SEGMENT_COLUMNS} FROM {SEGMENT_FROM}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY s.start_ms, s.id"
        return [segment_from_row(r) for r in self._conn().execute(sql, params)]

    def _heads_blocking(self) -> dict[str, tuple[int, str]]:
        rows = self._conn().execute(
            "SELECT c.camera, c.seq, c.entry_hash FROM chain c "
            "JOIN (SELECT camera, MAX(seq) AS seq FROM chain GROUP BY camera) m "
            "ON m.camera = c.camera AND m.seq = c.seq"
        )
        return {camera: (seq, digest) for camera, seq, digest in rows}

    def _stored_bytes_blocking(self) -> int:
        row = (
            self._conn()
            .execute("SELECT COALESCE(SUM(bytes), 0) FROM segments WHERE deleted_at_ms IS NULL")
            .fetchone()
        )
        return int(row[0])

    def _open_gap_blocking(self, camera: str, venue: str, from_ms: int, reason: str) -> GapRecord:
        cur = self._conn().execute(
            "INSERT INTO gaps (camera, venue, from_ms, to_ms, reason) VALUES (?, ?, ?, NULL, ?)",
            (camera, venue, from_ms, reason),
        )
        assert cur.lastrowid is not None
        return GapRecord(cur.lastrowid, camera, venue, from_ms, None, reason)

    def _close_gap_blocking(self, gap_id: int, to_ms: int) -> None:
        db = self._conn()
        with _transaction(db):
            row = db.execute("SELECT from_ms, to_ms FROM gaps WHERE id = ?", (gap_id,)).fetchone()
            if row is None:
                raise ValueError(f"no gap {gap_id}")
            if row[1] is not None:
                raise ValueError(f"gap {gap_id} is already closed")
            if to_ms < row[0]:
                raise ValueError(f"gap {gap_id} cannot end ({to_ms}) before it starts ({row[0]})")
            db.execute("UPDATE gaps SET to_ms = ? WHERE id = ?", (to_ms, gap_id))

    def _gaps_blocking(
        self, camera: str | None, since_ms: int | None, open_only: bool
    ) -> list[GapRecord]:
        where: list[str] = []
        params: list[Any] = []
        if camera is not None:
            where.append("camera = ?")
            params.append(camera)
        if since_ms is not None:
            where.append("(to_ms IS NULL OR to_ms >= ?)")
            params.append(since_ms)
        if open_only:
            where.append("to_ms IS NULL")
        sql = "SELECT id, camera, venue, from_ms, to_ms, reason FROM gaps"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY from_ms, id"
        return [GapRecord(*row) for row in self._conn().execute(sql, params)]

    def _set_hold_blocking(self, session_id: str, held: bool, by: str, at_ms: int) -> None:
        self._conn().execute(
            "INSERT INTO hold_log (session_id, held, by, at_ms) VALUES (?, ?, ?, ?)",
            (session_id, int(held), by, at_ms),
        )

    def _held_blocking(self) -> set[str]:
        return {sid for (sid,) in self._conn().execute(_HELD_SQL)}

    def _deletable_blocking(
        self, older_than_ms: int | None, venues: list[str] | None, limit: int
    ) -> list[SegmentRecord]:
        where = [
            "s.deleted_at_ms IS NULL",
            f"(s.session_id IS NULL OR s.session_id NOT IN ({_HELD_SQL}))",
        ]
        params: list[Any] = []
        if older_than_ms is not None:
            where.append("s.end_ms < ?")
            params.append(older_than_ms)
        if venues is not None:
            if not venues:
                return []
            where.append(f"s.venue IN ({','.join('?' * len(venues))})")
            params.extend(venues)
        sql = (
            f"SELECT {SEGMENT_COLUMNS} FROM {SEGMENT_FROM} WHERE {' AND '.join(where)} "
            "ORDER BY s.start_ms, s.id LIMIT ?"
        )
        return [segment_from_row(r) for r in self._conn().execute(sql, (*params, limit))]

    def _delete_blocking(self, segment_id: int, reason: str, at_ms: int) -> SegmentRecord:
        db = self._conn()
        with _transaction(db):
            row = db.execute(
                f"SELECT {SEGMENT_COLUMNS} FROM {SEGMENT_FROM} WHERE s.id = ?", (segment_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"no segment {segment_id}")
            record = segment_from_row(row)
            if record.deleted_at_ms is not None:
                return record
            if record.session_id is not None and record.session_id in self._held_blocking():
                raise HeldError(
                    f"segment {record.path} belongs to session {record.session_id}, "
                    "which is under legal hold"
                )
            db.execute(
                "UPDATE segments SET deleted_at_ms = ?, deleted_reason = ? WHERE id = ?",
                (at_ms, reason, segment_id),
            )
            # unlinked inside the transaction: if it fails the row stays undeleted (retried later)
            try:
                (self.storage_root / record.path).unlink()
            except FileNotFoundError:
                log.info("segment file already gone id=%d path=%s", segment_id, record.path)
        return replace(record, deleted_at_ms=at_ms, deleted_reason=reason)


# helpers shared with hub.evidence ----------------------------------------------------------------


def missing_triggers(db: sqlite3.Connection) -> list[str]:
    """The append-only triggers absent from ``db``."""
    present = {
        name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
    }
    return [t for t in TRIGGERS if t not in present]


def parse_head(text: str) -> dict[str, tuple[int, str]] | None:
    """The head record's ``{camera: (seq, hash)}``; None when it is unreadable."""
    try:
        data = json.loads(text)
        return {str(cam): (int(v["seq"]), str(v["hash"])) for cam, v in data["cameras"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_head(fd: int, heads: dict[str, tuple[int, str]]) -> None:
    cameras = {cam: {"seq": seq, "hash": digest} for cam, (seq, digest) in sorted(heads.items())}
    data = (json.dumps({"cameras": cameras}, separators=(",", ":")) + "\n").encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
    os.fsync(fd)


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@contextmanager
def flock(fd: int, mode: int) -> Iterator[None]:
    """Hold ``flock(fd, mode)`` for the ``with`` block."""
    fcntl.flock(fd, mode)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
