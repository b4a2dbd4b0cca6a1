"""The audit trail: an append-only, hash-chained log of who did what, when and from where.

``data_dir/audit.db`` (SQLite, WAL, ``synchronous=FULL``: an audit record must survive a power
cut) holds one table, ``audit``; each row is an :class:`AuditEntry`. Its ``hash`` is the SHA-256
of a canonical encoding of ``(seq, ts_ms, actor, source, action, target, detail, prev_hash)`` —
``detail`` as sorted-key JSON — and ``prev_hash`` is the hash of the row before (64 zeros for the
first). ``seq`` counts 1, 2, 3… with no gaps. So:

- editing a row breaks its own hash;
- deleting a row leaves a gap in ``seq``;
- moving or copying a row breaks its hash (``seq`` is hashed) and its link;
- inserting a row with a recomputed hash leaves a fork: the next original row still links to
  the row before the inserted one;
- deleting rows at the end is caught by the *head record*, ``audit.head`` beside the database:
  the last ``seq`` and hash, rewritten after every append. Back it up with ``audit.db``.

An attacker able to rewrite the database *and* the head file can rebuild a consistent chain; the
chain makes tampering evident, it does not make it impossible (copy the head elsewhere — a
printout, another machine — to pin the past).

There is no update or delete in the API, and SQLite triggers refuse ``UPDATE`` and ``DELETE`` on
the table (defence in depth: a trigger can be dropped, which :func:`verify_file` reports).

Appends from several processes (the hub, ``courthub users``) are serialised by an exclusive
``flock`` on the head file held from reading the last row until the head is rewritten; readers
(:func:`verify_file`) take it shared while they start their read transaction, so they always see
a database and a head that agree. All SQLite work of an :class:`AuditLog` runs on one dedicated
thread; :meth:`AuditLog.verify` reads through its own connection on another, so a long check
never holds up new records.

Action names are stable strings (:class:`Action`); other parts of courthub add their own.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import quote

from hub.db_thread import DbThread

log = logging.getLogger(__name__)

DB_FILE: Final = "audit.db"
HEAD_FILE: Final = "audit.head"
SCHEMA_VERSION: Final = 1
ZERO_HASH: Final = "0" * 64
MAX_LIMIT: Final = 1000
_ACTION_RE: Final = re.compile(r"[a-z][a-z0-9_.]{0,63}")
_TRIGGERS: Final = ("audit_no_update", "audit_no_delete")
#: more problems than this are summarised (a rebuilt table would list every row otherwise)
MAX_PROBLEMS: Final = 200
T = TypeVar("T")

_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    source TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_ts ON audit (ts_ms);
CREATE INDEX IF NOT EXISTS audit_by_actor ON audit (actor, seq);
CREATE INDEX IF NOT EXISTS audit_by_action ON audit (action, seq);
CREATE TRIGGER IF NOT EXISTS {_TRIGGERS[0]} BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS {_TRIGGERS[1]} BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


class Action(StrEnum):
    """The audit actions of courthub (stored as their string value; never rename one)."""

    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    LOGOUT = "logout"
    USER_CREATED = "user_created"
    PASSWORD_CHANGED = "password_changed"
    ROLES_CHANGED = "roles_changed"
    USER_DISABLED = "user_disabled"
    USER_ENABLED = "user_enabled"
    API_TOKEN_CREATED = "api_token_created"
    API_TOKEN_REVOKED = "api_token_revoked"
    DEVICE_COMMAND = "device_command"
    LIVE_FEED_STARTED = "live_feed_started"
    EXPORT = "export"
    SEAL = "seal"
    HEARING_OPENED = "hearing_opened"
    HEARING_CLOSED = "hearing_closed"
    LEGAL_HOLD = "legal_hold"
    RETENTION_DELETE = "retention_delete"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the audit trail."""

    seq: int
    ts_ms: int
    actor: str
    source: str
    action: str
    target: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "seq": self.seq,
            "ts_ms": self.ts_ms,
            "actor": self.actor,
            "source": self.source,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of a chain check.

    A problem with rows starts with ``seq N:`` (or ``seq A..B:``); one with the table itself
    (a removed append-only trigger) with ``schema:``.
    """

    ok: bool
    checked: int
    problems: list[str] = field(default_factory=list)
    #: facts worth knowing that are not evidence of tampering (e.g. no head record to compare)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "problems": list(self.problems),
            "notes": list(self.notes),
        }


def canonical_detail(detail: Mapping[str, Any] | None) -> str:
    """``detail`` as the sorted-key, compact JSON text that is stored and hashed."""
    return json.dumps(
        dict(detail or {}),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=str,  # a stray non-JSON value is recorded as text rather than losing the record
    )


def entry_hash(
    seq: int,
    *,
    ts_ms: int,
    actor: str,
    source: str,
    action: str,
    target: str,
    detail_json: str,
    prev_hash: str,
) -> str:
    """The chain hash of one entry: SHA-256 (hex) of its fields as one compact JSON array.

    A JSON array keeps field boundaries unambiguous (``"ab","c"`` ≠ ``"a","bc"``).
    """
    payload = json.dumps(
        [seq, ts_ms, actor, source, action, target, detail_json, prev_hash],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class AuditLog:
    """The hub's audit trail in ``data_dir/audit.db``."""

    def __init__(self, data_dir: Path, clock: Callable[[], float]) -> None:
        """Use :meth:`open`."""
        self.path = data_dir / DB_FILE
        self.head_path = data_dir / HEAD_FILE
        self._clock = clock
        self._thread = DbThread("audit-db")
        self._db: sqlite3.Connection | None = None
        self._head_fd: int | None = None

    @classmethod
    async def open(cls, data_dir: Path, *, clock: Callable[[], float] = time.time) -> AuditLog:
        """Open (and create) the audit trail of ``data_dir``."""
        audit = cls(data_dir, clock)
        audit._thread.start()
        try:
            await audit._run(audit._open_blocking)
        except BaseException:
            await audit.close()
            raise
        log.info("audit log open path=%s", audit.path)
        return audit

    async def close(self) -> None:
        """Close the database and stop its thread (idempotent)."""
        if not self._thread.running:
            return
        try:
            await self._run(self._close_blocking)
        finally:
            self._thread.stop()

    async def record(
        self,
        actor: str,
        action: str,
        *,
        target: str = "",
        detail: Mapping[str, Any] | None = None,
        source: str = "",
    ) -> AuditEntry:
        """Append one entry and return it. Never put secrets in ``detail``."""
        if not _ACTION_RE.fullmatch(action):
            raise ValueError(f"bad audit action name {action!r}")
        # over-long fields are cut rather than refused: losing the record would be worse
        new = _NewEntry(
            ts_ms=int(self._clock() * 1000),
            actor=str(actor)[:128],
            source=str(source)[:128],
            action=str(action),
            target=str(target)[:256],
            detail_json=canonical_detail(detail),
        )
        entry = await self._run(self._append_blocking, new)
        log.info(
            "audit seq=%d action=%s actor=%s target=%s source=%s",
            entry.seq,
            entry.action,
            entry.actor,
            entry.target,
            entry.source,
        )
        return entry

    async def entries(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 200,
        offset: int = 0,
    ) -> list[AuditEntry]:
        """Entries matching every given filter, newest first (``until_ms`` is exclusive)."""
        limit = max(1, min(int(limit), MAX_LIMIT))
        offset = max(0, int(offset))
        query = _Query(actor, action, since_ms, until_ms, limit, offset)
        return await self._run(self._entries_blocking, query)

    async def verify(self) -> VerifyReport:
        """Check the whole chain (through a separate connection, off the writer thread)."""
        if not self._thread.running:
            raise RuntimeError("audit log is not open")
        return await asyncio.to_thread(verify_file, self.path)

    # blocking side (audit thread only) ----------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._thread.run(fn, *args)

    def _open_blocking(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # private from the start (names and addresses of users); SQLite gives -wal/-shm this mode
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=10000")
            missing = _missing_triggers(db) if _has_table(db) else []
            if missing:
                log.warning(
                    "audit log triggers were removed; restoring them path=%s missing=%s",
                    self.path,
                    ",".join(missing),
                )
            db.executescript(_SCHEMA)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: schema version {version}, expected {SCHEMA_VERSION}"
                )
            self._head_fd = os.open(self.head_path, os.O_RDWR | os.O_CREAT, 0o600)
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

    def _conn(self) -> tuple[sqlite3.Connection, int]:
        if self._db is None or self._head_fd is None:
            raise RuntimeError("audit log is not open")
        return self._db, self._head_fd

    def _append_blocking(self, new: _NewEntry) -> AuditEntry:
        db, head_fd = self._conn()
        with _flock(head_fd, fcntl.LOCK_EX):
            db.execute("BEGIN IMMEDIATE")
            try:
                last = db.execute(
                    "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                seq, prev_hash = (last[0] + 1, last[1]) if last else (1, ZERO_HASH)
                digest = entry_hash(
                    seq,
                    ts_ms=new.ts_ms,
                    actor=new.actor,
                    source=new.source,
                    action=new.action,
                    target=new.target,
                    detail_json=new.detail_json,
                    prev_hash=prev_hash,
                )
                db.execute(
                    "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        seq,
                        new.ts_ms,
                        new.actor,
                        new.source,
                        new.action,
                        new.target,
                        new.detail_json,
                        prev_hash,
                        digest,
                    ),
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            # after the commit: a crash in between leaves the head one behind (reported), never
            # ahead of what the database durably holds
            try:
                _write_head(head_fd, seq, digest)
            except OSError:
                # the entry is stored; verify will report the stale head, which is the truth
                log.exception("audit head not updated path=%s seq=%d", self.head_path, seq)
        return AuditEntry(
            seq,
            new.ts_ms,
            new.actor,
            new.source,
            new.action,
            new.target,
            json.loads(new.detail_json),
            prev_hash,
            digest,
        )

    def _entries_blocking(self, query: _Query) -> list[AuditEntry]:
        where: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("actor = ?", query.actor),
            ("action = ?", query.action),
            ("ts_ms >= ?", query.since_ms),
            ("ts_ms < ?", query.until_ms),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = f"SELECT {_COLUMNS} FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ? OFFSET ?"
        db, _ = self._conn()
        rows = db.execute(sql, (*params, query.limit, query.offset))
        return [_entry_from_row(r) for r in rows]


@dataclass(frozen=True, slots=True)
class _NewEntry:
    ts_ms: int
    actor: str
    source: str
    action: str
    target: str
    detail_json: str


@dataclass(frozen=True, slots=True)
class _Query:
    actor: str | None
    action: str | None
    since_ms: int | None
    until_ms: int | None
    limit: int
    offset: int


# verification -----------------------------------------------------------------------------------

_COLUMNS: Final = "seq, ts_ms, actor, source, action, target, detail, prev_hash, hash"


@dataclass(frozen=True, slots=True)
class _Head:
    seq: int
    hash: str


def verify_file(path: Path) -> VerifyReport:
    """Check the audit trail in ``path`` (an ``audit.db``) and its head record. Blocking.

    Raises :class:`FileNotFoundError` when there is no such database.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no audit log at {path}")
    head_path = path.with_name(HEAD_FILE)
    # mode=rw: never create a database while checking one
    db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=rw", uri=True)
    try:
        db.execute("PRAGMA busy_timeout=10000")
        notes: list[str] = []
        problems: list[str] = []
        if not _has_table(db):
            return VerifyReport(False, 0, ["seq 1: the audit table is missing"], notes)
        problems += [
            f"schema: append-only trigger {name} was removed" for name in _missing_triggers(db)
        ]
        head, head_note = _read_head_consistently(db, head_path)
        if head_note:
            notes.append(head_note)
        checked, last_seq, last_hash, clean = _fast_pass(db)
        if not clean:
            rows = [_RawRow(*r) for r in db.execute(f"SELECT {_COLUMNS} FROM audit ORDER BY seq")]
            problems += _diagnose(rows)
        problems += _check_head(head, last_seq, last_hash)
        db.execute("COMMIT")
    finally:
        db.close()
    if len(problems) > MAX_PROBLEMS:
        extra = len(problems) - MAX_PROBLEMS
        problems = [*problems[:MAX_PROBLEMS], f"… and {extra} more problems"]
    return VerifyReport(not problems, checked, problems, notes)


def _read_head_consistently(db: sqlite3.Connection, head_path: Path) -> tuple[_Head | None, str]:
    """The head record, read together with the start of a read transaction on ``db``.

    Writers hold the head's lock from reading the last row until the head is rewritten, so under
    a shared lock the database snapshot and the head agree.
    """
    try:
        fd = os.open(head_path, os.O_RDONLY)
    except FileNotFoundError:
        db.execute("BEGIN")
        db.execute("SELECT COUNT(*) FROM audit").fetchone()
        return None, "no head record (audit.head): deletions at the end cannot be detected"
    try:
        with _flock(fd, fcntl.LOCK_SH):
            db.execute("BEGIN")
            db.execute("SELECT COUNT(*) FROM audit").fetchone()  # pins the snapshot
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    if not text:
        return None, "the head record is empty: deletions at the end cannot be detected"
    try:
        data = json.loads(text)
        return _Head(int(data["seq"]), str(data["hash"])), ""
    except (ValueError, KeyError, TypeError):
        return _Head(-1, ""), ""


def _fast_pass(db: sqlite3.Connection) -> tuple[int, int, str, bool]:
    """Stream the table once: (rows, last seq, last hash, whether everything chains cleanly).

    Only when something is wrong is the whole table loaded for :func:`_diagnose`.
    """
    checked, last_seq, last_hash, clean = 0, 0, ZERO_HASH, True
    for row in db.execute(f"SELECT {_COLUMNS} FROM audit ORDER BY seq"):
        raw = _RawRow(*row)
        checked += 1
        if clean and (
            raw.seq != last_seq + 1 or raw.prev_hash != last_hash or raw.computed() != raw.hash
        ):
            clean = False
        last_seq, last_hash = raw.seq, raw.hash
    return checked, last_seq, last_hash, clean


@dataclass(slots=True)
class _RawRow:
    seq: Any
    ts_ms: Any
    actor: Any
    source: Any
    action: Any
    target: Any
    detail: Any
    prev_hash: Any
    hash: Any

    def computed(self, seq: int | None = None) -> str:
        """The hash this row's contents give (as if at ``seq``, when given)."""
        try:
            return entry_hash(
                self.seq if seq is None else seq,
                ts_ms=self.ts_ms,
                actor=self.actor,
                source=self.source,
                action=self.action,
                target=self.target,
                detail_json=self.detail,
                prev_hash=self.prev_hash,
            )
        except (TypeError, ValueError):
            return ""


def _diagnose(rows: list[_RawRow]) -> list[str]:
    """Name every tampered ``seq``: deleted, edited, forged, inserted, moved or unlinked."""
    problems: list[str] = []
    content_ok = [r.computed() == r.hash for r in rows]
    by_hash: dict[str, int] = {}
    for i, r in enumerate(rows):
        by_hash.setdefault(r.hash, i)
    referenced = {r.prev_hash for r in rows}
    written_as = _original_seqs(rows, content_ok, by_hash)
    prev: _RawRow | None = None
    prev_ok = True
    for i, row in enumerate(rows):
        expected_seq = prev.seq + 1 if prev else 1
        gap = row.seq != expected_seq
        if row.seq > expected_seq:
            first, last = expected_seq, row.seq - 1
            span = f"seq {first}" if first == last else f"seq {first}..{last}"
            problems.append(f"{span}: deleted (missing between seq {first - 1} and seq {row.seq})")
        if not content_ok[i]:
            original = written_as.get(i)
            if original is not None and original != row.seq:
                problems.append(
                    f"seq {row.seq}: moved or copied here (written as seq {original}): "
                    "rows reordered or renumbered"
                )
            else:
                problems.append(f"seq {row.seq}: edited or forged (contents do not match its hash)")
        else:
            expected_prev = prev.hash if prev else ZERO_HASH
            linked = row.prev_hash == expected_prev
            is_last = i == len(rows) - 1
            follows_without_gap = not is_last and rows[i + 1].seq == row.seq + 1
            if row.hash not in referenced and follows_without_gap:
                problems.append(
                    f"seq {row.seq}: inserted, replaced or edited with a recomputed hash "
                    f"(no later entry links to it; seq {rows[i + 1].seq} links elsewhere)"
                )
            elif not linked and not gap and prev_ok:
                problems.append(
                    f"seq {row.seq}: chain broken (its prev_hash is not the hash of seq "
                    f"{prev.seq if prev else 0})"
                )
            try:
                detail = json.loads(row.detail)
            except (TypeError, ValueError):
                detail = None
            if not isinstance(detail, dict):
                problems.append(f"seq {row.seq}: detail is not a JSON object")
        prev, prev_ok = row, content_ok[i]
    return problems


def _original_seqs(
    rows: list[_RawRow], content_ok: list[bool], by_hash: dict[str, int]
) -> dict[int, int]:
    """For rows whose hash fails, the ``seq`` they were written with, found through the links.

    A row's original seq is its predecessor's (found by ``prev_hash``) plus one; the result is
    confirmed by recomputing the row's hash with it. Resolved rows can resolve later ones, so
    this repeats until nothing changes (moved rows may link to each other in any order).
    """
    known: dict[int, int] = {i: r.seq for i, r in enumerate(rows) if content_ok[i]}
    pending = [i for i, ok in enumerate(content_ok) if not ok]
    progress = True
    while pending and progress:
        progress = False
        still = []
        for i in pending:
            row = rows[i]
            if row.prev_hash == ZERO_HASH:
                candidate: int | None = 1
            else:
                pred = by_hash.get(row.prev_hash)
                candidate = known[pred] + 1 if pred is not None and pred in known else None
            if candidate is not None and row.computed(candidate) == row.hash:
                known[i] = candidate
                progress = True
            else:
                still.append(i)
        pending = still
    return {i: s for i, s in known.items() if not content_ok[i]}


def _check_head(head: _Head | None, last_seq: int, last_hash: str) -> list[str]:
    if head is None:
        return []
    if head.seq < 0:
        return [f"seq {last_seq}: the head record is unreadable (edited?)"]
    if head.seq > last_seq:
        first = last_seq + 1
        span = f"seq {first}" if first == head.seq else f"seq {first}..{head.seq}"
        return [f"{span}: deleted from the end (the head record names seq {head.seq})"]
    if head.seq < last_seq:
        first = head.seq + 1
        span = f"seq {first}" if first == last_seq else f"seq {first}..{last_seq}"
        return [
            f"{span}: not in the head record (appended outside courthub, "
            "or the writer stopped before updating the head)"
        ]
    if head.seq > 0 and head.hash != last_hash:
        return [f"seq {head.seq}: differs from the head record (edited or replaced)"]
    return []


# helpers ----------------------------------------------------------------------------------------


def _entry_from_row(row: tuple[Any, ...]) -> AuditEntry:
    seq, ts_ms, actor, source, action, target, detail, prev_hash, digest = row
    try:
        parsed = json.loads(detail)
    except ValueError:
        parsed = {"unparsable": detail}
    return AuditEntry(
        seq,
        ts_ms,
        actor,
        source,
        action,
        target,
        parsed if isinstance(parsed, dict) else {"value": parsed},
        prev_hash,
        digest,
    )


def _has_table(db: sqlite3.Connection) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'")
    return row.fetchone() is not None


def _missing_triggers(db: sqlite3.Connection) -> list[str]:
    present = {
        name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
    }
    return [t for t in _TRIGGERS if t not in present]


def _write_head(fd: int, seq: int, digest: str) -> None:
    data = (json.dumps({"seq": seq, "hash": digest}) + "\n").encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
    os.fsync(fd)


@contextmanager
def _flock(fd: int, mode: int) -> Iterator[None]:
    fcntl.flock(fd, mode)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
