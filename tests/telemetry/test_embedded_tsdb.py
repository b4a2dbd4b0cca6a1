"""The embedded telemetry store on a real telemetry.db: write and read back, exact 1-minute
rollups (late and duplicate points), retention, bounded queue, SQLite errors, restart."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.embedded_tsdb import TELEMETRY_DB, EmbeddedStore
from hub.telemetry_config import EmbeddedSection
from hub.telemetry_points import Point, SeriesPoint

T0_MS = 1_795_000_040_000  # 2026-11-18 UTC, 20 s into a minute (rollup edges are not aligned)
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# background flushes and prunes never run on their own in these tests: each test says when
QUIET = EmbeddedSection(flush_interval_s=3600.0)


class Clock:
    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> float:
        return self.now_ms / 1000


def dev(agent: str, device: str, ts_ms: int, venue: str = "court-1", **fields: float) -> Point:
    return Point.make(
        "device",
        {"agent": agent, "device": device, "venue": venue, "kind": "camera"},
        fields,
        ts_ms,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock(T0_MS + HOUR_MS)


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[EmbeddedStore]:
    s = await EmbeddedStore.open(QUIET, tmp_path, clock=clock, prune_interval_s=3600.0)
    try:
        yield s
    finally:
        await s.stop()


def rollup_rows(data_dir: Path) -> dict[tuple[int, str, int], tuple[float, int, float, float]]:
    """The rollup table read straight from the file: (series id, field, minute) -> sum, count,
    min, max."""
    db = sqlite3.connect(f"{(data_dir / TELEMETRY_DB).as_uri()}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT r.series_id, f.name, r.minute_ms, r.sum, r.count, r.min, r.max FROM rollup r "
            "JOIN fields f ON f.id = r.field_id"
        ).fetchall()
    finally:
        db.close()
    return {(sid, name, m): (s, c, lo, hi) for sid, name, m, s, c, lo, hi in rows}


async def test_points_read_back_in_order(store: EmbeddedStore) -> None:
    store.write(
        [
            dev("court-1", "cam-1", T0_MS + i * 1000, fps=25.0 - i, bitrate_kbps=4000.0 + i)
            for i in range(5)
        ]
    )
    store.write([dev("court-1", "cam-2", T0_MS, fps=12.5)])
    await store.flush()

    assert await store.metric_names("court-1", "cam-1") == ["bitrate_kbps", "fps"]
    assert await store.metric_names("court-1", "nope") == []
    got = await store.series("court-1", "cam-1", "fps", start_ms=T0_MS, end_ms=T0_MS + 10_000)
    assert got == [SeriesPoint(T0_MS + i * 1000, 25.0 - i, 25.0 - i, 25.0 - i) for i in range(5)]
    # the range is inclusive at both ends
    edge = await store.series("court-1", "cam-1", "fps", start_ms=T0_MS + 1000, end_ms=T0_MS + 3000)
    assert [p.ts_ms for p in edge] == [T0_MS + 1000, T0_MS + 2000, T0_MS + 3000]
    assert (
        await store.series("court-1", "cam-1", "nope", start_ms=T0_MS, end_ms=T0_MS + 10_000) == []
    )
    stats = store.stats()
    assert stats["written"] == 6
    assert stats["values_written"] == 11
    assert stats["raw_rows"] == 11
    assert stats["rollup_rows"] == 3  # cam-1 fps, cam-1 bitrate, cam-2 fps: one minute each
    assert stats["queued"] == 0
    assert stats["db_bytes"] > 0


async def test_series_respects_max_points_raw_and_rollup(
    store: EmbeddedStore, clock: Clock
) -> None:
    rng = random.Random(7)
    values = {T0_MS + i * 1000: rng.uniform(-50, 50) for i in range(3000)}  # 50 min of 1 Hz
    store.write([dev("court-1", "cam-1", ts, level_db=v) for ts, v in values.items()])
    await store.flush()
    clock.now_ms = T0_MS + 3000 * 1000

    # 1,000 s in 40 points: 25 s buckets from raw rows, checked against a reference
    start, end = T0_MS + 100_000, T0_MS + 1_099_999
    got = await store.series(
        "court-1", "cam-1", "level_db", start_ms=start, end_ms=end, max_points=40
    )
    assert len(got) == 40
    ref: dict[int, list[float]] = {}
    for ts, v in values.items():
        if start <= ts <= end:
            ref.setdefault((ts - start) // 25_000, []).append(v)
    assert [p.ts_ms for p in got] == [start + b * 25_000 for b in sorted(ref)]
    for p, b in zip(got, sorted(ref), strict=True):
        assert p.value == pytest.approx(sum(ref[b]) / len(ref[b]))
        assert (p.min, p.max) == (min(ref[b]), max(ref[b]))

    # the whole range in 7 points: whole-minute buckets from the rollups
    got = await store.series(
        "court-1", "cam-1", "level_db", start_ms=T0_MS, end_ms=T0_MS + 3_000_000, max_points=7
    )
    assert 1 <= len(got) <= 7
    assert all(p.ts_ms % 60_000 == 0 for p in got)
    assert [p.ts_ms for p in got] == sorted({p.ts_ms for p in got})
    assert min(p.min for p in got) == min(values.values())
    assert max(p.max for p in got) == max(values.values())
    for p in got:
        assert p.min <= p.value <= p.max

    for max_points in (1, 2, 3, 59, 500):
        got = await store.series(
            "court-1",
            "cam-1",
            "level_db",
            start_ms=T0_MS,
            end_ms=T0_MS + 3_000_000,
            max_points=max_points,
        )
        assert 1 <= len(got) <= max_points
        assert [p.ts_ms for p in got] == sorted(p.ts_ms for p in got)

    with pytest.raises(ValueError, match="max_points"):
        await store.series(
            "court-1", "cam-1", "level_db", start_ms=T0_MS, end_ms=T0_MS + 1, max_points=0
        )
    assert (
        await store.series("court-1", "cam-1", "level_db", start_ms=T0_MS + 5, end_ms=T0_MS) == []
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_rollups_exact_with_late_and_duplicate_points(tmp_path: Path, seed: int) -> None:
    """Random values over 30 minutes, written shuffled in several flushes (late points for
    minutes already rolled up), with duplicates in the same chunk and across flushes carrying
    other values: the first value of each (series, field, ts) counts, once."""
    rng = random.Random(seed)
    clock = Clock(T0_MS + HOUR_MS)
    store = await EmbeddedStore.open(QUIET, tmp_path, clock=clock)
    try:
        stamps = sorted(rng.sample(range(T0_MS, T0_MS + 30 * 60_000), 2500))
        sent = [(ts, rng.uniform(-1e3, 1e3), rng.uniform(0, 100)) for ts in stamps]
        dups = [(ts, a + 1.0, b - 1.0) for ts, a, b in rng.sample(sent, 400)]
        stream = sent + dups
        # mostly in order, 10 % moved far back
        stream.sort(key=lambda e: e[0] + (rng.randint(0, 20 * 60_000) if rng.random() < 0.1 else 0))
        stream += rng.sample(stream, 100)  # exact repeats, late
        first: dict[int, tuple[float, float]] = {}
        for ts, a, b in stream:
            first.setdefault(ts, (a, b))
        for i in range(0, len(stream), 300):
            store.write(
                [dev("court-1", "mic-1", ts, rms=a, peak=b) for ts, a, b in stream[i : i + 300]]
            )
            if rng.random() < 0.6:
                await store.flush()
        await store.flush()

        ref: dict[tuple[str, int], list[float]] = {}
        for ts, (a, b) in first.items():
            minute = ts - ts % 60_000
            ref.setdefault(("rms", minute), []).append(a)
            ref.setdefault(("peak", minute), []).append(b)
        rolled = {(name, m): v for (_, name, m), v in rollup_rows(tmp_path).items()}
        assert len(rolled) == len(rollup_rows(tmp_path))  # one series
        assert rolled.keys() == ref.keys()
        for key, vals in ref.items():
            total, count, lo, hi = rolled[key]
            assert count == len(vals)
            assert (lo, hi) == (min(vals), max(vals))
            assert total == pytest.approx(sum(vals), rel=1e-12, abs=1e-9)
        stats = store.stats()
        assert stats["raw_rows"] == 2 * len(first)
        assert stats["rollup_rows"] == len(ref)
        assert stats["duplicates"] == 2 * (len(stream) - len(first))

        # the reader's 1-minute buckets are the same aggregates
        start = T0_MS - T0_MS % 60_000
        got = await store.series(
            "court-1", "mic-1", "rms", start_ms=start, end_ms=start + 31 * 60_000 - 1, max_points=31
        )
        assert [p.ts_ms for p in got] == sorted(m for f, m in ref if f == "rms")
        for p in got:
            vals = ref[("rms", p.ts_ms)]
            assert p.value == pytest.approx(sum(vals) / len(vals), rel=1e-9)
            assert (p.min, p.max) == (min(vals), max(vals))
    finally:
        await store.stop()


async def test_rows_at_or_before_the_newest_stored_are_checked(store: EmbeddedStore) -> None:
    """Live rows skip the duplicate check only when newer than everything stored for their
    (series, field): a repeat of the newest point, a gap filled late and a field the series
    never had at that time are each handled exactly once."""
    store.write([dev("a", "d", T0_MS + i * 1000, v=float(i)) for i in (0, 1, 3)])
    await store.flush()
    store.write(
        [
            dev("a", "d", T0_MS + 3000, v=99.0),  # the newest again: a duplicate
            dev("a", "d", T0_MS + 2000, v=2.0),  # late, fills the gap
            dev("a", "d", T0_MS + 1000, w=7.0),  # a new field at a stored time
            dev("a", "d", T0_MS + 4000, v=4.0),  # live
            dev("a", "d", T0_MS + 4000, v=44.0),  # its repeat in the same chunk
        ]
    )
    await store.flush()
    got = await store.series("a", "d", "v", start_ms=T0_MS, end_ms=T0_MS + 10_000)
    assert [(p.ts_ms - T0_MS, p.value) for p in got] == [
        (0, 0.0),
        (1000, 1.0),
        (2000, 2.0),
        (3000, 3.0),
        (4000, 4.0),
    ]
    got = await store.series("a", "d", "w", start_ms=T0_MS, end_ms=T0_MS + 10_000)
    assert [(p.ts_ms - T0_MS, p.value) for p in got] == [(1000, 7.0)]
    stats = store.stats()
    assert stats["duplicates"] == 2
    assert stats["raw_rows"] == 6
    minute = {k: v for k, v in rollup_rows(store.path.parent).items() if k[1] == "v"}
    assert sum(count for _, count, _, _ in minute.values()) == 5


async def test_retention_keeps_rollups_for_long_ranges(tmp_path: Path) -> None:
    section = EmbeddedSection(flush_interval_s=3600.0, raw_retention_h=48, rollup_retention_days=90)
    clock = Clock(T0_MS + 10 * 60_000)
    store = await EmbeddedStore.open(section, tmp_path, clock=clock)
    try:
        values = [float(i % 17) for i in range(600)]  # 10 minutes of 1 Hz
        store.write(
            [dev("hall-1", "kiosk-1", T0_MS + i * 1000, cpu=v) for i, v in enumerate(values)]
        )
        await store.flush()
        assert store.stats()["raw_rows"] == 600

        clock.now_ms = T0_MS + 49 * HOUR_MS  # past the raw window
        store.write([dev("hall-1", "kiosk-1", clock.now_ms, cpu=99.0)])  # fresh, kept
        store.write([dev("hall-1", "kiosk-1", T0_MS + 700_000, cpu=1.0)])  # too old: refused
        await store.flush()
        assert store.stats()["too_old"] == 1
        deleted = await store.prune()
        stats = store.stats()
        assert deleted == 600
        assert stats["raw_rows"] == 1
        assert stats["rollup_rows"] == 11 + 1
        assert stats["last_prune_ms"] == clock.now_ms

        # an old range is answered from the rollups, a whole hour in whole minutes
        got = await store.series(
            "hall-1",
            "kiosk-1",
            "cpu",
            start_ms=T0_MS - 20_000,
            end_ms=T0_MS + HOUR_MS,
            max_points=500,
        )
        assert len(got) == 11  # minutes touched by 10 minutes starting 20 s into one
        by_minute: dict[int, list[float]] = {}
        for i, v in enumerate(values):
            ts = T0_MS + i * 1000
            by_minute.setdefault(ts - ts % 60_000, []).append(v)
        for p in got:
            assert p.value == pytest.approx(sum(by_minute[p.ts_ms]) / len(by_minute[p.ts_ms]))
            assert (p.min, p.max) == (min(by_minute[p.ts_ms]), max(by_minute[p.ts_ms]))
        # the recent point is still raw
        recent = await store.series(
            "hall-1", "kiosk-1", "cpu", start_ms=clock.now_ms - 60_000, end_ms=clock.now_ms
        )
        assert recent == [SeriesPoint(clock.now_ms, 99.0, 99.0, 99.0)]

        clock.now_ms = T0_MS + 93 * DAY_MS  # past the rollup window too
        await store.prune()
        assert store.stats()["raw_rows"] == 0
        assert store.stats()["rollup_rows"] == 0
        assert await store.metric_names("hall-1", "kiosk-1") == []
    finally:
        await store.stop()


async def test_prune_works_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hub.embedded_tsdb as tsdb

    monkeypatch.setattr(tsdb, "_PRUNE_BATCH_ROWS", 7)
    clock = Clock(T0_MS + HOUR_MS)
    store = await EmbeddedStore.open(QUIET, tmp_path, clock=clock)
    try:
        store.write(
            [dev("a", f"d{d}", T0_MS + i * 1000, x=1.0, y=2.0) for d in range(3) for i in range(50)]
        )
        await store.flush()
        clock.now_ms = T0_MS + 100 * DAY_MS
        # 50 raw rows and 2 minutes (50 s starting 20 s into a minute) per device and field
        assert await store.prune() == 3 * 2 * (50 + 2)
        assert store.stats()["raw_rows"] == store.stats()["rollup_rows"] == 0
    finally:
        await store.stop()


async def test_queue_overflow_is_counted(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(
        EmbeddedSection(flush_interval_s=3600.0, max_queue=1000), tmp_path
    )
    try:
        store.write([dev("a", "d", T0_MS + i, v=1.0) for i in range(600)])
        store.write([dev("a", "d", T0_MS + 1000 + i, v=2.0) for i in range(600)])
        stats = store.stats()
        assert stats["queued"] == 1000
        assert stats["dropped"] == 200
        store.write([dev("a", "d", T0_MS + 5000, v=3.0)])
        assert store.stats()["dropped"] == 201
        await store.flush()
        assert store.stats()["written"] == 1000
        assert store.stats()["queued"] == 0
    finally:
        await store.stop()


async def test_bad_values_are_skipped_and_counted(store: EmbeddedStore) -> None:
    store.write(
        [
            dev("a", "d", T0_MS, ok=1.0, nan=float("nan"), inf=float("inf"), ninf=float("-inf")),
            Point("device", (("agent", "a"), ("device", "d")), {"text": "x"}, T0_MS + 1),  # type: ignore[dict-item]
            Point("device", (("agent", "a"), ("device", "d")), {"ok": 2.0}, "soon"),  # type: ignore[arg-type]
            dev("a", "d", T0_MS + 2, ok=3),
            # a good value beside a bad one: the whole point is refused, the next one kept
            Point("device", (("agent", "a"), ("device", "e")), {"ok": 5.0, "t": "x"}, T0_MS + 1),  # type: ignore[dict-item]
            Point("device", (("agent", "a"), ("device", "e")), {"ok": 6.0}, T0_MS + 2),
        ]
    )
    await store.flush()
    stats = store.stats()
    assert stats["skipped_values"] == 7
    assert stats["values_written"] == 3
    got = await store.series("a", "d", "ok", start_ms=T0_MS, end_ms=T0_MS + 10)
    assert [(p.ts_ms, p.value) for p in got] == [(T0_MS, 1.0), (T0_MS + 2, 3.0)]
    got = await store.series("a", "e", "ok", start_ms=T0_MS, end_ms=T0_MS + 10)
    assert [(p.ts_ms, p.value) for p in got] == [(T0_MS + 2, 6.0)]


async def test_sqlite_error_keeps_points_queued_and_counts_once(
    store: EmbeddedStore, tmp_path: Path
) -> None:
    store.write([dev("a", "d", T0_MS + i * 1000, v=float(i)) for i in range(100)])
    await store.flush()
    pages = await store._writer.run(
        lambda: store._conn().execute("PRAGMA page_count").fetchone()[0]
    )
    # a full disk, as SQLite sees it: the file may not grow (the first failing chunk is rolled
    # back after part of its work, like a crash in the middle)
    await store._writer.run(lambda: store._conn().execute(f"PRAGMA max_page_count = {pages}"))
    store.write(
        [dev("b", f"new-{i}", T0_MS + j * 1000, v=float(j)) for i in range(100) for j in range(100)]
    )
    await store.flush()
    stats = store.stats()
    assert stats["errors"] >= 1
    assert stats["queued"] == 10_000
    assert stats["written"] == 100
    assert await store.metric_names("b", "new-0") == []

    await store._writer.run(lambda: store._conn().execute("PRAGMA max_page_count = 1073741823"))
    await store.flush()
    stats = store.stats()
    assert stats["queued"] == 0
    assert stats["written"] == 10_100
    assert stats["raw_rows"] == 10_100
    rolled = rollup_rows(tmp_path)
    assert sum(c for _, c, _, _ in rolled.values()) == 10_100
    got = await store.series("b", "new-42", "v", start_ms=T0_MS, end_ms=T0_MS + 100_000)
    assert [p.value for p in got] == [float(j) for j in range(100)]


async def test_reopen_keeps_data_and_series(tmp_path: Path, clock: Clock) -> None:
    store = await EmbeddedStore.open(QUIET, tmp_path, clock=clock)
    store.write([dev("a", "d", T0_MS + i * 1000, v=float(i), w=1.0) for i in range(10)])
    store.write([dev("a", "queued-at-stop", T0_MS, v=5.0)])
    await store.stop()

    again = await EmbeddedStore.open(QUIET, tmp_path, clock=clock)
    try:
        stats = again.stats()
        assert stats["raw_rows"] == 21
        assert stats["rollup_rows"] == 3
        assert await again.metric_names("a", "d") == ["v", "w"]
        assert await again.metric_names("a", "queued-at-stop") == ["v"]
        # same series and fields after the restart (tags in another order), plus a new field
        again.write(
            [
                Point(
                    "device",
                    (("device", "d"), ("kind", "camera"), ("agent", "a"), ("venue", "court-1")),
                    {"v": 10.0, "z": 0.5},
                    T0_MS + 10_000,
                )
            ]
        )
        again.write([dev("a", "d", T0_MS + 3000, v=99.0)])  # duplicate of a stored point: ignored
        await again.flush()
        got = await again.series("a", "d", "v", start_ms=T0_MS, end_ms=T0_MS + 20_000)
        assert [p.value for p in got] == [float(i) for i in range(11)]
        assert await again.metric_names("a", "d") == ["v", "w", "z"]
        db = sqlite3.connect(tmp_path / TELEMETRY_DB)
        try:
            assert db.execute("SELECT count(*) FROM series").fetchone()[0] == 2
        finally:
            db.close()
    finally:
        await again.stop()


async def test_venue_and_tag_queries(store: EmbeddedStore) -> None:
    store.write(
        [
            dev("court-1", "cam-2", T0_MS, fps=20.0),
            dev("court-1", "cam-1", T0_MS, fps=25.0),
            dev("court-1", "cam-1", T0_MS + 1000, fps=24.0),
            dev("court-1", "mic-1", T0_MS, level_db=-30.0),
            dev("court-2", "cam-1", T0_MS, venue="court-2", fps=10.0),
            Point.make("hub", {"component": "ingest"}, {"msgs_per_s": 900.0}, T0_MS),
            Point.make("hub", {"component": "recorder"}, {"msgs_per_s": 5.0}, T0_MS),
        ]
    )
    await store.flush()
    got = await store.venue_series("court-1", "fps", start_ms=T0_MS, end_ms=T0_MS + 5000)
    assert [(s.agent, s.device, [p.value for p in s.points]) for s in got] == [
        ("court-1", "cam-1", [25.0, 24.0]),
        ("court-1", "cam-2", [20.0]),
    ]
    ingest = await store.series_by_tags(
        "hub", {"component": "ingest"}, "msgs_per_s", start_ms=T0_MS, end_ms=T0_MS
    )
    assert ingest == [SeriesPoint(T0_MS, 900.0, 900.0, 900.0)]
    both = await store.series_by_tags(
        "hub", {}, "msgs_per_s", start_ms=T0_MS, end_ms=T0_MS, max_points=1
    )
    assert both == [SeriesPoint(T0_MS, 452.5, 5.0, 900.0)]
    unbucketed = await store.series_by_tags("hub", {}, "msgs_per_s", start_ms=T0_MS, end_ms=T0_MS)
    assert sorted(p.value for p in unbucketed) == [5.0, 900.0]
    assert (
        await store.series_by_tags(
            "hub", {"component": "x"}, "msgs_per_s", start_ms=T0_MS, end_ms=T0_MS
        )
        == []
    )


async def test_background_loop_flushes_on_its_own(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(EmbeddedSection(flush_interval_s=0.05), tmp_path)
    try:
        store.write([dev("a", "d", T0_MS, v=1.0)])
        for _ in range(200):
            if store.stats()["written"] == 1:
                break
            await asyncio.sleep(0.05)
        assert store.stats()["written"] == 1
    finally:
        await store.stop()
