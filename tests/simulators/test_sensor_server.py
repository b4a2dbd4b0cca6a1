"""SensorServer: realistic readings and the fault switches, over real HTTP."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from simulators.http_sensor import CHANNELS, SensorServer, SimulatedSensor


@pytest.fixture
async def server() -> AsyncIterator[SensorServer]:
    srv = SensorServer({"env-1": "env", "ups-1": "ups", "door-1": "door"}, seed=3)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url) as resp:
        assert resp.status == 200
        body = msgspec.json.decode(await resp.read())
        assert isinstance(body, dict)
        return body


async def test_serves_each_kind(server: SensorServer, http: aiohttp.ClientSession) -> None:
    assert server.port > 0
    assert server.url_for("env-1") == f"http://127.0.0.1:{server.port}/sensors/env-1"
    env = await get_json(http, server.url_for("env-1"))
    assert env["status"] == "ok" and env["model"] == "EM-300-TH-CO2"
    assert set(env["readings"]) == {"temperature_c", "humidity_pct", "co2_ppm"}
    ups = await get_json(http, server.url_for("ups-1"))
    assert {"input_voltage_v", "battery_pct", "on_battery"} <= set(ups["readings"])
    door = await get_json(http, server.url_for("door-1"))
    assert set(door["readings"]) == {"door_open", "openings"}
    assert server.requests == {"env-1": 1, "ups-1": 1, "door-1": 1}
    async with http.get(server.url_for("nope")) as resp:
        assert resp.status == 404


def test_readings_drift_but_stay_plausible() -> None:
    sensor = SimulatedSensor("env-x", "env", random.Random(1))
    start = sensor.last_read
    series = [sensor.read(start + i * 30.0)["temperature_c"] for i in range(1, 400)]
    assert len(set(series)) >= 5 and max(series) - min(series) >= 0.5  # it moves
    ch = CHANNELS["env"]["temperature_c"]
    assert all(ch.low <= t <= ch.high for t in series)
    assert abs(sum(series) / len(series) - ch.mean) < 2.0  # and keeps near its mean
    door = SimulatedSensor("door-x", "door", random.Random(2))
    states = [door.read(door.last_read + 20.0)["door_open"] for _ in range(200)]
    assert set(states) == {0, 1} and door.door_openings > 5


async def test_fault_switches(server: SensorServer, http: aiohttp.ClientSession) -> None:
    url = server.url_for("env-1")
    server.drop("env-1")
    with pytest.raises(aiohttp.ClientError):
        async with http.get(url) as resp:
            await resp.read()
    server.drop("env-1", "503")
    async with http.get(url) as resp:
        assert resp.status == 503
    server.restore("env-1")
    server.garbage("env-1")
    async with http.get(url) as resp:
        with pytest.raises(msgspec.DecodeError):
            msgspec.json.decode(await resp.read())
    server.restore("env-1")
    server.fault("env-1", "fan stalled")
    body = await get_json(http, url)
    assert (body["status"], body["fault"]) == ("fault", "fan stalled")
    server.restore("env-1")
    server.slow("env-1", 1.0)
    with pytest.raises(TimeoutError):
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=0.1)) as resp:
            await resp.read()
    server.restore("env-1")
    server.set_reading("env-1", "co2_ppm", "n/a")
    assert (await get_json(http, url))["readings"]["co2_ppm"] == "n/a"
    server.set_reading("env-1", "co2_ppm", None)
    assert isinstance((await get_json(http, url))["readings"]["co2_ppm"], int)
    with pytest.raises(KeyError, match="nope"):
        server.drop("nope")


async def test_identify_is_counted(server: SensorServer, http: aiohttp.ClientSession) -> None:
    for _ in range(2):
        async with http.post(server.url_for("ups-1") + "/identify") as resp:
            assert resp.status == 200
            assert (await resp.json())["ok"] is True
    assert server.identify_calls["ups-1"] == 2
    server.drop("ups-1")
    async with http.post(server.url_for("ups-1") + "/identify") as resp:
        assert resp.status == 503
    assert server.identify_calls["ups-1"] == 2
