"""PCM helpers of the transcription tests."""

from __future__ import annotations

import wave
from pathlib import Path


def pcm_of(path: Path) -> bytes:
    """The PCM frames of a WAV file."""
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes())


def silence(seconds: float, rate: int = 16_000) -> bytes:
    """``seconds`` of digital silence, s16le mono."""
    return b"\x00\x00" * round(seconds * rate)
