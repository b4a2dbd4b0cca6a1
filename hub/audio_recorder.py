"""The audio recorder: each seat of a courtroom microphone recorded into hashed, chained WAV tracks.

Audio frames (:class:`protocol.audio.AudioFrame`) arrive over MQTT from the configured
``[[recorder.microphones]]`` as :class:`hub.registry.AudioReceived` changes. Per device:

1. a :class:`hub.jitter_buffer.JitterBuffer` puts them back in ``seq`` order, drops duplicates
   and, when a missing frame does not come within ``audio_jitter_ms``, gives it up: every seat
   track of the device gets a gap record (``index.open_gap`` + ``close_gap``, reason
   ``audio frames lost: seq 120–124 (100 ms)``), a counter and a log line; an alert is raised
   while more than ``gap_alert_ms`` of audio was lost in the last minute;
2. a writer thread de-interleaves the channels (channel *n* → ``seats[n]``) and appends each to a
   mono 16-bit WAV in ``<track>/.incoming/`` (track ``<agent>-<device>-<seat>``), cut on a grid
   of ``audio_segment_s`` seconds of capture time (files of all seats start and end together);
3. a closed file is moved to ``<track>/<YYYYMMDD>/<track>_<UTC start>Z.wav`` and indexed like a
   video segment (hash chain per track), tagged with the hearing open in the venue; ``frames``
   is its number of samples.

**Gaps are never glued nor filled.** Nothing (no silence) is written for lost frames: a gap
closes the WAV and the next frame starts a new one, so sample *i* of every file was captured at
``start_ms + i / rate`` exactly, and the gap record says what is missing. Frames the hub itself
drops (the writer queue is full: disk stalled) are recorded as gaps the same way.

**Never before what is already recorded.** A device's new file (after a gap or a restart of
its stream) starts at its first frame's capture time, but never before the end of that device's
previous file: the same microphone cannot have captured two stretches at once, so a capture time
that says so comes from an agent clock stepped back (before the hub's :mod:`hub.clock_skew`
confirmed the step) and the file is placed right after the previous one (``clamped_starts``).
Frames arrive with the agent's measured clock offset already taken out (:class:`HubService`).

**Crash tolerance.** The writer flushes after every batch of frames. After a kill -9 the open
file's RIFF header still says 0 bytes of data: at the next :meth:`AudioRecorder.start`, every
WAV left in a track's ``.incoming/`` is *repaired* — its RIFF and data sizes are set from the
file's length and a trailing partial sample is cut off — then moved and indexed as
*recovered*. Rewriting those header bytes is fine: the file was never hashed, the hash and chain
entry cover the repaired file. Its start time comes from the file name (``<track>_<ms>.wav``).

Live views: :meth:`AudioRecorder.levels` (RMS dBFS of each seat over the last ~300 ms),
:meth:`AudioRecorder.loudest_seat` (with hysteresis, for voice follow) and an optional
``on_pcm(track, seat, capture_ts_us, mono_pcm)`` hook for the live transcriber.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import queue
import re
import struct
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol

import numpy as np

from hub.alerts import AlertBoard, Severity
from hub.camera_worker import final_path, incoming_dir
from hub.jitter_buffer import Gap, JitterBuffer, Released
from hub.recorder_config import MicrophoneConfig, RecorderConfig
from hub.recording_index import RecordingIndex
from hub.registry import AudioReceived, HubChange
from protocol.audio import AudioFrame

log = logging.getLogger(__name__)

#: ``on_pcm(track, seat, capture_ts_us, mono s16le pcm)``; called on the writer thread
PcmHook = Callable[[str, str, int, bytes], None]

#: live levels are RMS over this much audio
LEVEL_WINDOW_S: Final = 0.3
#: a seat not heard from for this long counts as silent
LEVEL_STALE_S: Final = 1.0
SILENCE_DB: Final = -120.0
#: lost audio is summed over this window for the alert
ALERT_WINDOW_S: Final = 60.0
#: frames waiting for the writer; beyond this the hub drops (and records the gap)
QUEUE_FRAMES: Final = 20_000
WAV_HEADER: Final = 44
_INCOMING_NAME = re.compile(r"_(\d+)(?:-\d+)?\.wav$")


class SessionLookup(Protocol):
    """Which hearing is open in a venue (:class:`hub.hearings.HearingService`)."""

    def active_session(self, venue: str) -> str | None:
        """The open hearing's id, or None."""


@dataclass(frozen=True, slots=True)
class AudioSegment:
    """A closed WAV of one seat track (moved into its dated folder unless ``path`` says not)."""

    mic: MicrophoneConfig
    track: str
    seat: str
    path: Path
    start_ms: int
    end_ms: int
    samples: int
    recovered: bool = False


@dataclass
class MicStats:
    """Counters of one microphone device."""

    frames_received: int = 0
    duplicates: int = 0
    late: int = 0
    gaps: int = 0
    frames_lost: int = 0
    lost_ms: int = 0
    restarts: int = 0
    dropped_queue_full: int = 0
    segments_indexed: int = 0


@dataclass
class _Mic:
    config: MicrophoneConfig
    jitter: JitterBuffer
    stats: MicStats = field(default_factory=MicStats)
    #: frames the hub dropped since the last one queued: (from_us, to_us, count)
    dropped: tuple[int, int, int] | None = None
    lost_recent: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    alerted: bool = False

    @property
    def tracks(self) -> list[str]:
        return [self.config.track(seat) for seat in self.config.seats]

    @property
    def name(self) -> str:
        return f"{self.config.agent}/{self.config.device}"


@dataclass(frozen=True, slots=True)
class _Write:
    mic: MicrophoneConfig
    frame: AudioFrame
    fresh: bool


_STOP: Final = object()
#: while a device's writes fail (a full disk), its frames are held and a write is tried again
#: this often
RETRY_WRITE_S: Final = 1.0


@dataclass
class _Failing:
    """A device's stretch of frames not written (one gap when writing works again)."""

    mic: MicrophoneConfig
    from_us: int
    to_us: int
    frames: int
    reason: str
    retry_at: float = 0.0


class AudioRecorder:
    """Records the configured microphones' seats (see the module docstring).

    Register :meth:`on_change` with ``HubService.add_listener`` after :meth:`start`.
    """

    def __init__(
        self,
        config: RecorderConfig,
        *,
        storage_root: Path,
        index: RecordingIndex,
        alerts: AlertBoard | None = None,
        sessions: SessionLookup | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_pcm: PcmHook | None = None,
        gap_alert_ms: int = 500,
        hysteresis_db: float = 6.0,
        speech_floor_db: float = -50.0,
    ) -> None:
        """``clock``: monotonic seconds (jitter window, level age); ``gap_alert_ms``: lost audio
        per minute that raises an alert; ``hysteresis_db``/``speech_floor_db``: see
        :meth:`loudest_seat`."""
        self.config = config
        self.storage_root = storage_root
        self.index = index
        self.alerts = alerts
        self.sessions = sessions
        self.gap_alert_ms = gap_alert_ms
        self.hysteresis_db = hysteresis_db
        self.speech_floor_db = speech_floor_db
        self._clock = clock
        window_s = config.audio_jitter_ms / 1000
        self._mics = {
            (m.agent, m.device): _Mic(m, JitterBuffer(window_s=window_s))
            for m in config.microphones
        }
        self._queue: queue.Queue[_Write | object] = queue.Queue(QUEUE_FRAMES)
        self._writer = _WavWriter(
            storage_root,
            segment_s=config.audio_segment_s or config.segment_s,
            clock=clock,
            on_pcm=on_pcm,
        )
        self._thread: threading.Thread | None = None
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._track_locks: dict[str, asyncio.Lock] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._loudest: dict[str, str] = {}
        self._unknown: set[tuple[str, str]] = set()
        self.listener_errors = 0
        self.index_failures = 0
        self.segments_indexed = 0

    # lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Index what a crash left in ``.incoming/``, then start the writer and the jitter clock."""
        self._loop = asyncio.get_running_loop()
        for mic in self._mics.values():
            for seat in mic.config.seats:
                await self._recover(mic.config, seat)
        self._writer.on_closed = self._closed_threadsafe
        self._writer.on_failed = self._failed_threadsafe
        self._thread = threading.Thread(target=self._writer.run, args=(self._queue,), daemon=True)
        self._thread.name = "audio-writer"
        self._thread.start()
        self._poller = asyncio.create_task(self._poll_forever(), name="audio-jitter")
        self._running = True
        log.info(
            "audio recorder started microphones=%d root=%s", len(self._mics), self.storage_root
        )

    async def stop(self) -> None:
        """Release what the jitter buffers hold, close every WAV and index it before returning."""
        if not self._running:
            return
        self._running = False
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        for mic in self._mics.values():
            self._dispatch(mic, mic.jitter.flush())
        self._flush_dropped_all()
        await asyncio.to_thread(self._queue.put, _STOP)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        # the writer's last hand-overs were queued on the loop before join returned
        await asyncio.sleep(0)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        log.info("audio recorder stopped segments_indexed=%d", self.segments_indexed)

    def set_pcm_hook(self, hook: PcmHook | None) -> None:
        """Install (or remove) the live PCM hook; it runs on the writer thread and must be quick
        (hand the samples to another thread or ``loop.call_soon_threadsafe``)."""
        self._writer.on_pcm = hook

    # the listener -------------------------------------------------------------------------------
    def on_change(self, change: HubChange) -> None:
        """``HubService`` listener: audio frames of configured microphones; never blocks/raises."""
        if not isinstance(change, AudioReceived) or not self._running:
            return
        try:
            mic = self._mics.get((change.agent, change.device))
            if mic is None:
                if (change.agent, change.device) not in self._unknown:
                    self._unknown.add((change.agent, change.device))
                    log.info(
                        "audio of an unconfigured microphone ignored agent=%s device=%s",
                        change.agent,
                        change.device,
                    )
                return
            mic.stats.frames_received += 1
            self._dispatch(mic, mic.jitter.push(change.frame, self._clock()))
        except Exception:
            self.listener_errors += 1
            log.exception("audio frame not handled agent=%s device=%s", change.agent, change.device)

    # live views ---------------------------------------------------------------------------------
    def tracks(self) -> list[str]:
        """Every recorded track id."""
        return [t for mic in self._mics.values() for t in mic.tracks]

    def levels(self, venue: str | None = None) -> dict[str, float]:
        """Track → RMS dBFS over the last ~300 ms (``SILENCE_DB`` when not heard lately)."""
        now = self._clock()
        current = self._writer.level_snapshot()
        out: dict[str, float] = {}
        for mic in self._mics.values():
            if venue is not None and mic.config.venue != venue:
                continue
            for track in mic.tracks:
                db, at = current.get(track, (SILENCE_DB, -math.inf))
                out[track] = db if now - at <= LEVEL_STALE_S else SILENCE_DB
        return out

    def seat_levels(self, venue: str) -> dict[str, float]:
        """Seat → dBFS in ``venue`` (the loudest track when two microphones share a seat name)."""
        out: dict[str, float] = {}
        levels = self.levels(venue)
        for mic in self._mics.values():
            if mic.config.venue != venue:
                continue
            for seat in mic.config.seats:
                db = levels[mic.config.track(seat)]
                out[seat] = max(db, out.get(seat, SILENCE_DB))
        return out

    def loudest_seat(self, venue: str) -> str | None:
        """The seat speaking in ``venue``, with hysteresis: another seat takes over only when it
        is ``hysteresis_db`` louder than the current one; below ``speech_floor_db`` (nobody
        speaks) the current seat stays. None before anyone spoke."""
        levels = self.seat_levels(venue)
        if not levels:
            return None
        seat, db = max(levels.items(), key=lambda item: item[1])
        current = self._loudest.get(venue)
        if db < self.speech_floor_db or seat == current:
            return current
        if current is None or db >= levels.get(current, SILENCE_DB) + self.hysteresis_db:
            self._loudest[venue] = seat
            return seat
        return current

    def stats(self, agent: str, device: str) -> dict[str, int] | None:
        """A microphone's counters (None when not configured)."""
        mic = self._mics.get((agent, device))
        if mic is None:
            return None
        return {**vars(mic.stats), "waiting": mic.jitter.waiting}

    def summary(self) -> dict[str, Any]:
        """Totals for the demo and the CLI."""
        return {
            "microphones": len(self._mics),
            "tracks": len(self.tracks()),
            "segments_indexed": self.segments_indexed,
            "index_failures": self.index_failures,
            "write_errors": self._writer.write_errors,
            "clamped_starts": self._writer.clamped_starts,
            "listener_errors": self.listener_errors,
            "by_device": {m.name: vars(m.stats).copy() for m in self._mics.values()},
        }

    # jitter output → writer, gaps ---------------------------------------------------------------
    def _dispatch(self, mic: _Mic, outputs: list[Released | Gap]) -> None:
        for out in outputs:
            if isinstance(out, Gap):
                self._lost(mic, out.from_us, out.to_us, _gap_reason(out), out.lost_frames)
                mic.stats.restarts += int(out.restart)
                continue
            fresh = out.fresh or mic.dropped is not None
            try:
                self._queue.put_nowait(_Write(mic.config, out.frame, fresh))
            except queue.Full:
                self._note_dropped(mic, out.frame)
                continue
            self._flush_dropped(mic)
        js = mic.jitter.stats
        mic.stats.duplicates, mic.stats.late = js.duplicates, js.late

    def _note_dropped(self, mic: _Mic, frame: AudioFrame) -> None:
        mic.stats.dropped_queue_full += 1
        end = frame.capture_ts_us + frame.duration_us
        if mic.dropped is None:
            mic.dropped = (frame.capture_ts_us, end, 1)
            log.error("audio writer behind: dropping frames device=%s", mic.name)
        else:
            mic.dropped = (mic.dropped[0], end, mic.dropped[2] + 1)

    def _flush_dropped(self, mic: _Mic) -> None:
        if mic.dropped is None:
            return
        start, end, count = mic.dropped
        mic.dropped = None
        reason = f"audio frames dropped by the hub (writer behind): {count} frames"
        self._lost(mic, start, end, f"{reason} ({(end - start) // 1000} ms)", count)

    def _flush_dropped_all(self) -> None:
        for mic in self._mics.values():
            self._flush_dropped(mic)

    def _lost(self, mic: _Mic, from_us: int, to_us: int, reason: str, frames: int) -> None:
        """A hole in a device's audio: counters, a log line, a gap per seat track, maybe an alert."""
        lost_ms = max(0, to_us - from_us) // 1000
        mic.stats.gaps += 1
        mic.stats.frames_lost += frames
        mic.stats.lost_ms += lost_ms
        mic.lost_recent.append((self._clock(), lost_ms))
        log.warning(
            "audio gap device=%s from_us=%d to_us=%d reason=%s", mic.name, from_us, to_us, reason
        )
        from_ms, to_ms = from_us // 1000, max(from_us // 1000, -(-to_us // 1000))
        self._spawn(self._record_gap(mic, from_ms, to_ms, reason))
        self._check_alert(mic)

    async def _record_gap(self, mic: _Mic, from_ms: int, to_ms: int, reason: str) -> None:
        for track in mic.tracks:
            try:
                gap = await self.index.open_gap(
                    camera=track, venue=mic.config.venue, from_ms=from_ms, reason=reason
                )
                await self.index.close_gap(gap.id, to_ms)
            except Exception:
                log.exception("audio gap not recorded track=%s", track)

    def _check_alert(self, mic: _Mic) -> None:
        horizon = self._clock() - ALERT_WINDOW_S
        while mic.lost_recent and mic.lost_recent[0][0] < horizon:
            mic.lost_recent.popleft()
        lost = sum(ms for _, ms in mic.lost_recent)
        key = f"audio-lost:{mic.config.agent}-{mic.config.device}"
        if lost >= self.gap_alert_ms and not mic.alerted:
            mic.alerted = True
            message = (
                f"音频丢帧 {mic.name} / audio lost: {lost} ms in the last minute "
                f"({mic.config.venue})"
            )
            if self.alerts is not None:
                self._spawn(
                    self.alerts.raise_alert(
                        key, message, source="audio-recorder", severity=Severity.WARNING
                    )
                )
        elif lost < self.gap_alert_ms and mic.alerted:
            mic.alerted = False
            if self.alerts is not None:
                self._spawn(self.alerts.clear(key))

    async def _poll_forever(self) -> None:
        every = min(0.05, self.config.audio_jitter_ms / 4000)
        while True:
            await asyncio.sleep(every)
            for mic in self._mics.values():
                try:
                    self._dispatch(mic, mic.jitter.poll(self._clock()))
                    if mic.alerted:
                        self._check_alert(mic)
                except Exception:
                    self.listener_errors += 1
                    log.exception("audio jitter poll failed device=%s", mic.name)

    # closed segments → index --------------------------------------------------------------------
    def _failed_threadsafe(
        self, config: MicrophoneConfig, from_us: int, to_us: int, reason: str, frames: int
    ) -> None:
        mic = self._mics.get((config.agent, config.device))
        if mic is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._lost, mic, from_us, to_us, reason, frames)

    def _closed_threadsafe(self, segments: list[AudioSegment]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._closed, segments)

    def _closed(self, segments: list[AudioSegment]) -> None:
        for segment in segments:
            self._spawn(self._index_segment(segment))

    async def _index_segment(self, seg: AudioSegment) -> None:
        # one track's segments enter its chain in order
        async with self._track_locks.setdefault(seg.track, asyncio.Lock()):
            session = self.sessions.active_session(seg.mic.venue) if self.sessions else None
            try:
                await self.index.add_segment(
                    camera=seg.track,
                    venue=seg.mic.venue,
                    session_id=session,
                    path=seg.path,
                    start_ms=seg.start_ms,
                    end_ms=seg.end_ms,
                    frames=seg.samples,
                    recovered=seg.recovered,
                )
            except Exception:
                self.index_failures += 1
                log.exception("audio segment not indexed track=%s path=%s", seg.track, seg.path)
                return
        self.segments_indexed += 1
        mic = self._mics.get((seg.mic.agent, seg.mic.device))
        if mic is not None:
            mic.stats.segments_indexed += 1

    async def _recover(self, mic: MicrophoneConfig, seat: str) -> None:
        """Repair, move and index the WAVs an earlier run left in a track's ``.incoming/``."""
        track = mic.track(seat)
        folder = incoming_dir(self.storage_root, track)
        leftovers = await asyncio.to_thread(_leftover_wavs, folder)
        for path in leftovers:
            try:
                segment = await asyncio.to_thread(
                    _repair_and_move, self.storage_root, mic, seat, path
                )
            except OSError:
                log.exception("leftover audio not recovered path=%s", path)
                continue
            if segment is not None:
                log.warning("recovering audio left by a crash track=%s path=%s", track, path)
                await self._index_segment(segment)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _gap_reason(gap: Gap) -> str:
    if gap.restart:
        return (
            f"audio stream restarted: seq {gap.first_seq} → {gap.last_seq} "
            f"({gap.duration_ms} ms without audio)"
        )
    return f"audio frames lost: seq {gap.first_seq}–{gap.last_seq} ({gap.duration_ms} ms)"


# the writer thread -------------------------------------------------------------------------------


@dataclass
class _SeatFile:
    track: str
    seat: str
    channel: int
    path: Path
    file: BinaryIO
    wav: wave.Wave_write


@dataclass
class _Unclosed:
    """A seat file whose close failed (a full disk). Its handle is kept: the bytes still in
    its buffer reach the disk when there is room again, then it is repaired, moved and indexed
    like any segment (:meth:`_Writer._retry_unclosed`)."""

    mic: MicrophoneConfig
    seat_file: _SeatFile
    #: samples the file should hold; fewer after the repair = a stretch lost, a gap
    samples: int
    rate: int
    start_us: int
    retry_at: float


@dataclass
class _Group:
    """The open WAVs of one device (one per seat), sharing start and length."""

    mic: MicrophoneConfig
    start_us: int
    rate: int
    channels: int
    cut_samples: int  # samples at which the segment grid cuts it
    files: list[_SeatFile]
    samples: int = 0

    def time_at(self, samples: int) -> int:
        return self.start_us + samples * 1_000_000 // self.rate


class _LevelMeter:
    """RMS over the last ``LEVEL_WINDOW_S`` of one seat."""

    def __init__(self) -> None:
        self.parts: collections.deque[tuple[float, int]] = collections.deque()
        self.sum = 0.0
        self.n = 0

    def add(self, samples: np.ndarray[Any, Any], rate: int) -> float:
        x = samples.astype(np.float64)
        part = (float(np.dot(x, x)), len(x))
        self.parts.append(part)
        self.sum += part[0]
        self.n += part[1]
        window = int(rate * LEVEL_WINDOW_S)
        while len(self.parts) > 1 and self.n - self.parts[0][1] >= window:
            old_sum, old_n = self.parts.popleft()
            self.sum -= old_sum
            self.n -= old_n
        if self.n == 0 or self.sum <= 0:
            return SILENCE_DB
        rms = math.sqrt(self.sum / self.n) / 32768.0
        return max(SILENCE_DB, 20 * math.log10(rms))


class _WavWriter:
    """Runs on its own thread: frames in, mono WAVs per seat out (see the module docstring)."""

    def __init__(
        self,
        storage_root: Path,
        *,
        segment_s: float,
        clock: Callable[[], float],
        on_pcm: PcmHook | None,
    ) -> None:
        self.root = storage_root
        self.segment_us = max(1, int(segment_s * 1_000_000))
        self.clock = clock
        self.on_pcm = on_pcm
        self.on_closed: Callable[[list[AudioSegment]], None] = lambda segments: None
        #: ``(mic, from_us, to_us, reason, frames)``: a stretch the writer could not write
        self.on_failed: Callable[[MicrophoneConfig, int, int, str, int], None] = lambda *args: None
        self._failing: dict[tuple[str, str], _Failing] = {}
        self._unclosed: list[_Unclosed] = []
        self.write_errors = 0
        self.pcm_hook_errors = 0
        self._groups: dict[tuple[str, str], _Group] = {}
        self._continue_at: dict[tuple[str, str], int] = {}
        #: where each device's last closed file ended (a new file never starts before it)
        self._ended_at: dict[tuple[str, str], int] = {}
        #: new files moved after their device's previous end (an agent clock stepped back)
        self.clamped_starts = 0
        self._meters: dict[str, _LevelMeter] = {}
        self._levels: dict[str, tuple[float, float]] = {}
        self._levels_lock = threading.Lock()
        self._warned: set[tuple[str, str, int]] = set()

    def level_snapshot(self) -> dict[str, tuple[float, float]]:
        """Track → (dBFS, clock time of the update); any thread."""
        with self._levels_lock:
            return dict(self._levels)

    def run(self, items: queue.Queue[_Write | object]) -> None:
        while True:
            item = items.get()
            while True:
                if item is _STOP:
                    self._close_all()
                    return
                assert isinstance(item, _Write)
                if not self._held(item):
                    try:
                        self._write(item)
                    except Exception as exc:
                        self._failed(item, exc)
                    else:
                        self._resumed(item.mic)
                try:
                    item = items.get_nowait()
                except queue.Empty:
                    break
            self._flush_all()  # a batch written: on disk before the next wait (kill -9 safe)
            if self._unclosed:
                self._retry_unclosed()

    # failing writes (a full disk) -------------------------------------------------------------------
    def _failed(self, item: _Write, exc: Exception) -> None:
        """A frame not written: close what is open, hold the device's frames for
        ``RETRY_WRITE_S`` and remember the stretch as one gap (see :meth:`_resumed`).

        Without the hold, a full disk made every frame open a new file that failed at once:
        the chaos suite found 54 stub WAVs in ``.incoming/`` after 15 s of full disk, none in
        the chain, and the stretch without a gap record."""
        key = (item.mic.agent, item.mic.device)
        self.write_errors += 1
        end = item.frame.capture_ts_us + item.frame.duration_us
        failing = self._failing.get(key)
        if failing is None:
            log.error(
                "audio frames not written device=%s/%s error=%s; retrying every %g s",
                *key,
                exc,
                RETRY_WRITE_S,
            )
            failing = self._failing[key] = _Failing(
                item.mic, item.frame.capture_ts_us, end, 0, str(exc)
            )
        failing.to_us, failing.frames = end, failing.frames + 1
        failing.retry_at = self.clock() + RETRY_WRITE_S
        self._close(key)

    def _held(self, item: _Write) -> bool:
        """The device's writes are failing and it is not yet time to try again: the frame
        joins the stretch that will be a gap."""
        failing = self._failing.get((item.mic.agent, item.mic.device))
        if failing is None or self.clock() >= failing.retry_at:
            return False
        failing.to_us = item.frame.capture_ts_us + item.frame.duration_us
        failing.frames += 1
        return True

    def _resumed(self, mic: MicrophoneConfig) -> None:
        """Writing works again: the stretch becomes a gap, and the files that could not be
        closed meanwhile are repaired, moved and indexed (as after a crash)."""
        key = (mic.agent, mic.device)
        failing = self._failing.pop(key, None)
        if failing is None:
            return
        log.warning("audio writes work again device=%s/%s", *key)
        reason = f"audio not written by the hub ({failing.reason}): {failing.frames} frames"
        self.on_failed(mic, failing.from_us, failing.to_us, reason, failing.frames)
        group = self._groups.get(key)
        open_now = {f.path for f in group.files} if group is not None else set()
        open_now |= {u.seat_file.path for u in self._unclosed}  # still ours: see _retry_unclosed
        for seat in mic.seats:
            for path in _leftover_wavs(incoming_dir(self.root, mic.track(seat))):
                if path in open_now:
                    continue
                try:
                    segment = _repair_and_move(self.root, mic, seat, path)
                except OSError:
                    log.exception("audio left unclosed not recovered path=%s", path)
                    continue
                if segment is not None:
                    self.on_closed([segment])

    def _write(self, item: _Write) -> None:
        mic, frame = item.mic, item.frame
        key = (mic.agent, mic.device)
        group = self._groups.get(key)
        if group is not None and (
            item.fresh or frame.sample_rate != group.rate or frame.channels != group.channels
        ):
            self._close(key)
            group = None
        if item.fresh:
            self._continue_at.pop(key, None)
        pcm = np.frombuffer(frame.pcm, dtype="<i2").reshape(-1, frame.channels)
        done = 0
        frame_us: int | None = None  # where this frame starts on the recording's timeline
        while done < len(pcm):
            if group is None:
                start = self._continue_at.pop(key, None)  # just after a cut: continuous
                if start is None:
                    start = frame.capture_ts_us + done * 1_000_000 // frame.sample_rate
                    ended = self._ended_at.get(key)
                    if ended is not None and start < ended:
                        self.clamped_starts += 1
                        log.warning(
                            "audio capture time before the previous file's end device=%s/%s "
                            "behind_ms=%d (agent clock stepped back?): placed after it",
                            mic.agent,
                            mic.device,
                            (ended - start) // 1000,
                        )
                        start = ended
                group = self._open(mic, frame, start)
            if frame_us is None:
                frame_us = group.time_at(group.samples)
            take = min(group.cut_samples - group.samples, len(pcm) - done)
            self._append(group, pcm[done : done + take])
            done += take
            if group.samples >= group.cut_samples:
                self._continue_at[key] = group.time_at(group.samples)
                self._close(key)
                group = None
        if frame_us is not None:
            self._announce(mic, pcm, frame_us)

    def _announce(self, mic: MicrophoneConfig, pcm: np.ndarray[Any, Any], at_us: int) -> None:
        """Hand each seat's whole frame to the PCM hook (the live transcriber).

        Whole frames, even when a segment cut splits one in the files: Vosk's free-mode text
        depends on how its audio is chunked, so the live text must not depend on where the
        segment grid falls.
        """
        hook = self.on_pcm
        if hook is None:
            return
        for channel, seat in enumerate(mic.seats[: pcm.shape[1]]):
            track = mic.track(seat)
            data = np.ascontiguousarray(pcm[:, channel]).astype("<i2", copy=False).tobytes()
            try:
                hook(track, seat, at_us, data)
            except Exception:
                self.pcm_hook_errors += 1
                log.exception("audio pcm hook failed track=%s", track)

    def _open(self, mic: MicrophoneConfig, frame: AudioFrame, start_us: int) -> _Group:
        rate = frame.sample_rate
        cut_us = (start_us // self.segment_us + 1) * self.segment_us
        cut_samples = max(1, -(-(cut_us - start_us) * rate // 1_000_000))
        files: list[_SeatFile] = []
        self._warn_channels(mic, frame.channels)
        for channel, seat in enumerate(mic.seats[: frame.channels]):
            track = mic.track(seat)
            folder = incoming_dir(self.root, track)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{track}_{start_us // 1000}.wav"
            n = 1
            while path.exists():
                path = folder / f"{track}_{start_us // 1000}-{n}.wav"
                n += 1
            fh: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in _close
            wav = wave.open(fh, "wb")  # noqa: SIM115 - closed in _close
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            files.append(_SeatFile(track, seat, channel, path, fh, wav))
        group = _Group(mic, start_us, rate, frame.channels, cut_samples, files)
        self._groups[(mic.agent, mic.device)] = group
        return group

    def _warn_channels(self, mic: MicrophoneConfig, channels: int) -> None:
        key = (mic.agent, mic.device, channels)
        if channels != len(mic.seats) and key not in self._warned:
            self._warned.add(key)
            log.warning(
                "audio channels do not match the seats device=%s/%s channels=%d seats=%d "
                "(channels without a seat are not recorded, seats without one get no track file)",
                mic.agent,
                mic.device,
                channels,
                len(mic.seats),
            )

    def _append(self, group: _Group, chunk: np.ndarray[Any, Any]) -> None:
        now = self.clock()
        for seat_file in group.files:
            mono = np.ascontiguousarray(chunk[:, seat_file.channel])
            data = mono.astype("<i2", copy=False).tobytes()
            seat_file.wav.writeframesraw(data)
            meter = self._meters.setdefault(seat_file.track, _LevelMeter())
            db = meter.add(mono, group.rate)
            with self._levels_lock:
                self._levels[seat_file.track] = (db, now)
        group.samples += len(chunk)

    def _flush_all(self) -> None:
        for group in self._groups.values():
            for seat_file in group.files:
                try:
                    seat_file.file.flush()
                except OSError:
                    self.write_errors += 1
                    log.exception("audio flush failed path=%s", seat_file.path)

    def _close(self, key: tuple[str, str]) -> None:
        group = self._groups.pop(key, None)
        if group is None:
            return
        closed: list[AudioSegment] = []
        start_ms = group.start_us // 1000
        end_ms = max(start_ms, group.time_at(group.samples) // 1000)
        self._ended_at[key] = max(self._ended_at.get(key, 0), group.time_at(group.samples))
        for seat_file in group.files:
            try:
                seat_file.wav.close()  # patches the RIFF sizes
                seat_file.file.flush()
                os.fsync(seat_file.file.fileno())
                seat_file.file.close()
                if group.samples == 0:
                    seat_file.path.unlink(missing_ok=True)
                    continue
                dest = _move_into_place(self.root, seat_file.track, start_ms, seat_file.path)
            except OSError as exc:
                # kept open with its buffer: closed, repaired and indexed when there is room
                # (before, the handle was dropped and the file waited in .incoming/ for the
                # next start, with no gap: the chaos suite's disk-full fault found a 10 s hole)
                self.write_errors += 1
                log.error(
                    "audio segment not closed path=%s error=%s; retrying every %g s",
                    seat_file.path,
                    exc,
                    RETRY_WRITE_S,
                )
                self._unclosed.append(
                    _Unclosed(
                        group.mic,
                        seat_file,
                        group.samples,
                        group.rate,
                        group.start_us,
                        self.clock() + RETRY_WRITE_S,
                    )
                )
                continue
            closed.append(
                AudioSegment(
                    group.mic,
                    seat_file.track,
                    seat_file.seat,
                    dest,
                    start_ms,
                    end_ms,
                    group.samples,
                )
            )
        if closed:
            self.on_closed(closed)

    def _retry_unclosed(self, *, last: bool = False) -> None:
        """Try again to close the files whose close failed (due ones; all when ``last``)."""
        now = self.clock()
        waiting: list[_Unclosed] = []
        for item in self._unclosed:
            if not last and now < item.retry_at:
                waiting.append(item)
                continue
            try:
                segment = self._finish_unclosed(item)
            except OSError as exc:
                self.write_errors += 1
                item.retry_at = now + RETRY_WRITE_S
                if last:  # the hub stops: the file is repaired at the next start
                    with contextlib.suppress(OSError):
                        item.seat_file.file.close()  # what is still buffered is lost
                    log.error(
                        "audio segment left unclosed path=%s error=%s", item.seat_file.path, exc
                    )
                    with contextlib.suppress(OSError):
                        size = item.seat_file.path.stat().st_size
                        self._shortfall(item, max(0, size - WAV_HEADER) // 2)
                else:
                    waiting.append(item)
                continue
            if segment is not None:
                log.warning("audio segment closed late path=%s", segment.path)
                self.on_closed([segment])
        self._unclosed = waiting

    def _finish_unclosed(self, item: _Unclosed) -> AudioSegment | None:
        """Flush, close, repair and move one file; a gap for the samples it lacks."""
        seat_file = item.seat_file
        seat_file.file.flush()  # raises while the disk is still full: tried again later
        os.fsync(seat_file.file.fileno())
        seat_file.file.close()
        segment = _repair_and_move(self.root, item.mic, seat_file.seat, seat_file.path)
        self._shortfall(item, segment.samples if segment is not None else 0)
        return segment

    def _shortfall(self, item: _Unclosed, written: int) -> None:
        """A gap for the end of a file that never reached the disk (per device, like every
        gap of a failed write)."""
        if written >= item.samples:
            return
        from_us = item.start_us + written * 1_000_000 // item.rate
        to_us = item.start_us + item.samples * 1_000_000 // item.rate
        missing = item.samples - written
        reason = (
            f"audio not written by the hub (disk full): {missing} samples of {item.seat_file.track}"
        )
        self.on_failed(item.mic, from_us, to_us, reason, 0)

    def _close_all(self) -> None:
        for failing in self._failing.values():
            reason = f"audio not written by the hub ({failing.reason}): {failing.frames} frames"
            self.on_failed(failing.mic, failing.from_us, failing.to_us, reason, failing.frames)
        self._failing.clear()
        for key in list(self._groups):
            try:
                self._close(key)
            except Exception:
                log.exception("audio segment not closed device=%s/%s", *key)
        self._retry_unclosed(last=True)


# files -------------------------------------------------------------------------------------------


def _move_into_place(root: Path, track: str, start_ms: int, path: Path) -> Path:
    """Move a closed WAV to its dated folder (atomic rename; never overwrites)."""
    dest = final_path(root, track, start_ms, ".wav")
    dest.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while dest.exists():
        dest = dest.with_name(f"{dest.stem}-{n}{dest.suffix}")
        n += 1
    path.rename(dest)
    return dest


def _leftover_wavs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".wav")


def repair_wav(path: Path) -> tuple[int, int] | None:
    """Make a WAV whose writer died readable: RIFF/data sizes from the file's length, a
    trailing partial sample cut off. Returns ``(sample_rate, samples)``; None when the file
    holds no audio (too short) or is not a 44-byte-header PCM WAV (left as it is)."""
    with open(path, "r+b") as fh:
        header = fh.read(WAV_HEADER)
        size = os.fstat(fh.fileno()).st_size
        if len(header) < WAV_HEADER:
            return None
        riff, _, wave_id, fmt_id, fmt_len = struct.unpack_from("<4sI4s4sI", header)
        channels, rate, _, block, bits = struct.unpack_from("<HIIHH", header, 22)
        data_id = header[36:40]
        if (riff, wave_id, fmt_id, fmt_len, data_id) != (b"RIFF", b"WAVE", b"fmt ", 16, b"data"):
            return None
        if block < 1 or rate < 1 or block != channels * bits // 8:
            return None
        data = (size - WAV_HEADER) // block * block
        if data == 0:
            return None
        if size != WAV_HEADER + data or struct.unpack_from("<I", header, 40)[0] != data:
            fh.truncate(WAV_HEADER + data)
            fh.seek(4)
            fh.write(struct.pack("<I", 36 + data))
            fh.seek(40)
            fh.write(struct.pack("<I", data))
            fh.flush()
            os.fsync(fh.fileno())
        return rate, data // block


def _repair_and_move(
    root: Path, mic: MicrophoneConfig, seat: str, path: Path
) -> AudioSegment | None:
    track = mic.track(seat)
    repaired = repair_wav(path)
    if repaired is None:
        if path.stat().st_size <= WAV_HEADER:
            # no sample of audio: nothing to keep (left there, verify would call it ADDED)
            log.info("empty leftover audio removed path=%s", path)
            path.unlink(missing_ok=True)
        else:
            log.error(
                "leftover audio is not a WAV this recorder wrote; left in place path=%s", path
            )
        return None
    rate, samples = repaired
    duration_ms = samples * 1000 // rate
    match = _INCOMING_NAME.search(path.name)
    start_ms = int(match.group(1)) if match else int(path.stat().st_mtime * 1000) - duration_ms
    dest = _move_into_place(root, track, start_ms, path)
    return AudioSegment(
        mic, track, seat, dest, start_ms, start_ms + duration_ms, samples, recovered=True
    )
