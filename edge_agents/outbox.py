"""The agent's durable, bounded, ordered store-and-forward outbox (SQLite in the data dir).

Every telemetry and event message gets its contract ``seq`` here and is written to disk before
anything tries to send it; the sender deletes it only after the broker's PUBACK (ThingsBoard
Gateway lost data by buffering in memory and rebuilding its store on reconnect; see LESSONS.md).

* ``seq`` is per agent, starts at 0, is monotonic and never reused: the next seq is
  ``max(largest stored seq + 1, persisted counter)``; the counter lives in the ``meta`` table
  and is advanced whenever rows are deleted, so it survives an empty outbox.
* ``bdseq`` (birth/death sequence, one per MQTT connection) and the drop counter are persisted
  in ``meta`` too.
* Bounded: past ``max_messages`` the OLDEST rows are deleted and counted in ``dropped``
  (persisted, logged with a count at most every 10 s), like Telegraf's metric buffer.
* ``live`` is 1 while a row may still be delivered as live data; :meth:`Outbox.demote_live`
  clears it when delivery stops, so whatever is sent later is flagged ``historical``.

Threading: all SQLite work runs on ONE dedicated worker thread (a single-thread executor), never
on the event loop. Because the executor is FIFO, operations take effect in submission order;
the plain counters (:attr:`pending`, :attr:`next_seq`, ...) are written only by that thread and
may be read from any thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: File name of the outbox database inside the agent's data dir.
DB_NAME: Final = "outbox.sqlite3"
#: Minimum seconds between two "outbox full" warnings.
DROP_LOG_INTERVAL_S: Final = 10.0

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        live INTEGER NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)
_META_NEXT_SEQ: Final = "next_seq"
_META_BDSEQ: Final = "bdseq"
_META_DROPPED: Final = "dropped"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One stored message."""

    seq: int
    topic: str
    payload: bytes
    created_ms: int
    live: bool


class OutboxClosed(RuntimeError):
    """The outbox was closed; nothing more can be stored."""


class Outbox:
    """A durable SQLite outbox; create it with :meth:`open`, release it with :meth:`close`."""

    def __init__(self, path: Path, max_messages: int) -> None:
        """Prefer :meth:`open`, which also creates the database on the worker thread."""
        if max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        self.path = path
        self.max_messages = max_messages
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"outbox-{path.parent.name}"
        )
        self._db: sqlite3.Connection | None = None  # touched only on the worker thread
        self._closed = False
        # Counters: written only on the worker thread, read anywhere.
        self._next_seq = 0
        self._bdseq = 0
        self._dropped = 0
        self._pending = 0
        self._last_drop_log = float("-inf")
        self._dropped_since_log = 0

    @classmethod
    async def open(cls, data_dir: Path, max_messages: int) -> Outbox:
        """Open (or create) ``data_dir/outbox.sqlite3``."""
        outbox = cls(Path(data_dir) / DB_NAME, max_messages)
        try:
            await outbox._call(outbox._open_sync)
        except BaseException:
            outbox._executor.shutdown(wait=False)
            raise
        return outbox

    # counters -----------------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        """The seq the next appended message will get."""
        return self._next_seq

    @property
    def bdseq(self) -> int:
        """The last bdseq handed out by :meth:`bump_bdseq` (0 before the first)."""
        return self._bdseq

    @property
    def dropped(self) -> int:
        """Messages deleted unsent because the outbox was full (persisted, ever growing)."""
        return self._dropped

    def pending(self) -> int:
        """Messages stored and not yet acknowledged by the broker."""
        return self._pending

    # async API ----------------------------------------------------------------------------
    async def append(self, topic: str, build_payload: Callable[[int], bytes], live: bool) -> int:
        """Store a message; ``build_payload(seq)`` renders it once its seq is known. Returns seq."""
        return await asyncio.wrap_future(self.append_nowait(topic, build_payload, live))

    def append_nowait(
        self,
        topic: str,
        build_payload: Callable[[int], bytes],
        live: bool,
        created_ms: int | None = None,
    ) -> concurrent.futures.Future[int]:
        """Queue an append from synchronous code (a driver's sink call); FIFO with everything else.

        ``build_payload`` runs on the worker thread; if it raises, no seq is consumed.
        """
        created = created_ms if created_ms is not None else time.time_ns() // 1_000_000
        return self._submit(self._append_sync, topic, build_payload, live, created)

    async def peek(self, limit: int, after: int = -1) -> list[OutboxRow]:
        """Up to ``limit`` stored rows with ``seq > after``, oldest first."""
        return await self._call(self._peek_sync, limit, after)

    async def ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged rows; returns how many were still stored."""
        return await self._call(self._ack_sync, list(seqs))

    async def demote_live(self) -> int:
        """Mark every stored row as not live (delivery stopped); returns how many changed."""
        return await self._call(self._demote_sync)

    def demote_live_nowait(self) -> concurrent.futures.Future[int]:
        """:meth:`demote_live` from synchronous code (ordered after earlier appends)."""
        return self._submit(self._demote_sync)

    async def bump_bdseq(self) -> int:
        """Persist and return the next bdseq (one per MQTT connection)."""
        return await self._call(self._bump_bdseq_sync)

    def bump_bdseq_blocking(self, timeout: float = 5.0) -> int:
        """:meth:`bump_bdseq` for a non-loop thread (paho's, building a connection's will)."""
        return self._submit(self._bump_bdseq_sync).result(timeout)

    async def close(self) -> None:
        """Finish queued work, close the database and stop the worker thread."""
        if self._closed:
            return
        try:
            await self._call(self._close_sync)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    # plumbing -----------------------------------------------------------------------------
    def _submit(self, fn: Callable[..., T], *args: object) -> concurrent.futures.Future[T]:
        if self._closed:
            raise OutboxClosed(f"outbox {self.path} is closed")
        try:
            return self._executor.submit(fn, *args)
        except RuntimeError:  # executor shut down between the check and the submit
            raise OutboxClosed(f"outbox {self.path} is closed") from None

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.wrap_future(self._submit(fn, *args))

    # worker thread ------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxClosed(f"outbox {self.path} is closed")
        return self._db

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions below
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a power cut may lose the last commits but never corrupts;
            # FULL would fsync on every message.
            db.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                db.execute(statement)
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            max_seq, count = db.execute("SELECT MAX(seq), COUNT(*) FROM outbox").fetchone()
        except BaseException:
            db.close()
            raise
        self._db = db
        self._next_seq = max(
            (max_seq + 1) if max_seq is not None else 0, meta.get(_META_NEXT_SEQ, 0)
        )
        self._bdseq = int(meta.get(_META_BDSEQ, 0))
        self._dropped = int(meta.get(_META_DROPPED, 0))
        self._pending = int(count)
        log.info(
            "outbox opened path=%s pending=%d next_seq=%d bdseq=%d dropped=%d",
            self.path,
            self._pending,
            self._next_seq,
            self._bdseq,
            self._dropped,
        )

    def _append_sync(
        self, topic: str, build_payload: Callable[[int], bytes], live: bool, created_ms: int
    ) -> int:
        db = self._conn()
        seq = self._next_seq
        payload = build_payload(seq)
        db.execute("BEGIN IMMEDIATE")
        try:
            dropped = self._make_room_sync(db)
            db.execute(
                "INSERT INTO outbox (seq, topic, payload, created_ms, live) VALUES (?, ?, ?, ?, ?)",
                (seq, topic, payload, created_ms, int(live)),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._next_seq = seq + 1
        self._pending += 1 - dropped
        if dropped:
            self._dropped += dropped
            self._log_drops(dropped)
        return seq

    def _make_room_sync(self, db: sqlite3.Connection) -> int:
        """Inside a transaction: delete the oldest rows so one more fits; returns how many."""
        excess = self._pending + 1 - self.max_messages
        if excess <= 0:
            return 0
        oldest = db.execute("SELECT seq FROM outbox ORDER BY seq LIMIT ?", (excess,)).fetchall()
        if not oldest:
            return 0
        last = oldest[-1][0]
        deleted = db.execute("DELETE FROM outbox WHERE seq <= ?", (last,)).rowcount
        self._set_meta(db, _META_DROPPED, self._dropped + deleted)
        self._set_meta(db, _META_NEXT_SEQ, max(self._next_seq, last + 1))
        return int(deleted)

    def _log_drops(self, dropped: int) -> None:
        self._dropped_since_log += dropped
        now = time.monotonic()
        if now - self._last_drop_log < DROP_LOG_INTERVAL_S:
            return
        log.warning(
            "outbox full: dropped oldest messages count=%d total_dropped=%d max_messages=%d",
            self._dropped_since_log,
            self._dropped,
            self.max_messages,
        )
        self._last_drop_log = now
        self._dropped_since_log = 0

    def _peek_sync(self, limit: int, after: int) -> list[OutboxRow]:
        rows = (
            self._conn()
            .execute(
                "SELECT seq, topic, payload, created_ms, live FROM outbox "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            )
            .fetchall()
        )
        return [OutboxRow(s, t, bytes(p), c, bool(lv)) for s, t, p, c, lv in rows]

    def _ack_sync(self, seqs: list[int]) -> int:
        if not seqs:
            return 0
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            before = db.total_changes
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
            deleted = db.total_changes - before
            # Deleting rows may remove the largest stored seq: keep the counter ahead of it.
            self._set_meta(db, _META_NEXT_SEQ, max(self._next_seq, max(seqs) + 1))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._pending -= deleted
        return deleted

    def _demote_sync(self) -> int:
        return int(self._conn().execute("UPDATE outbox SET live = 0 WHERE live != 0").rowcount)

    def _bump_bdseq_sync(self) -> int:
        db = self._conn()
        value = self._bdseq + 1
        db.execute("BEGIN IMMEDIATE")
        try:
            self._set_meta(db, _META_BDSEQ, value)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._bdseq = value
        return value

    def _close_sync(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    @staticmethod
    def _set_meta(db: sqlite3.Connection, key: str, value: int) -> None:
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
