"""A hub restart's hole in every recorded track becomes a gap record (hub/downtime_gaps.py), on a
real recording index: the chaos suite found hub kill -9 leaving 6-7 s holes with no gap."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_recording_index import T0, write_segment

from hub.downtime_gaps import DowntimeGaps
from hub.recording_index import RecordingIndex


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[RecordingIndex]:
    idx = await RecordingIndex.open(tmp_path / "recordings.db", tmp_path / "recordings")
    yield idx
    await idx.close()


async def add(index: RecordingIndex, track: str, start_ms: int, *, recovered: bool = False) -> None:
    await index.add_segment(
        camera=track,
        venue="court-1",
        session_id=None,
        path=write_segment(index.storage_root, track, start_ms),
        start_ms=start_ms,
        end_ms=start_ms + 10_000,
        frames=250,
        recovered=recovered,
    )


async def restart(index: RecordingIndex, tracks: list[str]) -> DowntimeGaps:
    """What the hub does at start-up: snapshot, then listen."""
    downtime = DowntimeGaps(index)
    await downtime.snapshot(tracks)
    index.add_segment_listener(downtime.on_segment)
    return downtime


async def test_the_hole_of_a_restart_is_one_gap_per_track(index: RecordingIndex) -> None:
    await add(index, "cam-1", T0)  # ends at T0 + 10 s
    await add(index, "cam-1-seat", T0)
    await add(index, "quiet", T0)
    downtime = await restart(index, ["cam-1", "cam-1-seat", "quiet", "never-recorded"])
    # the crash's leftover was recorded before the crash: it moves the hole's start
    await add(index, "cam-1", T0 + 10_000, recovered=True)  # ends at T0 + 20 s
    await add(index, "cam-1", T0 + 27_000)  # 7 s hole
    await add(index, "cam-1", T0 + 37_000)  # contiguous: no more gaps
    await add(index, "cam-1-seat", T0 + 10_200)  # within the tolerance (250 ms): not a gap
    await add(index, "never-recorded", T0 + 50_000)
    await downtime.wait()

    gaps = await index.gaps()
    assert [(g.camera, g.from_ms, g.to_ms) for g in gaps] == [("cam-1", T0 + 20_000, T0 + 27_000)]
    assert "hub not recording" in gaps[0].reason and downtime.recorded == 1


async def test_an_outage_the_crash_left_open_is_closed_by_the_first_new_segment(
    index: RecordingIndex,
) -> None:
    await add(index, "cam-1", T0)
    open_gap = await index.open_gap(
        camera="cam-1", venue="court-1", from_ms=T0 + 10_000, reason="x"
    )
    downtime = await restart(index, ["cam-1"])
    await add(index, "cam-1", T0 + 60_000)
    await downtime.wait()
    (gap,) = await index.gaps(camera="cam-1")
    assert (gap.id, gap.from_ms, gap.to_ms) == (open_gap.id, T0 + 10_000, T0 + 60_000)
