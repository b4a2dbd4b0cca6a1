"""Courtroom audio end to end on the wire: an agent publishes encoded multi-channel frames on
``courthub/v1/{agent}/{device}/audio`` through a real Mosquitto; a real HubService hands them to the
AudioRecorder (its listener), which writes one WAV per seat into a real recordings index."""

from __future__ import annotations

import asyncio
import uuid
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hub.audio_recorder import AudioRecorder
from hub.broker import MosquittoBroker
from hub.config import hub_config_from_dict
from hub.evidence import verify_recordings
from hub.recorder_config import MicrophoneConfig, RecorderConfig
from hub.recording_index import DB_FILE, RecordingIndex
from hub.service import HubService
from protocol.audio import AudioFrame, encode_frame
from protocol.messages import Birth, DeviceInfo, Venue, VenueKind, encode, now_ms
from protocol.mqtt_link import MqttLink
from protocol.topics import TopicKind, build

RATE, SPF, SEATS = 16_000, 320, ["judge", "clerk"]
MIC = MicrophoneConfig(agent="court-1", device="mic-1", venue="court-1", seats=SEATS)


async def wait_until(check: Callable[[], Any], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def test_frames_over_mosquitto_become_per_seat_wavs_with_the_lost_ones_as_gaps(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    config = hub_config_from_dict({"hub": {"data_dir": str(tmp_path / "hub")}})
    service = HubService(config, broker.url, "hub", "pw-hub", flush_interval_s=0.1)
    index = await RecordingIndex.open(tmp_path / DB_FILE, tmp_path / "recordings")
    recorder = AudioRecorder(
        RecorderConfig(segment_s=1, audio_jitter_ms=150, microphones=[MIC]),
        storage_root=index.storage_root,
        index=index,
    )
    agent = MqttLink(
        broker.url,
        client_id=f"mic-{uuid.uuid4().hex[:6]}",
        username="court-1",
        password="pw-court-1",
    )
    try:
        await service.start()
        assert await service.wait_connected(5)
        await recorder.start()
        service.add_listener(recorder.on_change)
        await agent.start()
        assert await agent.wait_connected(5)
        birth = Birth(
            ts=now_ms(),
            bdseq=0,
            seq=0,
            venue=Venue(id="court-1", kind=VenueKind.TECH_COURTROOM, name="Court 1"),
            devices=[DeviceInfo(id="mic-1", kind="microphone", model="sim")],
        )
        await agent.publish_acked(build(TopicKind.BIRTH, "court-1"), encode(birth), retain=True)
        await wait_until(lambda: service.registry.device("court-1", "mic-1") is not None)

        t = np.arange(RATE * 2) / RATE  # 2 s, 100 frames
        pcm = np.stack([8000 * np.sin(2 * np.pi * 300 * t), 3000 * np.sin(2 * np.pi * 500 * t)], 1)
        pcm = pcm.astype("<i2")
        start_us = (now_ms() // 1000) * 1_000_000
        topic = build(TopicKind.AUDIO, "court-1", "mic-1")
        lost = range(40, 45)
        for seq in range(100):
            if seq in lost:
                continue
            frame = AudioFrame(
                seq=seq,
                capture_ts_us=start_us + seq * 20_000,
                sample_rate=RATE,
                channels=2,
                pcm=pcm[seq * SPF : (seq + 1) * SPF].tobytes(),
            )
            agent.publish(topic, encode_frame(frame), qos=0)
            if seq == 10:
                agent.publish(topic, encode_frame(frame), qos=0)  # delivered twice
            await asyncio.sleep(0.002)

        def received() -> bool:
            stats = recorder.stats("court-1", "mic-1")
            return stats is not None and stats["frames_received"] == 96

        await wait_until(received)
        await recorder.stop()
        stats = recorder.stats("court-1", "mic-1")
        assert stats is not None
        assert (stats["duplicates"], stats["gaps"], stats["frames_lost"]) == (1, 1, 5)
        gaps = await index.gaps()
        assert sorted(g.camera for g in gaps) == [MIC.track(s) for s in sorted(SEATS)]
        assert {(g.from_ms, g.to_ms) for g in gaps} == {
            (start_us // 1000 + 800, start_us // 1000 + 900)
        }
        for ch, seat in enumerate(SEATS):
            segs = await index.segments(camera=MIC.track(seat))
            samples = []
            for seg in segs:
                with wave.open(str(index.storage_root / seg.path), "rb") as w:
                    samples.append(np.frombuffer(w.readframes(w.getnframes()), "<i2"))
            got = np.concatenate(samples)
            expected = np.concatenate([pcm[: 40 * SPF, ch], pcm[45 * SPF :, ch]])
            np.testing.assert_array_equal(got, expected)
            assert sum(s.frames for s in segs) == 95 * SPF
        report = await asyncio.to_thread(verify_recordings, tmp_path / DB_FILE, index.storage_root)
        assert report.ok, report.problems
    finally:
        await agent.stop()
        await recorder.stop()
        await service.stop()
        await index.close()
