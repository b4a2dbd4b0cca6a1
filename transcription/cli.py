"""``courthub transcribe``: transcribe a WAV file offline with a Vosk model.

    courthub transcribe FILE.wav --model DIR [--format srt|vtt|txt|json|court] [--out FILE]
                        [--seat NAME ...] [--phrases "a,b"] [--tz ZONE] [--progress]

Each channel of the WAV is one seat (``--seat`` names them in channel order; default ``speaker``
for mono, ``ch1``, ``ch2``… otherwise); channels are decoded in parallel threads. The WAV must be
16-bit PCM at 16 kHz — anything else is refused with the ``sox`` line that converts it. Times:
the recording is taken to end at the file's modification time. Exit status 0 on success, 2 for a
missing/broken model or an unusable WAV (the message names the path).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

CHUNK_MS = 100


class TranscribeError(Exception):
    """Unusable input: printed in one line, exit status 2."""


def register(sub: Any) -> None:
    """Add ``transcribe`` to ``courthub``'s subparsers."""
    p = sub.add_parser(
        "transcribe",
        help="transcribe a WAV file offline (Vosk) to SRT, WebVTT, text, JSON or court layout",
        description="Transcribe a 16 kHz 16-bit WAV (one seat per channel) with a Vosk model.",
    )
    p.add_argument("file", type=Path, help="the WAV file")
    p.add_argument("--model", required=True, type=Path, help="the Vosk model directory")
    p.add_argument(
        "--format", default="srt", choices=("srt", "vtt", "txt", "json", "court"), dest="fmt"
    )
    p.add_argument("--out", type=Path, help="write here instead of standard output")
    p.add_argument(
        "--seat", action="append", default=[], help="seat name of the next channel (repeatable)"
    )
    p.add_argument("--phrases", help='recognise only these comma-separated phrases: "a,b"')
    p.add_argument("--tz", default=None, help="court time zone for txt/court (default: local)")
    p.add_argument(
        "--progress", action="store_true", help="show progress on stderr even when not a TTY"
    )
    p.set_defaults(func=_cmd_transcribe)


def _cmd_transcribe(args: argparse.Namespace) -> int:
    try:
        return _transcribe(args)
    except TranscribeError as exc:
        print(f"courthub transcribe: {exc}", file=sys.stderr)
        return 2


def _transcribe(args: argparse.Namespace) -> int:
    import asyncio

    from transcription.engine import ModelError, PhraseError
    from transcription.exports import render
    from transcription.vosk_engine import VoskEngine

    audio = _read_wav(args.file)
    seats = _seat_names(args.seat, audio.channels)
    phrases = [p.strip() for p in args.phrases.split(",")] if args.phrases else None
    meter = _Meter(sys.stderr, args.progress)
    try:
        engine = VoskEngine.load(args.model, progress=meter.say)
    except ModelError as exc:
        raise TranscribeError(str(exc)) from exc
    try:
        transcript = asyncio.run(_decode(engine, audio, seats, phrases, meter))
    except PhraseError as exc:
        raise TranscribeError(str(exc)) from exc
    text = render(transcript, args.fmt, tz=args.tz or _local_zone())
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


class _Wav:
    def __init__(self, frames: bytes, channels: int, rate: int, mtime: float) -> None:
        self.frames, self.channels, self.rate, self.mtime = frames, channels, rate, mtime

    @property
    def samples(self) -> int:
        return len(self.frames) // (2 * self.channels)


def _read_wav(path: Path) -> _Wav:
    import wave

    try:
        with wave.open(str(path), "rb") as w:
            width, rate, channels = w.getsampwidth(), w.getframerate(), w.getnchannels()
            frames = w.readframes(w.getnframes())
    except FileNotFoundError as exc:
        raise TranscribeError(f"{path}: no such file") from exc
    except (wave.Error, EOFError) as exc:
        raise TranscribeError(f"{path}: not a PCM WAV file ({exc})") from exc
    if width != 2 or rate != 16_000:
        raise TranscribeError(
            f"{path}: {rate} Hz, {8 * width}-bit; Vosk needs 16 kHz 16-bit — convert it with: "
            f"sox {path} -r 16000 -b 16 converted.wav"
        )
    return _Wav(frames, channels, rate, path.stat().st_mtime)


def _seat_names(given: list[str], channels: int) -> list[str]:
    if given and len(given) != channels:
        raise TranscribeError(f"{len(given)} --seat names for {channels} channel(s)")
    if given:
        return given
    return ["speaker"] if channels == 1 else [f"ch{i}" for i in range(1, channels + 1)]


def _local_zone() -> Any:
    from datetime import datetime

    return datetime.now().astimezone().tzinfo


async def _decode(
    engine: Any, audio: _Wav, seats: list[str], phrases: list[str] | None, meter: _Meter
) -> Any:
    import asyncio
    import os
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from transcription.stream import ChannelStream
    from transcription.transcript import Transcript

    duration_us = audio.samples * 1_000_000 // audio.rate
    start_us = int(audio.mtime * 1_000_000) - duration_us  # the file was written at its end
    transcript = Transcript(started_ms=start_us // 1000)
    samples = np.frombuffer(audio.frames, dtype="<i2").reshape(-1, audio.channels)
    step = audio.rate * CHUNK_MS // 1000
    workers = max(1, min(audio.channels, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="transcribe") as pool:
        streams = [
            ChannelStream(
                engine, seat, executor=pool, phrases=phrases, on_final=transcript.add_final
            )
            for seat in seats
        ]
        for first in range(0, audio.samples, step):
            ts = start_us + first * 1_000_000 // audio.rate
            block = samples[first : first + step]
            await asyncio.gather(
                *(s.feed(block[:, i].tobytes(), ts) for i, s in enumerate(streams))
            )
            meter.update(min(first + step, audio.samples), audio.samples, audio.rate)
        await asyncio.gather(*(s.close() for s in streams))
    meter.update(audio.samples, audio.samples, audio.rate)
    transcript.segments.sort(key=lambda s: s.start_ms)
    for i, segment in enumerate(transcript.segments, 1):
        segment.id = f"s{i}"
    return transcript


class _Meter:
    """A percentage of audio decoded on stderr, rewritten in place; silent unless TTY or forced."""

    def __init__(self, stream: TextIO, force: bool) -> None:
        self._stream = stream
        self._on = force or stream.isatty()
        self._shown = -1

    def say(self, message: str) -> None:
        if self._on:
            self._stream.write(f"{message}\n")
            self._stream.flush()

    def update(self, done: int, total: int, rate: int) -> None:
        if not self._on or total <= 0:
            return
        percent = done * 100 // total
        if percent == self._shown:
            return
        self._shown = percent
        bar = "#" * (percent // 5)
        self._stream.write(
            f"\rtranscribing {percent:3d}% [{bar:<20}] {done / rate:.1f} of {total / rate:.1f} s"
        )
        if percent == 100:
            self._stream.write("\n")
        self._stream.flush()
