"""Hearing sessions: what a recording belongs to, its legal hold, its seal and its export.

A hearing spans one or more venues (a courtroom, or the two rooms of a remote interrogation) and
owns every segment recorded in them between opening and closing: the recorder asks
:meth:`HearingService.active_session` for each segment it indexes. Closing ends the hearing;
sealing (only once closed) writes the manifest over all its segments and transcripts, after
which the record is fixed; exporting packs it into a bundle that verifies anywhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.audit import Action, AuditLog
from hub.db_thread import DbThread
from hub.evidence import export_bundle, write_manifest
from hub.recording_index import RecordingIndex

log = logging.getLogger(__name__)

HEARINGS_DB = "hearings.db"
MANIFESTS = "manifests"
TRANSCRIPTS = "transcripts"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hearings (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    case_no TEXT NOT NULL,
    venues TEXT NOT NULL,
    opened_ms INTEGER NOT NULL,
    opened_by TEXT NOT NULL,
    closed_ms INTEGER,
    sealed_ms INTEGER,
    manifest_sha256 TEXT,
    held INTEGER NOT NULL DEFAULT 0
);
"""


class HearingError(ValueError):
    """A hearing operation that cannot be done now (unknown id, not closed, sealed…)."""


@dataclass(frozen=True)
class Hearing:
    """One hearing session."""

    id: str
    title: str
    case_no: str
    venues: tuple[str, ...]
    opened_ms: int
    opened_by: str
    closed_ms: int | None = None
    sealed_ms: int | None = None
    manifest_sha256: str | None = None
    held: bool = False

    @property
    def is_open(self) -> bool:
        """Still recording into this hearing."""
        return self.closed_ms is None

    def to_json(self) -> dict[str, Any]:
        """The hearing for the API and the manifest."""
        return {
            "id": self.id,
            "title": self.title,
            "case_no": self.case_no,
            "venues": list(self.venues),
            "opened_ms": self.opened_ms,
            "opened_by": self.opened_by,
            "closed_ms": self.closed_ms,
            "sealed_ms": self.sealed_ms,
            "manifest_sha256": self.manifest_sha256,
            "held": self.held,
        }


class HearingService:
    """Open, close, hold, seal and export hearings (async API; SQLite on its own thread)."""

    def __init__(
        self,
        data_dir: Path,
        index: RecordingIndex,
        audit: AuditLog | None,
        clock: Callable[[], float],
    ) -> None:
        """Use :meth:`open`."""
        self.data_dir = data_dir
        self.index = index
        self.audit = audit
        self._clock = clock
        self._thread = DbThread("hearings-db")
        self._db: sqlite3.Connection | None = None
        self._hearings: dict[str, Hearing] = {}

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        index: RecordingIndex,
        audit: AuditLog | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> HearingService:
        """Open ``data_dir/hearings.db``."""
        service = cls(data_dir, index, audit, clock)
        service._thread.start()
        for hearing in await service._thread.run(service._open_blocking):
            service._hearings[hearing.id] = hearing
        return service

    async def close(self) -> None:
        """Close the database (idempotent)."""
        if self._thread.running:
            await self._thread.run(self._close_blocking)
            self._thread.stop()

    # queries ------------------------------------------------------------------------------------
    def get(self, hearing_id: str) -> Hearing | None:
        """One hearing."""
        return self._hearings.get(hearing_id)

    def all(self) -> list[Hearing]:
        """Every hearing, newest first."""
        return sorted(self._hearings.values(), key=lambda h: h.opened_ms, reverse=True)

    def active_session(self, venue: str) -> str | None:
        """The open hearing recording in ``venue`` (None between hearings)."""
        for hearing in self._hearings.values():
            if hearing.is_open and venue in hearing.venues:
                return hearing.id
        return None

    def manifest_path(self, hearing_id: str) -> Path:
        """Where the sealed manifest of a hearing is."""
        return self.data_dir / MANIFESTS / f"{hearing_id}.json"

    # changes ------------------------------------------------------------------------------------
    async def open_hearing(
        self, *, title: str, case_no: str, venues: Sequence[str], by: str
    ) -> Hearing:
        """Start a hearing in ``venues``; each venue may be in one open hearing at a time."""
        venues = tuple(dict.fromkeys(v for v in venues if v))
        if not venues:
            raise HearingError("a hearing needs at least one venue")
        for venue in venues:
            busy = self.active_session(venue)
            if busy is not None:
                raise HearingError(f"venue {venue} is already in hearing {busy}")
        now = self._now_ms()
        hearing = Hearing(
            self._next_id(now), title.strip()[:200], case_no.strip()[:100], venues, now, by
        )
        await self._thread.run(self._insert_blocking, hearing)
        self._hearings[hearing.id] = hearing
        await self._audit(by, Action.HEARING_OPENED, hearing, {"venues": list(venues)})
        log.info("hearing opened id=%s venues=%s by=%s", hearing.id, ",".join(venues), by)
        return hearing

    async def close_hearing(self, hearing_id: str, *, by: str) -> Hearing:
        """End the hearing: later segments of its venues belong to no hearing."""
        hearing = self._require(hearing_id)
        if not hearing.is_open:
            return hearing
        hearing = replace(hearing, closed_ms=self._now_ms())
        await self._save(hearing)
        await self._audit(by, Action.HEARING_CLOSED, hearing, None)
        return hearing

    async def set_hold(self, hearing_id: str, held: bool, *, by: str) -> Hearing:
        """Put the hearing's segments under legal hold (retention never deletes them) or lift it."""
        hearing = self._require(hearing_id)
        await self.index.set_hold(hearing_id, held, by=by)
        hearing = replace(hearing, held=held)
        await self._save(hearing)
        await self._audit(by, Action.LEGAL_HOLD, hearing, {"held": held})
        return hearing

    async def seal(self, hearing_id: str, *, by: str) -> Hearing:
        """Write the manifest over the closed hearing's segments and transcripts, once."""
        hearing = self._require(hearing_id)
        if hearing.is_open:
            raise HearingError(f"hearing {hearing_id} is still open: close it before sealing")
        if hearing.sealed_ms is not None:
            raise HearingError(f"hearing {hearing_id} is already sealed")
        segments = await self.index.segments(session_id=hearing_id)
        heads = await self.index.chain_heads()
        transcripts_root = self.data_dir / TRANSCRIPTS
        transcripts = await asyncio.to_thread(_files_under, transcripts_root / hearing_id)
        path = self.manifest_path(hearing_id)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        sha = await asyncio.to_thread(
            lambda: write_manifest(
                path,
                session=hearing.to_json(),
                segments=segments,
                transcripts=transcripts,
                root=self.index.storage_root,
                transcripts_root=transcripts_root,
                chain_heads={c: heads[c] for c in {s.camera for s in segments} if c in heads},
            )
        )
        hearing = replace(hearing, sealed_ms=self._now_ms(), manifest_sha256=sha)
        await self._save(hearing)
        detail = {"segments": len(segments), "transcripts": len(transcripts), "sha256": sha}
        await self._audit(by, Action.SEAL, hearing, detail)
        log.info("hearing sealed id=%s segments=%d sha256=%s", hearing_id, len(segments), sha)
        return hearing

    async def export(
        self,
        hearing_id: str,
        out_zip: Path,
        *,
        by: str,
        progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Write the sealed hearing's bundle (media, transcripts, manifest, verify.sh) to a zip."""
        hearing = self._require(hearing_id)
        if hearing.sealed_ms is None:
            raise HearingError(f"hearing {hearing_id} is not sealed: seal it before exporting")
        transcripts_root = self.data_dir / TRANSCRIPTS
        result = await asyncio.to_thread(
            lambda: export_bundle(
                out_zip,
                manifest_path=self.manifest_path(hearing_id),
                root=self.index.storage_root,
                transcripts_root=transcripts_root if transcripts_root.is_dir() else None,
                progress=progress,
            )
        )
        await self._audit(by, Action.EXPORT, hearing, {"file": out_zip.name})
        return result

    # internals ----------------------------------------------------------------------------------
    def _require(self, hearing_id: str) -> Hearing:
        hearing = self._hearings.get(hearing_id)
        if hearing is None:
            raise HearingError(f"no hearing {hearing_id}")
        return hearing

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _next_id(self, now_ms: int) -> str:
        day = datetime.fromtimestamp(now_ms / 1000, UTC).strftime("%Y%m%d")
        taken = sum(1 for h in self._hearings if h.startswith(f"h{day}-"))
        return f"h{day}-{taken + 1:04d}"

    async def _save(self, hearing: Hearing) -> None:
        await self._thread.run(self._update_blocking, hearing)
        self._hearings[hearing.id] = hearing

    async def _audit(
        self, by: str, action: Action, hearing: Hearing, detail: dict[str, Any] | None
    ) -> None:
        if self.audit is not None:
            await self.audit.record(by, action.value, target=hearing.id, detail=detail)

    def _open_blocking(self) -> list[Hearing]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.data_dir / HEARINGS_DB, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        self._db = db
        rows = db.execute(
            "SELECT id, title, case_no, venues, opened_ms, opened_by, closed_ms, sealed_ms, "
            "manifest_sha256, held FROM hearings"
        ).fetchall()
        return [
            Hearing(
                r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5], r[6], r[7], r[8], bool(r[9])
            )
            for r in rows
        ]

    def _close_blocking(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None, "hearings database is closed"
        return self._db

    def _insert_blocking(self, h: Hearing) -> None:
        self._conn().execute(
            "INSERT INTO hearings (id, title, case_no, venues, opened_ms, opened_by) "
            "VALUES (?,?,?,?,?,?)",
            (h.id, h.title, h.case_no, json.dumps(list(h.venues)), h.opened_ms, h.opened_by),
        )

    def _update_blocking(self, h: Hearing) -> None:
        self._conn().execute(
            "UPDATE hearings SET closed_ms = ?, sealed_ms = ?, manifest_sha256 = ?, held = ? "
            "WHERE id = ?",
            (h.closed_ms, h.sealed_ms, h.manifest_sha256, int(h.held), h.id),
        )


def _files_under(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file())
