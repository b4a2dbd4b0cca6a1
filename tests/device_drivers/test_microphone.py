"""The microphone driver against real PyAudio reading ALSA's ``file`` plugin (no sound card):
known per-seat sines in, frames and level telemetry out (RECIPES: PyAudio without a sound card)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_drivers.base import DriverConfigError
from device_drivers.catalog import create
from device_drivers.microphone import FrameClock, MicrophoneDriver
from protocol.audio import AudioFrame, decode_frame
from protocol.messages import DeviceStatus

RATE = 16000
SEATS = ["judge", "clerk", "plaintiff", "defendant"]
AMPLITUDES = [0.5, 0.25, 0.1, 1.5]  # the defendant's channel is clipped
FREQS = [300.0, 440.0, 650.0, 1000.0]


@pytest.fixture
def sink(sink: Any) -> Any:
    """The conftest's RecordingSink, also decoding and keeping audio frames (capture thread)."""

    class AudioSink(type(sink)):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.frames: list[AudioFrame] = []

        def audio(self, frame: bytes) -> None:
            self.frames.append(decode_frame(frame))

    return AudioSink()


def seat_sines(seconds: float) -> np.ndarray[Any, np.dtype[np.int16]]:
    """(samples, 4) int16: a different sine per seat; amplitudes above 1 are clipped."""
    t = np.arange(int(RATE * seconds)) / RATE
    columns = [
        np.clip(np.round(a * 32767 * np.sin(2 * np.pi * f * t)), -32768, 32767)
        for a, f in zip(AMPLITUDES, FREQS, strict=True)
    ]
    return np.stack(columns, axis=1).astype(np.int16)


@pytest.fixture
def alsa_file_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """HOME with an .asoundrc whose default capture reads ``in.raw``; yields that path."""
    raw = tmp_path / "in.raw"
    (tmp_path / ".asoundrc").write_text(
        'pcm.!default { type asym; playback.pcm "fileout"; capture.pcm "filein" }\n'
        f'pcm.fileout {{ type file; slave.pcm "null"; file "{tmp_path}/out.raw"; format "raw" }}\n'
        f'pcm.filein {{ type file; slave.pcm "null"; file "/dev/null"; infile "{raw}"; '
        'format "raw" }\n'
        "ctl.!default { type hw; card 0 }\n"
    )
    monkeypatch.setenv("HOME", str(tmp_path))
    yield raw


@contextlib.asynccontextmanager
async def running(driver: MicrophoneDriver, sink: Any) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(driver.run(sink))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def channel(frames: list[AudioFrame], index: int, channels: int) -> np.ndarray[Any, Any]:
    pcm = np.frombuffer(b"".join(f.pcm for f in frames), dtype="<i2")
    return pcm.reshape(-1, channels)[:, index]


async def test_frames_seq_timestamps_pcm_and_levels_from_alsa_file(
    alsa_file_input: Path, sink: Any
) -> None:
    source = seat_sines(1.2)
    source.astype("<i2").tofile(alsa_file_input)
    driver = create(
        "microphone",
        "mics-1",
        {"channels": 4, "seats": SEATS, "frame_ms": 40, "level_interval_s": 0.5},
    )
    assert isinstance(driver, MicrophoneDriver)
    assert driver.description.kind == "microphone"
    assert driver.description.extra["seats"] == SEATS
    async with running(driver, sink):
        await sink.wait_state(DeviceStatus.ONLINE, timeout=10)
        # 1.2 s of input = 30 frames; the file plugin delivers instantly, the driver paces
        await sink.wait(lambda: len(sink.frames) >= 30, "30 frames", timeout=10)
        await sink.wait(lambda: len(sink.telemetry_log) >= 2, "two level reports", timeout=10)
    frames = sink.frames[:30]
    for frame in frames:
        assert (frame.channels, frame.sample_rate, frame.frames) == (4, RATE, 640)
    assert [f.seq for f in frames] == list(range(30))
    steps = {b.capture_ts_us - a.capture_ts_us for a, b in itertools.pairwise(frames)}
    assert steps == {40_000}
    captured = np.frombuffer(b"".join(f.pcm for f in frames), dtype="<i2").reshape(-1, 4)
    assert np.array_equal(captured, source[: len(captured)])

    # the first report covers the first 0.5 s of pure input: sine RMS = amplitude / sqrt 2
    first = sink.telemetry_log[0]
    for seat, amplitude in zip(SEATS[:3], AMPLITUDES[:3], strict=True):
        expected = 20 * math.log10(amplitude * 32767 / 32768 / math.sqrt(2))
        assert first[f"level_dbfs_{seat}"] == pytest.approx(expected, abs=0.5)
        assert first[f"peak_dbfs_{seat}"] == pytest.approx(expected + 3.01, abs=0.5)
        assert first[f"clipped_{seat}"] == 0
    assert first["clipped_defendant"] > 1000  # a 1.5x sine spends most of its time at the rails
    assert first["peak_dbfs_defendant"] == pytest.approx(0.0, abs=0.01)
    assert driver.description.extra["channels"] == 4


async def test_wav_source_paces_loops_and_matches_the_files(tmp_path: Path, sink: Any) -> None:
    source = seat_sines(0.4)  # 10 frames, looped
    paths = []
    for i, seat in enumerate(SEATS):
        path = tmp_path / f"{seat}.wav"
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(RATE)
            wav.writeframes(source[:, i].astype("<i2").tobytes())
        paths.append(str(path))
    driver = MicrophoneDriver(
        "mics-1",
        {"channels": 4, "seats": SEATS, "source": "wav:" + ",".join(paths), "frame_ms": 20},
    )
    async with running(driver, sink):
        await sink.wait(lambda: len(sink.frames) >= 45, "45 frames (two loops)", timeout=10)
    frames = sink.frames[:45]
    assert [f.seq for f in frames] == list(range(45))
    assert {b.capture_ts_us - a.capture_ts_us for a, b in itertools.pairwise(frames)} == {20_000}
    looped = np.concatenate([source, source, source])
    for i in range(4):
        assert np.array_equal(channel(frames, i, 4), looped[: 45 * 320, i])


async def test_missing_device_goes_offline_and_retries(alsa_file_input: Path, sink: Any) -> None:
    seat_sines(0.2).tofile(alsa_file_input)
    driver = MicrophoneDriver("mics-1", {"channels": 4, "device_name": "dsp-that-is-not-there"})
    async with running(driver, sink):
        await sink.wait_state(DeviceStatus.OFFLINE, timeout=10)
        assert "no input device named 'dsp-that-is-not-there'" in sink.states[-1][1]
        await sink.wait(lambda: driver.failures >= 2, "a retry", timeout=10)
    assert sink.frames == []


async def test_unknown_device_index_is_offline_with_the_inputs_named(
    alsa_file_input: Path, sink: Any
) -> None:
    seat_sines(0.2).tofile(alsa_file_input)
    driver = MicrophoneDriver("mics-1", {"channels": 4, "device_index": 99})
    async with running(driver, sink):
        await sink.wait_state(DeviceStatus.OFFLINE, timeout=10)
    reason = sink.states[-1][1]
    assert "no input device 99" in reason and "filein" in reason


def test_bad_options_are_refused_with_the_field_named() -> None:
    with pytest.raises(DriverConfigError, match="2 WAV files for 4 channels"):
        MicrophoneDriver("m", {"channels": 4, "source": "wav:/a.wav,/b.wav"})
    with pytest.raises(DriverConfigError, match="3 seats for 4 channels"):
        MicrophoneDriver("m", {"channels": 4, "seats": SEATS[:3]})
    with pytest.raises(DriverConfigError, match="source must be"):
        MicrophoneDriver("m", {"source": "alsa:hw0"})
    with pytest.raises(DriverConfigError, match="frame_ms"):
        MicrophoneDriver("m", {"frame_ms": 10})


async def test_wav_source_without_loop_goes_offline_at_the_end(tmp_path: Path, sink: Any) -> None:
    path = tmp_path / "judge.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(seat_sines(0.1)[:, 0].astype("<i2").tobytes())
    driver = MicrophoneDriver("m", {"source": f"wav:{path}", "loop": False, "frame_ms": 20})
    async with running(driver, sink):
        await sink.wait_state(DeviceStatus.OFFLINE, "WAV source ended", timeout=5)
    assert [f.seq for f in sink.frames] == [0, 1, 2, 3, 4]


def test_frame_clock_paces_a_fast_source_and_reanchors_a_drifting_device() -> None:
    clock = FrameClock(16000)
    now = 1_700_000_000_000_000
    ts0, wait0 = clock.stamp(640, now, blocked=False)
    assert (ts0, wait0) == (now - 40_000, 0.0)
    ts1, wait1 = clock.stamp(640, now + 100, blocked=False)  # an instant second read
    assert ts1 == ts0 + 40_000 and wait1 == pytest.approx(0.0399, abs=1e-6)
    # a real device whose samples run a frame ahead of the system clock: new anchor, no wait
    ts2, wait2 = clock.stamp(640, now + 100 + 5_000, blocked=True)
    assert wait2 == 0.0 and ts2 == now + 100 + 5_000 - 40_000 and clock.reanchors == 1
    # samples lost for 3 s (behind): new anchor at now
    ts3, _ = clock.stamp(640, now + 3_200_000, blocked=True)
    assert ts3 == now + 3_200_000 - 40_000 and clock.reanchors == 2


async def test_simulated_microphone_source_yields_the_seat_wavs_as_frames(tmp_path: Path) -> None:
    from simulators.microphone import SimulatedMicrophoneSource, write_seat_wavs

    wavs = write_seat_wavs(tmp_path, SEATS[:2], seconds=0.2)
    sim = SimulatedMicrophoneSource(wavs, frame_ms=20, loop=False)
    frames = [frame async for frame in sim.frames()]
    assert [f.seq for f in frames] == list(range(10))
    assert {b.capture_ts_us - a.capture_ts_us for a, b in itertools.pairwise(frames)} == {20_000}
    with wave.open(str(wavs["clerk"])) as wav:
        clerk = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert np.array_equal(channel(frames, 1, 2), clerk)
    assert sim.driver_options()["source"] == f"wav:{wavs['judge']},{wavs['clerk']}"
