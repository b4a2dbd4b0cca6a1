"""Jitter buffer of one audio stream: frames back in ``seq`` order, duplicates dropped, losses named.

Audio frames travel over MQTT at QoS 0, so they can arrive late, twice, out of order or never.
The buffer releases every frame that directly follows the last released one at once (an
in-order stream is never delayed). A frame that arrives after a hole is held; when the hole is
still there ``window_s`` after that frame arrived (or more than ``max_frames`` frames wait), the
missing ``seq`` range is given up and released as a :class:`Gap`, followed by the frames after
it. A frame that comes after its hole was given up is dropped as *late*.

``seq`` is an unsigned 64-bit counter (wrap-around is continuous). An edge agent that restarts
counts from 0 again: a frame behind the stream whose capture time is past the end of the last
released frame (or more than ``max_frames`` behind) starts a new stream; when its capture time
leaves a hole after the old stream's end that hole is a :class:`Gap` too (``restart=True``).

Pure bookkeeping: no I/O, no clock of its own (callers pass ``now``, in seconds, monotonic).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TypeAlias

from protocol.audio import AudioFrame

SEQ_MOD = 1 << 64
_HALF = 1 << 63


@dataclass(frozen=True, slots=True)
class Released:
    """A frame in order; ``fresh`` when it does not continue the previously released frame
    (the first frame, the first after a gap or a restart): nothing may be glued before it."""

    frame: AudioFrame
    fresh: bool


@dataclass(frozen=True, slots=True)
class Gap:
    """Frames ``first_seq..last_seq`` (inclusive) never arrived, or the stream restarted
    (``restart``: ``first_seq`` is the old stream's next seq, ``last_seq`` the new stream's
    first): no audio from capture time ``from_us`` to ``to_us``."""

    first_seq: int
    last_seq: int
    from_us: int
    to_us: int
    restart: bool = False

    @property
    def lost_frames(self) -> int:
        """Frames missing (0 for a restart, where seq says nothing)."""
        return 0 if self.restart else (self.last_seq - self.first_seq) % SEQ_MOD + 1

    @property
    def duration_ms(self) -> int:
        """Length of the hole in capture time."""
        return max(0, self.to_us - self.from_us) // 1000


Output: TypeAlias = Released | Gap


@dataclass
class JitterStats:
    """Counters of one stream."""

    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    gaps: int = 0
    lost_frames: int = 0
    restarts: int = 0


def _ahead(seq: int, ref: int) -> int:
    """Signed distance ``seq - ref`` modulo 2**64 (negative: behind)."""
    delta = (seq - ref) % SEQ_MOD
    return delta - SEQ_MOD if delta >= _HALF else delta


class JitterBuffer:
    """Reorders one device's audio frames (see the module docstring)."""

    def __init__(self, *, window_s: float = 0.2, max_frames: int = 50) -> None:
        if window_s <= 0 or max_frames < 1:
            raise ValueError(f"window_s {window_s} must be > 0 and max_frames {max_frames} >= 1")
        self.window_s = window_s
        self.max_frames = max_frames
        self.stats = JitterStats()
        self._next: int | None = None  # seq expected next
        self._last_end_us: int | None = None  # capture end of the last released frame
        self._fresh = True
        self._held: dict[int, tuple[AudioFrame, float]] = {}  # seq -> (frame, arrival)
        self._recent: deque[int] = deque(maxlen=2 * max_frames)  # released seqs (duplicates)

    @property
    def waiting(self) -> int:
        """Frames held behind a hole."""
        return len(self._held)

    def push(self, frame: AudioFrame, now: float) -> list[Output]:
        """Add a frame that arrived at ``now``; returns what can be released."""
        if self._next is None:
            self._next = frame.seq
        ahead = _ahead(frame.seq, self._next)
        if ahead < 0:
            if not self._is_restart(frame, ahead):
                if frame.seq in self._recent:
                    self.stats.duplicates += 1
                else:
                    self.stats.late += 1  # its hole was given up already
                return []
            out = self.flush()
            out.extend(self._restart(frame))
            return out
        if frame.seq in self._held:
            self.stats.duplicates += 1
            return []
        self.stats.accepted += 1
        self._held[frame.seq] = (frame, now)
        return self.poll(now)

    def poll(self, now: float) -> list[Output]:
        """Release the frames in order, and holes waited for long enough."""
        out: list[Output] = []
        while self._held:
            out.extend(self._release_in_order())
            if not self._held:
                break
            oldest = min(arrival for _, arrival in self._held.values())
            if now - oldest < self.window_s and len(self._held) <= self.max_frames:
                break
            out.append(self._give_up_hole())
        return out

    def flush(self) -> list[Output]:
        """Release everything held, holes as gaps (the stream ends or restarts)."""
        out: list[Output] = []
        while self._held:
            out.extend(self._release_in_order())
            if self._held:
                out.append(self._give_up_hole())
        return out

    # internals ----------------------------------------------------------------------------------
    def _is_restart(self, frame: AudioFrame, ahead: int) -> bool:
        if -ahead > self.max_frames:
            return True
        # a true duplicate or late frame was captured before the last released one ended
        return self._last_end_us is not None and frame.capture_ts_us >= self._last_end_us

    def _restart(self, frame: AudioFrame) -> list[Output]:
        self.stats.restarts += 1
        out: list[Output] = []
        previous = self._next
        if self._last_end_us is not None and frame.capture_ts_us > self._last_end_us:
            self.stats.gaps += 1
            assert previous is not None
            out.append(
                Gap(previous, frame.seq, self._last_end_us, frame.capture_ts_us, restart=True)
            )
        self._next = frame.seq
        self._fresh = True
        self.stats.accepted += 1
        self._held[frame.seq] = (frame, 0.0)
        out.extend(self._release_in_order())
        return out

    def _release_in_order(self) -> list[Output]:
        out: list[Output] = []
        assert self._next is not None
        while (item := self._held.pop(self._next, None)) is not None:
            frame = item[0]
            out.append(Released(frame, self._fresh))
            self._recent.append(frame.seq)
            self._fresh = False
            self._last_end_us = frame.capture_ts_us + frame.duration_us
            self._next = (self._next + 1) % SEQ_MOD
        return out

    def _give_up_hole(self) -> Gap:
        assert self._next is not None
        first = self._next
        resume = min(self._held, key=lambda s: _ahead(s, first))
        frame = self._held[resume][0]
        start = self._last_end_us if self._last_end_us is not None else frame.capture_ts_us
        gap = Gap(first, (resume - 1) % SEQ_MOD, start, max(start, frame.capture_ts_us))
        self.stats.gaps += 1
        self.stats.lost_frames += gap.lost_frames
        self._next = resume
        self._fresh = True
        return gap
