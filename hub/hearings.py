"""Hearing sessions: what a recording belongs to, its breaks, its legal hold, seal and export.

A hearing spans one or more venues (a courtroom, or the two rooms of a remote interrogation) and
owns every segment recorded in them while it is *open*: the recorders ask
:meth:`HearingService.active_session` for each segment they index.

Lifecycle (the Supreme People's Court's 2017 rules on hearing recordings: record the whole hearing
from opening to closing; breaks only for recess, non-public evidence or mediation, each logged
with times; speech-recognition text becomes the record only once checked and signed)::

    scheduled ──start──> open ──recess(reason)──> recess ──resume──> open ──close──> closed ──seal──> sealed
                  (open_hearing = schedule + start)      (segments of a recess belong to no hearing)

Every transition is an event (time, user, reason) in ``hearings.db`` and a row of the audit
trail. Sealing — after the clerk checked the transcript — writes the manifest over every segment
and transcript file, puts the hearing under legal hold and makes it read-only; exporting packs
it into a bundle that verifies anywhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
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
    held INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'open',
    scheduled_ms INTEGER
);
-- the hearing record's transitions; append-only
CREATE TABLE IF NOT EXISTS hearing_events (
    id INTEGER PRIMARY KEY,
    hearing TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    by TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TRIGGER IF NOT EXISTS hearing_events_no_update BEFORE UPDATE ON hearing_events
BEGIN SELECT RAISE(ABORT, 'hearing events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS hearing_events_no_delete BEFORE DELETE ON hearing_events
BEGIN SELECT RAISE(ABORT, 'hearing events are append-only'); END;
"""

SCHEDULED = "scheduled"
OPEN = "open"
RECESS = "recess"
CLOSED = "closed"
SEALED = "sealed"
#: why a hearing may break (the rules allow no other)
RECESS_REASONS = ("recess", "non_public_evidence", "mediation")


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
    state: str = OPEN
    scheduled_ms: int | None = None

    @property
    def is_open(self) -> bool:
        """Not ended yet (scheduled, open or in recess)."""
        return self.state in (SCHEDULED, OPEN, RECESS)

    @property
    def recording(self) -> bool:
        """Segments of its venues belong to it now."""
        return self.state == OPEN

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
            "state": self.state,
            "scheduled_ms": self.scheduled_ms,
        }


@dataclass(frozen=True)
class HearingEvent:
    """One transition of a hearing: when, into which state, by whom, why."""

    hearing: str
    ts_ms: int
    state: str
    by: str
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        """The event for the API and the transcript's recess markers."""
        return {"ts_ms": self.ts_ms, "state": self.state, "by": self.by, "reason": self.reason}


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
        #: called with the hearing just before its seal: writes its transcript files
        #: (hub/hearing_record.py) so the manifest hashes the checked text
        self.prepare_seal: Callable[[Hearing], Awaitable[object]] | None = None

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
        """The hearing recording in ``venue`` now (None between hearings and during a recess)."""
        for hearing in self._hearings.values():
            if hearing.recording and venue in hearing.venues:
                return hearing.id
        return None

    def recording_venues(self) -> set[str]:
        """Venues with a hearing recording now (the alert rules' "mic silent in a hearing")."""
        return {v for h in self._hearings.values() if h.recording for v in h.venues}

    def current(self, venue: str) -> Hearing | None:
        """The venue's hearing that has not ended (scheduled, open or in recess)."""
        for hearing in self._hearings.values():
            if hearing.is_open and hearing.state != SCHEDULED and venue in hearing.venues:
                return hearing
        return None

    async def events(self, hearing_id: str) -> list[HearingEvent]:
        """The hearing's transitions, oldest first."""
        self._require(hearing_id)
        return await self._thread.run(self._events_blocking, hearing_id)

    async def recesses(self, hearing_id: str) -> list[tuple[int, int | None, str]]:
        """The hearing's breaks as (from_ms, to_ms or None while on, reason)."""
        out: list[tuple[int, int | None, str]] = []
        for event in await self.events(hearing_id):
            if event.state == RECESS:
                out.append((event.ts_ms, None, event.reason))
            elif out and out[-1][1] is None and event.state in (OPEN, CLOSED):
                start, _, reason = out[-1]
                out[-1] = (start, event.ts_ms, reason)
        return out

    def manifest_path(self, hearing_id: str) -> Path:
        """Where the sealed manifest of a hearing is."""
        return self.data_dir / MANIFESTS / f"{hearing_id}.json"

    # changes ------------------------------------------------------------------------------------
    async def schedule_hearing(
        self,
        *,
        title: str,
        case_no: str,
        venues: Sequence[str],
        by: str,
        at_ms: int | None = None,
    ) -> Hearing:
        """Put a hearing on the calendar (nothing is recorded into it until :meth:`start`)."""
        venues = tuple(dict.fromkeys(v for v in venues if v))
        if not venues:
            raise HearingError("a hearing needs at least one venue")
        now = self._now_ms()
        hearing = Hearing(
            self._next_id(now),
            title.strip()[:200],
            case_no.strip()[:100],
            venues,
            now,
            by,
            state=SCHEDULED,
            scheduled_ms=at_ms,
        )
        await self._thread.run(self._insert_blocking, hearing)
        self._hearings[hearing.id] = hearing
        await self._record(hearing, SCHEDULED, by, "")
        return hearing

    async def start_hearing(self, hearing_id: str, *, by: str) -> Hearing:
        """Open a scheduled hearing: from now its venues' segments belong to it."""
        hearing = self._require(hearing_id)
        if hearing.state != SCHEDULED:
            raise HearingError(f"hearing {hearing_id} is {hearing.state}, not scheduled")
        for venue in hearing.venues:
            busy = self.current(venue)
            if busy is not None:
                raise HearingError(f"venue {venue} is already in hearing {busy.id}")
        hearing = replace(hearing, state=OPEN, opened_ms=self._now_ms(), opened_by=by)
        await self._save(hearing)
        await self._record(hearing, OPEN, by, "")
        await self._audit(by, Action.HEARING_OPENED, hearing, {"venues": list(hearing.venues)})
        log.info("hearing opened id=%s venues=%s by=%s", hearing.id, ",".join(hearing.venues), by)
        return hearing

    async def open_hearing(
        self, *, title: str, case_no: str, venues: Sequence[str], by: str
    ) -> Hearing:
        """Schedule and start a hearing at once; each venue may be in one hearing at a time."""
        for venue in dict.fromkeys(v for v in venues if v):
            busy = self.current(venue)
            if busy is not None:
                raise HearingError(f"venue {venue} is already in hearing {busy.id}")
        hearing = await self.schedule_hearing(title=title, case_no=case_no, venues=venues, by=by)
        return await self.start_hearing(hearing.id, by=by)

    async def recess(self, hearing_id: str, *, reason: str, by: str) -> Hearing:
        """Break an open hearing (recess, non-public evidence or mediation), logged with time."""
        if reason not in RECESS_REASONS:
            raise HearingError(
                f"a break must be one of {', '.join(RECESS_REASONS)}, not {reason!r}"
            )
        hearing = self._require(hearing_id)
        if hearing.state != OPEN:
            raise HearingError(f"hearing {hearing_id} is {hearing.state}, not open")
        hearing = replace(hearing, state=RECESS)
        await self._save(hearing)
        await self._record(hearing, RECESS, by, reason)
        return hearing

    async def resume(self, hearing_id: str, *, by: str) -> Hearing:
        """End a break: the hearing records again."""
        hearing = self._require(hearing_id)
        if hearing.state != RECESS:
            raise HearingError(f"hearing {hearing_id} is {hearing.state}, not in recess")
        hearing = replace(hearing, state=OPEN)
        await self._save(hearing)
        await self._record(hearing, OPEN, by, "resumed")
        return hearing

    async def close_hearing(self, hearing_id: str, *, by: str) -> Hearing:
        """End the hearing: later segments of its venues belong to no hearing."""
        hearing = self._require(hearing_id)
        if not hearing.is_open:
            return hearing
        if hearing.state == SCHEDULED:
            raise HearingError(f"hearing {hearing_id} never started")
        hearing = replace(hearing, state=CLOSED, closed_ms=self._now_ms())
        await self._save(hearing)
        await self._record(hearing, CLOSED, by, "")
        await self._audit(by, Action.HEARING_CLOSED, hearing, None)
        return hearing

    async def set_hold(self, hearing_id: str, held: bool, *, by: str) -> Hearing:
        """Put the hearing's segments under legal hold (retention never deletes them) or lift it.

        A sealed hearing stays held: its hold cannot be lifted.
        """
        hearing = self._require(hearing_id)
        if not held and hearing.state == SEALED:
            raise HearingError(f"hearing {hearing_id} is sealed: its legal hold stays")
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
        if self.prepare_seal is not None:
            await self.prepare_seal(hearing)
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
        if not hearing.held:  # a sealed record is kept: legal hold, for good
            await self.index.set_hold(hearing_id, True, by=by)
        hearing = replace(
            hearing, state=SEALED, sealed_ms=self._now_ms(), manifest_sha256=sha, held=True
        )
        await self._save(hearing)
        await self._record(hearing, SEALED, by, sha)
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

    def is_read_only(self, hearing_id: str) -> bool:
        """Sealed: no more corrections, notes or changes."""
        hearing = self._hearings.get(hearing_id)
        return hearing is not None and hearing.state == SEALED

    async def _record(self, hearing: Hearing, state: str, by: str, reason: str) -> None:
        event = HearingEvent(hearing.id, self._now_ms(), state, by, reason)
        await self._thread.run(self._event_blocking, event)
        log.info("hearing event id=%s state=%s by=%s reason=%s", hearing.id, state, by, reason)

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
            "manifest_sha256, held, state, scheduled_ms FROM hearings"
        ).fetchall()
        return [
            Hearing(
                r[0],
                r[1],
                r[2],
                tuple(json.loads(r[3])),
                r[4],
                r[5],
                r[6],
                r[7],
                r[8],
                bool(r[9]),
                r[10],
                r[11],
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
            "INSERT INTO hearings (id, title, case_no, venues, opened_ms, opened_by, state, "
            "scheduled_ms) VALUES (?,?,?,?,?,?,?,?)",
            (
                h.id,
                h.title,
                h.case_no,
                json.dumps(list(h.venues)),
                h.opened_ms,
                h.opened_by,
                h.state,
                h.scheduled_ms,
            ),
        )

    def _update_blocking(self, h: Hearing) -> None:
        self._conn().execute(
            "UPDATE hearings SET closed_ms = ?, sealed_ms = ?, manifest_sha256 = ?, held = ?, "
            "state = ?, opened_ms = ?, opened_by = ? WHERE id = ?",
            (
                h.closed_ms,
                h.sealed_ms,
                h.manifest_sha256,
                int(h.held),
                h.state,
                h.opened_ms,
                h.opened_by,
                h.id,
            ),
        )

    def _event_blocking(self, e: HearingEvent) -> None:
        self._conn().execute(
            "INSERT INTO hearing_events (hearing, ts_ms, state, by, reason) VALUES (?,?,?,?,?)",
            (e.hearing, e.ts_ms, e.state, e.by, e.reason),
        )

    def _events_blocking(self, hearing_id: str) -> list[HearingEvent]:
        rows = self._conn().execute(
            "SELECT hearing, ts_ms, state, by, reason FROM hearing_events WHERE hearing = ? "
            "ORDER BY id",
            (hearing_id,),
        )
        return [HearingEvent(*row) for row in rows]


def _files_under(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file())
