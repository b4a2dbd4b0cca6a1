"""The speech-engine interface the rest of courthub codes against.

An engine holds one loaded model and hands out recognizers: one per audio stream (per seat
channel). A recognizer is fed 16-bit little-endian mono PCM at ``engine.sample_rate`` and is *not*
thread-safe; callers run it off the event loop (see :class:`transcription.stream.ChannelStream`),
one call at a time.

Times in a :class:`Final` are seconds from the first sample that recognizer was fed; mapping them
to capture (wall-clock) time is the stream's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class ModelError(Exception):
    """The model directory is missing or unusable; the message names the path and the cause."""


class PhraseError(ValueError):
    """A grammar phrase uses words the model does not know (they would be silently dropped)."""


@dataclass(frozen=True, slots=True)
class RecognizedWord:
    """One word of a final result; ``start``/``end`` in seconds from the recognizer's start."""

    text: str
    start: float
    end: float
    conf: float


@dataclass(frozen=True, slots=True)
class Final:
    """One finished utterance (the recognizer reached an endpoint, or was flushed)."""

    text: str
    words: tuple[RecognizedWord, ...]
    #: mean of the word confidences (0.0 when there are no words)
    confidence: float


class Recognizer(Protocol):
    """One audio stream's decoder."""

    def accept(self, pcm: bytes) -> bool:
        """Decode ``pcm`` (s16le mono); True when an utterance ended and :meth:`final` has it."""
        ...

    def partial(self) -> str:
        """The current, still changing hypothesis of the utterance in progress ('' if none)."""
        ...

    def final(self) -> Final | None:
        """The utterance that ended at the last :meth:`accept` (None when it was empty)."""
        ...

    def flush(self) -> Final | None:
        """End of audio: finish and return the utterance in progress (None when empty)."""
        ...

    def warm_up(self) -> None:
        """Pay the decoder's one-off start-up cost now, before any audio (idempotent; a no-op
        once audio was accepted). Blocking: call it off the event loop. Results must not change
        (Vosk: same words, same times)."""
        ...


class SpeechEngine(Protocol):
    """A loaded speech model that creates recognizers sharing it."""

    @property
    def sample_rate(self) -> int:
        """The PCM sample rate recognizers expect (Hz)."""
        ...

    def new_recognizer(self, *, phrases: Sequence[str] | None = None) -> Recognizer:
        """A fresh recognizer; with ``phrases`` it only recognises those phrases (grammar mode).

        Raises :class:`PhraseError` when a phrase contains a word the model does not know.
        """
        ...
