"""Scale-out as deployed (docs/DEPLOYMENT.md): one hub (the leader) with
``[telemetry] device_points = "workers"`` and two ``courthub worker`` processes on the shared
subscription, all writing to a real VictoriaMetrics. Every telemetry message becomes exactly one
point, written by one of the workers; the hub still tracks health and writes none itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import tomli_w

from hub.app import HubRuntime, run_hub
from hub.config import load_hub_config
from hub.ingest_worker import SHARE_GROUP
from protocol.messages import DeviceInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hub"))
from hub_harness import FakeAgent, wait_until

COURTHUB = Path(sys.executable).with_name("courthub")
AGENTS = ("hall-a", "court-b")
MESSAGES = 40  # per agent


def write_config(tmp_path: Path, vm_url: str) -> Path:
    config = {
        "hub": {"data_dir": str(tmp_path / "hub")},
        "broker": {"mode": "own", "accounts": [{"username": a} for a in AGENTS]},
        "api": {"port": 0},
        "telemetry": {
            "device_points": "workers",
            "sample_interval_s": 0.5,
            "influxdb": {"url": vm_url, "flush_interval_s": 0.2, "batch_size": 100},
        },
    }
    path = tmp_path / "hub.toml"
    path.write_bytes(tomli_w.dumps(config).encode())
    return path


@contextlib.asynccontextmanager
async def leader(config_path: Path) -> AsyncIterator[HubRuntime]:
    stop = asyncio.Event()
    ready: asyncio.Future[HubRuntime] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_hub(load_hub_config(config_path), stop, on_ready=ready.set_result)
    )
    done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    try:
        yield ready.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def start_worker(config_path: Path, worker_id: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(COURTHUB), "worker", "--config", str(config_path), "--id", worker_id],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def stop_worker(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


async def test_two_workers_write_each_message_once_and_the_hub_none(
    tmp_path: Path, victoria_metrics: Any
) -> None:
    config_path = write_config(tmp_path, victoria_metrics.url)
    async with leader(config_path) as hub:
        logs = [tmp_path / f"worker-{n}.log" for n in (1, 2)]
        workers = [start_worker(config_path, f"w{n}", logs[n - 1]) for n in (1, 2)]
        try:
            # both workers' sessions are in the share group before anything is published
            await wait_until(
                lambda: all("running group" in log.read_text() for log in logs),
                timeout=30,
                what="both workers connected",
            )
            assert hub.credentials is not None
            agents = []
            for agent_id in AGENTS:
                agent = FakeAgent(
                    hub.broker_url,
                    agent_id,
                    hub.credentials.password_for(agent_id),
                    devices=[DeviceInfo(id="sensor-1", kind="env_sensor")],
                )
                agents.append(await agent.start())
                await agent.birth()
            sent: set[tuple[str, int]] = set()
            base = int(time.time() * 1000) - 60_000
            for n in range(MESSAGES):
                for i, agent in enumerate(agents):
                    ts = base + n * 100 + i
                    await agent.telemetry("sensor-1", {"temp_c": float(n)}, ts=ts)
                    sent.add((agent.id, ts))
            samples = await asyncio.to_thread(
                victoria_metrics.wait_for_count, len(sent), "device_temp_c", 30.0
            )
            got = [(dict(s.labels)["agent"], s.ts_ms) for s in samples]
            assert sorted(got) == sorted(sent)  # every message once: none lost, none twice
            assert all(dict(s.labels)["kind"] == "env_sensor" for s in samples)
            # the leader still keeps health (its own device_health points) and wrote no device
            # points itself
            await asyncio.to_thread(
                victoria_metrics.wait_for,
                lambda s: len(s) > 0,
                'device_health_up{agent="hall-a"}',
                30.0,
            )
            assert hub.telemetry is not None
            assert hub.telemetry.store is not None
            assert await hub.telemetry.store.metric_names("hall-a", "sensor-1") == []
            for agent in agents:
                await agent.stop()
        finally:
            codes = [stop_worker(w) for w in workers]
        assert codes == [0, 0]
        handled = [
            int(m.group(1))
            for log in logs
            if (m := re.search(r"'telemetry': (\d+)", log.read_text())) is not None
        ]
        # the broker dealt the messages out: both workers took a share, together all of them
        assert len(handled) == 2 and all(h > 0 for h in handled), handled
        assert sum(handled) == len(sent)
        assert SHARE_GROUP in logs[0].read_text()
