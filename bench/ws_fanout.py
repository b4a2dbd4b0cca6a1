"""``python -m bench.ws_fanout``: the console's WebSocket fan-out, with and without a stalled client.

The server is the real console app (:func:`dashboards.app.create_console_app`) over a hub service
without a broker; health changes are applied to its registry the way ingest applies them, so
every message goes through the real path: hub listener → encode once → per-client bounded
queue → per-client sender → socket. The clients (aiohttp, default 100) run in a separate process
so they do not share the server's GIL; they count messages and measure each frame's delay from
the moment the change was made (the change carries its wall-clock time).

Figures (JSON on stdout):

- ``throughput``: for each offered rate of health changes, the deliveries per second the
  clients received (messages × clients), the server's CPU use and whether any client was
  dropped. ``best`` is the highest rate delivered in full.
- ``stall``: the same clients at a fixed rate, first alone (``baseline``), then with one more
  client that subscribes and never reads (``with_stalled``): the healthy clients' delays
  (p50/p99/max), how long until the stalled client was dropped, and ``added_delay_ms`` (p99 and
  max with the stalled client minus without).

Targets (docs/BENCHMARKS.md): ≥ 100,000 deliveries/s to 100 clients on 2 cores, ≤ 1 s added
delay while one client never reads. Timed numbers live here, never as asserts in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import platform
import resource
import socket
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from dashboards.app import ConsoleOptions, create_console_app
from dashboards.auth import BearerTokenAuthenticator, Principal, Role
from dashboards.live import LIVE_KEY, LiveHub, LiveOptions
from hub.config import hub_config_from_dict
from hub.registry import DeviceRecord, HealthState
from hub.service import HubService
from protocol.messages import Birth, DeviceInfo, Venue, VenueKind, now_ms

TOKEN = "bench-ws-token"  # a throw-away server on loopback, never a real court's
#: every change carries its wall-clock time in the reason: "t=<unix seconds>"
STAMP = '"state_reason":"t='
COUNT_MARK = '"type":"device"'


@dataclass(frozen=True)
class BenchOptions:
    """Size of the run."""

    clients: int = 100
    devices: int = 200
    #: offered health changes per second in the throughput phase, one step each
    rates: tuple[float, ...] = (1000.0, 2000.0, 4000.0, 8000.0)
    seconds: float = 3.0
    #: offered rate while measuring delays (baseline and with the stalled client)
    stall_rate: float = 1000.0
    stall_seconds: float = 6.0
    queue_size: int = 1000
    #: most messages per frame (1: no batching, to see what batching buys)
    batch_max: int = LiveOptions().batch_max


# the server side ----------------------------------------------------------------------------------


def _service(data_dir: Path, devices: int) -> tuple[HubService, list[DeviceRecord]]:
    """A hub service (never started) whose registry holds ``devices`` devices in 10 venues."""
    config = hub_config_from_dict({"hub": {"data_dir": str(data_dir)}})
    service = HubService(config, "mqtt://127.0.0.1:1", "hub", "x")
    per_agent = max(1, devices // 10)
    for a in range((devices + per_agent - 1) // per_agent):
        agent = f"bench-a{a}"
        infos = [
            DeviceInfo(id=f"d{i}", kind="camera", model="IPC-4K", capabilities=["identify"])
            for i in range(min(per_agent, devices - a * per_agent))
        ]
        birth = Birth(
            ts=now_ms(),
            bdseq=1,
            seq=0,
            venue=Venue(id=agent, kind=VenueKind.TECH_COURTROOM, name=f"法庭 {a}"),
            devices=infos,
        )
        service.health.on_birth(agent, birth, retained=False)
    return service, list(service.registry.devices())


@dataclass
class _Bench:
    """The running server side."""

    service: HubService
    devices: list[DeviceRecord]
    live: LiveHub
    clients: ClientProcess


async def _generate(bench: _Bench, rate: float, seconds: float) -> tuple[int, float | None]:
    """Flip device health at ``rate`` changes/s for ``seconds`` (in 10 ms ticks).

    Returns the changes made and, if a client was dropped meanwhile, after how many seconds.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    dropped_before = bench.live.dropped
    dropped_after: float | None = None
    sent = 0
    devices, registry = bench.devices, bench.service.registry
    while (elapsed := loop.time() - start) < seconds:
        # a server that falls behind makes fewer changes rather than one huge catch-up burst
        due = min(int(rate * elapsed) - sent, int(rate * 0.02) + 1)
        for _ in range(max(0, due)):
            device = devices[sent % len(devices)]
            state = HealthState.STALE if device.state is HealthState.ONLINE else HealthState.ONLINE
            registry.set_health(device, state, f"t={time.time():.6f}", now_ms())
            sent += 1
        if dropped_after is None and bench.live.dropped > dropped_before:
            dropped_after = elapsed
        await asyncio.sleep(0.01)
    return sent, dropped_after


async def _stalled_client(host: str, port: int) -> socket.socket:
    """A client that subscribes to ``devices`` and never reads again (small receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += await loop.sock_recv(sock, 1)
    if not answer.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"stalled client not upgraded: {answer[:80]!r}")
    payload = json.dumps({"subscribe": ["devices"]}).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    await loop.sock_sendall(sock, struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)
    return sock


class ClientProcess:
    """The clients' process, driven line by line over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str, clients: int) -> ClientProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.ws_fanout",
            "--client-of",
            url,
            "--clients",
            str(clients),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self = cls(proc)
        ready = await self._line(60)
        if ready.get("ready") != clients:
            raise RuntimeError(f"clients not ready: {ready}")
        return self

    async def _line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError("client process ended")
        result: dict[str, Any] = json.loads(line)
        return result

    async def command(self, name: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(name.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self._line(60)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.command("quit")
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        await self.proc.wait()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _phase(bench: _Bench, rate: float, seconds: float) -> dict[str, Any]:
    """One run at ``rate``: what the clients received and how late."""
    await bench.clients.command("reset")
    dropped_before = bench.live.dropped
    cpu = _cpu_s()
    started = time.monotonic()
    sent, dropped_after = await _generate(bench, rate, seconds)
    elapsed = time.monotonic() - started
    cpu = _cpu_s() - cpu
    await asyncio.sleep(1.0)  # let the last frames arrive
    report = await bench.clients.command("report")
    expected = sent * report["clients"]
    return {
        "offered_changes_per_s": rate,
        "changes": sent,
        "clients": report["clients"],
        "delivered": report["messages"],
        "delivered_share": round(report["messages"] / expected, 4) if expected else None,
        "deliveries_per_s": round(report["messages"] / report["span_s"]) if report["span_s"] else 0,
        "frames": report["frames"],
        "messages_per_frame": round(report["messages"] / report["frames"], 1)
        if report["frames"]
        else 0,
        "delay_ms": report["delay_ms"],
        "server_cpu_pct": round(100 * cpu / elapsed, 1),
        "dropped_clients": bench.live.dropped - dropped_before,
        "dropped_after_s": round(dropped_after, 2) if dropped_after is not None else None,
    }


async def run(options: BenchOptions) -> dict[str, Any]:
    """Start the console, the client process, run the phases; the figures as a dict."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="courthub-ws-bench-") as tmp:
        service, devices = _service(Path(tmp), options.devices)
        principal = Principal("bench", frozenset({Role.TECHNICIAN}))
        app = create_console_app(
            service,
            [BearerTokenAuthenticator(TOKEN, principal)],
            options=ConsoleOptions(
                live=LiveOptions(queue_size=options.queue_size, batch_max=options.batch_max)
            ),
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        clients = await ClientProcess.start(f"http://{host}:{port}", options.clients)
        bench = _Bench(service, devices, app[LIVE_KEY], clients)
        try:
            throughput = [await _phase(bench, rate, options.seconds) for rate in options.rates]
            baseline = await _phase(bench, options.stall_rate, options.stall_seconds)
            stalled = await _stalled_client(host, port)
            try:
                with_stalled = await _phase(bench, options.stall_rate, options.stall_seconds)
            finally:
                stalled.close()
        finally:
            await clients.stop()
            await runner.cleanup()
    full = [t for t in throughput if t["delivered_share"] == 1 and t["dropped_clients"] == 0]
    best = max(full, key=lambda t: t["deliveries_per_s"]) if full else None
    return {
        "bench": "ws_fanout",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "options": asdict(options),
        "throughput": throughput,
        "best": best,
        "stall": {
            "baseline": baseline,
            "with_stalled": with_stalled,
            "stalled_client_dropped_after_s": with_stalled["dropped_after_s"],
            "added_delay_ms": {
                "p99": round(with_stalled["delay_ms"]["p99"] - baseline["delay_ms"]["p99"], 1),
                "max": round(with_stalled["delay_ms"]["max"] - baseline["delay_ms"]["max"], 1),
            },
        },
    }


# the clients' process -----------------------------------------------------------------------------


class _Counter:
    """Messages, frames and per-frame delays over all clients since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages = 0
        self.frames = 0
        self.delays: list[float] = []
        self.first = 0.0
        self.last = 0.0

    def frame(self, text: str) -> None:
        count = text.count(COUNT_MARK)
        if not count:
            return
        now = time.time()
        if not self.messages:
            self.first = now
        self.last = now
        self.messages += count
        self.frames += 1
        # the frame's first change is its oldest: its delay is the frame's worst
        at = text.find(STAMP)
        if at >= 0:
            start = at + len(STAMP)
            self.delays.append(now - float(text[start : text.index('"', start)]))

    def report(self, clients: int) -> dict[str, Any]:
        delays = sorted(self.delays) or [0.0]
        return {
            "clients": clients,
            "messages": self.messages,
            "frames": self.frames,
            "span_s": round(self.last - self.first, 3),
            "delay_ms": {
                "p50": round(1000 * statistics.median(delays), 1),
                "p99": round(1000 * delays[int(0.99 * (len(delays) - 1))], 1),
                "max": round(1000 * delays[-1], 1),
            },
        }


async def _client(
    session: aiohttp.ClientSession, url: str, counter: _Counter, ready: asyncio.Queue[int]
) -> None:
    async with session.ws_connect(
        url + "/ws", headers={"Authorization": f"Bearer {TOKEN}"}, max_msg_size=0
    ) as ws:
        await ws.send_json({"subscribe": ["devices"]})
        announced = False
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            if not announced and '"type":"snapshot"' in msg.data:
                announced = True
                await ready.put(1)
                continue
            counter.frame(msg.data)


async def _clients_main(url: str, clients: int) -> None:
    """Connect ``clients`` sockets, then answer reset/report/quit lines on stdin."""
    counter = _Counter()
    ready: asyncio.Queue[int] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(_client(session, url, counter, ready)) for _ in range(clients)]
        for _ in range(clients):
            await asyncio.wait_for(ready.get(), 30)
        print(json.dumps({"ready": clients}), flush=True)
        while line := (await reader.readline()).decode().strip():
            if line == "reset":
                counter.reset()
                print(json.dumps({"ok": True}), flush=True)
            elif line == "report":
                print(json.dumps(counter.report(clients)), flush=True)
            elif line == "quit":
                print(json.dumps({"ok": True}), flush=True)
                break
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--client-of``, be its clients' process)."""
    parser = argparse.ArgumentParser(prog="python -m bench.ws_fanout", description=__doc__)
    parser.add_argument("--clients", type=int, default=BenchOptions.clients)
    parser.add_argument("--devices", type=int, default=BenchOptions.devices)
    parser.add_argument("--seconds", type=float, default=BenchOptions.seconds)
    parser.add_argument("--stall-rate", type=float, default=BenchOptions.stall_rate)
    parser.add_argument(
        "--rates",
        default=",".join(f"{r:g}" for r in BenchOptions.rates),
        help="offered health changes per second, comma-separated",
    )
    parser.add_argument("--batch-max", type=int, default=BenchOptions.batch_max)
    parser.add_argument("--client-of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client_of:
        asyncio.run(_clients_main(args.client_of, args.clients))
        return 0
    options = BenchOptions(
        clients=args.clients,
        devices=args.devices,
        seconds=args.seconds,
        stall_rate=args.stall_rate,
        batch_max=args.batch_max,
        rates=tuple(float(r) for r in args.rates.split(",") if r),
    )
    print(json.dumps(asyncio.run(run(options)), indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
