"""The hearings' transcripts on disk: final segments as they come, clerk corrections, notes.

``transcripts.db`` (SQLite, WAL, one thread): a final segment is committed the moment the
recognizer produces it, so a crash loses no final segment. Machine text is never overwritten:
a clerk's correction is a *revision* beside it (who, when, what), and the current text is the
latest revision. Notes carry the hearing time they refer to. All three tables are append-only
(triggers), like the audit trail: a sealed record is read by exporting, never by editing rows.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.db_thread import DbThread
from transcription.stream import FinalSegment

log = logging.getLogger(__name__)

TRANSCRIPTS_DB = "transcripts.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    hearing TEXT NOT NULL,
    seat TEXT NOT NULL,
    track TEXT NOT NULL,
    start_us INTEGER NOT NULL,
    end_us INTEGER NOT NULL,
    text TEXT NOT NULL,
    words TEXT NOT NULL,
    confidence REAL NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_hearing ON segments(hearing, start_us);
CREATE TABLE IF NOT EXISTS revisions (
    id INTEGER PRIMARY KEY,
    segment INTEGER NOT NULL REFERENCES segments(id),
    text TEXT NOT NULL,
    by TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY,
    hearing TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    author TEXT NOT NULL,
    text TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
"""
_TABLES = ("segments", "revisions", "notes")


def _append_only_triggers() -> str:
    out = []
    for table in _TABLES:
        for op in ("UPDATE", "DELETE"):
            out.append(
                f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} are append-only'); END;"
            )
    return "\n".join(out)


class TranscriptError(ValueError):
    """A transcript change that cannot be made (unknown segment, empty text)."""


@dataclass(frozen=True)
class Revision:
    """A clerk's correction of a segment."""

    text: str
    by: str
    at_ms: int


@dataclass(frozen=True)
class StoredSegment:
    """A final segment with its corrections; ``text`` is the current (latest) one."""

    id: int
    hearing: str
    seat: str
    track: str
    start_us: int
    end_us: int
    machine_text: str
    words: list[dict[str, Any]]
    confidence: float
    revisions: tuple[Revision, ...] = ()

    @property
    def text(self) -> str:
        """The latest revision, or the machine text."""
        return self.revisions[-1].text if self.revisions else self.machine_text

    def to_json(self) -> dict[str, Any]:
        """The segment for the API and the live page."""
        return {
            "id": self.id,
            "hearing": self.hearing,
            "seat": self.seat,
            "start_us": self.start_us,
            "end_us": self.end_us,
            "text": self.text,
            "machine_text": self.machine_text,
            "confidence": self.confidence,
            "words": self.words,
            "revisions": [{"text": r.text, "by": r.by, "at_ms": r.at_ms} for r in self.revisions],
        }


@dataclass(frozen=True)
class Note:
    """A judge's or clerk's note at a moment of the hearing."""

    id: int
    hearing: str
    ts_ms: int
    author: str
    text: str

    def to_json(self) -> dict[str, Any]:
        """The note for the API."""
        return {
            "id": self.id,
            "ts_ms": self.ts_ms,
            "author": self.author,
            "text": self.text,
        }


@dataclass
class _Counters:
    finals: int = 0
    revisions: int = 0
    notes: int = 0
    failures: int = 0
    by_hearing: dict[str, int] = field(default_factory=dict)


class TranscriptStore:
    """Async API over ``transcripts.db`` (SQLite on its own thread)."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        """Use :meth:`open`."""
        self.path = path
        self._clock = clock
        self._thread = DbThread("transcripts-db")
        self._db: sqlite3.Connection | None = None
        self.counters = _Counters()

    @classmethod
    async def open(
        cls, data_dir: Path, *, clock: Callable[[], float] = time.time
    ) -> TranscriptStore:
        """Open (and create) ``data_dir/transcripts.db``."""
        store = cls(data_dir / TRANSCRIPTS_DB, clock)
        store._thread.start()
        await store._thread.run(store._open_blocking)
        return store

    async def close(self) -> None:
        """Close the database (idempotent)."""
        if self._thread.running:
            await self._thread.run(self._close_blocking)
            self._thread.stop()

    async def add_final(self, hearing: str, track: str, segment: FinalSegment) -> int:
        """Persist one final segment now (committed before this returns); its id."""
        words = [
            {"text": w.text, "start_us": w.start_us, "end_us": w.end_us, "conf": w.conf}
            for w in segment.words
        ]
        row = (
            hearing,
            segment.seat,
            track,
            segment.start_us,
            segment.end_us,
            segment.text,
            json.dumps(words, ensure_ascii=False),
            segment.confidence,
            self._now_ms(),
        )
        segment_id = await self._thread.run(self._insert_segment_blocking, row)
        self.counters.finals += 1
        self.counters.by_hearing[hearing] = self.counters.by_hearing.get(hearing, 0) + 1
        return segment_id

    async def revise(self, segment_id: int, text: str, *, by: str) -> StoredSegment:
        """A clerk's correction, kept beside the machine text."""
        text = text.strip()
        if not text:
            raise TranscriptError("a correction needs text")
        stored = await self._thread.run(self._revise_blocking, segment_id, text, by, self._now_ms())
        self.counters.revisions += 1
        return stored

    async def add_note(self, hearing: str, *, ts_ms: int, author: str, text: str) -> Note:
        """A note at hearing time ``ts_ms``."""
        text = text.strip()
        if not text:
            raise TranscriptError("a note needs text")
        note_id = await self._thread.run(
            self._insert_note_blocking, hearing, ts_ms, author, text[:4000], self._now_ms()
        )
        self.counters.notes += 1
        return Note(note_id, hearing, ts_ms, author, text[:4000])

    async def segments(self, hearing: str, *, after_id: int = 0) -> list[StoredSegment]:
        """The hearing's segments in time order (only those with id > ``after_id``)."""
        return await self._thread.run(self._segments_blocking, hearing, after_id)

    async def segment(self, segment_id: int) -> StoredSegment | None:
        """One segment, or None."""
        return await self._thread.run(self._segment_blocking, segment_id)

    async def notes(self, hearing: str) -> list[Note]:
        """The hearing's notes in hearing-time order."""
        return await self._thread.run(self._notes_blocking, hearing)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # blocking, on the DB thread -----------------------------------------------------------------
    def _open_blocking(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a final segment survives a power cut
        db.executescript(_SCHEMA + _append_only_triggers())
        self._db = db

    def _close_blocking(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None, "transcript store is closed"
        return self._db

    def _insert_segment_blocking(self, row: tuple[Any, ...]) -> int:
        cur = self._conn().execute(
            "INSERT INTO segments (hearing, seat, track, start_us, end_us, text, words, "
            "confidence, created_ms) VALUES (?,?,?,?,?,?,?,?,?)",
            row,
        )
        return int(cur.lastrowid or 0)

    def _revise_blocking(self, segment_id: int, text: str, by: str, at_ms: int) -> StoredSegment:
        if self._segment_blocking(segment_id) is None:
            raise TranscriptError(f"no transcript segment {segment_id}")
        self._conn().execute(
            "INSERT INTO revisions (segment, text, by, at_ms) VALUES (?,?,?,?)",
            (segment_id, text, by, at_ms),
        )
        stored = self._segment_blocking(segment_id)
        assert stored is not None
        return stored

    def _insert_note_blocking(
        self, hearing: str, ts_ms: int, author: str, text: str, created_ms: int
    ) -> int:
        cur = self._conn().execute(
            "INSERT INTO notes (hearing, ts_ms, author, text, created_ms) VALUES (?,?,?,?,?)",
            (hearing, ts_ms, author, text, created_ms),
        )
        return int(cur.lastrowid or 0)

    _SELECT = (
        "SELECT id, hearing, seat, track, start_us, end_us, text, words, confidence FROM segments"
    )

    def _with_revisions(self, rows: list[tuple[Any, ...]]) -> list[StoredSegment]:
        if not rows:
            return []
        ids = [r[0] for r in rows]
        marks = ",".join("?" * len(ids))
        revisions: dict[int, list[Revision]] = {}
        for seg, text, by, at_ms in self._conn().execute(
            f"SELECT segment, text, by, at_ms FROM revisions WHERE segment IN ({marks}) "
            "ORDER BY id",
            ids,
        ):
            revisions.setdefault(seg, []).append(Revision(text, by, at_ms))
        return [
            StoredSegment(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                json.loads(r[7]),
                r[8],
                tuple(revisions.get(r[0], ())),
            )
            for r in rows
        ]

    def _segments_blocking(self, hearing: str, after_id: int) -> list[StoredSegment]:
        rows = self._conn().execute(
            f"{self._SELECT} WHERE hearing = ? AND id > ? ORDER BY start_us, id",
            (hearing, after_id),
        )
        return self._with_revisions(list(rows))

    def _segment_blocking(self, segment_id: int) -> StoredSegment | None:
        rows = list(self._conn().execute(f"{self._SELECT} WHERE id = ?", (segment_id,)))
        found = self._with_revisions(rows)
        return found[0] if found else None

    def _notes_blocking(self, hearing: str) -> list[Note]:
        rows = self._conn().execute(
            "SELECT id, hearing, ts_ms, author, text FROM notes WHERE hearing = ? "
            "ORDER BY ts_ms, id",
            (hearing,),
        )
        return [Note(*row) for row in rows]
