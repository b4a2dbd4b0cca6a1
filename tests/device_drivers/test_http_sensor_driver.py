"""HttpSensorDriver against the simulated sensor server over real HTTP."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_drivers.base import CommandError, DriverConfigError, UnknownCommand
from device_drivers.catalog import create
from device_drivers.http_sensor import HttpSensorDriver, parse_answer
from protocol.errors import BadMessage as _BadMessage
from protocol.messages import DeviceStatus
from simulators.http_sensor import SensorServer

ONLINE, OFFLINE, FAULT = DeviceStatus.ONLINE, DeviceStatus.OFFLINE, DeviceStatus.FAULT


@pytest.fixture
async def server() -> AsyncIterator[SensorServer]:
    srv = SensorServer({"env-1": "env", "ups-1": "ups", "door-1": "door"}, seed=7)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
def sensor_driver(
    server: SensorServer, sink: Any, run_driver: Any
) -> Callable[..., HttpSensorDriver]:
    """Start a driver polling one simulated sensor fast."""

    def start(sensor_id: str = "env-1", **options: Any) -> HttpSensorDriver:
        opts: dict[str, Any] = {
            "url": server.url_for(sensor_id),
            "interval_s": 0.05,
            "timeout_s": 0.5,
            "max_backoff_s": 0.2,
        }
        opts.update(options)
        driver = HttpSensorDriver(sensor_id, opts)
        run_driver(driver, sink)
        return driver

    return start


async def test_polling_reports_telemetry_description_and_online(
    sensor_driver: Callable[..., HttpSensorDriver], sink: Any
) -> None:
    driver = sensor_driver("env-1", kind="environment")
    await sink.wait_state(ONLINE)
    await sink.wait(lambda: len(sink.telemetry_log) >= 3, "three polls")
    for metrics in sink.telemetry_log:
        assert set(metrics) == {"temperature_c", "humidity_pct", "co2_ppm"}
        assert 10 <= metrics["temperature_c"] <= 40
    (desc,) = sink.descriptions  # described once, not on every poll
    assert (desc.kind, desc.model, desc.firmware) == ("environment", "EM-300-TH-CO2", "1.4.2")
    assert desc.heartbeat_s == 0.05
    assert set(desc.capabilities) == {"poll_now", "identify"}
    assert driver.description == desc
    assert sink.bad == []


async def test_ups_and_door_sensors(
    sensor_driver: Callable[..., HttpSensorDriver], sink: Any
) -> None:
    sensor_driver("ups-1")
    sensor_driver("door-1")
    await sink.wait(
        lambda: sink.metric("battery_pct") is not None and sink.metric("door_open") is not None,
        "ups and door readings",
    )
    assert sink.metric("on_battery") in (0, 1)
    assert sink.metric("door_open") in (0, 1)


@pytest.mark.parametrize("how", ["close", "503"])
async def test_drop_goes_offline_and_restore_comes_back(
    server: SensorServer,
    sensor_driver: Callable[..., HttpSensorDriver],
    sink: Any,
    how: str,
) -> None:
    driver = sensor_driver()
    await sink.wait_state(ONLINE)
    server.drop("env-1", how)  # type: ignore[arg-type]
    await sink.wait_state(OFFLINE)
    reason = sink.state[1]
    assert ("HTTP 503" in reason) if how == "503" else ("unreachable" in reason)
    await sink.wait(lambda: driver.failures >= 3, "backing off")
    assert driver._next_delay() == 0.2  # 0.05 doubling, capped at max_backoff_s
    server.restore("env-1")
    await sink.wait_state(ONLINE)
    assert driver.failures == 0


async def test_slow_sensor_times_out(
    server: SensorServer, sensor_driver: Callable[..., HttpSensorDriver], sink: Any
) -> None:
    sensor_driver(timeout_s=0.1)
    await sink.wait_state(ONLINE)
    server.slow("env-1", 0.5)
    await sink.wait_state(OFFLINE, "no answer within 0.1 s")
    server.restore("env-1")
    await sink.wait_state(ONLINE)


async def test_garbage_is_bad_input_and_fault(
    server: SensorServer, sensor_driver: Callable[..., HttpSensorDriver], sink: Any
) -> None:
    sensor_driver()
    await sink.wait_state(ONLINE)
    server.garbage("env-1")
    await sink.wait_state(FAULT, "bad response")
    assert sink.bad[0][0] == "malformed_json"
    server.restore("env-1")
    await sink.wait_state(ONLINE)


async def test_sensor_fault_and_non_numeric_readings(
    server: SensorServer, sensor_driver: Callable[..., HttpSensorDriver], sink: Any
) -> None:
    server.set_reading("env-1", "label", "lobby")
    server.set_reading("env-1", "alarm", True)
    sensor_driver()
    await sink.wait(lambda: sink.telemetry_log, "telemetry")
    assert "label" not in sink.telemetry_log[0]
    assert sink.telemetry_log[0]["alarm"] == 1.0
    assert sink.bad[0][0] == "schema" and "label" in sink.bad[0][1]
    server.fault("env-1", "CO2 sensor element failed")
    await sink.wait_state(FAULT, "CO2 sensor element failed")
    server.fault("env-1", "")
    await sink.wait_state(ONLINE)


async def test_poll_now_and_identify(
    server: SensorServer, sensor_driver: Callable[..., HttpSensorDriver], sink: Any
) -> None:
    driver = sensor_driver(interval_s=60)  # only the first poll happens by itself
    await sink.wait_state(ONLINE)
    result = await driver.execute("poll_now", {})
    assert set(result["readings"]) == {"temperature_c", "humidity_pct", "co2_ppm"}
    assert len(sink.telemetry_log) == 2

    assert (await driver.execute("identify", {}))["identified"] is True
    assert server.identify_calls["env-1"] == 1

    with pytest.raises(UnknownCommand):
        await driver.execute("reboot", {})
    server.drop("env-1", "503")
    with pytest.raises(CommandError, match="HTTP 503"):
        await driver.execute("poll_now", {})
    assert sink.state == (OFFLINE, "HTTP 503 Service Unavailable")
    with pytest.raises(CommandError, match="503"):
        await driver.execute("identify", {})


async def test_commands_before_run_fail_cleanly() -> None:
    driver = HttpSensorDriver("env-1", {"url": "http://127.0.0.1:1/sensors/env-1"})
    with pytest.raises(CommandError, match="not running"):
        await driver.execute("poll_now", {})


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"url": "ftp://x/y"}, "url"),
        ({"url": "http://x/y", "interval_s": 0}, "interval_s"),
        ({"url": "http://x/y", "timeout_s": -1}, "timeout_s"),
        ({"url": "http://x/y", "intervall_s": 5}, "intervall_s"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(DriverConfigError, match=fragment):
        HttpSensorDriver("env-1", options)


def test_catalog_creates_the_driver() -> None:
    driver = create("http_sensor", "ups-1", {"url": "http://10.0.0.5/sensors/ups-1", "kind": "ups"})
    assert isinstance(driver, HttpSensorDriver)
    assert driver.description.kind == "ups"
    assert driver.description.heartbeat_s == 5.0


# --- the sensor's answer parser, fuzzed --------------------------------------------------------


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(st.binary(max_size=300))
def test_parse_answer_on_random_bytes_raises_only_bad_message(body: bytes) -> None:
    with contextlib.suppress(_BadMessage):
        parse_answer(body)


@given(
    st.dictionaries(
        st.sampled_from(["readings", "model", "firmware", "status", "fault", "x"]), _json
    )
)
def test_parse_answer_on_json_objects_raises_only_bad_message(obj: dict[str, object]) -> None:
    try:
        answer = parse_answer(json.dumps(obj).encode())
    except _BadMessage:
        return
    assert isinstance(answer.readings, dict)


def test_parse_answer_refuses_an_oversized_body() -> None:
    with pytest.raises(_BadMessage) as info:
        parse_answer(b'{"readings": {}, "pad": "' + b"x" * 70_000 + b'"}')
    assert info.value.reason.value == "oversized"
