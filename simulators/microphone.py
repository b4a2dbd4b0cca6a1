"""WAV-file microphones: per-seat audio for the simulated court and for tests without ALSA.

Design: the simulated court's courtroom agent is a real agent *process* built from a TOML
config, so its microphones must be reachable through driver options, and production code may
not import simulators. The ``microphone`` driver therefore owns the WAV replay itself (option
``source = "wav:a.wav,b.wav"``, paced by the same absolute schedule as any capture); this module
supplies what a simulation needs around it:

* :func:`write_seat_wavs` — one distinct, speech-like WAV per seat (a tone per seat switched on
  and off like turns of speech), so levels and voice-follow have something to follow;
* :class:`SimulatedMicrophoneSource` — the seats' WAVs as :class:`~protocol.audio.AudioFrame`
  in real time (an async iterator, absolute schedule, looping), for hub or transcription tests
  that want realistic frames without an agent, and :meth:`SimulatedMicrophoneSource.driver_options`
  for the agent config of a simulated courtroom.

An ``.asoundrc`` with ALSA's ``file`` plugin was the alternative; it was rejected because the
plugin reads its file once (stale data after the end, no looping), a FIFO as its ``infile`` breaks
when PortAudio enumerates devices (it opens and closes every PCM: the writer gets EPIPE), and the
agent process would need its own ``HOME``.
"""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from device_drivers.microphone import CaptureEnded, WavSource
from protocol.audio import AudioFrame

#: Seat tones (Hz) of :func:`write_seat_wavs`, in seat order, repeated if there are more seats.
SEAT_TONES = (220.0, 330.0, 440.0, 550.0, 660.0, 770.0)


def write_seat_wavs(
    directory: Path,
    seats: Sequence[str],
    *,
    seconds: float = 8.0,
    sample_rate: int = 16000,
    amplitude: float = 0.3,
) -> dict[str, Path]:
    """Write ``{seat}.wav`` per seat: seats take turns speaking (their own tone, bursts of
    ``seconds / len(seats)``), with low room noise otherwise. Returns seat -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    turn = n // max(len(seats), 1)
    paths: dict[str, Path] = {}
    for i, seat in enumerate(seats):
        signal = rng.normal(0.0, 0.002, n)  # room noise, about -54 dBFS
        tone = amplitude * np.sin(2 * np.pi * SEAT_TONES[i % len(SEAT_TONES)] * t)
        signal[i * turn : (i + 1) * turn] += tone[i * turn : (i + 1) * turn]
        pcm = np.clip(np.round(signal * 32767), -32768, 32767).astype("<i2")
        path = directory / f"{seat}.wav"
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(sample_rate)
            wav.writeframes(pcm.tobytes())
        paths[seat] = path
    return paths


class SimulatedMicrophoneSource:
    """Per-seat WAV files as live audio frames, paced on an absolute schedule.

    ``wavs`` maps seat -> mono 16-bit WAV (channel order = mapping order). Iterating yields
    frames with seq from 0 and capture timestamps ``start + samples / rate``; each frame is
    yielded when its last sample would have been captured (no drift over long runs).
    """

    def __init__(
        self,
        wavs: Mapping[str, Path | str],
        frame_ms: int = 40,
        *,
        loop: bool = True,
        sample_rate: int = 16000,
    ) -> None:
        if not wavs:
            raise ValueError("at least one seat WAV is needed")
        if not 20 <= frame_ms <= 100:
            raise ValueError(f"frame_ms {frame_ms} not in 20..100")
        self.seats = list(wavs)
        self.paths = [str(p) for p in wavs.values()]
        self.frame_ms = frame_ms
        self.loop = loop
        self.sample_rate = sample_rate

    def driver_options(self, **extra: Any) -> dict[str, Any]:
        """Options of a ``microphone`` device that replays these files (for a venue config)."""
        return {
            "channels": len(self.seats),
            "seats": self.seats,
            "sample_rate": self.sample_rate,
            "frame_ms": self.frame_ms,
            "source": "wav:" + ",".join(self.paths),
            "loop": self.loop,
            **extra,
        }

    async def frames(self) -> AsyncIterator[AudioFrame]:
        """Frames until the files end (never, when looping); raises CaptureError on bad files."""
        source = WavSource(self.paths, self.sample_rate, loop=self.loop)
        await asyncio.to_thread(source.open)
        n = self.sample_rate * self.frame_ms // 1000
        loop = asyncio.get_running_loop()
        start_mono = loop.time()
        start_us = time.time_ns() // 1000
        seq = 0
        while True:
            try:
                pcm = source.read(n)
            except CaptureEnded:
                return
            # wait for the moment this frame's last sample is "captured"
            delay = start_mono + (seq + 1) * n / self.sample_rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield AudioFrame(
                seq=seq,
                capture_ts_us=start_us + seq * n * 1_000_000 // self.sample_rate,
                sample_rate=self.sample_rate,
                channels=len(self.seats),
                pcm=pcm,
            )
            seq += 1
