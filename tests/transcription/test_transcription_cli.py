"""``courthub transcribe`` as a user runs it: a real process, the real model, a generated WAV."""

from __future__ import annotations

import re
import subprocess
import sys
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
from transcription_speech import pcm_of, silence

COURTHUB = [sys.executable, "-m", "hub.cli"]


def write_wav(path: Path, channels: list[bytes], rate: int = 16_000) -> Path:
    n = max(len(c) for c in channels) // 2
    columns = [np.frombuffer(c.ljust(n * 2, b"\0"), dtype="<i2") for c in channels]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(len(channels))
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.stack(columns, axis=1).tobytes())
    return path


def test_two_seat_wav_to_srt_with_progress(
    tmp_path: Path, model_dir: Path, say: Callable[[str], Path]
) -> None:
    judge = pcm_of(say("안녕하세요")) + silence(3.0)
    witness = silence(1.8) + pcm_of(say("증인 선서")) + silence(0.5)
    wav = write_wav(tmp_path / "hearing.wav", [judge, witness])
    out = tmp_path / "hearing.srt"
    run = subprocess.run(
        [
            *COURTHUB,
            "transcribe",
            str(wav),
            "--model",
            str(model_dir),
            "--out",
            str(out),
            "--seat",
            "판사",
            "--seat",
            "증인",
            "--phrases",
            "안녕하세요,감사합니다,증인 선서",
            "--progress",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "transcribing 100% [####################]" in run.stderr
    assert re.search(r"transcribing +\d+% ", run.stderr.split("100%")[0])
    srt = out.read_text(encoding="utf-8")
    cues = srt.strip().split("\n\n")
    assert [c.split("\n")[2] for c in cues] == ["판사: 안녕하세요", "증인: 증인 선서"]
    assert [c.split("\n")[0] for c in cues] == ["1", "2"]
    first_start = cues[0].split("\n")[1].split(" --> ")[0]
    second_start = cues[1].split("\n")[1].split(" --> ")[0]
    assert first_start < "00:00:01,000" and "00:00:01,500" < second_start < "00:00:02,500"


def test_missing_model_exits_2_naming_the_path(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "a.wav", [silence(0.5)])
    missing = tmp_path / "no-model"
    run = subprocess.run(
        [*COURTHUB, "transcribe", str(wav), "--model", str(missing)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 2
    assert f"Vosk model {missing}: no such directory" in run.stderr


def test_wrong_sample_rate_is_refused_with_the_fix(tmp_path: Path, model_dir: Path) -> None:
    wav = write_wav(tmp_path / "cd.wav", [silence(0.5)], rate=44_100)
    run = subprocess.run(
        [*COURTHUB, "transcribe", str(wav), "--model", str(model_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 2
    assert f"{wav}: 44100 Hz" in run.stderr and "sox" in run.stderr
