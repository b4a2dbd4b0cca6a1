"""``courthub bench telemetry``: MQTT telemetry through the hub into the embedded store and into
VictoriaMetrics, with the raw broker throughput of the same messages beside it.

One point = one telemetry message of one device with 5 metrics (5 values: 5 ``raw`` rows in the
embedded store, 5 samples in VictoriaMetrics). What it does, all in one run:

1. **ceiling** — the same messages from the same publishers (one ``mosquitto_pub -l`` per
   device, Mosquitto's C client) to one ``mosquitto_sub`` counting them: the broker's limit on
   this machine, before the hub is started;
2. **hub** — the real hub in its own process (``python -m hub.cli hub``: registry, telemetry
   pipeline, embedded SQLite store and the InfluxDB sink, alert rules, web API) on that broker,
   a private VictoriaMetrics as ``[telemetry.influxdb] url``, default telemetry settings. Each
   simulated device is its own agent (birth first, contiguous seqs, distinct ms timestamps); the
   publishers flood (or offer ``--rate`` msg/s), and the figures are points stored per second
   of wall time from the first publish until each store holds them all:
   embedded = the store's ``written`` counter (``/metrics``), VictoriaMetrics = the sink's
   ``written`` counter, checked at the end by counting what ``/api/v1/export`` holds;
3. **responsiveness** — during 2, ``GET /api/v1/stats`` with a bearer token at ``--poll-hz``
   (10/s) from this process (not the hub's); p50/p99 latency.

Everything (hub, Mosquitto, VictoriaMetrics, publishers) shares the machine's cores: the CPU
each used is reported. Targets (docs/BENCHMARKS.md): >= 20,000 points/s into each store, API
p99 <= 100 ms meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import tomli_w

from dashboards.auth import load_or_create_api_token
from hub.app import read_runtime_file
from hub.broker import Account, BrokerAccounts, MosquittoBroker, free_port
from protocol.messages import Birth, DeviceInfo, Telemetry, Venue, VenueKind, encode, now_ms

log = logging.getLogger(__name__)

HUB_PASSWORD = "bench-hub"  # a throw-away broker on a temp dir, never a real court's
VM_BINARY = "/usr/bin/victoria-metrics"
#: the bound docs/DEPLOYMENT.md advises (and tests/telemetry/conftest.py starts it with)
VM_MEMORY_ALLOWED = "128MiB"
#: the 5 metrics of every message; VictoriaMetrics names them ``device_<metric>``
METRICS = ("temperature_c", "humidity_pct", "co2_ppm", "input_voltage_v", "load_pct")
TARGET_POINTS_PER_S = 20_000
TARGET_API_P99_MS = 100.0
_SINKS = ("embedded", "influxdb")


@dataclass(frozen=True)
class TelemetryBenchOptions:
    """Size of the run."""

    #: simulated devices, each its own agent and its own ``mosquitto_pub`` process
    devices: int = 100
    #: telemetry messages (= points) in all
    messages: int = 300_000
    #: offered msg/s over all devices; 0 = as fast as the publishers go
    rate: float = 0.0
    #: API requests per second during the run
    poll_hz: float = 10.0
    #: give up waiting for the stores this long after the last publish
    timeout_s: float = 180.0
    #: which sinks the hub writes to: the issue's (a) embedded and (b) VictoriaMetrics are
    #: measured one at a time, and together
    sinks: tuple[str, ...] = _SINKS
    #: the hub's MQTT connection in its own process (``[broker] network_process``), or in a
    #: thread of the hub (for the A/B in docs/BENCHMARKS.md)
    network_process: bool = True
    #: VictoriaMetrics' ``-memory.allowedBytes``: what docs/DEPLOYMENT.md advises for a court
    #: running it beside the hub (as the tests start it); "" = its own default (60 % of RAM)
    vm_memory: str = VM_MEMORY_ALLOWED


# processes --------------------------------------------------------------------------------------


class _VictoriaMetrics:
    """A private victoria-metrics (Debian's package) on a free loopback port."""

    def __init__(self, work: Path, memory_allowed: str) -> None:
        self.port = free_port()
        self.memory_allowed = memory_allowed
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = work / "vm"
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        log_file = await asyncio.to_thread(open, self.dir.with_suffix(".log"), "ab")
        flags = [f"-memory.allowedBytes={self.memory_allowed}"] if self.memory_allowed else []
        with log_file:
            self._proc = await asyncio.create_subprocess_exec(
                VM_BINARY, f"-storageDataPath={self.dir}",
                f"-httpListenAddr=127.0.0.1:{self.port}", "-retentionPeriod=100y", *flags,
                stdout=log_file, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        await _wait_http(f"{self.url}/health", 30.0)

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), 30)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()

    def count(self, metric: str) -> tuple[int, int]:
        """Samples of ``metric`` stored, and how many distinct (series, ts) they are (blocking)."""
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=30).close()
        form = urllib.parse.urlencode({"match[]": f'{{__name__="{metric}"}}'}).encode()
        with urllib.request.urlopen(f"{self.url}/api/v1/export", data=form, timeout=120) as r:
            body = r.read().decode()
        total = 0
        distinct: set[tuple[str, int]] = set()
        for line in body.splitlines():
            if line.strip():
                series = json.loads(line)
                labels = json.dumps(series["metric"], sort_keys=True)
                total += len(series["timestamps"])
                distinct.update((labels, ts) for ts in series["timestamps"])
        return total, len(distinct)


async def _wait_http(url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(headers=headers) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a live process (Linux /proc), 0 when it is gone."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# the load ---------------------------------------------------------------------------------------


def _agents(options: TelemetryBenchOptions) -> list[str]:
    return [f"bench-t{i}" for i in range(options.devices)]


def _lines(options: TelemetryBenchOptions) -> list[bytes]:
    """One device's messages: seqs from 0, distinct ms timestamps ending now, 5 metrics."""
    per_device = options.messages // options.devices
    t0 = now_ms() - per_device
    return [
        encode(
            Telemetry(
                ts=t0 + n,
                seq=n,
                metrics={
                    name: round(20.0 + (n * (i + 1)) % 997 / 10, 1)
                    for i, name in enumerate(METRICS)
                },
            )
        )
        + b"\n"
        for n in range(per_device)
    ]


def _auth(port: int, user: str, password: str) -> list[str]:
    return ["-h", "127.0.0.1", "-p", str(port), "-u", user, "-P", password]


async def _births(broker: MosquittoBroker, passwords: dict[str, str], ts_ms: int) -> None:
    """Each agent's retained birth with its one device ``d0``, stamped ``ts_ms``: before the
    agent's first telemetry, as a real agent's (the hub's clock-skew check takes live stamps
    that go back by more than 2 s for a clock stepped back)."""
    procs = []
    for agent, password in passwords.items():
        birth = Birth(
            ts=ts_ms,
            bdseq=1,
            seq=0,
            venue=Venue(id=agent, kind=VenueKind.TECH_COURTROOM),
            devices=[DeviceInfo(id="d0", kind="sensor")],
        )
        topic = ["-t", f"courthub/v1/{agent}/birth", "-r", "-q", "1"]
        argv = [*_auth(broker.port, agent, password), *topic, "-m", encode(birth).decode()]
        procs.append(await asyncio.create_subprocess_exec("mosquitto_pub", *argv))
    await asyncio.gather(*(p.wait() for p in procs))


async def _publish(
    broker: MosquittoBroker, passwords: dict[str, str], lines: list[bytes], rate: float
) -> float:
    """Every agent publishes ``lines`` on ``{agent}/d0/telemetry`` (QoS 0, like the ingest
    bench's flood); at ``rate`` msg/s over all agents, or as fast as possible. The seconds."""
    procs = []
    for agent, password in passwords.items():
        topic = ["-t", f"courthub/v1/{agent}/d0/telemetry", "-l", "-q", "0"]
        argv = [*_auth(broker.port, agent, password), *topic]
        procs.append(
            await asyncio.create_subprocess_exec(
                "mosquitto_pub", *argv, stdin=asyncio.subprocess.PIPE
            )
        )
    start = time.perf_counter()
    if rate <= 0:
        blob = b"".join(lines)
        await asyncio.gather(*(p.communicate(blob) for p in procs))
    else:
        await _paced(procs, lines, rate / len(procs))
    return time.perf_counter() - start


async def _paced(procs: list[asyncio.subprocess.Process], lines: list[bytes], rate: float) -> None:
    """Feed ``lines`` to every publisher at ``rate`` lines/s each, in 20 ms chunks.

    One loop for all publishers (they all send the same lines): the load generator shares the
    two cores with the hub, so it should cost as little as it can (100 pacing tasks took
    ~0.14 of a core at 22,000 msg/s)."""
    start = time.perf_counter()
    sent = 0
    while sent < len(lines):
        due = min(len(lines), int((time.perf_counter() - start) * rate) + 1)
        if due > sent:
            chunk = b"".join(lines[sent:due])
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(chunk)
            for proc in procs:
                assert proc.stdin is not None
                await proc.stdin.drain()
            sent = due
        await asyncio.sleep(0.02)
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
    await asyncio.gather(*(p.wait() for p in procs))


async def _ceiling(
    broker: MosquittoBroker, passwords: dict[str, str], lines: list[bytes]
) -> dict[str, Any]:
    """The same flood to one ``mosquitto_sub`` (hub account) instead of the hub."""
    total = len(lines) * len(passwords)
    sub = await asyncio.create_subprocess_exec(
        "mosquitto_sub", *_auth(broker.port, "hub", HUB_PASSWORD), "-i", "bench-ceiling",
        "-t", "courthub/v1/+/+/telemetry", "-C", str(total), "-q", "0",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.sleep(0.5)  # let the subscription land
    start = time.perf_counter()
    await _publish(broker, passwords, lines, 0.0)
    try:
        await asyncio.wait_for(sub.wait(), 120)
    except TimeoutError:
        sub.kill()
        await sub.wait()
        return {"error": "mosquitto_sub did not receive every message within 120 s"}
    elapsed = time.perf_counter() - start
    return {"messages": total, "seconds": round(elapsed, 3), "msg_per_s": round(total / elapsed)}


# watching the hub -------------------------------------------------------------------------------


@dataclass
class _Api:
    """Latency of an authenticated API route polled at a fixed rate, plus ``accepted``."""

    url: str
    headers: dict[str, str]
    hz: float
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0
    #: (monotonic s, the hub's accepted messages)
    accepted: list[tuple[float, float]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        interval = 1.0 / self.hz
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(headers=self.headers, timeout=timeout) as http:
            tick = time.monotonic()
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    async with http.get(f"{self.url}/api/v1/stats") as resp:
                        body = await resp.json()
                        ok = resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok, body = False, {}
                if ok:
                    self.latencies_ms.append((time.perf_counter() - start) * 1000)
                    self.accepted.append((time.monotonic(), float(body.get("accepted", 0))))
                else:
                    self.failures += 1
                tick += interval
                await asyncio.sleep(max(0.0, tick - time.monotonic()))


_SINK_STAT = re.compile(r'^courthub_telemetry_sink_(\w+)\{sink="(\w+)"\} (\S+)$', re.MULTILINE)


async def _sink_stats(http: aiohttp.ClientSession, url: str) -> dict[str, dict[str, float]]:
    """Every ``courthub_telemetry_sink_<stat>{sink}`` from ``/metrics``: sink → stat → value."""
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    out: dict[str, dict[str, float]] = {}
    for stat, sink, value in _SINK_STAT.findall(text):
        out.setdefault(sink, {})[stat] = float(value)
    return out


def _crossing(samples: list[tuple[float, float]], target: float) -> float | None:
    """When the counter reached ``target`` (linear between the two polls around it)."""
    for (t0, v0), (t1, v1) in itertools.pairwise(samples):
        if v1 >= target:
            if v1 == v0 or v0 >= target:
                return t1 if v0 < target else t0
            return t0 + (target - v0) / (v1 - v0) * (t1 - t0)
    return None


async def _follow_sinks(
    url: str,
    headers: dict[str, str],
    base: dict[str, float],
    target: int,
    stop: asyncio.Event,
    *,
    sinks: tuple[str, ...] = _SINKS,
) -> dict[str, list[tuple[float, float]]]:
    """Poll ``/metrics`` at 2/s: each sink's ``written`` since ``base``, until all reached
    ``target`` or nothing moved for 15 s after ``stop`` (the publishers are done)."""
    history: dict[str, list[tuple[float, float]]] = {s: [] for s in sinks}
    still_since = time.monotonic()
    last: tuple[float, ...] = ()
    async with aiohttp.ClientSession(headers=headers) as http:
        while True:
            stats = await _sink_stats(http, url)
            now = time.monotonic()
            values = tuple(stats.get(s, {}).get("written", 0.0) - base[s] for s in sinks)
            for sink, value in zip(sinks, values, strict=True):
                history[sink].append((now, value))
            if all(v >= target for v in values):
                return history
            if values != last:
                last, still_since = values, now
            elif stop.is_set() and now - still_since > 15:
                return history
            await asyncio.sleep(0.5)


# the run ----------------------------------------------------------------------------------------


def _hub_toml(
    work: Path,
    broker: MosquittoBroker,
    vm: _VictoriaMetrics,
    sinks: tuple[str, ...] = _SINKS,
    network_process: bool = True,
) -> Path:
    (work / "hub-password").write_text(HUB_PASSWORD + "\n")
    config = {
        "hub": {"data_dir": str(work / "hub")},
        "broker": {
            "mode": "url",
            "url": f"mqtt://127.0.0.1:{broker.port}",
            "username": "hub",
            "password_file": str(work / "hub-password"),
            "network_process": network_process,
        },
        "api": {"port": 0},
        # device points only (the hub's own samples would be counted as stored points)
        "telemetry": {
            "sample_interval_s": 3600.0,
            "embedded": {"enabled": "embedded" in sinks},
            "influxdb": {"url": vm.url if "influxdb" in sinks else ""},
        },
    }
    path = work / "hub.toml"
    path.write_text(tomli_w.dumps(config))
    return path


async def _start_hub(work: Path, config: Path) -> tuple[asyncio.subprocess.Process, str, str]:
    token = await asyncio.to_thread(load_or_create_api_token, work / "hub")
    log_file = await asyncio.to_thread(open, work / "hub.log", "ab")
    with log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub.cli", "hub", "--config", str(config),
            stdout=log_file, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        info = await asyncio.to_thread(read_runtime_file, work / "hub")
        if info is not None and info.get("pid") == proc.pid:
            break
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the hub did not start: see {work / 'hub.log'}")
        await asyncio.sleep(0.2)
    api = str(info["api_url"])
    await _wait_http(f"{api}/api/v1/stats", 30, {"Authorization": f"Bearer {token}"})
    return proc, api, token


async def _stop_hub(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _devices_known(api: str, headers: dict[str, str], devices: int) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession(headers=headers) as http:
        while time.monotonic() < deadline:
            async with http.get(f"{api}/api/v1/stats") as resp:
                stats = await resp.json()
            if stats.get("connected") and stats.get("devices_total", 0) >= devices:
                return
            await asyncio.sleep(0.2)
    raise RuntimeError("the hub did not register every bench agent within 60 s")


async def run_telemetry_bench(options: TelemetryBenchOptions) -> dict[str, Any]:
    """Run the whole benchmark and return its figures."""
    for binary in ("mosquitto", "mosquitto_pub", "mosquitto_sub", VM_BINARY):
        if shutil.which(binary) is None:
            raise RuntimeError(f"the telemetry benchmark needs {binary} (make setup installs it)")
    work = Path(tempfile.mkdtemp(prefix="courthub-bench-telemetry-"))
    passwords = {a: f"pw-{a}" for a in _agents(options)}
    accounts = BrokerAccounts(
        hub=Account("hub", HUB_PASSWORD), agents=tuple(Account(a, p) for a, p in passwords.items())
    )
    lines = _lines(options)
    total = len(lines) * options.devices
    # room for the whole flood in the hub's session queue (as in bench/ingest.py): a flood
    # measures how fast the hub drains a backlog, not the production queue limit
    broker = MosquittoBroker(work / "broker", accounts, max_queued_messages=2 * total)
    vm = _VictoriaMetrics(work, options.vm_memory)
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        },
        "options": asdict(options),
        "point": f"one telemetry message of one device with {len(METRICS)} metrics",
    }
    hub: asyncio.subprocess.Process | None = None
    try:
        await asyncio.to_thread(broker.start)
        await vm.start()
        result["ceiling"] = await _ceiling(broker, passwords, lines)
        hub, api, token = await _start_hub(
            work, _hub_toml(work, broker, vm, options.sinks, options.network_process)
        )
        headers = {"Authorization": f"Bearer {token}"}
        await _births(broker, passwords, msgspec.json.decode(lines[0], type=Telemetry).ts - 1)
        await _devices_known(api, headers, options.devices)
        setup = _Setup(broker, passwords, lines, hub, vm, api, headers)
        result.update(await _measure(options, setup))
        if "influxdb" in options.sinks:
            exported, distinct = await asyncio.to_thread(vm.count, f"device_{METRICS[0]}")
            result["victoriametrics"].update(
                exported_points=exported, duplicates=exported - distinct
            )
    finally:
        if hub is not None:
            await _stop_hub(hub)
        await vm.stop()
        await asyncio.to_thread(broker.stop)
    _summarise(result, total)
    if _went_wrong(result, options.sinks):
        # the hub's log says why (a sink's errors, its queue overflowing): keep it to read
        result["kept_work_dir"] = str(work)
        log.warning("something was lost or late: the hub's log is kept in %s", work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _went_wrong(result: Mapping[str, Any], sinks: Sequence[str]) -> bool:
    """A store missed points, or the run stopped before measuring (an exception)."""
    names = {"embedded": "embedded", "influxdb": "victoriametrics"}
    return any(
        not result.get(names[s], {}).get("complete") or result[names[s]].get("dropped")
        for s in sinks
    )


@dataclass(frozen=True)
class _Setup:
    """What the measured phase runs against."""

    broker: MosquittoBroker
    passwords: dict[str, str]
    lines: list[bytes]
    hub: asyncio.subprocess.Process
    vm: _VictoriaMetrics
    api: str
    headers: dict[str, str]


async def _measure(options: TelemetryBenchOptions, setup: _Setup) -> dict[str, Any]:
    """Flood (or pace) the publishers into the running hub; watch both sinks and the API."""
    broker, passwords, lines, hub = setup.broker, setup.passwords, setup.lines, setup.hub
    vm, api, headers = setup.vm, setup.api, setup.headers
    total = len(lines) * len(passwords)
    async with aiohttp.ClientSession(headers=headers) as http:
        before = await _sink_stats(http, api)
    base = {s: before.get(s, {}).get("written", 0.0) for s in options.sinks}
    poller = _Api(api, headers, options.poll_hz)
    stop_poll, published = asyncio.Event(), asyncio.Event()
    polling = asyncio.create_task(poller.run(stop_poll))
    await asyncio.sleep(1.0)  # a few idle requests first: the API's quiet baseline
    idle = len(poller.latencies_ms)
    pids = {"hub": hub.pid, "victoriametrics": vm.pid, "mosquitto": broker.pid}
    pids.update(_sink_processes(hub.pid))
    cpu0 = {k: _cpu_seconds(p) for k, p in pids.items()}
    accepted0 = poller.accepted[-1][1] if poller.accepted else 0.0
    t0 = time.monotonic()
    following = asyncio.create_task(
        _follow_sinks(api, headers, base, total, published, sinks=options.sinks)
    )
    publish_s = await _publish(broker, passwords, lines, options.rate)
    published.set()
    try:
        history = await asyncio.wait_for(following, options.timeout_s)
    finally:
        stop_poll.set()
        await polling
    t_end = time.monotonic()
    used = {k: _cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
    cpu = {k: round(v / (t_end - t0), 2) for k, v in used.items()}
    async with aiohttp.ClientSession(headers=headers) as http:
        after = await _sink_stats(http, api)
        async with http.get(f"{api}/api/v1/stats") as resp:
            hub_stats = await resp.json()
    out: dict[str, Any] = {"publish": {"seconds": round(publish_s, 3)}, "sinks": options.sinks}
    for sink in options.sinks:
        done = _crossing(history[sink], total)
        stored = after.get(sink, {}).get("written", 0.0) - base[sink]
        key = "embedded" if sink == "embedded" else "victoriametrics"
        out[key] = {
            "points": int(stored),
            "seconds": round(done - t0, 3) if done is not None else None,
            "points_per_s": round(total / (done - t0)) if done is not None else None,
            "dropped": int(after.get(sink, {}).get("dropped", 0.0)),
            "left_queued": int(after.get(sink, {}).get("queued", 0.0)),
            "left_spooled": int(after.get(sink, {}).get("spooled_points", 0.0)),
        }
    accepted = [(t, v - accepted0) for t, v in poller.accepted if t >= t0]
    ingest_done = _crossing([(t0, 0.0), *accepted], total)
    busy = poller.latencies_ms[idle:]
    out["hub"] = {
        "ingest_msg_per_s": round(total / (ingest_done - t0)) if ingest_done else None,
        "lost": hub_stats.get("lost"),
        "bad_messages": hub_stats.get("bad_messages"),
        "cpu_cores": cpu,
        # the hub's whole CPU (ingest, pipeline, API; the sinks too unless they run in their own
        # processes) per point, and each sink process's
        "cpu_us_per_point": round(used["hub"] / total * 1e6, 1),
        "sink_process_us_per_point": {
            k: round(v / total * 1e6, 1)
            for k, v in used.items()
            if k.startswith(("sink ", "mqtt "))
        },
    }
    out["api"] = {
        "route": "GET /api/v1/stats (bearer token)",
        "requests": len(busy),
        "failures": poller.failures,
        "idle_p50_ms": _pct(poller.latencies_ms[:idle], 0.5),
        "p50_ms": _pct(busy, 0.5),
        "p99_ms": _pct(busy, 0.99),
        "max_ms": round(max(busy), 1) if busy else None,
        "mean_ms": round(statistics.fmean(busy), 1) if busy else None,
        # the hub's own view (hub/loop_monitor.py, last 60 s): how late its loop ran what was
        # due. A slow API beside a prompt loop is time spent outside the hub's loop (CPUs)
        "hub_loop_lag_p99_ms": hub_stats.get("loop_lag_p99_ms"),
        "hub_loop_lag_max_ms": hub_stats.get("loop_lag_max_ms"),
    }
    return out


def _sink_processes(hub_pid: int | None) -> dict[str, int | None]:
    """The hub's sink children (hub/sink_process.py), ``"sink <name>"`` → pid, and its MQTT
    connection's (hub/mqtt_process.py), ``"mqtt process"``."""
    found: dict[str, int | None] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid != hub_pid:
            continue
        if b"hub.sink_process" in argv and b"--sink" in argv:
            found[f"sink {argv[argv.index(b'--sink') + 1].decode()}"] = int(stat.parent.name)
        elif b"hub.mqtt_process" in argv:
            found["mqtt process"] = int(stat.parent.name)
    return found


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 1)


def _summarise(result: dict[str, Any], total: int) -> None:
    ceiling = result.get("ceiling", {}).get("msg_per_s")
    for key in ("embedded", "victoriametrics"):
        part = result.get(key)
        if part is None:
            continue
        rate = part.get("points_per_s")
        part["of_ceiling"] = round(rate / ceiling, 3) if rate and ceiling else None
        part["complete"] = part["points"] >= total and (
            key != "victoriametrics" or part.get("exported_points", 0) >= total
        )
    result["targets"] = {
        "points_per_s": TARGET_POINTS_PER_S,
        "api_p99_ms": TARGET_API_P99_MS,
    }


def table(result: dict[str, Any]) -> str:
    """The figures as a plain-text table."""
    ceiling = result.get("ceiling", {})
    api = result.get("api", {})
    hub = result.get("hub", {})
    rows = [
        ("figure", "measured", "beside it"),
        (
            "broker ceiling (C clients)",
            f"{ceiling.get('msg_per_s', '-')} msg/s",
            f"{ceiling.get('messages', '-')} messages",
        ),
        (
            "hub ingest",
            f"{hub.get('ingest_msg_per_s', '-')} msg/s",
            f"lost {hub.get('lost', '-')}, bad {hub.get('bad_messages', '-')}",
        ),
    ]
    for key, name in (("embedded", "embedded store"), ("victoriametrics", "VictoriaMetrics")):
        if key not in result:
            continue
        part = result[key]
        extra = f", exported {part['exported_points']}" if "exported_points" in part else ""
        extra += f", duplicates {part['duplicates']}" if "duplicates" in part else ""
        rows.append(
            (
                f"into {name}",
                f"{part.get('points_per_s', '-')} points/s",
                f"{part.get('of_ceiling', '-')} of ceiling; stored {part.get('points', '-')}, "
                f"dropped {part.get('dropped', '-')}{extra}",
            )
        )
    rows.append(
        (
            "API during the run",
            f"p50 {api.get('p50_ms', '-')} ms, p99 {api.get('p99_ms', '-')} ms",
            f"{api.get('requests', '-')} requests, {api.get('failures', '-')} failed, "
            f"idle p50 {api.get('idle_p50_ms', '-')} ms; hub loop lag p99 "
            f"{api.get('hub_loop_lag_p99_ms', '-')} ms, max {api.get('hub_loop_lag_max_ms', '-')} ms",
        )
    )
    rows.append(
        (
            "CPU (cores, avg)",
            json.dumps(hub.get("cpu_cores", {})),
            f"hub {hub.get('cpu_us_per_point', '-')} µs CPU per point "
            + "".join(f", {k} {v} µs" for k, v in hub.get("sink_process_us_per_point", {}).items())
            + f" (sinks: {', '.join(result.get('sinks', ()))})",
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    note = f"1 point = {result.get('point', '')}; targets >= {TARGET_POINTS_PER_S} points/s, "
    return "\n".join([*lines, note + f"API p99 <= {TARGET_API_P99_MS:g} ms"])


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.telemetry``: the table, then the full result as one JSON line."""
    parser = argparse.ArgumentParser(
        prog="courthub bench telemetry", description=__doc__.splitlines()[0]
    )
    defaults = TelemetryBenchOptions()
    parser.add_argument("--devices", type=int, default=defaults.devices, help="one agent each")
    parser.add_argument("--messages", type=int, default=defaults.messages, help="points in all")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="msg/s, 0 = flood")
    parser.add_argument("--poll-hz", type=float, default=defaults.poll_hz, help="API requests/s")
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s, help="s to catch up")
    parser.add_argument(
        "--sinks",
        choices=("both", "embedded", "influxdb"),
        default="both",
        help="the hub writes to both sinks, or to one (the issue's (a) and (b))",
    )
    parser.add_argument(
        "--thread-ingest",
        action="store_true",
        help="the hub's MQTT connection in a thread of the hub ([broker] network_process = false)",
    )
    parser.add_argument(
        "--vm-memory",
        default=defaults.vm_memory,
        help="VictoriaMetrics' -memory.allowedBytes ('' = its default, 60%% of RAM)",
    )
    args = parser.parse_args(argv)
    # force: under `courthub bench telemetry` the CLI has configured INFO logging already
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s %(message)s", force=True
    )
    if args.devices < 1 or args.messages < args.devices or args.poll_hz <= 0:
        parser.error("need --devices >= 1, --messages >= --devices and --poll-hz > 0")
    options = TelemetryBenchOptions(
        devices=args.devices,
        messages=args.messages,
        rate=args.rate,
        poll_hz=args.poll_hz,
        timeout_s=args.timeout,
        sinks=_SINKS if args.sinks == "both" else (args.sinks,),
        network_process=not args.thread_ingest,
        vm_memory=args.vm_memory,
    )
    result = asyncio.run(run_telemetry_bench(options))
    print(table(result), flush=True)
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
