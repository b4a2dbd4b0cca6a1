"""Sequence tracking without a broker: range sets, gaps, fills, duplicates, losses, resets."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from hub.seq_tracker import RangeSet, SeqResult, SeqTracker


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


ops = st.lists(
    st.tuples(st.sampled_from(["add", "range", "remove"]), st.integers(0, 60), st.integers(0, 8)),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_range_set_behaves_like_a_set(operations: list[tuple[str, int, int]]) -> None:
    rs = RangeSet()
    model: set[int] = set()
    for op, value, width in operations:
        if op == "add":
            rs.add(value)
            model.add(value)
        elif op == "range":
            rs.add_range(value, value + width)
            model.update(range(value, value + width + 1))
        else:
            assert rs.remove(value) == (value in model)
            model.discard(value)
        assert len(rs) == len(model)
        assert list(rs) == sorted(model)
        intervals = rs.intervals()
        # disjoint, sorted and never adjacent (always merged)
        assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(intervals))
    for probe in range(-1, 72):
        assert (probe in rs) == (probe in model)


def test_range_set_trim_drops_oldest() -> None:
    rs = RangeSet([(0, 1), (5, 5), (9, 12)])
    assert rs.trim(2) == 2
    assert rs.intervals() == [(5, 5), (9, 12)] and len(rs) == 5


def test_in_order_stream_is_one_interval() -> None:
    tracker = SeqTracker()
    assert tracker.on_birth("a", 0) is None
    results = [tracker.observe("a", n)[0] for n in range(1000)]
    assert set(results) == {SeqResult.NEW}
    assert tracker.received("a") == [(0, 999)]
    assert tracker.received_count("a") == 1000
    assert tracker.lost == 0 and tracker.duplicates == 0


def test_live_birth_above_highest_expects_the_outbox() -> None:
    clock = FakeClock()
    tracker = SeqTracker(gap_fill_timeout_s=10, clock=clock)
    tracker.on_birth("a", 0)
    for n in range(3):
        tracker.observe("a", n)
    tracker.on_birth("a", 8)  # 3..7 are in the agent's outbox
    assert tracker.missing("a") == [(3, 7)]
    assert tracker.observe("a", 8)[0] is SeqResult.NEW
    clock.now += 9
    for n in (5, 3, 4, 7, 6):
        assert tracker.observe("a", n, historical=True)[0] is SeqResult.FILLED
    clock.now += 30
    assert tracker.sweep() == []
    assert tracker.received("a") == [(0, 8)] and tracker.lost == 0


def test_gap_without_progress_is_lost_once() -> None:
    clock = FakeClock()
    tracker = SeqTracker(gap_fill_timeout_s=10, clock=clock)
    tracker.on_birth("a", 0)
    tracker.observe("a", 0)
    tracker.observe("a", 5)
    tracker.observe("a", 9)
    assert tracker.missing("a") == [(1, 4), (6, 8)]
    clock.now += 6
    tracker.observe("a", 2, historical=True)  # progress: the timer starts again
    clock.now += 6
    assert tracker.sweep() == []
    clock.now += 5
    [lost] = tracker.sweep()
    assert lost.agent == "a" and lost.ranges == [(1, 1), (3, 4), (6, 8)] and lost.count == 6
    assert tracker.lost == 6 and tracker.missing("a") == []
    assert tracker.sweep() == []
    # a lost seq that turns up after all is accepted and counted as recovered
    assert tracker.observe("a", 7, historical=True)[0] is SeqResult.LATE
    assert tracker.recovered == 1 and tracker.lost_ranges("a") == [(1, 1), (3, 4), (6, 6), (8, 8)]


def test_duplicates_are_detected_live_and_historical() -> None:
    tracker = SeqTracker()
    tracker.on_birth("a", 0)
    tracker.observe("a", 0)
    tracker.observe("a", 1)
    assert tracker.observe("a", 1)[0] is SeqResult.DUPLICATE
    assert tracker.observe("a", 0, historical=True)[0] is SeqResult.DUPLICATE
    assert tracker.duplicates == 2 and tracker.received_count("a") == 2


def test_counter_restart_resets_tracking() -> None:
    tracker = SeqTracker()
    tracker.on_birth("a", 0)
    for n in range(50):
        tracker.observe("a", n)
    tracker.observe("a", 60)  # 50..59 missing
    lost = tracker.on_birth("a", 0)  # the agent lost its database and starts again
    assert lost is not None and lost.count == 10
    assert tracker.resets == 1
    assert tracker.observe("a", 0)[0] is SeqResult.NEW  # not a duplicate of the old 0
    assert tracker.missing("a") == []


def test_huge_jump_is_lost_at_once() -> None:
    tracker = SeqTracker(max_gap=1000)
    tracker.on_birth("a", 0)
    tracker.observe("a", 0)
    result, lost = tracker.observe("a", 10**12)
    assert result is SeqResult.NEW
    assert lost is not None and lost.ranges == [(1, 10**12 - 1)]
    assert tracker.missing("a") == []


def test_too_many_holes_are_bounded() -> None:
    tracker = SeqTracker(max_intervals=8)
    tracker.on_birth("a", 0)
    lost_total = 0
    for n in range(0, 40, 2):  # every other seq missing: 19 holes
        _, lost = tracker.observe("a", n)
        lost_total += lost.count if lost else 0
    assert len(tracker.missing("a")) == 8
    assert lost_total == tracker.lost == 19 - 8


def test_first_message_without_birth_sets_the_baseline() -> None:
    tracker = SeqTracker()
    assert tracker.observe("a", 500)[0] is SeqResult.NEW
    assert tracker.missing("a") == []  # nothing is known about what came before
    assert tracker.observe("a", 498, historical=True)[0] is SeqResult.LATE


def test_state_survives_export_and_restore() -> None:
    tracker = SeqTracker()
    tracker.on_birth("a", 0)
    for n in (0, 1, 2, 5):
        tracker.observe("a", n)
    dirty = tracker.take_dirty()
    assert set(dirty) == {"a"} and tracker.take_dirty() == {}
    again = SeqTracker()
    again.restore("a", dirty["a"])
    assert again.missing("a") == [(3, 4)]
    assert again.observe("a", 5)[0] is SeqResult.DUPLICATE
    assert again.observe("a", 3, historical=True)[0] is SeqResult.FILLED
    assert again.summary("a") == {"highest": 5, "received": 5, "missing": 1, "lost": 0}
