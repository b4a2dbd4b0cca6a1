"""The agent as a real process: ``python -m edge_agents --config ...``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_agents.__main__ import main as dunder_main
from edge_agents.cli import EXIT_CONFIG, main

REPO = Path(__file__).resolve().parents[2]
AGENT = "agent-b"


def write_config(tmp_path: Path, broker: Any, devices: str = "") -> Path:
    (tmp_path / "agent-secret").write_text(f"pw-{AGENT}\n")
    path = tmp_path / "venue.toml"
    path.write_text(
        f"""
[agent]
id = "{AGENT}"
data_dir = "agent-data"
heartbeat_s = 0.5

[venue]
id = "room-1"
kind = "interrogation_room"
name = "远程讯问室"

[broker]
url = "mqtt://{broker.host}:{broker.port}"
password_file = "agent-secret"
{devices}
""",
        encoding="utf-8",
    )
    return path


async def spawn(config: Path, log_path: Path) -> asyncio.subprocess.Process:
    with log_path.open("wb") as log_file:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge_agents",
            "--config",
            str(config),
            cwd=REPO,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )


async def wait_birth(hub: Any, wait_for: Any, log_path: Path) -> Any:
    try:
        births = await wait_for(lambda: hub.births(AGENT), 20.0, "birth of the agent process")
    except AssertionError:
        tail = await asyncio.to_thread(log_path.read_text, errors="replace")
        raise AssertionError(tail[-3000:]) from None
    return births[-1]


async def test_kill_9_gives_the_death_of_the_births_bdseq(
    broker: Any, hub: Any, wait_for: Any, tmp_path: Path
) -> None:
    log_path = tmp_path / "agent.log"
    proc = await spawn(write_config(tmp_path, broker), log_path)
    try:
        birth = await wait_birth(hub, wait_for, log_path)
        assert birth.venue.id == "room-1"
        assert [d.id for d in birth.devices] == ["agent"]
        os.kill(proc.pid, signal.SIGKILL)
        deaths = await wait_for(
            lambda: [d for d in hub.deaths(AGENT) if d.bdseq == birth.bdseq],
            2.0,
            "the will (death) within 2 s of kill -9",
        )
        assert deaths
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_sigterm_stops_cleanly_with_a_death(
    broker: Any, hub: Any, wait_for: Any, tmp_path: Path
) -> None:
    log_path = tmp_path / "agent.log"
    proc = await spawn(write_config(tmp_path, broker), log_path)
    try:
        birth = await wait_birth(hub, wait_for, log_path)
        # its heartbeat telemetry flows (through the outbox, seq from 0)
        await wait_for(lambda: hub.telemetry(AGENT, "agent"), 5.0, "agent heartbeat")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10.0) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    deaths = await wait_for(lambda: hub.deaths(AGENT), 5.0, "clean death")
    assert deaths[-1].bdseq == birth.bdseq
    assert hub.seqs(AGENT)[0] == 0
    log_text = log_path.read_text(errors="replace")
    assert "pw-agent-b" not in log_text  # the password is never logged
    assert "agent stopped" in log_text


def test_main_refuses_a_bad_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[agent]\nid = "hub"\n[venue]\nid = "v"\nkind = "tech_courtroom"\n')
    with caplog.at_level(logging.ERROR):
        assert main(["--config", str(path)]) == EXIT_CONFIG
    assert f"{path}: agent: id 'hub' is reserved" in caplog.text


def test_main_refuses_an_unknown_driver_before_connecting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "venue.toml"
    path.write_text(
        '[agent]\nid = "a"\ndata_dir = "d"\n[venue]\nid = "v"\nkind = "tech_courtroom"\n'
        '[broker]\nurl = "mqtt://127.0.0.1:1"\n'
        '[[devices]]\nid = "cam-1"\ndriver = "warp_drive"\n'
    )
    with caplog.at_level(logging.ERROR):
        assert dunder_main(["--config", str(path)]) == EXIT_CONFIG
    assert "cam-1" in caplog.text and "warp_drive" in caplog.text
    assert not (tmp_path / "d").exists()  # failed before opening the outbox
