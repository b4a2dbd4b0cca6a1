"""Courtroom audio end to end: a real edge agent runs the microphone driver (WAV-file seats from
the simulator, and real PyAudio on ALSA's file plugin), publishes frames on
``{agent}/{device}/audio`` at QoS 0, and the hub's listeners get ``AudioReceived`` with
contiguous seq and correct headers; level telemetry arrives as well (issue 6)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agents.config import agent_config_from_dict
from edge_agents.runtime import EdgeAgent
from hub.broker import MosquittoBroker
from hub.config import hub_config_from_dict
from hub.registry import AudioReceived, HubChange, TelemetryReceived
from hub.service import HubService
from protocol.audio import AudioFrame
from simulators.microphone import SimulatedMicrophoneSource, write_seat_wavs

SEATS = ["judge", "clerk", "plaintiff", "defendant"]


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def agent_config(broker: MosquittoBroker, tmp_path: Path, options: dict[str, Any]) -> Any:
    return agent_config_from_dict(
        {
            "agent": {"id": "court-1", "data_dir": str(tmp_path / "agent"), "heartbeat_s": 1.0},
            "venue": {"id": "court-1", "kind": "tech_courtroom", "name": "第一科技法庭"},
            "broker": {"url": str(broker.url), "password": "pw-court-1"},
            "devices": [{"id": "mics-1", "driver": "microphone", "options": options}],
        }
    )


async def collect(
    broker: MosquittoBroker, tmp_path: Path, options: dict[str, Any], frames_wanted: int
) -> tuple[list[AudioFrame], list[dict[str, float]], dict[str, Any]]:
    hub = HubService(
        hub_config_from_dict({"hub": {"data_dir": str(tmp_path / "hub")}}),
        broker.url,
        "hub",
        "pw-hub",
    )
    frames: list[AudioFrame] = []
    levels: list[dict[str, float]] = []

    def listen(change: HubChange) -> None:
        if isinstance(change, AudioReceived) and change.device == "mics-1":
            assert change.agent == "court-1"
            frames.append(change.frame)
        elif isinstance(change, TelemetryReceived) and change.device == "mics-1":
            levels.append(dict(change.telemetry.metrics))

    agent = EdgeAgent(agent_config(broker, tmp_path, options))
    await hub.start()
    hub.add_listener(listen)
    await agent.start()
    try:
        await until(lambda: len(frames) >= frames_wanted, f"{frames_wanted} audio frames")
        await until(lambda: levels, "level telemetry")
        stats = agent.stats
    finally:
        await agent.stop()
        await hub.stop()
    return frames, levels, stats


async def test_hub_receives_seat_audio_from_wav_microphones(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    wavs = write_seat_wavs(tmp_path / "wav", SEATS, seconds=2.0)
    sim = SimulatedMicrophoneSource(wavs, frame_ms=40)
    frames, levels, stats = await collect(
        broker, tmp_path, sim.driver_options(level_interval_s=0.5), frames_wanted=30
    )
    # QoS 0 on loopback: nothing lost; the first frames may precede the hub's subscription
    seqs = [f.seq for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    for frame in frames:
        assert (frame.channels, frame.sample_rate, frame.frames) == (4, 16000, 640)
    for a, b in itertools.pairwise(frames):
        assert b.capture_ts_us - a.capture_ts_us == 40_000
    # in the first half second only the judge speaks (-13.5 dBFS tone); the others hear noise
    first = levels[0]
    assert first["level_dbfs_judge"] == pytest.approx(-13.5, abs=1.0)
    assert first["level_dbfs_defendant"] < -45
    # frames captured before the agent's first connection are dropped (live audio, no outbox)
    assert stats["audio_sent"] >= len(frames)


async def test_hub_receives_audio_captured_by_pyaudio_from_alsa(
    broker: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "in.raw"
    t = np.arange(16000) / 16000
    pcm = np.stack(
        [np.round(0.4 * 32767 * np.sin(2 * np.pi * f * t)) for f in (300, 500)], axis=1
    ).astype("<i2")
    pcm.tofile(raw)
    (tmp_path / ".asoundrc").write_text(
        'pcm.!default { type asym; playback.pcm "fileout"; capture.pcm "filein" }\n'
        f'pcm.fileout {{ type file; slave.pcm "null"; file "{tmp_path}/out.raw"; format "raw" }}\n'
        f'pcm.filein {{ type file; slave.pcm "null"; file "/dev/null"; infile "{raw}"; '
        'format "raw" }\n'
        "ctl.!default { type hw; card 0 }\n"
    )
    monkeypatch.setenv("HOME", str(tmp_path))
    frames, levels, _ = await collect(
        broker,
        tmp_path,
        {"channels": 2, "seats": ["judge", "witness"], "level_interval_s": 0.5},
        frames_wanted=10,
    )
    seqs = [f.seq for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert all((f.channels, f.frames) == (2, 640) for f in frames)
    first = frames[0]
    got = np.frombuffer(first.pcm, dtype="<i2").reshape(-1, 2)
    offset = first.seq * 640
    assert np.array_equal(got, pcm[offset : offset + 640])
    assert levels[0]["level_dbfs_witness"] == pytest.approx(-10.97, abs=0.5)
