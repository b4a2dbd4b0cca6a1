"""The microphones of a simulated court: per-seat WAVs with synthetic speech, and the
``microphone`` device that replays them in the venue's agent.

Seats with a line in the scenario (``speech``) take turns saying it — espeak-ng's voice,
resampled to 16 kHz, a different pitch per seat — with pauses long enough for a speech
recogniser to end each utterance; every seat hears low room noise otherwise. The agent's
``microphone`` driver loops the files (``source = "wav:…"``), so the hub records and transcribes
the same round of speech over and over. Without espeak-ng each line becomes a tone burst of its
seat (a warning says so): levels and voice-follow still work, the transcript stays empty.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from simulators.microphone import SEAT_TONES
from simulators.scenario import MicrophoneSpec

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
FRAME_MS = 40
#: silence before each turn: long enough for Vosk to end the previous utterance
PAUSE_S = 1.5
#: peak of a seat's speech (fraction of full scale) and of the room noise (standard deviation)
SPEECH_PEAK = 0.5
NOISE_STD = 0.002
#: length of a seat's tone when espeak-ng is missing
TONE_S = 2.0
ESPEAK_TIMEOUT_S = 30


@dataclass(frozen=True)
class SeatAudio:
    """The WAV files written for one microphone, and whether they hold speech or tones."""

    wavs: dict[str, Path]
    spoken: bool
    seconds: float


def synthesize(text: str, *, voice: str = "ko", pitch: int = 50) -> npt.NDArray[np.float64]:
    """``text`` said by espeak-ng, at 16 kHz in [-1, 1]; ``FileNotFoundError`` without it,
    ``subprocess.CalledProcessError`` when it refuses (an unknown voice)."""
    out = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", "130", "-p", str(pitch), "--stdout", text],
        capture_output=True,
        check=True,
        timeout=ESPEAK_TIMEOUT_S,
    ).stdout
    with wave.open(io.BytesIO(out), "rb") as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64) / 32768
    return resample(pcm, rate)


def resample(signal: npt.NDArray[np.float64], rate: int) -> npt.NDArray[np.float64]:
    """``signal`` at ``rate`` Hz resampled to 16 kHz (linear interpolation: a simulation's
    speech, not a studio's)."""
    if rate == SAMPLE_RATE or not len(signal):
        return signal
    n = int(len(signal) * SAMPLE_RATE / rate)
    return np.interp(np.arange(n) * rate / SAMPLE_RATE, np.arange(len(signal)), signal)


def seat_lines(
    seats: Sequence[str], speech: Mapping[str, str], *, voice: str
) -> tuple[dict[str, npt.NDArray[np.float64]], bool]:
    """Each speaking seat's line as audio (speech, or a tone when espeak-ng cannot speak);
    True when it is speech."""
    lines: dict[str, npt.NDArray[np.float64]] = {}
    speakers = [seat for seat in seats if speech.get(seat, "").strip()]
    if speakers and shutil.which("espeak-ng") is None:
        log.warning("espeak-ng not installed: the simulated microphone plays tones, not speech")
        return _tones(seats, speakers), False
    for i, seat in enumerate(speakers):
        try:
            line = synthesize(speech[seat], voice=voice, pitch=30 + 15 * (i % 4))
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("espeak-ng failed voice=%s error=%s: tones instead of speech", voice, exc)
            return _tones(seats, speakers), False
        peak = float(np.max(np.abs(line))) if len(line) else 0.0
        lines[seat] = line * (SPEECH_PEAK / peak) if peak > 0 else line
    return lines, True


def _tones(seats: Sequence[str], speakers: Sequence[str]) -> dict[str, npt.NDArray[np.float64]]:
    t = np.arange(int(TONE_S * SAMPLE_RATE)) / SAMPLE_RATE
    return {
        seat: SPEECH_PEAK * np.sin(2 * np.pi * SEAT_TONES[seats.index(seat) % len(SEAT_TONES)] * t)
        for seat in speakers
    }


def write_seat_audio(
    directory: Path,
    seats: Sequence[str],
    speech: Mapping[str, str],
    *,
    voice: str = "ko",
    seed: int = 7,
) -> SeatAudio:
    """Write ``{seat}.wav`` (16 kHz mono s16, whole 40 ms frames) per seat: the speaking seats
    take turns (a pause, then the line), the others hear room noise. Blocking (runs espeak-ng)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines, spoken = seat_lines(seats, speech, voice=voice)
    pause = int(PAUSE_S * SAMPLE_RATE)
    turns: list[tuple[str, int]] = []  # (seat, first sample of its line)
    at = 0
    for seat, line in lines.items():
        turns.append((seat, at + pause))
        at += pause + len(line)
    frame = SAMPLE_RATE * FRAME_MS // 1000
    total = at + pause
    total += -total % frame
    rng = np.random.default_rng(seed)
    wavs: dict[str, Path] = {}
    for seat in seats:
        signal = rng.normal(0.0, NOISE_STD, total)
        for speaker, start in turns:
            if speaker == seat:
                line = lines[seat]
                signal[start : start + len(line)] += line
        pcm = np.clip(np.round(signal * 32767), -32768, 32767).astype("<i2")
        path = directory / f"{seat}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(pcm.tobytes())
        wavs[seat] = path
    return SeatAudio(wavs, spoken, total / SAMPLE_RATE)


def prepare_microphone(directory: Path, mic: MicrophoneSpec, *, seed: int = 7) -> dict[str, Any]:
    """Write the seats' WAVs and return the agent's ``microphone`` device entry replaying them
    (looped, in real time). Blocking: call it in a thread."""
    audio = write_seat_audio(directory, mic.seats, mic.speech, voice=mic.voice, seed=seed)
    log.info(
        "simulated microphone device=%s seats=%s speech=%s round_s=%.1f",
        mic.id,
        ",".join(mic.seats),
        audio.spoken,
        audio.seconds,
    )
    return {
        "id": mic.id,
        "driver": "microphone",
        "options": {
            "channels": len(mic.seats),
            "seats": list(mic.seats),
            "sample_rate": SAMPLE_RATE,
            "frame_ms": FRAME_MS,
            "source": "wav:" + ",".join(str(audio.wavs[seat]) for seat in mic.seats),
            "loop": True,
            "level_interval_s": 1.0,
        },
    }
