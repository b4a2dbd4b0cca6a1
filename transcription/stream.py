"""One seat channel's streaming recognition, with results aligned to capture time.

The hub receives each seat's audio as numbered frames stamped with their capture time
(``capture_ts_us``, UTC microseconds). :class:`ChannelStream` feeds them to its own recognizer in
an executor thread — never on the event loop — and reports through callbacks:

- ``on_partial(Partial)``: the utterance in progress changed (for the live view);
- ``on_final(FinalSegment)``: an utterance ended; its words carry capture times.

``feed`` also returns the finals its chunk produced, so callers may ignore the callbacks. Callbacks
run on the event loop, in order, and must not block.

Alignment: the recognizer counts samples, but audio may have gaps (dropped frames, a paused
capture). Each frame whose ``capture_ts_us`` differs from where the previous frames end (by more
than ``jitter_us``) starts a new *anchor* (sample offset → capture time); a recognizer time is
mapped through the anchor at or before it. So times stay right across gaps, and a frame that
overlaps the previous one (capture clock stepped back) never makes times go backwards: they are
clamped to be monotonic and counted in ``stats.clamped``.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TypeVar

from transcription.engine import Final, Recognizer, SpeechEngine

log = logging.getLogger(__name__)

BYTES_PER_SAMPLE = 2  # s16le mono

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word with capture times (UTC µs) and Vosk's confidence (0..1)."""

    text: str
    start_us: int
    end_us: int
    conf: float


@dataclass(frozen=True, slots=True)
class Partial:
    """The changing hypothesis of a seat's utterance in progress; ``ts`` = capture µs so far."""

    seat: str
    text: str
    ts: int


@dataclass(frozen=True, slots=True)
class FinalSegment:
    """A finished utterance of one seat, in capture time (UTC µs)."""

    seat: str
    text: str
    start_us: int
    end_us: int
    words: tuple[Word, ...]
    confidence: float


@dataclass(slots=True)
class StreamStats:
    """Counters of one :class:`ChannelStream`."""

    sample_rate: int = 16_000
    frames_in: int = 0
    frames_decoded: int = 0
    samples_in: int = 0
    samples_decoded: int = 0
    rejected: int = 0
    gaps: int = 0
    clamped: int = 0
    partials: int = 0
    finals: int = 0
    decode_seconds: float = 0.0

    @property
    def rtf(self) -> float:
        """Real-time factor: decode time / audio time (0.0 before any audio)."""
        audio = self.samples_decoded / self.sample_rate
        return self.decode_seconds / audio if audio else 0.0


@dataclass(slots=True)
class _Timeline:
    """Sample offset → capture µs, through anchors set at every discontinuity."""

    rate: int
    jitter_us: int
    offsets: list[int] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)
    end_sample: int = 0

    def add(self, capture_ts_us: int, samples: int) -> bool:
        """Record a frame of ``samples`` starting at ``capture_ts_us``; True when it is a gap."""
        gap = False
        if not self.offsets:
            self.offsets.append(0)
            self.stamps.append(capture_ts_us)
        else:
            expected = self.at(self.end_sample)
            if abs(capture_ts_us - expected) > self.jitter_us:
                gap = True
                self.offsets.append(self.end_sample)
                self.stamps.append(capture_ts_us)
        self.end_sample += samples
        return gap

    def at(self, sample: int) -> int:
        """Capture µs of ``sample`` (samples before the first anchor map to the first one)."""
        i = max(0, bisect.bisect_right(self.offsets, sample) - 1)
        return self.stamps[i] + (sample - self.offsets[i]) * 1_000_000 // self.rate

    def forget_before(self, sample: int) -> None:
        """Drop anchors no longer needed (results never go back before ``sample``)."""
        i = bisect.bisect_right(self.offsets, sample) - 1
        if i > 0:
            del self.offsets[:i]
            del self.stamps[:i]


class ChannelStream:
    """Streaming recognition of one seat channel (16 kHz s16le mono PCM, capture-stamped)."""

    def __init__(
        self,
        engine: SpeechEngine,
        seat: str,
        *,
        executor: Executor | None = None,
        phrases: Sequence[str] | None = None,
        on_partial: Callable[[Partial], object] | None = None,
        on_final: Callable[[FinalSegment], object] | None = None,
        jitter_us: int = 2_000,
        partial_every_s: float = 0.2,
        recognizer: Recognizer | None = None,
    ) -> None:
        """Create the recognizer (raises ``PhraseError`` for unknown phrase words).

        ``executor`` runs the decoding (default: the loop's default executor); share one pool of
        about one thread per core between all streams of a process. The partial hypothesis is
        asked for at most every ``partial_every_s`` of audio: Vosk's partial result costs about
        as much as decoding a 40 ms frame (bench/transcription.py), and a page does not need
        25 updates a second.

        ``recognizer``: one made (and ideally warmed up) ahead, e.g. from a pool of spares;
        otherwise one is created here. Either way the first :meth:`feed` warms it up if
        :meth:`prepare` was not awaited before.
        """
        self.seat = seat
        self._rate = engine.sample_rate
        self.stats = StreamStats(sample_rate=self._rate)
        self._rec: Recognizer = recognizer or engine.new_recognizer(phrases=phrases)
        self._prepared = False
        self._executor = executor
        self._on_partial = on_partial
        self._on_final = on_final
        self._timeline = _Timeline(rate=self._rate, jitter_us=jitter_us)
        self._lock = asyncio.Lock()  # a recognizer takes one call at a time, in order
        self._last_partial = ""
        self._last_end_us: int | None = None
        self._utterance_sample = 0  # where the utterance in progress started (samples)
        self._closed = False
        self._partial_every = max(1, int(partial_every_s * self._rate))
        self._since_partial = 0  # samples decoded since the last partial was asked for

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    async def prepare(self) -> None:
        """Warm the recognizer up off the loop (Vosk: ~1 s of CPU a fresh recognizer would
        otherwise spend on its first audio). Idempotent; :meth:`feed` calls it if needed."""
        async with self._lock:
            await self._prepare_locked()

    async def _prepare_locked(self) -> None:
        if not self._prepared:
            await self._off_loop(self._rec.warm_up)
            self._prepared = True

    async def feed(
        self, pcm: bytes, capture_ts_us: int, *, behind: bool = False
    ) -> list[FinalSegment]:
        """Decode one frame captured at ``capture_ts_us``; returns the finals it completed.

        ``behind``: the caller has more audio of this seat waiting; no partial is asked for
        (a partial of audio already superseded costs a decode step, and catching up gets the
        final — the record — out sooner).

        Raises ``ValueError`` for PCM that is not whole s16le samples (counted in
        ``stats.rejected``) and ``RuntimeError`` after :meth:`close`.
        """
        if self._closed:
            raise RuntimeError(f"ChannelStream {self.seat!r} is closed")
        if len(pcm) % BYTES_PER_SAMPLE:
            self.stats.rejected += 1
            log.warning("odd-length pcm rejected seat=%s bytes=%d", self.seat, len(pcm))
            raise ValueError(f"PCM of {len(pcm)} bytes is not whole 16-bit samples")
        if not pcm:
            return []
        samples = len(pcm) // BYTES_PER_SAMPLE
        async with self._lock:
            await self._prepare_locked()
            self.stats.frames_in += 1
            self.stats.samples_in += samples
            if self._timeline.add(capture_ts_us, samples):
                self.stats.gaps += 1
                log.debug("capture gap seat=%s ts_us=%d", self.seat, capture_ts_us)
            self._since_partial += samples
            want_partial = self._since_partial >= self._partial_every and not behind
            if want_partial:
                self._since_partial = 0
            final, partial, ended, took = await self._off_loop(self._decode, pcm, want_partial)
            self.stats.frames_decoded += 1
            self.stats.samples_decoded += samples
            self.stats.decode_seconds += took
            return self._emit(final, partial, ended=ended)

    async def close(self) -> list[FinalSegment]:
        """Flush the utterance in progress (emitted like any final); idempotent."""
        async with self._lock:
            if self._closed:
                return []
            self._closed = True
            final = await self._off_loop(self._rec.flush)
            return self._emit(final, None, ended=True)

    async def _off_loop(self, fn: Callable[..., _T], *args: object) -> _T:
        """``fn(*args)`` in the executor. A cancelled caller still waits for the call to end,
        keeping the lock: a Vosk recognizer used by two threads at once aborts the process
        (seen when a hub stopped mid-decode and flushed the stream: AcceptWaveform and
        FinalResult together)."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])
            if not future.cancelled():
                future.exception()  # retrieved: the caller is gone, nobody else will
            raise

    def _decode(
        self, pcm: bytes, want_partial: bool
    ) -> tuple[Final | None, str | None, bool, float]:
        """(final, partial, endpoint reached, seconds); runs in the executor, off the loop."""
        started = time.perf_counter()
        if self._rec.accept(pcm):
            return self._rec.final(), None, True, time.perf_counter() - started
        partial = self._rec.partial() if want_partial else None
        return None, partial, False, time.perf_counter() - started

    def _emit(self, final: Final | None, partial: str | None, *, ended: bool) -> list[FinalSegment]:
        out: list[FinalSegment] = []
        if final is not None:
            segment = self._segment(final)
            self.stats.finals += 1
            self._last_partial = ""
            if self._on_final:
                self._on_final(segment)
            out.append(segment)
        elif ended:
            self._last_partial = ""  # an endpoint with an empty utterance
        if partial is not None and partial != self._last_partial:
            self._last_partial = partial
            if partial:
                self.stats.partials += 1
                if self._on_partial:
                    ts = self._timeline.at(self._timeline.end_sample)
                    self._on_partial(Partial(self.seat, partial, ts))
        return out

    def _segment(self, final: Final) -> FinalSegment:
        words: list[Word] = []
        for w in final.words:
            start = self._clamp(self._to_us(w.start))
            end = self._clamp(max(start, self._to_us(w.end)))
            self._last_end_us = end
            words.append(Word(w.text, start, end, w.conf))
        if words:
            start_us, end_us = words[0].start_us, words[-1].end_us
            last_sample = round(final.words[-1].end * self._rate)
        else:  # no word timings: the utterance spans what was fed since the last final
            start_us = self._clamp(self._timeline.at(self._utterance_sample))
            end_us = self._clamp(self._timeline.at(self._timeline.end_sample))
            self._last_end_us = end_us
            last_sample = self._timeline.end_sample
        self._utterance_sample = last_sample
        self._timeline.forget_before(last_sample)
        return FinalSegment(
            seat=self.seat,
            text=final.text,
            start_us=start_us,
            end_us=end_us,
            words=tuple(words),
            confidence=final.confidence,
        )

    def _to_us(self, seconds: float) -> int:
        return self._timeline.at(round(seconds * self._rate))

    def _clamp(self, us: int) -> int:
        if self._last_end_us is not None and us < self._last_end_us:
            self.stats.clamped += 1
            return self._last_end_us
        return us
