"""``courthub bench ingest``: telemetry through broker -> hub registry, with the ceilings beside it.

Four figures, all measured in one run on the same broker:
- ``ceiling``: raw Mosquitto throughput with ``mosquitto_pub -l`` -> ``mosquitto_sub`` (C clients);
- ``clients``: bare paho vs bare aiomqtt receiving the same stream in one Python process — the
  measurement behind the hub's choice of paho;
- ``sustained``: N simulated devices publishing as fast as they can; messages/s that reach the
  hub's registry (validated, seq-checked, applied), and how many were lost;
- ``latency``: p50/p99 publish-to-registry latency at a fixed 1,000 msg/s.

The load generator (bench/publisher.py) runs in its own process so it does not share the hub's
GIL. Targets (docs/BENCHMARKS.md): >= 20,000 msg/s sustained, p99 <= 50 ms at 1,000 msg/s.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.broker import Account, BrokerAccounts, MosquittoBroker
from hub.config import hub_config_from_dict
from hub.registry import HubChange, TelemetryReceived
from hub.service import HubService
from protocol.messages import Birth, DeviceInfo, Telemetry, Venue, VenueKind, encode, now_ms

HUB_PASSWORD = "bench-hub"  # a throw-away broker on a temp dir, never a real court's


@dataclass(frozen=True)
class BenchOptions:
    """Size of the run."""

    devices: int = 200
    messages: int = 200_000
    latency_seconds: float = 10.0
    agents: int = 10
    latency_rate: float = 1000.0
    client_messages: int = 100_000
    #: simulated devices of the sustained phase, each its own mosquitto_pub process (agent)
    flood_devices: int = 100


def _agents(options: BenchOptions) -> list[str]:
    return [f"bench-a{i}" for i in range(max(options.agents, options.flood_devices))]


async def _flood(
    broker: MosquittoBroker, passwords: dict[str, str], devices: int, messages: int
) -> dict[str, Any]:
    """Sustained load from C clients: one ``mosquitto_pub -l`` per device (its own agent).

    A Python publisher tops out near the hub's own rate on 2 cores, which would measure the
    publisher; Mosquitto's C client does not. Each agent first publishes its birth, then
    ``messages / devices`` telemetry lines with contiguous seqs.
    """
    per_device = messages // devices
    procs = []
    payloads = []
    for i in range(devices):
        agent = f"bench-a{i}"
        auth = ["-h", "127.0.0.1", "-p", str(broker.port), "-u", agent, "-P", passwords[agent]]
        birth = Birth(
            ts=now_ms(),
            bdseq=1,
            seq=0,
            venue=Venue(id=agent, kind=VenueKind.LITIGATION_HALL),
            devices=[DeviceInfo(id="d0", kind="sensor")],
        )
        birth_proc = await asyncio.create_subprocess_exec(
            "mosquitto_pub", *auth, "-t", f"courthub/v1/{agent}/birth", "-r", "-q", "1",
            "-m", encode(birth).decode(),
        )  # fmt: skip
        await birth_proc.wait()
        lines = b"".join(
            encode(Telemetry(ts=now_ms(), seq=n, metrics={"temperature_c": 20.0 + n % 50 / 10}))
            + b"\n"
            for n in range(per_device)
        )
        payloads.append((auth, agent, lines))
    await asyncio.sleep(0.5)  # births are QoS 1: let the hub register the agents first
    start = time.perf_counter()
    for auth, agent, _ in payloads:
        procs.append(
            await asyncio.create_subprocess_exec(
                "mosquitto_pub",
                *auth,
                "-t",
                f"courthub/v1/{agent}/d0/telemetry",
                "-l",
                "-q",
                "0",
                stdin=asyncio.subprocess.PIPE,
            )
        )
    await asyncio.gather(
        *(proc.communicate(lines) for proc, (_, _, lines) in zip(procs, payloads, strict=True))
    )
    elapsed = time.perf_counter() - start
    sent = per_device * devices
    return {"sent": sent, "seconds": round(elapsed, 3), "rate": round(sent / elapsed)}


async def _publisher(
    broker: MosquittoBroker, pwfile: Path, options: BenchOptions, messages: int, rate: float = 0.0
) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.publisher",
        "--port",
        str(broker.port),
        "--password-file",
        str(pwfile),
        "--agents",
        str(options.agents),
        "--devices",
        str(max(options.devices // options.agents, 1)),
        "--messages",
        str(messages),
        "--rate",
        str(rate),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def _ceiling(broker: MosquittoBroker, messages: int) -> dict[str, Any]:
    """Raw broker throughput with Mosquitto's own C clients (same payload size as the hub's)."""
    payload = encode(Telemetry(ts=1, seq=1, metrics={"temperature_c": 21.5, "bench_sent_us": 1e15}))
    auth = ["-h", "127.0.0.1", "-p", str(broker.port), "-u", "hub", "-P", HUB_PASSWORD]
    topic = "courthub/v1/bench-a0/d0/telemetry"
    sub = await asyncio.create_subprocess_exec(
        "mosquitto_sub", *auth, "-t", topic, "-C", str(messages), "-q", "0",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.sleep(0.5)  # let the subscription land
    lines = (payload + b"\n") * messages
    start = time.perf_counter()
    pub = await asyncio.create_subprocess_exec(
        "mosquitto_pub", *auth, "-t", topic, "-l", "-q", "0",
        stdin=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await pub.communicate(lines)
    try:
        await asyncio.wait_for(sub.wait(), 60)
    except TimeoutError:
        sub.kill()
        return {"error": "mosquitto_sub did not receive every message within 60 s"}
    elapsed = time.perf_counter() - start
    return {
        "messages": messages,
        "seconds": round(elapsed, 3),
        "msg_per_s": round(messages / elapsed),
    }


async def _flood_from(
    broker: MosquittoBroker, pwfile: Path, options: BenchOptions, messages: int
) -> dict[str, Any]:
    passwords = json.loads(await asyncio.to_thread(pwfile.read_text))
    return await _flood(broker, passwords, options.flood_devices, messages)


async def _paho_receive(broker: MosquittoBroker, pwfile: Path, options: BenchOptions) -> float:
    import threading

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    done = threading.Event()
    count = 0
    first = last = 0.0

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        nonlocal count, first, last
        count += 1
        last = time.perf_counter()
        if count == 1:
            first = last
        if count >= options.client_messages:
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho")
    client.username_pw_set("hub", HUB_PASSWORD)
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.subscribe("courthub/v1/+/+/telemetry", qos=1)
    client.loop_start()
    await asyncio.sleep(0.3)
    await _flood_from(broker, pwfile, options, options.client_messages)
    await asyncio.to_thread(done.wait, 30)
    client.disconnect()
    client.loop_stop()
    return count / (last - first) if count > 1 and last > first else 0.0


async def _aiomqtt_receive(broker: MosquittoBroker, pwfile: Path, options: BenchOptions) -> float:
    import aiomqtt

    count = 0
    first = last = 0.0
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, username="hub", password=HUB_PASSWORD, identifier="bench-aiomqtt"
    ) as client:
        await client.subscribe("courthub/v1/+/+/telemetry", qos=1)
        pub = asyncio.create_task(_flood_from(broker, pwfile, options, options.client_messages))
        try:
            async with asyncio.timeout(60):
                async for _ in client.messages:
                    count += 1
                    last = time.perf_counter()
                    if count == 1:
                        first = last
                    if count >= options.client_messages:
                        break
        except TimeoutError:
            pass
        await pub
    return count / (last - first) if count > 1 and last > first else 0.0


class _Probe:
    """Counts telemetry reaching the registry and the latency of each (a hub listener)."""

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.latencies_ms: list[float] = []
        self.record_latency = False

    def __call__(self, change: HubChange) -> None:
        if not isinstance(change, TelemetryReceived):
            return
        now = time.perf_counter()
        self.count += 1
        if self.count == 1:
            self.first = now
        self.last = now
        if self.record_latency:
            sent_us = change.telemetry.metrics.get("bench_sent_us")
            if sent_us is not None:
                self.latencies_ms.append((time.time() * 1e6 - sent_us) / 1000)

    def reset(self) -> None:
        self.count = 0
        self.first = self.last = 0.0
        self.latencies_ms = []


async def _wait_count(probe: _Probe, target: int, idle_s: float = 3.0) -> None:
    """Wait until ``target`` arrived, or nothing arrived for ``idle_s`` (the rest is lost)."""
    seen, since = -1, time.monotonic()
    while probe.count < target:
        if probe.count != seen:
            seen, since = probe.count, time.monotonic()
        elif time.monotonic() - since > idle_s:
            return
        await asyncio.sleep(0.05)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_ingest_bench(options: BenchOptions) -> dict[str, Any]:
    """Run the whole benchmark and return its figures."""
    if shutil.which("mosquitto") is None:
        raise RuntimeError("the ingest benchmark needs Mosquitto (make setup installs it)")
    work = Path(tempfile.mkdtemp(prefix="courthub-bench-"))
    agents = _agents(options)
    passwords = {a: f"bench-{a}" for a in agents}
    pwfile = work / "passwords.json"
    pwfile.write_text(json.dumps(passwords))
    accounts = BrokerAccounts(
        hub=Account("hub", HUB_PASSWORD), agents=tuple(Account(a, p) for a, p in passwords.items())
    )
    # room for the whole flood in the hub's session queue: the sustained phase measures how fast
    # the hub drains a backlog, not the queue limit of the production config
    broker = MosquittoBroker(work / "broker", accounts, max_queued_messages=10 * options.messages)
    await asyncio.to_thread(broker.start)
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "options": options.__dict__,
    }
    try:
        result["ceiling"] = await _ceiling(broker, options.messages)
        paho_rate = await _paho_receive(broker, pwfile, options)
        aiomqtt_rate = await _aiomqtt_receive(broker, pwfile, options)
        result["clients"] = {
            "paho_msg_per_s": round(paho_rate),
            "aiomqtt_msg_per_s": round(aiomqtt_rate),
            "paho_over_aiomqtt": round(paho_rate / aiomqtt_rate, 2) if aiomqtt_rate else None,
        }
        result.update(await _hub_phases(broker, pwfile, options, work))
    finally:
        await asyncio.to_thread(broker.stop)
        shutil.rmtree(work, ignore_errors=True)
    return result


async def _hub_phases(
    broker: MosquittoBroker, pwfile: Path, options: BenchOptions, work: Path
) -> dict[str, Any]:
    config = hub_config_from_dict({"hub": {"data_dir": str(work / "hub")}})
    hub = HubService(config, broker.url, "hub", HUB_PASSWORD)
    probe = _Probe()
    hub.add_listener(probe)
    await hub.start()
    out: dict[str, Any] = {}
    try:
        if not await hub.wait_connected(10):
            raise RuntimeError("hub did not connect to the benchmark broker")
        sent = await _flood_from(broker, pwfile, options, options.messages)
        await _wait_count(probe, sent["sent"])
        elapsed = probe.last - probe.first
        out["sustained"] = {
            "devices": options.flood_devices,
            "publisher": "mosquitto_pub (one process per device)",
            "sent": sent["sent"],
            "publisher_msg_per_s": sent["rate"],
            "received": probe.count,
            "lost": sent["sent"] - probe.count,
            "msg_per_s": round(probe.count / elapsed) if elapsed > 0 else 0,
            "target_msg_per_s": 20_000,
        }
        probe.reset()
        probe.record_latency = True
        total = int(options.latency_rate * options.latency_seconds)
        await _publisher(broker, pwfile, options, total, rate=options.latency_rate)
        await _wait_count(probe, total)
        lat = probe.latencies_ms
        out["latency"] = {
            "rate_msg_per_s": options.latency_rate,
            "messages": total,
            "received": probe.count,
            "p50_ms": round(_percentile(lat, 0.5), 2),
            "p99_ms": round(_percentile(lat, 0.99), 2),
            "max_ms": round(max(lat), 2) if lat else None,
            "mean_ms": round(statistics.fmean(lat), 2) if lat else None,
            "target_p99_ms": 50,
        }
        out["hub_stats"] = {
            k: v for k, v in hub.stats().items() if k in ("messages_in", "bad_messages", "lost")
        }
    finally:
        await hub.stop()
    return out
