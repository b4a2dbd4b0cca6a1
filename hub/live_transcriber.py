"""Live transcription of open hearings: every seat's microphone channel through Vosk, offline.

The audio recorder (:mod:`hub.audio_recorder`) hands each seat's mono PCM to this service (its
writer thread calls the hook; we only queue). Per seat track one asyncio task feeds a
:class:`transcription.stream.ChannelStream` whose decoding runs in a shared thread pool — Vosk
releases the GIL, so ``threads`` workers use as many cores — never on the event loop.

Only audio of a venue whose hearing is *open* is transcribed (a recess or no hearing: the
channel's utterance in progress is flushed into the hearing it belonged to). Each final segment
is committed to the :class:`hub.transcript_store.TranscriptStore` before it is announced; partial
hypotheses are only announced. Listeners (the console's live channel) get plain dicts:

``{"type": "partial", "hearing", "seat", "text", "ts_us"}`` and
``{"type": "final", "hearing", "segment": {...StoredSegment.to_json()}}``.

The model loads once at start-up, in a thread, with progress in the log; a missing or broken
model is a clear error naming the path and a critical alert — the rest of the hub runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hub.alerts import AlertBoard, Severity
from hub.transcript_store import TranscriptStore
from transcription.engine import ModelError, Recognizer, SpeechEngine
from transcription.stream import ChannelStream, FinalSegment, Partial

log = logging.getLogger(__name__)

MODEL_ALERT = "transcription-model"
#: PCM chunks a seat's queue may hold (≈ 40 s of 40 ms frames) before chunks are dropped
QUEUE_CHUNKS = 1000

Listener = Callable[[dict[str, Any]], None]
EngineLoader = Callable[[Path], Any]


class PcmSource(Protocol):
    """Where per-seat PCM comes from (:class:`hub.audio_recorder.AudioRecorder`)."""

    def set_pcm_hook(self, hook: Callable[[str, str, int, bytes], None] | None) -> None:
        """Install (or remove) the per-seat PCM hook."""


class SessionLookup(Protocol):
    """Which hearing records in a venue now (:class:`hub.hearings.HearingService`)."""

    def active_session(self, venue: str) -> str | None:
        """The open hearing's id, or None."""


#: chunks waiting (40 ms frames: 200 ms of audio) from which a seat counts as behind
BEHIND_CHUNKS = 5


@dataclass
class _Track:
    """One seat channel being transcribed."""

    track: str
    seat: str
    venue: str
    queue: asyncio.Queue[tuple[int, bytes]]
    task: asyncio.Task[None] | None = None
    hearing: str | None = None
    stream: ChannelStream | None = None
    dropped: int = 0
    stats: dict[str, float] = field(default_factory=dict)


class LiveTranscriber:
    """Transcribes the seat channels of open hearings into the transcript store."""

    def __init__(
        self,
        *,
        model_dir: str,
        threads: int,
        phrases: list[str],
        audio: PcmSource,
        sessions: SessionLookup,
        store: TranscriptStore,
        venues: Mapping[str, str],
        alerts: AlertBoard | None = None,
        load_engine: Callable[[Path], Any] | None = None,
        endpoint_silence_s: float = 0.0,
    ) -> None:
        """``venues``: seat track id → venue id (from ``[[recorder.microphones]]``);
        ``endpoint_silence_s``: see :meth:`transcription.vosk_engine.VoskEngine.load`."""
        self.model_dir = model_dir
        self.threads = threads
        self.phrases = phrases
        self.audio = audio
        self.sessions = sessions
        self.store = store
        self.venues = dict(venues)
        self.alerts = alerts
        self._load_engine = load_engine
        self.endpoint_silence_s = endpoint_silence_s
        self.engine: SpeechEngine | None = None
        #: a warmed-up recognizer waiting for each track's next hearing (see _make_spare)
        self._spares: dict[str, Recognizer] = {}
        self._spare_tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.error = ""
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tracks: dict[str, _Track] = {}
        self._listeners: list[Listener] = []
        self.finals = 0
        self.partials = 0
        self.skipped_rate = 0

    @property
    def running(self) -> bool:
        """A model is loaded and audio is being transcribed."""
        return self.engine is not None

    def add_listener(self, fn: Listener) -> Callable[[], None]:
        """Hear partial and final segments (on the loop; must not block)."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    async def start(self) -> None:
        """Load the model (once) and start taking audio; a bad model disables transcription."""
        self._loop = asyncio.get_running_loop()
        if not self.model_dir:
            log.info("live transcription off: no [transcription] model_dir")
            return
        path = Path(self.model_dir)
        try:
            self.engine = await self._load(path)
        except ModelError as exc:
            self.error = str(exc)
            log.error("live transcription off: %s", exc)
            if self.alerts is not None:
                await self.alerts.raise_alert(
                    MODEL_ALERT,
                    f"语音识别模型不可用 / speech model unusable: {exc}",
                    source="transcriber",
                    severity=Severity.CRITICAL,
                )
            return
        if self.alerts is not None:
            await self.alerts.clear(MODEL_ALERT)
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="vosk")
        for track_id in self.venues:
            self._spare_soon(track_id)
        self.audio.set_pcm_hook(self._on_pcm)
        log.info("live transcription on model=%s threads=%d", path, self.threads)

    # warmed-up recognizers ----------------------------------------------------------------------
    # A fresh Vosk recognizer spends ~1 s of CPU on its first audio; four seats starting together
    # would put the hearing's first sentences 2 s behind on 2 cores. Each track gets a recognizer
    # warmed up in advance — at start-up and again after each hearing, when the cores are idle.
    def _spare_soon(self, track_id: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self._make_spare(track_id), name=f"spare-recognizer-{track_id}"
        )
        self._spare_tasks.add(task)
        task.add_done_callback(self._spare_tasks.discard)

    async def _make_spare(self, track_id: str) -> None:
        engine, executor = self.engine, self._executor
        if engine is None or executor is None or track_id in self._spares:
            return
        phrases = self.phrases or None

        def make() -> Recognizer:
            rec = engine.new_recognizer(phrases=phrases)
            rec.warm_up()
            return rec

        try:
            rec = await asyncio.get_running_loop().run_in_executor(executor, make)
        except Exception:  # a phrase error shows when the stream is made; nothing to keep
            log.exception("spare recognizer failed track=%s", track_id)
            return
        self._spares.setdefault(track_id, rec)

    async def _load(self, path: Path) -> SpeechEngine:
        if self._load_engine is not None:
            engine: SpeechEngine = await asyncio.to_thread(self._load_engine, path)
            return engine
        from transcription.vosk_engine import VoskEngine  # 0.5 GB of model: only when asked

        def progress(message: str) -> None:
            log.info("speech model: %s", message)

        return await VoskEngine.load_async(
            path, progress=progress, endpoint_silence_s=self.endpoint_silence_s
        )

    async def stop(self) -> None:
        """Stop taking audio; flush every channel's utterance in progress into the store."""
        self.audio.set_pcm_hook(None)
        self._stopping = True
        for task in list(self._spare_tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._spares.clear()
        for track in list(self._tracks.values()):
            if track.task is not None:
                track.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await track.task
            await self._finish(track)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def stats(self) -> dict[str, Any]:
        """Counters and each track's real-time factor."""
        return {
            "running": self.running,
            "error": self.error,
            "finals": self.finals,
            "partials": self.partials,
            "skipped_rate": self.skipped_rate,
            "tracks": {
                t.track: {
                    "dropped": t.dropped,
                    "queued": t.queue.qsize(),
                    "hearing": t.hearing,
                    **t.stats,
                }
                for t in self._tracks.values()
            },
        }

    # audio in -----------------------------------------------------------------------------------
    def _on_pcm(self, track: str, seat: str, capture_ts_us: int, pcm: bytes) -> None:
        """Called on the audio recorder's writer thread: hand over to the loop, nothing else."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._enqueue, track, seat, capture_ts_us, pcm)

    def _enqueue(self, track_id: str, seat: str, capture_ts_us: int, pcm: bytes) -> None:
        track = self._tracks.get(track_id)
        if track is None:
            venue = self.venues.get(track_id)
            if venue is None:
                return
            track = _Track(track_id, seat, venue, asyncio.Queue(QUEUE_CHUNKS))
            track.task = asyncio.get_running_loop().create_task(
                self._run_track(track), name=f"transcribe-{track_id}"
            )
            self._tracks[track_id] = track
        try:
            track.queue.put_nowait((capture_ts_us, pcm))
        except asyncio.QueueFull:
            track.dropped += 1  # decoding fell 40 s behind: the recording keeps the audio

    async def _run_track(self, track: _Track) -> None:
        while True:
            capture_ts_us, pcm = await track.queue.get()
            try:
                await self._feed(track, capture_ts_us, pcm)
            except Exception:
                log.exception("transcription failed track=%s", track.track)

    async def _feed(self, track: _Track, capture_ts_us: int, pcm: bytes) -> None:
        hearing = self.sessions.active_session(track.venue)
        if hearing != track.hearing:
            await self._finish(track)  # the utterance in progress belongs to the old hearing
            track.hearing = hearing
        if hearing is None:
            return
        if track.stream is None:
            assert self.engine is not None

            def on_partial(partial: Partial) -> None:
                self._on_partial(track, partial)

            track.stream = ChannelStream(
                self.engine,
                track.seat,
                executor=self._executor,
                phrases=self.phrases or None,
                on_partial=on_partial,
                recognizer=self._spares.pop(track.track, None),
            )
        # a seat with more audio waiting skips partials until it has caught up
        behind = track.queue.qsize() >= BEHIND_CHUNKS
        finals = await track.stream.feed(pcm, capture_ts_us, behind=behind)
        await self._store(track, hearing, finals)
        stats = track.stream.stats
        track.stats = {"rtf": round(stats.rtf, 3), "frames_in": stats.frames_in}

    async def _finish(self, track: _Track) -> None:
        stream, track.stream = track.stream, None
        if stream is not None and track.hearing is not None:
            await self._store(track, track.hearing, await stream.close())
        if stream is not None and track.track in self.venues and not self._stopping:
            self._spare_soon(track.track)

    async def _store(self, track: _Track, hearing: str, finals: list[FinalSegment]) -> None:
        for final in finals:
            if not final.text.strip():
                continue
            segment_id = await self.store.add_final(hearing, track.track, final)
            self.finals += 1
            stored = await self.store.segment(segment_id)
            if stored is not None:
                self._notify({"type": "final", "hearing": hearing, "segment": stored.to_json()})

    def _on_partial(self, track: _Track, partial: Partial) -> None:
        if track.hearing is None or not partial.text:
            return
        self.partials += 1
        self._notify(
            {
                "type": "partial",
                "hearing": track.hearing,
                "seat": partial.seat,
                "text": partial.text,
                "ts_us": partial.ts,
            }
        )

    def _notify(self, message: dict[str, Any]) -> None:
        for fn in list(self._listeners):
            try:
                fn(message)
            except Exception:
                log.exception("transcript listener failed")
