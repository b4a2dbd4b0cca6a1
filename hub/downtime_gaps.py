"""The hub's own downtime is a gap in every recording (issue 8's chaos suite found it unrecorded).

While the hub is down nothing is recorded: cameras and seat tracks have a hole between their last
segment before the stop (or the crash) and their first segment after the restart. The recorder's
gaps cover a *camera* going away while the hub runs; this covers the hub going away.

:class:`DowntimeGaps` takes a snapshot of each track's last segment end at start-up (before the
recorders start), and when a track's first new segment is indexed, records the hole between the
two as a closed gap (``reason`` says the hub was not recording). Segments indexed from a crash's
leftovers (``recovered``) only move the snapshot forward: they were recorded before the crash. A
gap a camera outage left open when the hub died is closed at the first new segment instead (the
outage lasted at least that long, and it already covers the downtime).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any

from hub.recording_index import RecordingIndex, SegmentRecord

log = logging.getLogger(__name__)

REASON = "集控中心未在录制（重启或停机） / hub not recording (restart or shutdown)"
#: holes shorter than this between the last segment and the first new one are not gaps
#: (segment boundaries of continuous recording match within milliseconds). 1 s was too much: once
#: a crashed segment kept its last second (ffmpeg's per-segment flush), a hub restarted in ~1 s
#: left a real 1 s hole that went unrecorded
TOLERANCE_MS = 250


class DowntimeGaps:
    """Records, per track, the hole a hub restart left (see the module doc)."""

    def __init__(self, index: RecordingIndex, *, tolerance_ms: int = TOLERANCE_MS) -> None:
        """Call :meth:`snapshot` before the recorders start, then :meth:`on_segment` (an index
        segment listener) does the rest."""
        self.index = index
        self.tolerance_ms = tolerance_ms
        #: track → end of its last segment before the restart
        self._last_end: dict[str, int] = {}
        #: track → id of a gap an outage left open
        self._open_gap: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.recorded = 0

    async def snapshot(self, tracks: Iterable[str]) -> None:
        """Each track's last segment end and open gap, as the previous run left them."""
        open_gaps = {g.camera: g.id for g in await self.index.gaps(open_only=True)}
        for track in tracks:
            if track in open_gaps:
                self._open_gap[track] = open_gaps[track]
                continue
            segments = await self.index.segments(camera=track, include_deleted=True)
            if segments:
                self._last_end[track] = max(s.end_ms for s in segments)

    def on_segment(self, record: SegmentRecord) -> None:
        """Index listener (on the loop)."""
        track = record.camera
        if record.recovered:
            if track in self._last_end:
                self._last_end[track] = max(self._last_end[track], record.end_ms)
            return
        gap_id = self._open_gap.pop(track, None)
        last_end = self._last_end.pop(track, None)
        if gap_id is not None:
            self._spawn(self._close(track, gap_id, record.start_ms))
        elif last_end is not None and record.start_ms - last_end >= self.tolerance_ms:
            self._spawn(self._record(record, last_end))

    async def wait(self) -> None:
        """Until the gaps being written are in the index (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, record: SegmentRecord, from_ms: int) -> None:
        try:
            gap = await self.index.open_gap(
                camera=record.camera, venue=record.venue, from_ms=from_ms, reason=REASON
            )
            await self.index.close_gap(gap.id, record.start_ms)
            self.recorded += 1
            log.warning(
                "hub downtime gap track=%s from_ms=%d to_ms=%d",
                record.camera,
                from_ms,
                record.start_ms,
            )
        except Exception:
            log.exception("hub downtime gap not recorded track=%s", record.camera)

    async def _close(self, track: str, gap_id: int, to_ms: int) -> None:
        try:
            await self.index.close_gap(gap_id, to_ms)
            log.info("gap left open by the last run closed track=%s id=%d", track, gap_id)
        except (ValueError, KeyError) as exc:
            log.error("gap left open not closed track=%s id=%d error=%s", track, gap_id, exc)
