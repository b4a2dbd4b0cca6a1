"""Engine and streaming pipeline on the real Korean Vosk model and espeak-ng speech.

These assert the pipeline (chunking, threading, time alignment), not the model's accuracy:
espeak's Korean is recognised poorly, and Vosk's output depends on how audio is chunked, so the
reference is Vosk itself fed the same chunks directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import vosk
from transcription_speech import pcm_of, silence

from transcription.engine import Final, ModelError, PhraseError, Recognizer, SpeechEngine
from transcription.stream import ChannelStream, FinalSegment, Partial
from transcription.vosk_engine import VoskEngine

T0 = 1_760_000_000_000_000  # a capture time, UTC µs
RATE = 16_000


@pytest.fixture(scope="module")
def two_utterances(say: Callable[[str], Path]) -> tuple[bytes, int]:
    """Two sentences 1.5 s apart; returns the PCM and the sample where the second starts."""
    first = pcm_of(say("피고인은 앞으로 나오세요"))
    second = pcm_of(say("증인 선서를 하겠습니다"))
    gap = silence(1.5)
    return first + gap + second + silence(0.3), (len(first) + len(gap)) // 2


class SpyEngine:
    """The real engine, keeping the raw finals (recognizer seconds) its recognizers return."""

    def __init__(self, inner: VoskEngine) -> None:
        self.inner = inner
        self.raw: list[Final] = []
        self.fed: list[bytes] = []

    @property
    def sample_rate(self) -> int:
        return self.inner.sample_rate

    def new_recognizer(self, *, phrases: Sequence[str] | None = None) -> Recognizer:
        return SpyRecognizer(self.inner.new_recognizer(phrases=phrases), self.raw, self.fed)


class SpyRecognizer:
    def __init__(self, inner: Recognizer, raw: list[Final], fed: list[bytes]) -> None:
        self.inner, self.raw, self.fed = inner, raw, fed

    def warm_up(self) -> None:
        self.inner.warm_up()

    def accept(self, pcm: bytes) -> bool:
        self.fed.append(pcm)
        return self.inner.accept(pcm)

    def partial(self) -> str:
        return self.inner.partial()

    def final(self) -> Final | None:
        return self._keep(self.inner.final())

    def flush(self) -> Final | None:
        return self._keep(self.inner.flush())

    def _keep(self, final: Final | None) -> Final | None:
        if final is not None:
            self.raw.append(final)
        return final


def chunks(pcm: bytes, ms: int) -> list[bytes]:
    step = RATE * ms // 1000 * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def vosk_direct(model: object, parts: list[bytes], grammar: list[str]) -> list[str]:
    """Vosk's own decode of the same chunks, without courthub in between."""
    rec = vosk.KaldiRecognizer(model, RATE, json.dumps(grammar, ensure_ascii=False))
    rec.SetWords(True)
    texts = []
    for part in parts:
        if rec.AcceptWaveform(part):
            texts.append(json.loads(rec.Result())["text"])
    texts.append(json.loads(rec.FinalResult())["text"])
    return [t for t in texts if t]


async def run_stream(
    engine: SpeechEngine, parts: list[bytes], stamps: list[int], **kw: object
) -> tuple[ChannelStream, list[FinalSegment], list[Partial]]:
    finals: list[FinalSegment] = []
    partials: list[Partial] = []
    with ThreadPoolExecutor(2) as pool:
        stream = ChannelStream(
            engine,
            "judge",
            executor=pool,
            on_final=finals.append,
            on_partial=partials.append,
            **kw,  # type: ignore[arg-type]
        )
        returned = []
        for part, ts in zip(parts, stamps, strict=True):
            returned += await stream.feed(part, ts)
        returned += await stream.close()
    assert returned == finals
    return stream, finals, partials


def contiguous(parts: list[bytes], start: int = T0) -> list[int]:
    stamps, ts = [], start
    for part in parts:
        stamps.append(ts)
        ts += len(part) // 2 * 1_000_000 // RATE
    return stamps


PHRASES = ["안녕하세요", "감사합니다", "증인 선서"]


@pytest.fixture(scope="module")
def three_phrases(say: Callable[[str], Path]) -> bytes:
    """The three grammar phrases, each followed by 1 s of silence (three utterances)."""
    return b"".join(
        pcm_of(say(p)) + silence(1.0) for p in ("안녕하세요", "증인 선서", "감사합니다")
    )


@pytest.mark.parametrize("chunk_ms", [20, 50, 100])
async def test_stream_equals_vosk_direct_decode(
    engine: VoskEngine, three_phrases: bytes, chunk_ms: int
) -> None:
    """Grammar mode, where Vosk is deterministic: the pipeline gives Vosk's own result for the
    same chunks, which is the three phrases. (Free recognition is not repeatable run to run in
    Vosk 0.3.45 — measured: the same chunks of espeak speech decoded twice in one process gave
    different words — so there the pipeline is checked against a spy, below.)"""
    parts = chunks(three_phrases, chunk_ms)
    stream, finals, partials = await run_stream(engine, parts, contiguous(parts), phrases=PHRASES)

    direct = vosk_direct(engine._model, parts, grammar=PHRASES)
    assert [f.text for f in finals] == direct == ["안녕하세요", "증인 선서", "감사합니다"]
    assert stream.stats.frames_in == stream.stats.frames_decoded == len(parts)
    assert stream.stats.samples_decoded == len(three_phrases) // 2
    assert stream.stats.rtf > 0
    assert partials and all(p.seat == "judge" and p.text for p in partials)
    assert [p.ts for p in partials] == sorted(p.ts for p in partials)

    times = [t for f in finals for w in f.words for t in (w.start_us, w.end_us)]
    assert times == sorted(times)
    assert times[0] >= T0 and times[-1] <= T0 + len(three_phrases) // 2 * 1_000_000 // RATE
    for f in finals:
        assert f.seat == "judge"
        assert (f.start_us, f.end_us) == (f.words[0].start_us, f.words[-1].end_us)
        assert f.text == " ".join(w.text for w in f.words)


@pytest.mark.parametrize("chunk_ms", [20, 100])
async def test_free_recognition_passes_every_sample_and_result(
    engine: VoskEngine, two_utterances: tuple[bytes, int], chunk_ms: int
) -> None:
    """Free recognition: Vosk receives exactly the audio fed, in order, and every final it
    returns becomes one segment with its text."""
    pcm, _ = two_utterances
    parts = chunks(pcm, chunk_ms)
    spy = SpyEngine(engine)
    stream, finals, _ = await run_stream(spy, parts, contiguous(parts))
    assert b"".join(spy.fed) == pcm
    assert [f.text for f in finals] == [r.text for r in spy.raw]
    assert len(finals) >= 2, "expected two utterances"
    assert stream.stats.frames_in == stream.stats.frames_decoded == len(parts)


async def test_times_follow_capture_clock_across_a_gap(
    engine: VoskEngine, two_utterances: tuple[bytes, int]
) -> None:
    """10 s of audio lost in the silence between the sentences: every word is placed at the
    capture time of the samples Vosk put it on — before the gap as counted, after it 10 s later."""
    pcm, second_at = two_utterances
    parts = chunks(pcm, 100)
    plain = contiguous(parts)
    cut = next(
        i for i, ts in enumerate(plain) if ts >= T0 + (second_at - RATE // 2) * 1_000_000 // RATE
    )
    cut_sample = sum(len(p) // 2 for p in parts[:cut])
    jumped = plain[:cut] + [ts + 10_000_000 for ts in plain[cut:]]

    spy = SpyEngine(engine)
    stream, finals, _ = await run_stream(spy, parts, jumped)

    assert stream.stats.gaps == 1
    assert len(finals) == len(spy.raw) >= 2

    def capture_us(seconds: float) -> int:
        sample = round(seconds * RATE)
        shift = 10_000_000 if sample >= cut_sample else 0
        return T0 + shift + sample * 1_000_000 // RATE

    for final, raw in zip(finals, spy.raw, strict=True):
        assert final.text == raw.text
        for word, rword in zip(final.words, raw.words, strict=True):
            assert (word.start_us, word.end_us) == (capture_us(rword.start), capture_us(rword.end))
    late = [w for f in finals for w in f.words if w.start_us >= plain[cut] + 10_000_000]
    assert late, "no word after the gap"
    # the second sentence starts at its capture time (Vosk's word start is within ~0.5 s of speech)
    assert abs(late[0].start_us - (T0 + second_at * 1_000_000 // RATE + 10_000_000)) < 600_000
    times = [t for f in finals for w in f.words for t in (w.start_us, w.end_us)]
    assert times == sorted(times)
    assert stream.stats.clamped == 0


async def test_jitter_below_tolerance_is_not_a_gap(engine: VoskEngine) -> None:
    parts = chunks(silence(1.0), 20)
    stamps = [ts + (1_000 if i % 2 else -1_000) for i, ts in enumerate(contiguous(parts))]
    stream, finals, _ = await run_stream(engine, parts, stamps)
    assert stream.stats.gaps == 0 and finals == []


async def test_bad_pcm_is_rejected_and_counted(engine: VoskEngine) -> None:
    stream = ChannelStream(engine, "clerk")
    with pytest.raises(ValueError, match="not whole 16-bit samples"):
        await stream.feed(b"\x00\x01\x02", T0)
    assert stream.stats.rejected == 1 and stream.stats.frames_in == 0
    assert await stream.feed(b"", T0) == []
    await stream.close()
    with pytest.raises(RuntimeError, match="closed"):
        await stream.feed(b"\x00\x00", T0)


@pytest.mark.parametrize("phrase", PHRASES)
async def test_grammar_mode_recognises_fixed_phrases(
    engine: VoskEngine, say: Callable[[str], Path], phrase: str
) -> None:
    pcm = pcm_of(say(phrase)) + silence(0.3)
    parts = chunks(pcm, 50)
    _, finals, _ = await run_stream(engine, parts, contiguous(parts), phrases=PHRASES)
    assert [f.text for f in finals] == [phrase]


def test_phrase_with_unknown_word_is_refused(engine: VoskEngine) -> None:
    with pytest.raises(PhraseError, match="시작하겠습니다"):
        engine.new_recognizer(phrases=["재판을 시작하겠습니다"])
    with pytest.raises(PhraseError, match="at least one"):
        engine.new_recognizer(phrases=["  "])


def test_missing_model_dir_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError, match=f"{missing}: no such directory"):
        VoskEngine.load(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=f"{tmp_path / 'empty'}: no am/final.mdl"):
        VoskEngine.load(tmp_path / "empty")


def test_corrupt_model_names_the_path(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    for src in model_dir.rglob("*"):  # a copy made of links, except a truncated acoustic model
        dst = broken / src.relative_to(model_dir)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src, dst)
    (broken / "am" / "final.mdl").unlink()
    (broken / "am" / "final.mdl").write_bytes((model_dir / "am" / "final.mdl").read_bytes()[:1000])
    with pytest.raises(ModelError, match=f"{broken}: Vosk refused it"):
        VoskEngine.load(broken)


async def test_load_async_runs_off_the_loop(model_dir: Path, tmp_path: Path) -> None:
    messages: list[str] = []
    with pytest.raises(ModelError):
        await VoskEngine.load_async(tmp_path / "nothing", progress=messages.append)
    assert messages == []


async def test_a_stream_behind_skips_partials_not_finals(
    engine: VoskEngine, three_phrases: bytes
) -> None:
    """``behind=True`` (more audio of the seat waiting): no partials, the same finals."""
    parts = chunks(three_phrases, 40)
    finals: list[FinalSegment] = []
    partials: list[Partial] = []
    with ThreadPoolExecutor(2) as pool:
        stream = ChannelStream(
            engine,
            "judge",
            executor=pool,
            phrases=PHRASES,
            on_final=finals.append,
            on_partial=partials.append,
        )
        for part, ts in zip(parts, contiguous(parts), strict=True):
            await stream.feed(part, ts, behind=True)
        await stream.close()
    assert partials == [] and stream.stats.partials == 0
    assert [f.text for f in finals] == ["안녕하세요", "증인 선서", "감사합니다"]
