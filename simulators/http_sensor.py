"""Simulated networked sensors: one aiohttp server hosting many HTTP/JSON sensors.

``GET /sensors/{id}`` answers like a building sensor (see :mod:`device_drivers.http_sensor`)::

    {"model": "EM-300", "firmware": "1.4.2", "status": "ok",
     "readings": {"temperature_c": 22.6, "humidity_pct": 44.1, "co2_ppm": 652}}

and ``POST /sensors/{id}/identify`` makes it "blink" (counted). Readings drift realistically: a
mean-reverting random walk per channel (Ornstein-Uhlenbeck), advanced by the time since the
last read, so a sensor polled slowly moves as far as one polled fast.

Kinds: ``env`` (temperature, humidity, CO₂), ``ups`` (input voltage, load, battery, on-battery
flag, runtime) and ``door`` (contact open/closed, opening count).

Fault switches per sensor: :meth:`SensorServer.drop` (close the connection, or answer 503),
:meth:`~SensorServer.garbage` (invalid JSON), :meth:`~SensorServer.fault` (the sensor reports a
fault), :meth:`~SensorServer.slow` (answer late) and :meth:`~SensorServer.restore`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec
from aiohttp import web

log = logging.getLogger(__name__)

SensorKind = Literal["env", "ups", "door"]
DropMode = Literal["close", "503"]

GARBAGE_BODY: Final = b'{"readings": {"temperature_c": 22.5, <html>Internal Error'


@dataclass(frozen=True)
class Channel:
    """One drifting reading: mean-reverting random walk clamped to ``[low, high]``."""

    mean: float
    #: standard deviation of the change over one second
    sigma: float
    #: pull back to the mean, per second
    theta: float
    low: float
    high: float
    digits: int = 1


CHANNELS: Final[Mapping[str, Mapping[str, Channel]]] = {
    "env": {
        "temperature_c": Channel(22.5, 0.03, 0.005, 10.0, 40.0),
        "humidity_pct": Channel(45.0, 0.1, 0.005, 5.0, 95.0),
        "co2_ppm": Channel(650.0, 3.0, 0.01, 400.0, 3000.0, 0),
    },
    "ups": {
        "input_voltage_v": Channel(220.0, 0.4, 0.1, 180.0, 260.0),
        "load_pct": Channel(35.0, 0.3, 0.02, 0.0, 100.0),
        "battery_pct": Channel(99.0, 0.02, 0.05, 90.0, 100.0),
        "runtime_min": Channel(42.0, 0.05, 0.05, 30.0, 60.0),
    },
    "door": {},
}
MODELS: Final[Mapping[str, tuple[str, str]]] = {
    "env": ("EM-300-TH-CO2", "1.4.2"),
    "ups": ("UPS-NET-3000", "2.1.0"),
    "door": ("DC-100", "0.9.7"),
}
#: a door contact opens about once a minute on average (Poisson)
DOOR_OPENINGS_PER_S: Final = 1 / 60
DOOR_OPEN_MEAN_S: Final = 8.0


@dataclass
class SimulatedSensor:
    """One sensor's readings and fault switches."""

    sensor_id: str
    kind: SensorKind
    rng: random.Random
    model: str = ""
    firmware: str = ""
    values: dict[str, float] = field(default_factory=dict)
    #: fixed readings set by a test (may be non-numeric, to test the driver's checks)
    overrides: dict[str, Any] = field(default_factory=dict)
    dropped: DropMode | None = None
    garbage: bool = False
    fault: str = ""
    delay_s: float = 0.0
    last_read: float = 0.0
    door_open: bool = False
    door_openings: int = 0
    door_change_at: float = 0.0

    def __post_init__(self) -> None:
        default_model, default_firmware = MODELS[self.kind]
        self.model = self.model or default_model
        self.firmware = self.firmware or default_firmware
        self.values = {name: ch.mean for name, ch in CHANNELS[self.kind].items()}
        self.last_read = time.monotonic()
        self.door_change_at = self.last_read + self.rng.expovariate(DOOR_OPENINGS_PER_S)

    def read(self, now: float) -> dict[str, Any]:
        """Advance the drift to ``now`` and return the readings."""
        dt = max(0.0, now - self.last_read)
        self.last_read = now
        readings: dict[str, Any] = {}
        for name, ch in CHANNELS[self.kind].items():
            value = self._drift(self.values[name], ch, dt)
            self.values[name] = value
            readings[name] = round(value, ch.digits) if ch.digits else round(value)
        if self.kind == "ups":
            readings["on_battery"] = 1 if readings["input_voltage_v"] < 190 else 0
        if self.kind == "door":
            self._advance_door(now)
            readings["door_open"] = 1 if self.door_open else 0
            readings["openings"] = self.door_openings
        readings.update(self.overrides)
        return readings

    def _drift(self, value: float, ch: Channel, dt: float) -> float:
        # exact Ornstein-Uhlenbeck step over dt (stable for any dt)
        decay = math.exp(-ch.theta * dt)
        spread = ch.sigma * math.sqrt((1 - decay * decay) / (2 * ch.theta)) if ch.theta else 0.0
        value = ch.mean + (value - ch.mean) * decay + self.rng.gauss(0.0, 1.0) * spread
        return min(ch.high, max(ch.low, value))

    def _advance_door(self, now: float) -> None:
        while self.door_change_at <= now:
            self.door_open = not self.door_open
            if self.door_open:
                self.door_openings += 1
                self.door_change_at += self.rng.expovariate(1 / DOOR_OPEN_MEAN_S)
            else:
                self.door_change_at += self.rng.expovariate(DOOR_OPENINGS_PER_S)

    def answer(self, now: float) -> dict[str, Any]:
        """The JSON object the sensor serves."""
        body: dict[str, Any] = {
            "model": self.model,
            "firmware": self.firmware,
            "status": "fault" if self.fault else "ok",
            "readings": self.read(now),
        }
        if self.fault:
            body["fault"] = self.fault
        return body


class SensorServer:
    """An aiohttp server hosting many simulated sensors at ``/sensors/{id}``."""

    def __init__(
        self,
        sensors: Mapping[str, SensorKind] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._rng = random.Random(seed)
        self.sensors: dict[str, SimulatedSensor] = {}
        self.requests: Counter[str] = Counter()
        self.identify_calls: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        for sensor_id, kind in (sensors or {}).items():
            self.add(sensor_id, kind)

    def add(self, sensor_id: str, kind: SensorKind = "env", model: str = "") -> SimulatedSensor:
        """Add a sensor (before or after start)."""
        if kind not in CHANNELS:
            raise ValueError(f"unknown sensor kind {kind!r} (known: {', '.join(CHANNELS)})")
        sensor = SimulatedSensor(
            sensor_id, kind, random.Random(self._rng.getrandbits(64)), model=model
        )
        self.sensors[sensor_id] = sensor
        return sensor

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Listen (port 0 picks a free port; see :attr:`port` and :meth:`url_for`)."""
        app = web.Application()
        app.router.add_get("/sensors/{sensor_id}", self._handle_get)
        app.router.add_post("/sensors/{sensor_id}/identify", self._handle_identify)
        # a short shutdown timeout: a "slow" sensor must not hold up stop()
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info(
            "sensor server listening url=http://%s:%s sensors=%d",
            self.host,
            self.port,
            len(self.sensors),
        )

    async def stop(self) -> None:
        """Stop serving."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def url_for(self, sensor_id: str) -> str:
        """The URL a driver polls for ``sensor_id``."""
        return f"http://{self.host}:{self.port}/sensors/{sensor_id}"

    # --- fault switches ------------------------------------------------------------------
    def drop(self, sensor_id: str, how: DropMode = "close") -> None:
        """The sensor stops answering: close the connection, or answer 503."""
        self._sensor(sensor_id).dropped = how

    def garbage(self, sensor_id: str, on: bool = True) -> None:
        """The sensor answers with a body that is not valid JSON."""
        self._sensor(sensor_id).garbage = on

    def fault(self, sensor_id: str, reason: str) -> None:
        """The sensor reports a fault of its own (``"status": "fault"``); "" clears it."""
        self._sensor(sensor_id).fault = reason

    def slow(self, sensor_id: str, seconds: float) -> None:
        """The sensor answers ``seconds`` late (0 for normal)."""
        self._sensor(sensor_id).delay_s = seconds

    def restore(self, sensor_id: str) -> None:
        """Clear every fault switch of the sensor."""
        sensor = self._sensor(sensor_id)
        sensor.dropped = None
        sensor.garbage = False
        sensor.fault = ""
        sensor.delay_s = 0.0

    def set_reading(self, sensor_id: str, name: str, value: Any) -> None:
        """Pin a reading to ``value`` (any JSON value); ``None`` unpins it."""
        overrides = self._sensor(sensor_id).overrides
        if value is None:
            overrides.pop(name, None)
        else:
            overrides[name] = value

    # --- HTTP ------------------------------------------------------------------------------
    async def _handle_get(self, request: web.Request) -> web.StreamResponse:
        sensor = self.sensors.get(request.match_info["sensor_id"])
        if sensor is None:
            raise web.HTTPNotFound(text="no such sensor")
        self.requests[sensor.sensor_id] += 1
        if sensor.delay_s:
            await asyncio.sleep(sensor.delay_s)
        if sensor.dropped == "close":
            if request.transport is not None:
                request.transport.abort()  # the client sees the connection reset
            return web.Response(status=503)
        if sensor.dropped == "503":
            raise web.HTTPServiceUnavailable(text="sensor offline")
        if sensor.garbage:
            return web.Response(body=GARBAGE_BODY, content_type="application/json")
        body = msgspec.json.encode(sensor.answer(time.monotonic()))
        return web.Response(body=body, content_type="application/json")

    async def _handle_identify(self, request: web.Request) -> web.StreamResponse:
        sensor = self.sensors.get(request.match_info["sensor_id"])
        if sensor is None:
            raise web.HTTPNotFound(text="no such sensor")
        if sensor.dropped is not None:
            raise web.HTTPServiceUnavailable(text="sensor offline")
        self.identify_calls[sensor.sensor_id] += 1
        log.info("sensor identify sensor=%s", sensor.sensor_id)
        return web.json_response({"ok": True, "blinking_s": 10})

    def _sensor(self, sensor_id: str) -> SimulatedSensor:
        try:
            return self.sensors[sensor_id]
        except KeyError:
            raise KeyError(f"no simulated sensor {sensor_id!r}") from None
