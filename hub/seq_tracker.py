"""Per-agent sequence tracking: duplicates, gaps, gap filling from the outbox, and losses.

Every ``telemetry`` and ``event`` of an agent carries one shared ``seq`` (CONTRACT-NOTES.md). The
hub keeps, per agent, the highest seq seen and sets of received, missing and lost numbers as
*ranges* (a healthy agent's received set is one interval, so memory stays flat however long it
runs; the number of intervals is bounded as well).

- A seq already received is a duplicate (QoS 1 redelivery, outbox replay after a lost PUBACK):
  dropped and counted.
- A seq above the highest leaves the numbers in between *missing*; a live birth whose ``seq``
  (the agent's next number) is above the highest does the same — those are still in the outbox.
- A missing seq that arrives (normally ``historical``) is *filled*.
- Missing seqs that see no progress for ``gap_fill_timeout_s`` are declared *lost*; the caller
  then asks the agent for a rebirth. Gaps wider than ``max_gap`` are lost at once.
- A live birth whose ``seq`` is at or below the highest means the agent's counter restarted
  (its outbox database was lost): tracking starts again from the birth.

Loop only: no locks.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

log = logging.getLogger(__name__)

#: Most intervals kept per range set; beyond it the oldest are forgotten.
MAX_INTERVALS: Final = 4096


class RangeSet:
    """A set of non-negative integers stored as sorted, disjoint, non-adjacent closed intervals."""

    __slots__ = ("_count", "_hi", "_lo")

    def __init__(self, intervals: list[tuple[int, int]] | None = None) -> None:
        self._lo: list[int] = []
        self._hi: list[int] = []
        self._count = 0
        for lo, hi in intervals or ():
            self.add_range(lo, hi)

    def __len__(self) -> int:
        """How many numbers the set holds."""
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        k = bisect.bisect_right(self._lo, value) - 1
        return k >= 0 and self._hi[k] >= value

    def __iter__(self) -> Iterator[int]:
        for lo, hi in zip(self._lo, self._hi, strict=True):
            yield from range(lo, hi + 1)

    def __repr__(self) -> str:
        return f"RangeSet({self.intervals()!r})"

    @property
    def interval_count(self) -> int:
        """How many intervals the set is made of."""
        return len(self._lo)

    def intervals(self) -> list[tuple[int, int]]:
        """The intervals, lowest first."""
        return list(zip(self._lo, self._hi, strict=True))

    def min(self) -> int | None:
        """The smallest number, or ``None`` when empty."""
        return self._lo[0] if self._lo else None

    def add(self, value: int) -> None:
        """Add one number."""
        hi = self._hi
        if hi and value == hi[-1] + 1:
            # fast path, the common case: the next in-order seq extends the top interval
            # (value is above every number held, so nothing else can merge with it)
            hi[-1] = value
            self._count += 1
            return
        self.add_range(value, value)

    def add_range(self, lo: int, hi: int) -> None:
        """Add ``lo..hi`` inclusive, merging with overlapping or adjacent intervals."""
        if hi < lo:
            return
        i = bisect.bisect_left(self._hi, lo - 1)  # first interval that may touch [lo, hi]
        j = bisect.bisect_right(self._lo, hi + 1)  # intervals before j start before it ends
        if i < j:
            for k in range(i, j):
                self._count -= self._hi[k] - self._lo[k] + 1
            lo = min(lo, self._lo[i])
            hi = max(hi, self._hi[j - 1])
            del self._lo[i:j]
            del self._hi[i:j]
        self._lo.insert(i, lo)
        self._hi.insert(i, hi)
        self._count += hi - lo + 1

    def remove(self, value: int) -> bool:
        """Remove one number; False when it was not in the set."""
        k = bisect.bisect_right(self._lo, value) - 1
        if k < 0 or self._hi[k] < value:
            return False
        lo, hi = self._lo[k], self._hi[k]
        self._count -= 1
        if lo == hi:
            del self._lo[k]
            del self._hi[k]
        elif value == lo:
            self._lo[k] = lo + 1
        elif value == hi:
            self._hi[k] = hi - 1
        else:
            self._hi[k] = value - 1
            self._lo.insert(k + 1, value + 1)
            self._hi.insert(k + 1, hi)
        return True

    def clear(self) -> None:
        """Remove everything."""
        self._lo.clear()
        self._hi.clear()
        self._count = 0

    def trim(self, max_intervals: int) -> int:
        """Forget the lowest intervals until at most ``max_intervals`` remain; returns numbers dropped."""
        dropped = 0
        while len(self._lo) > max_intervals:
            dropped += self._hi[0] - self._lo[0] + 1
            del self._lo[0]
            del self._hi[0]
        self._count -= dropped
        return dropped


class SeqResult(StrEnum):
    """What one observed seq was."""

    NEW = "new"  # above the highest seen
    FILLED = "filled"  # filled a known gap
    LATE = "late"  # below the highest, never expected (before tracking began, or declared lost)
    DUPLICATE = "duplicate"  # already received (or too old to tell): drop it


@dataclass
class AgentSeq:
    """Tracking state of one agent."""

    highest: int = -1
    #: False until a live birth or a first message gave a starting point.
    baselined: bool = False
    received: RangeSet = field(default_factory=RangeSet)
    missing: RangeSet = field(default_factory=RangeSet)
    lost: RangeSet = field(default_factory=RangeSet)
    #: Messages accepted (not duplicates) since tracking began.
    received_count: int = 0
    #: Below this the received set was trimmed: anything older counts as a duplicate.
    floor: int = 0
    last_progress: float = 0.0


@dataclass(frozen=True, slots=True)
class LostRange:
    """Seqs of one agent declared lost together."""

    agent: str
    ranges: list[tuple[int, int]]
    count: int
    reason: str


class SeqTracker:
    """Sequence tracking of every agent (see the module docstring)."""

    def __init__(
        self,
        *,
        gap_fill_timeout_s: float = 10.0,
        max_gap: int = 1_000_000,
        max_intervals: int = MAX_INTERVALS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gap_fill_timeout_s = gap_fill_timeout_s
        self.max_gap = max_gap
        self.max_intervals = max_intervals
        self._clock = clock
        self._agents: dict[str, AgentSeq] = {}
        self._dirty: set[str] = set()
        self.duplicates = 0
        self.lost = 0
        self.recovered = 0
        self.resets = 0

    # observing ----------------------------------------------------------------------------------
    def observe(
        self, agent: str, seq: int, *, historical: bool = False
    ) -> tuple[SeqResult, LostRange | None]:
        """Classify one stream message; returns the result and any range declared lost at once."""
        st = self._state(agent)
        self._dirty.add(agent)
        if seq in st.received or seq < st.floor:
            self.duplicates += 1
            return SeqResult.DUPLICATE, None
        now = self._clock()
        if historical:
            st.last_progress = now  # a replay is running: give the gaps more time
        lost: LostRange | None = None
        if seq > st.highest:
            if st.baselined and seq > st.highest + 1:
                lost = self._open_gap(agent, st, st.highest + 1, seq - 1, now)
            st.highest = seq
            st.baselined = True
            result = SeqResult.NEW
        elif st.missing.remove(seq):
            st.last_progress = now
            result = SeqResult.FILLED
        else:
            if st.lost.remove(seq):
                self.recovered += 1
                log.info("seq recovered after being declared lost agent=%s seq=%d", agent, seq)
            result = SeqResult.LATE
        self._accept(st, seq)
        return result, lost

    def on_birth(self, agent: str, next_seq: int) -> LostRange | None:
        """A *live* birth: ``next_seq`` is the agent's next number (retained births say nothing new).

        Returns the range declared lost when the agent's counter restarted with gaps still open.
        """
        st = self._state(agent)
        self._dirty.add(agent)
        now = self._clock()
        if not st.baselined:
            st.highest = next_seq - 1
            st.baselined = True
            return None
        if next_seq > st.highest + 1:  # the numbers in between are still in the outbox
            lost = self._open_gap(agent, st, st.highest + 1, next_seq - 1, now)
            st.highest = next_seq - 1
            return lost
        if next_seq <= st.highest:
            return self._reset(agent, st, next_seq)
        return None

    def sweep(self) -> list[LostRange]:
        """Declare lost every gap that saw no progress for ``gap_fill_timeout_s``."""
        now = self._clock()
        declared = []
        for agent, st in self._agents.items():
            if st.missing and now - st.last_progress >= self.gap_fill_timeout_s:
                declared.append(self._declare_lost(agent, st, "gap not filled in time"))
        return declared

    # queries ------------------------------------------------------------------------------------
    def agents(self) -> list[str]:
        """Agents with tracking state."""
        return sorted(self._agents)

    def received_count(self, agent: str) -> int:
        """Messages of ``agent`` accepted (not duplicates)."""
        st = self._agents.get(agent)
        return st.received_count if st else 0

    def received(self, agent: str) -> list[tuple[int, int]]:
        """Which seqs of ``agent`` arrived, as inclusive intervals (one interval: nothing lost)."""
        st = self._agents.get(agent)
        return st.received.intervals() if st else []

    def missing(self, agent: str) -> list[tuple[int, int]]:
        """Seqs still expected from the agent's outbox."""
        st = self._agents.get(agent)
        return st.missing.intervals() if st else []

    def lost_ranges(self, agent: str) -> list[tuple[int, int]]:
        """Seqs of ``agent`` declared lost."""
        st = self._agents.get(agent)
        return st.lost.intervals() if st else []

    def highest(self, agent: str) -> int:
        """The highest seq seen, -1 when none."""
        st = self._agents.get(agent)
        return st.highest if st else -1

    def summary(self, agent: str) -> dict[str, Any]:
        """A JSON-ready digest for the API."""
        st = self._agents.get(agent)
        if st is None:
            return {"highest": -1, "received": 0, "missing": 0, "lost": 0}
        return {
            "highest": st.highest,
            "received": st.received_count,
            "missing": len(st.missing),
            "lost": len(st.lost),
        }

    # persistence --------------------------------------------------------------------------------
    def take_dirty(self) -> dict[str, dict[str, Any]]:
        """JSON-ready state of the agents changed since the last call."""
        dirty = {a: self.export(a) for a in self._dirty if a in self._agents}
        self._dirty = set()
        return dirty

    def export(self, agent: str) -> dict[str, Any]:
        """One agent's state as plain data."""
        st = self._agents[agent]
        return {
            "highest": st.highest,
            "baselined": st.baselined,
            "received": st.received.intervals(),
            "missing": st.missing.intervals(),
            "lost": st.lost.intervals(),
            "count": st.received_count,
            "floor": st.floor,
        }

    def restore(self, agent: str, data: dict[str, Any]) -> None:
        """Load state saved by :meth:`export`; open gaps get a full fill timeout again."""
        self._agents[agent] = AgentSeq(
            highest=int(data["highest"]),
            baselined=bool(data["baselined"]),
            received=RangeSet([(int(a), int(b)) for a, b in data["received"]]),
            missing=RangeSet([(int(a), int(b)) for a, b in data["missing"]]),
            lost=RangeSet([(int(a), int(b)) for a, b in data["lost"]]),
            received_count=int(data["count"]),
            floor=int(data.get("floor", 0)),
            last_progress=self._clock(),
        )

    # internals ----------------------------------------------------------------------------------
    def _state(self, agent: str) -> AgentSeq:
        st = self._agents.get(agent)
        if st is None:
            st = self._agents[agent] = AgentSeq(last_progress=self._clock())
        return st

    def _accept(self, st: AgentSeq, seq: int) -> None:
        st.received.add(seq)
        st.received_count += 1
        if st.received.interval_count > self.max_intervals:
            st.received.trim(self.max_intervals)
            st.floor = st.received.min() or 0

    def _open_gap(self, agent: str, st: AgentSeq, lo: int, hi: int, now: float) -> LostRange | None:
        if not st.missing:
            st.last_progress = now  # the fill timeout runs from when the first gap opened
        if hi - lo + 1 > self.max_gap:
            st.lost.add_range(lo, hi)
            st.lost.trim(self.max_intervals)
            count = hi - lo + 1
            self.lost += count
            log.warning("seq gap too wide, lost at once agent=%s range=%d-%d", agent, lo, hi)
            return LostRange(agent, [(lo, hi)], count, "gap wider than max_gap")
        st.missing.add_range(lo, hi)
        if st.missing.interval_count > self.max_intervals:
            # too many holes to wait for: the oldest are declared lost now
            oldest = st.missing.intervals()[: st.missing.interval_count - self.max_intervals]
            for a, b in oldest:
                st.lost.add_range(a, b)
            dropped = st.missing.trim(self.max_intervals)
            self.lost += dropped
            return LostRange(agent, oldest, dropped, "too many gaps")
        return None

    def _declare_lost(self, agent: str, st: AgentSeq, reason: str) -> LostRange:
        ranges = st.missing.intervals()
        count = len(st.missing)
        for lo, hi in ranges:
            st.lost.add_range(lo, hi)
        st.lost.trim(self.max_intervals)
        st.missing.clear()
        self.lost += count
        self._dirty.add(agent)
        shown = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges[:10])
        log.warning(
            "seqs declared lost agent=%s count=%d ranges=%s%s reason=%s",
            agent,
            count,
            shown,
            " …" if len(ranges) > 10 else "",
            reason,
        )
        return LostRange(agent, ranges, count, reason)

    def _reset(self, agent: str, st: AgentSeq, next_seq: int) -> LostRange | None:
        lost = self._declare_lost(agent, st, "agent seq counter restarted") if st.missing else None
        log.warning(
            "agent seq counter restarted agent=%s highest=%d birth_seq=%d: tracking reset",
            agent,
            st.highest,
            next_seq,
        )
        self.resets += 1
        self._agents[agent] = AgentSeq(
            highest=next_seq - 1,
            baselined=True,
            received_count=st.received_count,
            last_progress=self._clock(),
        )
        return lost
