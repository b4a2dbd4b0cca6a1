"""``courthub bench calls``: call-to-display latency, from a counter's click to its LED panel.

One hall as it runs in a court, all in one process and one event loop (stated in the output):
a private Mosquitto; the hub's :class:`HubService` with the :class:`QueueService` and the
:class:`HallDisplays` bridge; one hall :class:`EdgeAgent` (in-process) with 20
``led_call_display`` devices; 20 simulated panels on 4 simulated RS-485 buses of 5 (one pty each).

Why 4 buses of 5: an RS-485 line is a shared half-duplex medium, so the driver serialises every
exchange on a port (``LedBus.lock``). One bus for the whole hall would make 20 panels wait on
each other; one port per panel is not how halls are cabled (one USB-RS485 adapter runs a row of
windows). 5 panels a bus is a row of windows, and the bench shows the queueing that sharing costs.

The clock starts when ``queue.call_next(counter)`` is invoked (the clerk's click) and stops when
the simulator reads the ``show_text`` frame for that call off the serial line for that panel's
address (``SimulatedLedBus.on_frame``). Load: each counter calls every 1–3 s (uniform) for 30 s,
then a burst in which all 20 counters call at once. Beside it, measured in the same run: the raw
serial exchange of one ``show_text`` (the driver against an idle simulated bus, no MQTT).

Target (docs/BENCHMARKS.md): p99 <= 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_drivers.base import DeviceDescription, DeviceSink
from device_drivers.led_call_display import (
    ACK_FLAG,
    CMD_CHIME,
    CMD_SHOW_TEXT,
    BusRegistry,
    Frame,
    LedCallDisplayDriver,
    encode_frame,
    encode_text,
)
from edge_agents.config import agent_config_from_dict
from edge_agents.runtime import EdgeAgent
from hub.broker import Account, BrokerAccounts, MosquittoBroker
from hub.config import hub_config_from_dict
from hub.hall_displays import HallDisplays
from hub.queue_service import QueueService, queue_config_from_dict
from hub.registry import HealthState
from hub.service import HubService
from protocol.messages import DeviceStatus
from simulators.led_display import SimulatedLedBus, SimulatedPanel

AGENT = "hall-bench"
HUB_PASSWORD = "bench-hub"  # a throw-away broker on a temp dir, never a real court's
AGENT_PASSWORD = "bench-agent"


@dataclass(frozen=True)
class CallOptions:
    """Size of the run."""

    counters: int = 20
    panels_per_bus: int = 5
    seconds: float = 30.0
    min_interval_s: float = 1.0
    max_interval_s: float = 3.0
    bursts: int = 1
    raw_exchanges: int = 200
    seed: int = 1


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(latencies_ms: list[float]) -> dict[str, Any]:
    lat = latencies_ms
    return {
        "calls": len(lat),
        "p50_ms": round(_percentile(lat, 0.5), 2),
        "p99_ms": round(_percentile(lat, 0.99), 2),
        "max_ms": round(max(lat), 2) if lat else None,
        "mean_ms": round(statistics.fmean(lat), 2) if lat else None,
    }


class _Arrivals:
    """When each show_text frame first reached the line, by (bus, panel address, text)."""

    def __init__(self) -> None:
        self.at: dict[tuple[int, int, str], float] = {}

    def record(self, bus: int, frame: Frame) -> None:
        if frame.command != CMD_SHOW_TEXT or len(frame.payload) < 2:
            return
        now = time.perf_counter()
        try:
            text = frame.payload[2:].decode("gbk")
        except UnicodeDecodeError:
            return
        self.at.setdefault((bus, frame.address, text), now)


class _NullSink(DeviceSink):
    def set_state(self, state: DeviceStatus, reason: str = "") -> None:
        pass

    def telemetry(self, metrics: Mapping[str, float]) -> None:
        pass

    def event(self, type: str, data: Mapping[str, Any]) -> None:
        pass

    def describe(self, description: DeviceDescription) -> None:
        pass

    def bad_input(self, reason: str, detail: str) -> None:
        pass


async def _raw_exchange(n: int) -> dict[str, Any]:
    """``show_text`` straight through the driver to an idle simulated panel: the serial floor."""
    bus = SimulatedLedBus([SimulatedPanel(address=1)])
    await bus.start()
    driver = LedCallDisplayDriver(
        "raw", {"port": bus.path, "address": 1, "poll_interval_s": 3600}, buses=BusRegistry()
    )
    runner = asyncio.create_task(driver.run(_NullSink()))
    try:
        await asyncio.sleep(0.3)  # port open, first status poll done
        times: list[float] = []
        for i in range(n):
            start = time.perf_counter()
            await driver.execute("show_text", {"line": 0, "text": f"请A{i:03d}号到1号窗口"})
            times.append((time.perf_counter() - start) * 1000)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await bus.stop()
    return {"exchanges": n, **{k: v for k, v in _summary(times).items() if k != "calls"}}


def _wire_time(baud: int = 9600, panels_per_bus: int = 5) -> dict[str, Any]:
    """What the pty does not model: bytes on a real 9600 baud 8N1 line (10 bits a byte).

    A call is a ``show_text`` and a ``chime`` exchange (frame out, ack back). In a burst the
    ``show_text`` commands of one bus queue on the driver's bus lock (FIFO) before any chime
    (a chime is sent only after its show_text's ack went back to the hub), so the last panel's
    frame is on the line after the other panels' show_text exchanges plus its own frame.
    """
    text = encode_text("请A123号到20号窗口")
    show = len(encode_frame(1, CMD_SHOW_TEXT, bytes((0, 2)) + text))
    show_ack = len(encode_frame(1, ACK_FLAG | CMD_SHOW_TEXT, b"\x00"))
    chime = len(encode_frame(1, CMD_CHIME, b"\x01"))
    chime_ack = len(encode_frame(1, ACK_FLAG | CMD_CHIME, b"\x00"))
    ms_per_byte = 10 * 1000 / baud
    show_ms = (show + show_ack) * ms_per_byte
    return {
        "show_text_frame_ms": round(show * ms_per_byte, 1),
        "show_text_exchange_ms": round(show_ms, 1),
        "call_exchanges_ms": round((show + show_ack + chime + chime_ack) * ms_per_byte, 1),
        "burst_last_panel_show_text_ms": round(
            (panels_per_bus - 1) * show_ms + show * ms_per_byte, 1
        ),
    }


async def run_call_bench(options: CallOptions) -> dict[str, Any]:
    """Run the whole benchmark and return its figures."""
    if shutil.which("mosquitto") is None:
        raise RuntimeError("the call benchmark needs Mosquitto (make setup installs it)")
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "options": options.__dict__,
        "setup": "broker: Mosquitto subprocess; hub, queue, displays bridge, hall agent and "
        "simulated panels: one process, one event loop",
    }
    # the serial floor first, on an otherwise idle loop
    result["raw_show_text"] = await _raw_exchange(options.raw_exchanges)
    work = Path(tempfile.mkdtemp(prefix="courthub-bench-calls-"))
    accounts = BrokerAccounts(
        hub=Account("hub", HUB_PASSWORD), agents=(Account(AGENT, AGENT_PASSWORD),)
    )
    broker = MosquittoBroker(work / "broker", accounts)
    await asyncio.to_thread(broker.start)
    try:
        result.update(await _hall(broker, options, work))
    finally:
        await asyncio.to_thread(broker.stop)
        shutil.rmtree(work, ignore_errors=True)
    result["wire_9600_baud"] = _wire_time(panels_per_bus=options.panels_per_bus)
    raw_p50 = result["raw_show_text"]["p50_ms"]
    overall = result.get("overall")
    if overall and raw_p50:
        result["p50_over_raw_show_text"] = round(overall["p50_ms"] / raw_p50, 1)
    return result


class _Load:
    """The clerks: each counter calls every 1-3 s, then all of them at once."""

    def __init__(self, queue: QueueService, counters: list[str], options: CallOptions) -> None:
        self.queue = queue
        self.counters = counters
        self.options = options
        self.rng = random.Random(options.seed)
        #: (counter, text, click time, ms until call_next returned: the queue's DB thread)
        self.calls: list[tuple[str, str, float, float]] = []
        self.steady = 0

    async def call(self, counter: str) -> None:
        if await self.queue.current(counter) is not None:
            await self.queue.done(counter)
        start = time.perf_counter()
        ticket = await self.queue.call_next(counter)
        queue_ms = (time.perf_counter() - start) * 1000
        if ticket is not None:
            text = f"请{ticket.number}号到{counter}号窗口"
            self.calls.append((counter, text, start, queue_ms))

    async def clerk(self, counter: str, until: float) -> None:
        opts = self.options
        await asyncio.sleep(self.rng.uniform(0, opts.max_interval_s))
        while time.monotonic() < until:
            await self.call(counter)
            await asyncio.sleep(self.rng.uniform(opts.min_interval_s, opts.max_interval_s))

    async def run(self) -> None:
        opts = self.options
        expected = int(opts.seconds / opts.min_interval_s + 2) * len(self.counters)
        for i in range(expected + opts.bursts * len(self.counters)):
            await self.queue.issue("filing", request_id=f"bench-{i}")
        until = time.monotonic() + opts.seconds
        await asyncio.gather(*(self.clerk(c, until) for c in self.counters))
        self.steady = len(self.calls)
        await asyncio.sleep(2.0)  # let the steady phase drain
        for _ in range(opts.bursts):
            for c in self.counters:  # everyone finishes first, then all click in one loop pass
                if await self.queue.current(c) is not None:
                    await self.queue.done(c)
            await asyncio.gather(*(self.call(c) for c in self.counters))
            await asyncio.sleep(2.0)


def _report(load: _Load, where: dict[str, tuple[int, int]], arrivals: _Arrivals) -> dict[str, Any]:
    def latencies(subset: list[tuple[str, str, float, float]]) -> tuple[list[float], int]:
        lat, missing = [], 0
        for counter, text, start, _ in subset:
            seen = arrivals.at.get((*where[counter], text))
            if seen is None:
                missing += 1
            else:
                lat.append((seen - start) * 1000)
        return lat, missing

    out: dict[str, Any] = {}
    calls, steady = load.calls, load.steady
    for name, subset in (("steady", calls[:steady]), ("burst", calls[steady:]), ("overall", calls)):
        lat, missing = latencies(subset)
        queue = _summary([c[3] for c in subset])
        out[name] = {
            **_summary(lat),
            "not_shown": missing,
            # the part of the latency spent in queue.call_next (the queue's SQLite thread)
            "queue_p50_ms": queue["p50_ms"],
            "queue_max_ms": queue["max_ms"],
        }
    out["steady"]["calls_per_s"] = round(steady / load.options.seconds, 1)
    out["target_p99_ms"] = 200
    return out


async def _wait_online(hub: HubService, counters: list[str]) -> None:
    deadline = time.monotonic() + 20
    while not all(
        (d := hub.registry.device(AGENT, f"led-{c}")) is not None and d.state is HealthState.ONLINE
        for c in counters
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("the panels did not come online in the hub's registry")
        await asyncio.sleep(0.05)


async def _hall(broker: MosquittoBroker, options: CallOptions, work: Path) -> dict[str, Any]:
    counters = [str(i + 1) for i in range(options.counters)]
    per_bus = options.panels_per_bus
    # counter i -> bus i // per_bus, address i % per_bus + 1
    where = {c: (i // per_bus, i % per_bus + 1) for i, c in enumerate(counters)}
    buses = [
        SimulatedLedBus(
            [SimulatedPanel(address=a + 1) for a in range(min(per_bus, len(counters) - b))]
        )
        for b in range(0, len(counters), per_bus)
    ]
    arrivals = _Arrivals()
    for index, bus in enumerate(buses):
        bus.on_frame = functools.partial(arrivals.record, index)
        await bus.start()
    queue_config = queue_config_from_dict(
        {
            "counters": [
                {"id": c, "services": ["filing"], "display": f"{AGENT}/led-{c}"} for c in counters
            ]
        }
    )
    devices = [
        {
            "id": f"led-{c}",
            "driver": "led_call_display",
            "options": {"port": buses[where[c][0]].path, "address": where[c][1]},
        }
        for c in counters
    ]
    hub = HubService(
        hub_config_from_dict({"hub": {"data_dir": str(work / "hub")}}),
        broker.url,
        "hub",
        HUB_PASSWORD,
    )
    queue = await QueueService.open(work / "hub", queue_config)
    agent = EdgeAgent(
        agent_config_from_dict(
            {
                "agent": {"id": AGENT, "data_dir": str(work / "agent")},
                "venue": {"id": "hall", "kind": "litigation_hall", "name": "诉讼服务大厅"},
                "broker": {"url": str(broker.url), "password": AGENT_PASSWORD},
                "devices": devices,
            }
        )
    )
    displays = HallDisplays(hub, queue, queue_config)
    await hub.start()
    await agent.start()
    displays.start()
    try:
        await _wait_online(hub, counters)
        load = _Load(queue, counters, options)
        await load.run()
        await displays.stop()  # every announcement done
        out = _report(load, where, arrivals)
        out["display_stats"] = dict(displays.stats)
    finally:
        await displays.stop()
        await agent.stop()
        await hub.stop()
        await queue.close()
        for bus in buses:
            await bus.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.call_latency``; the last stdout line is the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counters", type=int, default=20)
    parser.add_argument("--panels-per-bus", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--bursts", type=int, default=1)
    args = parser.parse_args(argv)
    options = CallOptions(
        counters=args.counters,
        panels_per_bus=args.panels_per_bus,
        seconds=args.seconds,
        bursts=args.bursts,
    )
    result = asyncio.run(run_call_bench(options))
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
