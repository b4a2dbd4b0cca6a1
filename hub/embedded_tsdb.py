"""The embedded telemetry store: SQLite time-series tables in the hub's data dir (``telemetry.db``).

The default :class:`~hub.telemetry_points.TelemetrySink` (no server needed) and the
:class:`~hub.telemetry_points.TelemetryReader` behind the technician's charts (issue 7).

Layout (designed for ingest speed)::

    series(id, measurement, tags, agent, device, venue)      one row per tag set, interned in memory
    fields(id, name)                                          one row per field name, interned
    series_field(series_id, field_id)                         which fields a series has
    raw(series_id, field_id, ts_ms, value)                    WITHOUT ROWID, PK in that order
    rollup(series_id, field_id, minute_ms, sum, count, min, max)   1-minute aggregates, same PK
    meta(key, value)                                          row counters, last prune

A point with five fields is five ``raw`` rows. :meth:`EmbeddedStore.write` only appends to a
bounded in-memory queue (on the loop, never blocks); every ``flush_interval_s`` the queue is
written in chunks, one transaction each, on the store's own DB thread (WAL,
``synchronous=NORMAL``). Charts read on a second thread with a second connection, so a long
write never holds up a chart (WAL readers do not wait for the writer).

Rollups are maintained at insert, in the same transaction as the raw rows, so they are always
current and a crash (or a SQLite error) in the middle leaves neither half written. Exactly-once
counting: the chunk's rows are grouped per (series, field), in arrival order; a pair whose rows
did not arrive in time order is sorted and de-duplicated (the first value wins); a row newer than the newest one stored for its (series, field) — nearly every row of a
live stream — cannot be in ``raw`` and goes straight in; only late rows are checked against
``raw`` (``executemany`` into a TEMP table, then set-based SQL) and those already stored are
dropped. What is left is added to the minute buckets (summed in one pass over the sorted rows)
and to ``raw``. Late points (any order) are fine; a point older than the raw retention window is
refused and counted (``too_old``): its raw neighbours are gone, so a duplicate could no longer be
recognised and would be counted twice.

Retention: :meth:`EmbeddedStore.prune` (every ``prune_interval_s``) deletes raw rows older than
``raw_retention_h`` and rollups older than ``rollup_retention_days``, per (series, field) range of
the primary key, at most ``_PRUNE_BATCH_ROWS`` rows per transaction so writes interleave.

Measured write rate (``/tmp`` script, not a test: 200,000 points of 5 fields from 100 series in
20,000-point chunks, 2-core machine, session 6): ~10.5 µs of CPU per point, ~85,000 points/s;
18.6-26 µs before (every row through the TEMP-table check, then the whole chunk sorted). Most
of what is left is SQLite's B-tree insert into ``raw``: one ``executemany`` row per value,
~1.5-2 µs each (one row per point with the fields packed would be ~4x cheaper: a schema change
not made yet). A chart read of raw data takes ~1.3 ms; a prune with nothing to delete, 0.1 s
for 5,000 (series, field) pairs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import operator
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hub.db_thread import DbThread
from hub.telemetry_config import EmbeddedSection
from hub.telemetry_points import Point, SeriesPoint

log = logging.getLogger(__name__)

TELEMETRY_DB = "telemetry.db"
MINUTE_MS = 60_000

#: points written per transaction at most (bigger chunks touch each series' last B-tree page
#: fewer times: 40k points per chunk cost 20 % less CPU than 10k in the measurement)
_CHUNK_POINTS = 50_000
_PAGE_SIZE = 4096
#: points waiting after a flush beyond which the next flush starts at once (a flood)
_BACKLOG_POINTS = 10_000
#: rows deleted per prune transaction
_PRUNE_BATCH_ROWS = 20_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    measurement TEXT NOT NULL,
    tags TEXT NOT NULL,
    agent TEXT NOT NULL DEFAULT '',
    device TEXT NOT NULL DEFAULT '',
    venue TEXT NOT NULL DEFAULT '',
    UNIQUE (measurement, tags)
);
CREATE INDEX IF NOT EXISTS series_device ON series(measurement, agent, device);
CREATE INDEX IF NOT EXISTS series_venue ON series(measurement, venue);
CREATE TABLE IF NOT EXISTS fields (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS series_field (
    series_id INTEGER NOT NULL,
    field_id INTEGER NOT NULL,
    PRIMARY KEY (series_id, field_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS raw (
    series_id INTEGER NOT NULL,
    field_id INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (series_id, field_id, ts_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup (
    series_id INTEGER NOT NULL,
    field_id INTEGER NOT NULL,
    minute_ms INTEGER NOT NULL,
    sum REAL NOT NULL,
    count INTEGER NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    PRIMARY KEY (series_id, field_id, minute_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('raw_rows', 0), ('rollup_rows', 0), ('last_prune_ms', 0);
CREATE TEMP TABLE IF NOT EXISTS batch (
    series_id INTEGER NOT NULL,
    field_id INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (series_id, field_id, ts_ms)
) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS minutes (
    series_id INTEGER NOT NULL,
    field_id INTEGER NOT NULL,
    minute_ms INTEGER NOT NULL,
    sum REAL NOT NULL,
    count INTEGER NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    PRIMARY KEY (series_id, field_id, minute_ms)
) WITHOUT ROWID;
"""

_DROP_KNOWN = """
DELETE FROM batch WHERE EXISTS (
    SELECT 1 FROM raw r
    WHERE r.series_id = batch.series_id AND r.field_id = batch.field_id AND r.ts_ms = batch.ts_ms)
"""
_NEW_MINUTES = """
SELECT count(*) FROM minutes g
WHERE NOT EXISTS (
    SELECT 1 FROM rollup r
    WHERE r.series_id = g.series_id AND r.field_id = g.field_id AND r.minute_ms = g.minute_ms)
"""
# ``WHERE true``: SQLite's upsert-after-SELECT parsing ambiguity
_ROLL_UP = """
INSERT INTO rollup SELECT * FROM minutes WHERE true
ON CONFLICT DO UPDATE SET
    sum = sum + excluded.sum, count = count + excluded.count,
    min = min(min, excluded.min), max = max(max, excluded.max)
"""

Row = tuple[int, int, int, float]
_row_key = operator.itemgetter(0, 1, 2)
_row_ts = operator.itemgetter(2)
#: (series, field, minute, sum, count, min, max): one chunk's share of a ``rollup`` row
MinuteSum = tuple[int, int, int, float, int, float, float]


@dataclass(frozen=True, slots=True)
class DeviceSeries:
    """One device's series in a venue chart."""

    agent: str
    device: str
    points: list[SeriesPoint]


@dataclass(frozen=True, slots=True)
class _Window:
    """A chart's time range (inclusive, UTC ms) and its point budget."""

    start: int
    end: int
    max_points: int


@dataclass
class _Pending:
    """Series and fields first seen in the chunk being written (undone if it fails)."""

    series: list[tuple[int, str, str, str, str, str]] = field(default_factory=list)
    series_keys: list[tuple[str, tuple[tuple[str, str], ...]]] = field(default_factory=list)
    fields: list[tuple[int, str]] = field(default_factory=list)
    #: (series, field) pairs first seen (they go into ``series_field``)
    pairs: list[tuple[int, int]] = field(default_factory=list)
    #: the newest timestamp each pair will have in ``raw`` once the chunk is committed
    latest: dict[tuple[int, int], int] = field(default_factory=dict)


@dataclass
class _ChunkRows:
    """A chunk's rows: series id → field id → rows in arrival order, and the pairs whose rows
    did not arrive in strictly increasing time (sorted and de-duplicated before the split)."""

    by_series: dict[int, dict[int, list[Row]]] = field(default_factory=dict)
    unordered: set[tuple[int, int]] = field(default_factory=set)


@dataclass
class _ChunkResult:
    ok: bool
    values: int = 0
    skipped: int = 0
    too_old: int = 0
    duplicates: int = 0


class EmbeddedStore:
    """SQLite telemetry sink (``name = "embedded"``) and chart reader; see the module doc.

    Times are UTC milliseconds; ``clock`` (seconds, like :func:`time.time`) sets "now" for the
    retention windows. ``section.enabled`` is the caller's business (the app does not create
    the store when it is off).
    """

    name = "embedded"

    def __init__(
        self,
        section: EmbeddedSection,
        data_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        prune_interval_s: float = 60.0,
        read_only: bool = False,
    ) -> None:
        """Nothing is opened until :meth:`start`. ``read_only``: a chart reader only, beside a
        writer in another process (:class:`hub.sink_process.SinkProcess`); it must not write."""
        self.section = section
        self.read_only = read_only
        self.path = data_dir / TELEMETRY_DB
        self._clock = clock
        self._prune_interval_s = prune_interval_s
        self._writer = DbThread("telemetry-db")
        self._reader = DbThread("telemetry-read")
        self._wdb: sqlite3.Connection | None = None
        self._rdb: sqlite3.Connection | None = None
        # the queue is touched on the loop only: write() appends, flush() takes chunks
        self._queue: deque[Point] = deque()
        self._in_flight = 0
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        # interning caches: used on the writer thread only
        self._series_ids: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        self._series_by_text: dict[tuple[str, str], int] = {}
        self._field_ids: dict[str, int] = {}
        #: (series, field) → newest ``ts_ms`` in ``raw`` (-1: none), looked up on first use;
        #: an upper bound after a prune, which only sends a few more rows the careful way
        self._latest: dict[tuple[int, int], int] = {}
        #: the pairs in ``series_field``
        self._pairs: set[tuple[int, int]] = set()
        self._next_series = 1
        self._next_field = 1
        # counters
        self._written = 0
        self._values = 0
        self._dropped = 0
        self._skipped = 0
        self._too_old = 0
        self._duplicates = 0
        self._errors = 0
        self._raw_rows = 0
        self._rollup_rows = 0
        self._last_prune_ms = 0
        self._failing = False
        self._overflowing = False

    @classmethod
    async def open(
        cls,
        section: EmbeddedSection,
        data_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        prune_interval_s: float = 60.0,
        read_only: bool = False,
    ) -> EmbeddedStore:
        """A started store (:meth:`start`)."""
        store = cls(
            section, data_dir, clock=clock, prune_interval_s=prune_interval_s, read_only=read_only
        )
        await store.start()
        return store

    # TelemetrySink ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open (or create) ``telemetry.db`` and start the periodic flush and prune (read-only:
        open the existing database for reading)."""
        if self._rdb is not None:
            return
        if self.read_only:
            self._reader.start()
            await self._reader.run(self._open_reader_blocking)
            return
        self._writer.start()
        self._reader.start()
        await self._writer.run(self._open_writer_blocking)
        await self._reader.run(self._open_reader_blocking)
        self._task = asyncio.create_task(self._run(), name="telemetry-embedded")
        log.info(
            "telemetry store open path=%s raw_rows=%d rollup_rows=%d",
            self.path,
            self._raw_rows,
            self._rollup_rows,
        )

    def write(self, points: Sequence[Point]) -> None:
        """Queue ``points``; beyond ``max_queue`` waiting points the rest are dropped (counted)."""
        if self.read_only:
            raise RuntimeError("a read-only telemetry store was written to")
        room = self.section.max_queue - len(self._queue) - self._in_flight
        if room >= len(points):
            self._queue.extend(points)
            self._overflowing = False
            return
        if room > 0:
            self._queue.extend(points[:room])
        lost = len(points) - max(room, 0)
        self._dropped += lost
        if not self._overflowing:
            self._overflowing = True
            log.warning(
                "telemetry queue full, points dropped max_queue=%d dropped_total=%d",
                self.section.max_queue,
                self._dropped,
            )

    async def flush(self) -> None:
        """Write everything queued when called; on a database error the points stay queued."""
        async with self._flush_lock:
            todo = len(self._queue)
            while todo > 0 and self._wdb is not None:
                n = min(todo, _CHUNK_POINTS)
                chunk = [self._queue.popleft() for _ in range(n)]
                self._in_flight = n
                try:
                    result = await self._writer.run(self._write_chunk_blocking, chunk)
                finally:
                    self._in_flight = 0
                if not result.ok:
                    self._queue.extendleft(reversed(chunk))
                    return
                todo -= n
                self._account(n, result)

    async def stop(self) -> None:
        """Flush, stop the background work and close the database (idempotent)."""
        if self._task is not None:
            # never cancel a chunk in flight: its points would be neither queued nor counted
            async with self._flush_lock:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.read_only and self._rdb is not None:
            await self._reader.run(self._close_reader_blocking)
            self._reader.stop()
            return
        if self._wdb is None:
            return
        await self.flush()
        if self._queue:
            log.error("telemetry store closing with unwritten points lost=%d", len(self._queue))
            self._dropped += len(self._queue)
            self._queue.clear()
        await self._reader.run(self._close_reader_blocking)
        self._reader.stop()
        await self._writer.run(self._close_writer_blocking)
        self._writer.stop()

    def stats(self) -> Mapping[str, float]:
        """Counters (points unless named ``values``/``rows``) for /metrics and the technician."""
        return {
            "written": self._written,
            "values_written": self._values,
            "queued": len(self._queue) + self._in_flight,
            "dropped": self._dropped,
            "skipped_values": self._skipped,
            "too_old": self._too_old,
            "duplicates": self._duplicates,
            "errors": self._errors,
            "raw_rows": self._raw_rows,
            "rollup_rows": self._rollup_rows,
            "db_bytes": self._db_bytes(),
            "last_prune_ms": self._last_prune_ms,
        }

    # retention ----------------------------------------------------------------------------------
    async def prune(self) -> int:
        """Delete raw rows and rollups past their retention; returns the rows deleted.

        Works through the (series, field) pairs a batch of rows at a time, so chunks of new
        points are written in between.
        """
        if self._wdb is None:
            return 0
        now = self._now_ms()
        raw_cut = now - int(self.section.raw_retention_h * 3_600_000)
        roll_cut = now - int(self.section.rollup_retention_days * 86_400_000)
        deleted = 0
        try:
            pairs = await self._writer.run(self._pairs_blocking)
            i = 0
            while i < len(pairs):
                i, n = await self._writer.run(self._prune_blocking, pairs, i, raw_cut, roll_cut)
                deleted += n
            await self._writer.run(self._set_meta_blocking, "last_prune_ms", now)
        except sqlite3.Error as exc:
            self._errors += 1
            log.warning("telemetry prune failed error=%s deleted=%d", exc, deleted)
            return deleted
        self._last_prune_ms = now
        log.info("telemetry pruned rows=%d raw_rows=%d", deleted, self._raw_rows)
        return deleted

    # TelemetryReader ----------------------------------------------------------------------------
    async def metric_names(self, agent: str, device: str) -> list[str]:
        """The field names stored for one device (``device`` measurement), sorted."""
        return await self._reader.run(self._metric_names_blocking, agent, device)

    async def series(
        self,
        agent: str,
        device: str,
        metric: str,
        *,
        start_ms: int,
        end_ms: int,
        max_points: int = 500,
    ) -> list[SeriesPoint]:
        """``metric`` of one device in ``[start_ms, end_ms]``, oldest first, at most
        ``max_points`` points.

        Raw points when the range lies inside the raw retention window and buckets of
        ``(end - start) / max_points`` would be shorter than a minute (as they are, unbucketed,
        when there are no more than ``max_points``); else the 1-minute rollups, in buckets of
        whole minutes (the range widened to whole minutes). Each point is the bucket's average
        (``ts_ms`` = bucket start), min and max.
        """
        window = _window(start_ms, end_ms, max_points)
        return await self._reader.run(self._device_series_blocking, agent, device, metric, window)

    async def series_by_tags(
        self,
        measurement: str,
        tags: Mapping[str, str],
        field_name: str,
        *,
        start_ms: int,
        end_ms: int,
        max_points: int = 500,
    ) -> list[SeriesPoint]:
        """``field_name`` of every series of ``measurement`` carrying all of ``tags`` (any
        others too), merged into one series; buckets as in :meth:`series`."""
        window = _window(start_ms, end_ms, max_points)
        return await self._reader.run(
            self._tags_series_blocking, measurement, dict(tags), field_name, window
        )

    async def venue_series(
        self,
        venue: str,
        metric: str,
        *,
        start_ms: int,
        end_ms: int,
        max_points: int = 500,
    ) -> list[DeviceSeries]:
        """``metric`` of every device of ``venue`` that has it, one series per device (sorted by
        agent, device; buckets as in :meth:`series`).

        One series per device rather than an aggregate: an average of four cameras' fps hides
        the one camera that fails, which is what the technician looks for.
        """
        window = _window(start_ms, end_ms, max_points)
        return await self._reader.run(self._venue_series_blocking, venue, metric, window)

    # on the loop ----------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        next_flush = loop.time() + self.section.flush_interval_s
        while True:
            # flush_interval_s from the start of one flush to the next, not from its end: under
            # a flood a flush takes most of the interval, and sleeping a whole interval after it
            # left the writer idle half the time (bench telemetry)
            if len(self._queue) < _BACKLOG_POINTS:  # a backlog is written at once
                await asyncio.sleep(max(0.0, next_flush - loop.time()))
            next_flush = loop.time() + self.section.flush_interval_s
            try:
                await self.flush()
                if loop.time() >= next_prune:
                    next_prune = loop.time() + self._prune_interval_s
                    await self.prune()
            except Exception:
                # a bug here must not end telemetry for the rest of the hub's life
                self._errors += 1
                log.exception("telemetry background flush/prune failed")

    def _account(self, points: int, result: _ChunkResult) -> None:
        self._written += points
        self._values += result.values
        self._skipped += result.skipped
        self._too_old += result.too_old
        self._duplicates += result.duplicates
        if result.skipped or result.too_old:
            log.debug(
                "telemetry values refused skipped=%d too_old=%d", result.skipped, result.too_old
            )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _db_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += Path(f"{self.path}{suffix}").stat().st_size
        return total

    # writer thread ------------------------------------------------------------------------------
    def _open_writer_blocking(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA page_size={_PAGE_SIZE}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA temp_store=MEMORY")
        db.execute("PRAGMA cache_size=-65536")
        db.execute("PRAGMA journal_size_limit=67108864")
        db.executescript(_SCHEMA)
        for sid, measurement, tags in db.execute("SELECT id, measurement, tags FROM series"):
            self._series_by_text[(measurement, tags)] = sid
            key = (measurement, tuple((k, v) for k, v in json.loads(tags)))
            self._series_ids[key] = sid
            self._next_series = max(self._next_series, sid + 1)
        for fid, name in db.execute("SELECT id, name FROM fields"):
            self._field_ids[name] = fid
            self._next_field = max(self._next_field, fid + 1)
        self._pairs = {(int(s), int(f)) for s, f in db.execute("SELECT * FROM series_field")}
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self._raw_rows = int(meta["raw_rows"])
        self._rollup_rows = int(meta["rollup_rows"])
        self._last_prune_ms = int(meta["last_prune_ms"])
        self._wdb = db

    def _close_writer_blocking(self) -> None:
        if self._wdb is not None:
            self._wdb.close()
            self._wdb = None

    def _conn(self) -> sqlite3.Connection:
        assert self._wdb is not None, "telemetry store is closed"
        return self._wdb

    def _write_chunk_blocking(self, points: list[Point]) -> _ChunkResult:
        cutoff = self._now_ms() - int(self.section.raw_retention_h * 3_600_000)
        pending = _Pending()
        rows, skipped, too_old = self._rows(points, max(cutoff, 0), pending)
        if not rows.by_series and not pending.series and not pending.fields:
            return _ChunkResult(ok=True, skipped=skipped, too_old=too_old)
        db = self._conn()
        try:
            db.execute("BEGIN")
            if pending.series:
                db.executemany("INSERT INTO series VALUES (?,?,?,?,?,?)", pending.series)
            if pending.fields:
                db.executemany("INSERT INTO fields VALUES (?,?)", pending.fields)
            fresh, maybe, in_chunk_dups = self._split(db, rows, pending)
            known = 0
            if maybe:
                fresh, known = self._drop_known(db, fresh, maybe)
            if pending.pairs:
                db.executemany("INSERT OR IGNORE INTO series_field VALUES (?,?)", pending.pairs)
            db.executemany("INSERT INTO raw VALUES (?,?,?,?)", fresh)
            db.executemany("INSERT INTO minutes VALUES (?,?,?,?,?,?,?)", _minute_sums(fresh))
            new_minutes = int(db.execute(_NEW_MINUTES).fetchone()[0])
            db.execute(_ROLL_UP)
            db.execute("DELETE FROM minutes")
            inserted = len(fresh)
            db.execute("UPDATE meta SET value = value + ? WHERE key = 'raw_rows'", (inserted,))
            db.execute(
                "UPDATE meta SET value = value + ? WHERE key = 'rollup_rows'", (new_minutes,)
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(db, pending)
            self._errors += 1
            if not self._failing:
                self._failing = True
                log.error(
                    "telemetry write failed, points kept queued error=%s points=%d",
                    exc,
                    len(points),
                )
            return _ChunkResult(ok=False)
        if self._failing:
            self._failing = False
            log.info("telemetry writes recovered points=%d", len(points))
        self._latest.update(pending.latest)
        self._pairs.update(pending.pairs)
        self._raw_rows += inserted
        self._rollup_rows += new_minutes
        return _ChunkResult(
            ok=True,
            values=inserted,
            skipped=skipped,
            too_old=too_old,
            duplicates=in_chunk_dups + known,
        )

    def _split(
        self, db: sqlite3.Connection, rows: _ChunkRows, pending: _Pending
    ) -> tuple[list[Row], list[Row], int]:
        """The chunk's rows → (certainly new, in key order; perhaps stored already; duplicates
        within the chunk).

        Key order (series, field, ts) makes the inserts B-tree appends and gives the minute sums
        their runs. A row newer than the newest stored for its (series, field) cannot be in
        ``raw``: a live stream's pair arrives in time order and goes straight in as a whole.
        Only late rows need the set-based check against ``raw`` (:meth:`_drop_known`). Also
        notes, in ``pending``, the pairs not yet in ``series_field`` and each pair's new newest
        time.
        """
        fresh: list[Row] = []
        maybe: list[Row] = []
        dups = 0
        latest = self._latest
        for sid in sorted(rows.by_series):
            by_field = rows.by_series[sid]
            for fid in sorted(by_field):
                pair = (sid, fid)
                run = by_field[fid]
                newest = latest.get(pair)
                if newest is None:
                    newest = latest[pair] = self._stored_newest(db, sid, fid)
                if pair not in self._pairs:
                    pending.pairs.append(pair)
                if pair in rows.unordered:
                    # stable sort: of two rows with one ts, the first written counts
                    run.sort(key=_row_ts)
                    kept = [run[0]]
                    for row in run[1:]:
                        if row[2] == kept[-1][2]:
                            dups += 1
                        else:
                            kept.append(row)
                    run = kept
                if run[0][2] > newest:  # the live case: all of it is new
                    fresh += run
                else:
                    for row in run:
                        (fresh if row[2] > newest else maybe).append(row)
                if run[-1][2] > newest:
                    pending.latest[pair] = run[-1][2]
        return fresh, maybe, dups

    @staticmethod
    def _stored_newest(db: sqlite3.Connection, sid: int, fid: int) -> int:
        # the primary key's last entry for the pair: one B-tree descent
        found = db.execute(
            "SELECT max(ts_ms) FROM raw WHERE series_id = ? AND field_id = ?", (sid, fid)
        ).fetchone()[0]
        return -1 if found is None else int(found)

    @staticmethod
    def _drop_known(
        db: sqlite3.Connection, fresh: list[Row], maybe: list[Row]
    ) -> tuple[list[Row], int]:
        """Late rows not yet in ``raw`` joined to ``fresh`` (in key order), and how many were
        stored already (duplicates: the stored value stays)."""
        db.executemany("INSERT INTO batch VALUES (?,?,?,?)", maybe)
        known = int(db.execute(_DROP_KNOWN).rowcount)
        if known < len(maybe):
            fresh = fresh + db.execute("SELECT * FROM batch").fetchall()
            fresh.sort(key=_row_key)
        db.execute("DELETE FROM batch")
        return fresh, known

    def _rollback(self, db: sqlite3.Connection, pending: _Pending) -> None:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("telemetry rollback failed")
        with contextlib.suppress(sqlite3.Error):
            db.execute("DELETE FROM batch")
            db.execute("DELETE FROM minutes")
        for key in pending.series_keys:
            self._series_ids.pop(key, None)
        for sid, measurement, tags, *_ in pending.series:
            self._series_by_text.pop((measurement, tags), None)
            self._next_series = min(self._next_series, sid)
        for fid, name in pending.fields:
            self._field_ids.pop(name, None)
            self._next_field = min(self._next_field, fid)

    def _rows(
        self, points: Iterable[Point], cutoff_ms: int, pending: _Pending
    ) -> tuple[_ChunkRows, int, int]:
        """``raw`` rows of ``points`` per (series, field), in arrival order; also the values
        skipped (non-finite, not numbers) and the points refused as older than the raw window.

        Grouping here rather than sorting the whole chunk afterwards: a pair's rows usually
        arrive in time order already, and only a pair that does not is sorted."""
        rows = _ChunkRows()
        by_series = rows.by_series
        unordered = rows.unordered
        series_ids = self._series_ids
        field_ids = self._field_ids
        skipped = too_old = 0
        for p in points:
            added: list[list[Row]] = []
            try:
                ts = p.ts_ms
                if ts < cutoff_ms:
                    too_old += 1
                    continue
                key = (p.measurement, p.tags)
                sid = series_ids.get(key)
                if sid is None:
                    sid = self._new_series(key, pending)
                by_field = by_series.get(sid)
                if by_field is None:
                    by_field = by_series[sid] = {}
                for name, value in p.fields.items():
                    fid = field_ids.get(name)
                    if fid is None:
                        fid = self._new_field(name, pending)
                    # finite check without a call: inf - inf and nan - nan are nan
                    if value - value != 0.0:
                        skipped += 1
                        continue
                    run = by_field.get(fid)
                    if run is None:
                        by_field[fid] = run = []
                    elif run and run[-1][2] >= ts:
                        unordered.add((sid, fid))
                    run.append((sid, fid, ts, value))
                    added.append(run)
            except (TypeError, ValueError, AttributeError):
                for run in added:  # the point's good fields go too: all of a point or none
                    run.pop()
                skipped += max(1, len(getattr(p, "fields", ()) or ()))
        for sid in [s for s, by_field in by_series.items() if not any(by_field.values())]:
            del by_series[sid]
        for by_field in by_series.values():
            for fid in [f for f, run in by_field.items() if not run]:
                del by_field[fid]
        return rows, skipped, too_old

    def _new_series(self, key: tuple[str, tuple[tuple[str, str], ...]], pending: _Pending) -> int:
        measurement, tags = key
        if not isinstance(measurement, str) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags
        ):
            raise TypeError("measurement and tags must be text")
        ordered = sorted(tags)
        text = json.dumps(ordered, separators=(",", ":"))
        sid = self._series_by_text.get((measurement, text))
        if sid is None:
            sid = self._next_series
            self._next_series += 1
            values = dict(ordered)
            pending.series.append(
                (
                    sid,
                    measurement,
                    text,
                    values.get("agent", ""),
                    values.get("device", ""),
                    values.get("venue", ""),
                )
            )
            self._series_by_text[(measurement, text)] = sid
        self._series_ids[key] = sid
        pending.series_keys.append(key)
        return sid

    def _new_field(self, name: str, pending: _Pending) -> int:
        if not isinstance(name, str) or not name:
            raise TypeError("field names must be non-empty text")
        fid = self._next_field
        self._next_field += 1
        self._field_ids[name] = fid
        pending.fields.append((fid, name))
        return fid

    def _pairs_blocking(self) -> list[tuple[int, int]]:
        return [
            (int(s), int(f))
            for s, f in self._conn().execute("SELECT series_id, field_id FROM series_field")
        ]

    def _prune_blocking(
        self, pairs: list[tuple[int, int]], i: int, raw_cut: int, roll_cut: int
    ) -> tuple[int, int]:
        """Prune pairs from ``i`` on until ``_PRUNE_BATCH_ROWS`` rows are gone (one
        transaction); returns the next pair to look at and the rows deleted."""
        db = self._conn()
        budget = _PRUNE_BATCH_ROWS
        raw_deleted = roll_deleted = 0
        db.execute("BEGIN")
        try:
            while i < len(pairs) and budget > 0:
                sid, fid = pairs[i]
                n, raw_done = _delete_before(
                    db, "raw", "ts_ms", pair=(sid, fid), cut=raw_cut, budget=budget
                )
                raw_deleted += n
                budget -= n
                roll_done = False
                if raw_done and budget > 0:
                    n, roll_done = _delete_before(
                        db, "rollup", "minute_ms", pair=(sid, fid), cut=roll_cut, budget=budget
                    )
                    roll_deleted += n
                    budget -= n
                if raw_done and roll_done:
                    i += 1
                    if self._forget_if_empty(db, sid, fid):
                        self._latest.pop((sid, fid), None)
                        self._pairs.discard((sid, fid))
            db.execute("UPDATE meta SET value = value - ? WHERE key = 'raw_rows'", (raw_deleted,))
            db.execute(
                "UPDATE meta SET value = value - ? WHERE key = 'rollup_rows'", (roll_deleted,)
            )
            db.execute("COMMIT")
        except sqlite3.Error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._raw_rows -= raw_deleted
        self._rollup_rows -= roll_deleted
        return i, raw_deleted + roll_deleted

    @staticmethod
    def _forget_if_empty(db: sqlite3.Connection, sid: int, fid: int) -> bool:
        """Drop the pair from ``series_field`` when it has no rows left (True if dropped): a
        field with no data left is no longer offered to the charts."""
        for table in ("raw", "rollup"):
            hit = db.execute(
                f"SELECT 1 FROM {table} WHERE series_id = ? AND field_id = ? LIMIT 1", (sid, fid)
            ).fetchone()
            if hit is not None:
                return False
        db.execute("DELETE FROM series_field WHERE series_id = ? AND field_id = ?", (sid, fid))
        return True

    def _set_meta_blocking(self, key: str, value: int) -> None:
        self._conn().execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))

    # reader thread ------------------------------------------------------------------------------
    def _open_reader_blocking(self) -> None:
        db = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )
        db.execute("PRAGMA cache_size=-32768")
        self._rdb = db

    def _close_reader_blocking(self) -> None:
        if self._rdb is not None:
            self._rdb.close()
            self._rdb = None

    def _rconn(self) -> sqlite3.Connection:
        assert self._rdb is not None, "telemetry store is closed"
        return self._rdb

    def _metric_names_blocking(self, agent: str, device: str) -> list[str]:
        rows = self._rconn().execute(
            "SELECT DISTINCT f.name FROM series s "
            "JOIN series_field sf ON sf.series_id = s.id JOIN fields f ON f.id = sf.field_id "
            "WHERE s.measurement = 'device' AND s.agent = ? AND s.device = ? ORDER BY f.name",
            (agent, device),
        )
        return [str(r[0]) for r in rows]

    def _field_id(self, name: str) -> int | None:
        row = self._rconn().execute("SELECT id FROM fields WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def _device_series_blocking(
        self, agent: str, device: str, metric: str, window: _Window
    ) -> list[SeriesPoint]:
        ids = [
            int(r[0])
            for r in self._rconn().execute(
                "SELECT id FROM series WHERE measurement = 'device' AND agent = ? AND device = ?",
                (agent, device),
            )
        ]
        return self._read(ids, metric, window)

    def _tags_series_blocking(
        self, measurement: str, tags: dict[str, str], field_name: str, window: _Window
    ) -> list[SeriesPoint]:
        wanted = set(tags.items())
        ids = [
            int(sid)
            for sid, text in self._rconn().execute(
                "SELECT id, tags FROM series WHERE measurement = ?", (measurement,)
            )
            if wanted <= {(k, v) for k, v in json.loads(text)}
        ]
        return self._read(ids, field_name, window)

    def _venue_series_blocking(
        self, venue: str, metric: str, window: _Window
    ) -> list[DeviceSeries]:
        by_device: dict[tuple[str, str], list[int]] = {}
        for sid, agent, device in self._rconn().execute(
            "SELECT id, agent, device FROM series WHERE measurement = 'device' AND venue = ? "
            "ORDER BY agent, device",
            (venue,),
        ):
            by_device.setdefault((str(agent), str(device)), []).append(int(sid))
        out = []
        for (agent, device), ids in by_device.items():
            points = self._read(ids, metric, window)
            if points:
                out.append(DeviceSeries(agent, device, points))
        return out

    def _read(self, series_ids: list[int], field_name: str, w: _Window) -> list[SeriesPoint]:
        fid = self._field_id(field_name)
        if not series_ids or fid is None or w.end < w.start:
            return []
        raw_from = self._now_ms() - int(self.section.raw_retention_h * 3_600_000)
        step = -(-(w.end - w.start + 1) // w.max_points)
        if step < MINUTE_MS and w.start >= raw_from:
            return self._read_raw(series_ids, fid, w, step)
        return self._read_rollup(series_ids, fid, w)

    def _read_raw(self, ids: list[int], fid: int, w: _Window, step: int) -> list[SeriesPoint]:
        db = self._rconn()
        where = (
            f"series_id IN ({','.join('?' * len(ids))}) AND field_id = ? AND ts_ms BETWEEN ? AND ?"
        )
        args = (*ids, fid, w.start, w.end)
        rows = db.execute(
            f"SELECT ts_ms, value FROM raw WHERE {where} ORDER BY ts_ms LIMIT ?",
            (*args, w.max_points + 1),
        ).fetchall()
        if len(rows) <= w.max_points:
            return [SeriesPoint(int(ts), v, v, v) for ts, v in rows]
        buckets = db.execute(
            f"SELECT (ts_ms - ?) / ? AS b, avg(value), min(value), max(value) FROM raw "
            f"WHERE {where} GROUP BY b ORDER BY b",
            (w.start, step, *args),
        )
        return [SeriesPoint(w.start + int(b) * step, avg, lo, hi) for b, avg, lo, hi in buckets]

    def _read_rollup(self, ids: list[int], fid: int, w: _Window) -> list[SeriesPoint]:
        first = w.start - w.start % MINUTE_MS
        last = w.end - w.end % MINUTE_MS
        minutes = (last - first) // MINUTE_MS + 1
        step = -(-minutes // w.max_points) * MINUTE_MS
        rows = self._rconn().execute(
            "SELECT (minute_ms - ?) / ? AS b, sum(sum), sum(count), min(min), max(max) "
            f"FROM rollup WHERE series_id IN ({','.join('?' * len(ids))}) AND field_id = ? "
            "AND minute_ms BETWEEN ? AND ? GROUP BY b ORDER BY b",
            (first, step, *ids, fid, first, last),
        )
        return [
            SeriesPoint(first + int(b) * step, total / count, lo, hi)
            for b, total, count, lo, hi in rows
        ]


def _minute_sums(rows: list[Row]) -> list[MinuteSum]:
    """The 1-minute aggregates of ``rows`` (sorted by series, field, time): one run per
    (series, field, minute), so a single pass with no dictionary."""
    out: list[MinuteSum] = []
    if not rows:
        return out
    sid, fid, ts, value = rows[0]
    minute = ts - ts % MINUTE_MS
    total, count, lo, hi = value, 1, value, value
    for s, f, t, v in rows[1:]:
        m = t - t % MINUTE_MS
        if m == minute and f == fid and s == sid:
            total += v
            count += 1
            if v < lo:
                lo = v
            elif v > hi:
                hi = v
        else:
            out.append((sid, fid, minute, total, count, lo, hi))
            sid, fid, minute = s, f, m
            total, count, lo, hi = v, 1, v, v
    out.append((sid, fid, minute, total, count, lo, hi))
    return out


def _window(start_ms: int, end_ms: int, max_points: int) -> _Window:
    """The validated range of a chart query (a clear error for nonsense)."""
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, not {max_points}")
    if not (isinstance(start_ms, int) and isinstance(end_ms, int)):
        raise ValueError("start_ms and end_ms must be integer UTC milliseconds")
    return _Window(start_ms, end_ms, max_points)


def _delete_before(
    db: sqlite3.Connection, table: str, ts_col: str, *, pair: tuple[int, int], cut: int, budget: int
) -> tuple[int, bool]:
    """Delete up to ``budget`` rows of one (series, field) older than ``cut``, oldest first;
    returns the rows deleted and whether none older are left."""
    # the (budget+1)-th oldest row bounds this batch; timestamps are unique per pair
    bound = db.execute(
        f"SELECT {ts_col} FROM {table} WHERE series_id = ? AND field_id = ? AND {ts_col} < ? "
        f"ORDER BY {ts_col} LIMIT 1 OFFSET ?",
        (*pair, cut, budget),
    ).fetchone()
    limit = cut if bound is None else int(bound[0])
    n = db.execute(
        f"DELETE FROM {table} WHERE series_id = ? AND field_id = ? AND {ts_col} < ?",
        (*pair, limit),
    ).rowcount
    return n, bound is None
