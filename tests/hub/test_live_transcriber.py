"""Live transcription of open hearings: only while a hearing records, every final committed to the
store before it is announced, a recess flushes the utterance into the hearing it belonged to, a
broken model is an alert naming the path (the hub runs on). A scripted engine stands in for Vosk
here (tests/transcription and the integration test run the real model)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hub.alerts import AlertBoard
from hub.hearings import HearingService
from hub.live_transcriber import MODEL_ALERT, LiveTranscriber
from hub.recording_index import DB_FILE, RecordingIndex
from hub.transcript_store import TranscriptError, TranscriptStore
from transcription.engine import Final, ModelError, RecognizedWord

RATE = 16_000
FRAME = RATE // 25  # 40 ms
SPEECH = b"\x10\x00" * FRAME
SILENCE = b"\x00\x00" * FRAME
TRACK = "court-1-mic-1-judge"


class ScriptedRecognizer:
    """Speech = non-zero samples; an utterance ends at the first silent frame after speech."""

    def __init__(self) -> None:
        self.warmed = False
        self.samples = 0
        self.speech_from: int | None = None
        self._final: Final | None = None

    def warm_up(self) -> None:
        if not self.samples:  # like Vosk: a no-op once audio was fed
            self.warmed = True

    def accept(self, pcm: bytes) -> bool:
        start = self.samples
        self.samples += len(pcm) // 2
        if any(pcm):
            if self.speech_from is None:
                self.speech_from = start
            return False
        if self.speech_from is None:
            return False
        self._final = self._make(start)
        self.speech_from = None
        return True

    def _make(self, end: int) -> Final:
        assert self.speech_from is not None
        begin, stop = self.speech_from / RATE, end / RATE
        return Final("법원", (RecognizedWord("법원", begin, stop, 0.9),), 0.9)

    def partial(self) -> str:
        return "법" if self.speech_from is not None else ""

    def final(self) -> Final | None:
        final, self._final = self._final, None
        return final

    def flush(self) -> Final | None:
        if self.speech_from is None:
            return None
        final = self._make(self.samples)
        self.speech_from = None
        return final


class ScriptedEngine:
    sample_rate = RATE

    def __init__(self) -> None:
        self.made: list[ScriptedRecognizer] = []

    def new_recognizer(self, *, phrases: Sequence[str] | None = None) -> ScriptedRecognizer:
        self.made.append(ScriptedRecognizer())
        return self.made[-1]


@dataclass
class FakeAudio:
    hook: Callable[[str, str, int, bytes], None] | None = None

    def set_pcm_hook(self, hook: Callable[[str, str, int, bytes], None] | None) -> None:
        self.hook = hook

    def play(self, frames: list[bytes], start_us: int, *, track: str = TRACK) -> None:
        """Deliver frames from another thread, as the audio recorder's writer does."""
        assert self.hook is not None
        hook = self.hook

        def run() -> None:
            for i, pcm in enumerate(frames):
                hook(track, "judge", start_us + i * 40_000, pcm)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()


@dataclass
class Rig:
    data_dir: Path
    audio: FakeAudio
    hearings: HearingService
    store: TranscriptStore
    alerts: AlertBoard
    transcriber: LiveTranscriber
    heard: list[dict[str, Any]] = field(default_factory=list)


async def wait_for(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def make_transcriber(rig_parts: dict[str, Any], load: Callable[[Path], Any]) -> LiveTranscriber:
    return LiveTranscriber(
        model_dir=str(rig_parts["data_dir"] / "model"),
        threads=2,
        phrases=[],
        audio=rig_parts["audio"],
        sessions=rig_parts["hearings"],
        store=rig_parts["store"],
        venues={TRACK: "court-1"},
        alerts=rig_parts["alerts"],
        load_engine=load,
    )


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    data_dir = tmp_path / "hub"
    index = await RecordingIndex.open(data_dir / DB_FILE, data_dir / "recordings")
    hearings = await HearingService.open(data_dir, index)
    store = await TranscriptStore.open(data_dir)
    alerts = await AlertBoard.open(data_dir)
    audio = FakeAudio()
    parts = {"data_dir": data_dir, "audio": audio, "hearings": hearings, "store": store}
    transcriber = make_transcriber({**parts, "alerts": alerts}, lambda _p: ScriptedEngine())
    rig = Rig(data_dir, audio, hearings, store, alerts, transcriber)
    transcriber.add_listener(rig.heard.append)
    await transcriber.start()
    try:
        yield rig
    finally:
        await transcriber.stop()
        await alerts.close()
        await store.close()
        await hearings.close()
        await index.close()


async def test_only_an_open_hearing_is_transcribed_and_finals_are_stored(rig: Rig) -> None:
    t0 = 1_795_000_000_000_000
    rig.audio.play([SPEECH, SPEECH, SILENCE], t0)  # no hearing: nothing is transcribed
    hearing = await rig.hearings.open_hearing(title="T", case_no="C", venues=["court-1"], by="j")
    await asyncio.sleep(0.2)
    assert rig.heard == [] and await rig.store.segments(hearing.id) == []

    # 240 ms of speech: partials come at most every 200 ms of audio
    rig.audio.play([SILENCE, *[SPEECH] * 6, SILENCE], t0 + 1_000_000)
    await wait_for(lambda: any(m["type"] == "final" for m in rig.heard), "a final")
    (stored,) = await rig.store.segments(hearing.id)
    # times are capture times: speech began at frame 1 and ended when frame 7 (silence) began
    assert (stored.start_us, stored.end_us) == (t0 + 1_040_000, t0 + 1_280_000)
    assert stored.seat == "judge" and stored.text == "법원" and stored.track == TRACK
    final = next(m for m in rig.heard if m["type"] == "final")
    assert final["hearing"] == hearing.id and final["segment"]["id"] == stored.id
    partials = [m for m in rig.heard if m["type"] == "partial"]
    assert partials and all(p["hearing"] == hearing.id and p["seat"] == "judge" for p in partials)


async def test_each_hearing_gets_a_recognizer_warmed_up_before_its_audio(rig: Rig) -> None:
    """Vosk's ~1 s first-audio cost is paid at start-up and between hearings, not live."""
    engine = rig.transcriber.engine
    assert isinstance(engine, ScriptedEngine)
    await wait_for(lambda: engine.made and engine.made[0].warmed, "a warmed spare at start-up")
    t0 = 1_795_000_000_000_000
    first = await rig.hearings.open_hearing(title="T", case_no="C", venues=["court-1"], by="j")
    rig.audio.play([SPEECH, SILENCE], t0)
    await wait_for(lambda: rig.transcriber.finals == 1, "a final")
    assert len(engine.made) == 1 and engine.made[0].samples > 0  # the spare took the audio

    await rig.hearings.close_hearing(first.id, by="j")
    rig.audio.play([SILENCE], t0 + 80_000)  # the next frame finds the hearing closed
    await wait_for(lambda: len(engine.made) == 2 and engine.made[1].warmed, "a new spare")
    second = await rig.hearings.open_hearing(title="T2", case_no="C2", venues=["court-1"], by="j")
    rig.audio.play([SPEECH, SILENCE], t0 + 10_000_000)
    await wait_for(lambda: rig.transcriber.finals == 2, "the second hearing's final")
    assert engine.made[1].samples > 0 and len(engine.made) == 2
    assert [s.text for s in await rig.store.segments(second.id)] == ["법원"]


async def test_a_recess_flushes_the_utterance_into_its_hearing(rig: Rig) -> None:
    t0 = 1_795_000_000_000_000
    hearing = await rig.hearings.open_hearing(title="T", case_no="C", venues=["court-1"], by="j")
    # the judge is still speaking when the break starts
    rig.audio.play([SPEECH] * 6, t0)
    await wait_for(lambda: rig.heard, "partials")
    await rig.hearings.recess(hearing.id, reason="recess", by="j")
    rig.audio.play([SPEECH, SILENCE], t0 + 240_000)  # said during the break: not transcribed
    await wait_for(lambda: rig.transcriber.finals == 1, "the flushed utterance")
    await asyncio.sleep(0.1)
    (stored,) = await rig.store.segments(hearing.id)
    assert stored.end_us <= t0 + 240_000
    assert rig.transcriber.finals == 1


async def test_corrections_keep_the_machine_text_and_notes_are_kept(rig: Rig) -> None:
    t0 = 1_795_000_000_000_000
    hearing = await rig.hearings.open_hearing(title="T", case_no="C", venues=["court-1"], by="j")
    rig.audio.play([SPEECH, SILENCE], t0)
    await wait_for(lambda: rig.transcriber.finals == 1, "a final")
    (stored,) = await rig.store.segments(hearing.id)
    revised = await rig.store.revise(stored.id, "法院", by="clerk1")
    assert revised.text == "法院" and revised.machine_text == "법원"
    assert [(r.text, r.by) for r in revised.revisions] == [("法院", "clerk1")]
    with pytest.raises(TranscriptError):
        await rig.store.revise(stored.id, "  ", by="clerk1")
    with pytest.raises(TranscriptError):
        await rig.store.revise(999, "x", by="clerk1")
    await rig.store.add_note(hearing.id, ts_ms=2, author="judge1", text="后")
    await rig.store.add_note(hearing.id, ts_ms=1, author="judge1", text="先")
    assert [n.text for n in await rig.store.notes(hearing.id)] == ["先", "后"]
    # the store is append-only: a row cannot be edited behind the API's back
    await rig.store.close()
    import sqlite3

    db = sqlite3.connect(rig.data_dir / "transcripts.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE segments SET text = 'x'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM revisions")
    db.close()
    reopened = await TranscriptStore.open(rig.data_dir)
    try:
        (again,) = await reopened.segments(hearing.id)
        assert again.text == "法院" and again.machine_text == "법원"
    finally:
        await reopened.close()
    rig.store = await TranscriptStore.open(rig.data_dir)  # for the fixture's teardown


async def test_a_broken_model_is_an_alert_naming_the_path(tmp_path: Path) -> None:
    data_dir = tmp_path / "hub"
    index = await RecordingIndex.open(data_dir / DB_FILE, data_dir / "recordings")
    hearings = await HearingService.open(data_dir, index)
    store = await TranscriptStore.open(data_dir)
    alerts = await AlertBoard.open(data_dir)
    model = data_dir / "model"

    def refuse(path: Path) -> Any:
        raise ModelError(f"speech model {path}: no am/final.mdl")

    parts = {"data_dir": data_dir, "audio": FakeAudio(), "hearings": hearings, "store": store}
    transcriber = make_transcriber({**parts, "alerts": alerts}, refuse)
    try:
        await transcriber.start()
        assert not transcriber.running and str(model) in transcriber.error
        (alert,) = alerts.active()
        assert alert.key == MODEL_ALERT and str(model) in alert.message
        assert parts["audio"].hook is None  # no audio is taken without a model
    finally:
        await transcriber.stop()
        await alerts.close()
        await store.close()
        await hearings.close()
        await index.close()
