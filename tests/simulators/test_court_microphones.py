"""The simulated courtroom microphone: scenario shape, the hub's ``[[recorder.microphones]]``,
per-seat WAVs with espeak-ng speech taking turns (tones when espeak-ng is missing), and a device
entry the real ``microphone`` driver accepts."""

from __future__ import annotations

import logging
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from device_drivers.microphone import MicrophoneDriver, WavSource
from simulators.court_microphones import FRAME_MS, PAUSE_S, SAMPLE_RATE, prepare_microphone
from simulators.scenario import ScenarioError, default_scenario, scenario_from_dict

SEATS = ["judge", "clerk", "plaintiff"]
SPEECH = {"judge": "재판을 시작하겠습니다", "plaintiff": "원고는 청구를 유지합니다"}


def court(microphone: dict[str, object]) -> dict[str, object]:
    return {"venues": [{"agent": "court-1", "kind": "tech_courtroom", "microphone": microphone}]}


def samples(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(float) / 32768


def loud(pcm: np.ndarray) -> np.ndarray:
    """Which 100 ms windows are louder than room noise."""
    windows = pcm[: len(pcm) // 1600 * 1600].reshape(-1, 1600)
    return np.sqrt((windows**2).mean(axis=1)) > 0.01


def test_scenario_microphone_becomes_the_hubs_recorder_microphones() -> None:
    scenario = scenario_from_dict(court({"seats": SEATS, "speech": SPEECH}))
    assert scenario.recorder_microphones() == [
        {"agent": "court-1", "device": "mic-1", "venue": "court-1", "seats": SEATS}
    ]
    default = default_scenario().recorder_microphones()
    assert [(m["agent"], len(m["seats"])) for m in default] == [("court-1", 4)]


@pytest.mark.parametrize(
    ("microphone", "message"),
    [
        ({"seats": ["judge"], "speech": {"witness": "네"}}, "speech for seats it does not have"),
        ({"seats": ["judge", "judge"]}, "each channel's seat once"),
        ({"seats": []}, "each channel's seat once"),
        ({"seats": ["Judge!"]}, "seat 'Judge!'"),
        ({"id": "mic 1", "seats": ["judge"]}, "id 'mic 1'"),
    ],
)
def test_bad_microphone_is_refused_naming_the_venue(
    microphone: dict[str, object], message: str
) -> None:
    with pytest.raises(ScenarioError, match="venue court-1 microphone") as err:
        scenario_from_dict(court(microphone))
    assert message in str(err.value)


def test_seats_take_turns_saying_their_lines_and_the_driver_replays_them(tmp_path: Path) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: run `make test`, which installs it")
    mic = scenario_from_dict(court({"seats": SEATS, "speech": SPEECH})).venues[0].microphone
    assert mic is not None
    device = prepare_microphone(tmp_path, mic)
    options = device["options"]
    assert (device["id"], device["driver"], options["loop"]) == ("mic-1", "microphone", True)
    paths = [Path(p) for p in options["source"].removeprefix("wav:").split(",")]
    assert [p.stem for p in paths] == SEATS  # channel order = seat order
    judge, clerk, plaintiff = (samples(p) for p in paths)
    assert len(judge) == len(clerk) == len(plaintiff)
    assert len(judge) % (SAMPLE_RATE * FRAME_MS // 1000) == 0  # whole frames
    # the judge speaks first after a pause, then the plaintiff; the clerk only hears the room
    j, p = np.flatnonzero(loud(judge)), np.flatnonzero(loud(plaintiff))
    assert j[0] * 0.1 == pytest.approx(PAUSE_S, abs=0.2)
    assert j[-1] < p[0] and p[0] * 0.1 >= (j[-1] + 1) * 0.1 + PAUSE_S - 0.2
    assert not loud(clerk).any() and 0 < np.std(clerk) < 0.005
    # the real driver takes the entry and reads every seat's file
    driver = MicrophoneDriver(device["id"], options)
    source = driver.make_source()
    assert isinstance(source, WavSource)
    source.open()
    try:
        first = np.frombuffer(source.read(640), "<i2").reshape(-1, len(SEATS))
    finally:
        source.close()
    assert first.shape == (640, 3)


def test_without_espeak_the_speaking_seats_play_tones_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    mic = scenario_from_dict(court({"seats": SEATS, "speech": SPEECH})).venues[0].microphone
    assert mic is not None
    with caplog.at_level(logging.WARNING):
        device = prepare_microphone(tmp_path / "wav", mic)
    assert "espeak-ng not installed" in caplog.text
    judge = samples(tmp_path / "wav" / "judge.wav")
    spectrum = np.abs(np.fft.rfft(judge))
    assert np.fft.rfftfreq(len(judge), 1 / SAMPLE_RATE)[spectrum.argmax()] == pytest.approx(
        220, abs=1
    )
    assert device["options"]["channels"] == 3
