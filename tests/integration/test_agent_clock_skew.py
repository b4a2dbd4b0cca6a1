"""An agent process whose wall clock steps an hour ahead and back (libfaketime), a real Mosquitto
and the hub core: the technicians get ``clock-skew:court-1`` with the offset, it resolves when
the clock is back, the agent's telemetry and audio keep arriving filed on the hub's clock, and
the hub's commands still run (their deadline is written on the agent's clock)."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import tomli_w

from hub.alerts import AlertBoard
from hub.broker import MosquittoBroker
from hub.clock_skew import SkewAlerter
from hub.config import hub_config_from_dict
from hub.registry import AudioReceived, HubChange, TelemetryReceived
from hub.service import HubService
from simulators.microphone import SimulatedMicrophoneSource, write_seat_wavs

REPO = Path(__file__).resolve().parents[2]
HOUR_MS = 3_600_000


def _skewed_clock() -> ModuleType:
    """tests/chaos/skewed_clock.py (libfaketime helpers and the agent's entry under it)."""
    path = REPO / "tests" / "chaos" / "skewed_clock.py"
    spec = importlib.util.spec_from_file_location("courthub_skewed_clock", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


skewed_clock = _skewed_clock()

pytestmark = pytest.mark.skipif(
    not skewed_clock.available(), reason="libfaketime missing: scripts/install-system-deps.sh"
)


async def until(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_an_agent_clock_an_hour_ahead_is_alerted_and_its_data_filed_on_the_hub_clock(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    wavs = write_seat_wavs(tmp_path / "wav", ["judge", "clerk"], seconds=2.0)
    mic = SimulatedMicrophoneSource(wavs, frame_ms=40)
    config = tmp_path / "venue.toml"
    config.write_bytes(
        tomli_w.dumps(
            {
                "agent": {"id": "court-1", "data_dir": str(tmp_path / "agent"), "heartbeat_s": 0.5},
                "venue": {"id": "court-1", "kind": "tech_courtroom", "name": "第一科技法庭"},
                "broker": {"url": str(broker.url), "password": "pw-court-1"},
                "devices": [
                    {"id": "mic-1", "driver": "microphone", "options": mic.driver_options()}
                ],
            }
        ).encode()
    )
    clock = skewed_clock.SkewedClock(tmp_path / "faketime.rc")
    hub = HubService(
        hub_config_from_dict({"hub": {"data_dir": str(tmp_path / "hub")}}),
        broker.url,
        "hub",
        "pw-hub",
    )
    board = await AlertBoard.open(tmp_path)
    alerter = SkewAlerter(board)
    hub.clock_skew.add_listener(alerter)
    telemetry: list[tuple[int, int]] = []  # (filed ts, hub time)
    audio: list[tuple[int, int]] = []

    def listen(change: HubChange) -> None:
        if isinstance(change, TelemetryReceived) and not change.telemetry.historical:
            telemetry.append((change.telemetry.ts, now_ms()))
        elif isinstance(change, AudioReceived):
            audio.append((change.frame.capture_ts_us // 1000, now_ms()))

    await hub.start()
    hub.add_listener(listen)
    log = (tmp_path / "agent.log").open("ab")
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "tests" / "chaos" / "skewed_clock.py"),
        "--config",
        str(config),
        stdout=log,
        stderr=log,
        env=clock.env(),
    )
    try:
        await until(lambda: len(telemetry) >= 2 and audio, "telemetry and audio at +0")
        clock.step(3600)
        await until(lambda: board.is_active("clock-skew:court-1"), "the clock-skew alert")
        [alert] = board.active()
        # the estimate is the clock's offset less the least transit delay seen (tens of ms
        # on a busy machine): "59 min 59.9 s" or "1 h 0 min 0.0 s"
        offset = int(re.search(r"offset (-?\d+) ms", alert.message).group(1))  # type: ignore[union-attr]
        assert abs(offset - 3_600_000) < 2_000 and "ahead" in alert.message, alert.message
        assert hub.clock_skew.offset_ms("court-1") == pytest.approx(HOUR_MS, abs=2000)
        n_telemetry, n_audio = len(telemetry), len(audio)
        await until(
            lambda: len(telemetry) >= n_telemetry + 3 and len(audio) >= n_audio + 25,
            "telemetry and audio while an hour ahead",
        )
        # filed on the hub's clock: nothing an hour in the future
        for filed, received in telemetry + audio:
            assert abs(filed - received) < 5_000, (filed - received, "ms off the hub's clock")
        # an hour ahead, the agent would refuse a deadline written on the hub's clock as expired
        outcome = await hub.call_command("court-1", "agent", "ping", timeout_s=5.0)
        assert outcome.ok, outcome.error
        clock.step(0)
        await until(lambda: not board.is_active("clock-skew:court-1"), "the alert to resolve")
        assert hub.clock_skew.offset_ms("court-1") == 0
        assert [a.key for a in board.active()] == []
    finally:
        agent.terminate()
        await agent.wait()
        log.close()
        await alerter.drain()
        await hub.stop()
        await board.close()
