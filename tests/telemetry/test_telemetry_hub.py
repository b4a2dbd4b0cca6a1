"""Telemetry through the whole hub (issue 7): a real hub (``run_hub`` with its own Mosquitto,
hub.toml naming a real VictoriaMetrics and the embedded store), a real edge agent process
polling simulated HTTP sensors, and a technician reading what arrived.

What a technician would notice:
- every telemetry message the hub accepted is in VictoriaMetrics once, as ``device_<metric>``
  with the agent/device/venue/kind labels and the device's own millisecond timestamp, and in
  the embedded store (read through the technician's series API);
- VictoriaMetrics stopped (SIGTERM) mid-stream and restarted: nothing lost, nothing twice;
  ``/metrics`` shows the spooled points while it is away and none after; the spool alert fires
  while it is away and resolves after;
- the agent killed: the offline alert fires, is listed by ``GET /api/v1/alerts`` and goes out on
  ``courthub/v1/hub/alerts`` to an MQTT account allowed to read it.

Lives beside tests/telemetry/conftest.py for its ``victoria_metrics`` fixture.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import signal
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
import pytest
import tomli_w
from paho.mqtt.enums import CallbackAPIVersion

from hub.app import HubRuntime, run_hub
from hub.config import load_hub_config
from hub.registry import HealthState, HubChange, TelemetryReceived
from protocol.topics import TopicKind, build
from simulators.http_sensor import SensorServer

AGENT = "agent-a"
VENUE = "court-1"
SENSORS = {"env-1": "env", "ups-1": "ups"}
#: an MQTT account that may read the hub's alerts (and nothing else)
WATCHER = "alerts-watch"
ALERTS_TOPIC = build(TopicKind.HUB_ALERTS)
SPOOL_ALERT = "rule:spool-growing:hub/telemetry_influxdb_spool_bytes"
OFFLINE_ALERT = f"rule:device-offline:{AGENT}/env-1"

pytestmark = pytest.mark.slow


async def until(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Wait for ``condition`` (sync or async) to be truthy; its value. Never a bare sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class Accepted:
    """Every telemetry message the hub accepted (a registry listener): the ground truth."""

    #: (device, ts_ms) → metrics
    messages: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)
    #: (device, ts_ms) seen more than once (two messages of one device in one ms)
    clashes: int = 0

    def __call__(self, change: HubChange) -> None:
        if isinstance(change, TelemetryReceived) and change.agent == AGENT:
            key = (change.device, change.telemetry.ts)
            if key in self.messages:
                self.clashes += 1
            self.messages[key] = dict(change.telemetry.metrics)

    def samples(self) -> Counter[tuple[str, str, int, float]]:
        """What VictoriaMetrics should hold: (``device_<metric>``, device, ts, value)."""
        return Counter(
            (f"device_{name}", device, ts, value)
            for (device, ts), metrics in self.messages.items()
            for name, value in metrics.items()
        )

    def series(self) -> dict[tuple[str, str], list[tuple[int, float]]]:
        """(device, metric) → [(ts, value)] oldest first: what the chart API should answer."""
        out: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
        for (device, ts), metrics in sorted(self.messages.items(), key=lambda kv: kv[0][1]):
            for name, value in metrics.items():
                out[(device, name)].append((ts, value))
        return out


class AlertWatcher:
    """An MQTT client (its own account, read-only on the alerts topic) collecting alerts."""

    def __init__(self, runtime: HubRuntime, password: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self.subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="alerts-watch-test")
        self._client.username_pw_set(WATCHER, password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        url = runtime.broker_url
        self._client.connect(url.host, url.port)
        self._client.loop_start()

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe(ALERTS_TOPIC, qos=1)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, codes: list[Any], _p: Any) -> None:
        if all(not code.is_failure for code in codes):
            self.subscribed.set()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        self.messages.append(json.loads(msg.payload))

    def states(self, key: str) -> list[str]:
        """The states published for alert ``key``, in order."""
        return [m["state"] for m in list(self.messages) if m.get("key") == key]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class Technician:
    """HTTP as a technician: a personal API token as bearer."""

    def __init__(self, http: aiohttp.ClientSession, runtime: HubRuntime, token: str) -> None:
        self.http = http
        self.base = runtime.api_url
        self.headers = {"Authorization": f"Bearer {token}"}

    async def get_json(self, path: str, **params: str) -> Any:
        async with self.http.get(self.base + path, params=params, headers=self.headers) as r:
            body = await r.json()
            assert r.status == 200, body
            return body

    async def sink_stat(self, stat: str, sink: str = "influxdb") -> float:
        """``courthub_telemetry_sink_<stat>{sink=...}`` from ``/metrics``."""
        async with self.http.get(f"{self.base}/metrics", headers=self.headers) as r:
            assert r.status == 200
            text = await r.text()
        pattern = rf'^courthub_telemetry_sink_{stat}{{sink="{sink}"}} (\S+)$'
        match = re.search(pattern, text, re.MULTILINE)
        assert match is not None, f"{stat} of sink {sink} not in /metrics"
        return float(match[1])

    async def alert(self, key: str) -> dict[str, Any] | None:
        """The alert ``key`` as ``GET /api/v1/alerts`` lists it: active first, else history."""
        body = await self.get_json("/api/v1/alerts")
        for alert in (*body["active"], *body["history"]):
            if alert["key"] == key:
                found: dict[str, Any] = alert
                return found
        return None


def hub_toml(tmp_path: Path, vm_url: str) -> Path:
    """hub.toml: own broker, free API port, both sinks, short alert rules published on MQTT."""
    config = {
        "hub": {"data_dir": str(tmp_path / "hub")},
        "api": {"port": 0},
        "broker": {
            "accounts": [
                {"username": AGENT, "role": "agent"},
                {"username": WATCHER, "role": "device", "read": [ALERTS_TOPIC]},
            ]
        },
        "telemetry": {
            "sample_interval_s": 1.0,
            "embedded": {"flush_interval_s": 0.2},
            "influxdb": {
                "url": vm_url,
                "batch_size": 100,
                "flush_interval_s": 0.2,
                "timeout_s": 5.0,
                "min_backoff_s": 0.1,
                "max_backoff_s": 0.5,
            },
        },
        "alerts": {
            "evaluate_interval_s": 0.5,
            "publish_mqtt": True,
            "rules": [
                {"name": "device-offline", "kind": "device_offline", "for_s": 1.0},
                {"name": "spool-growing", "kind": "spool_growing", "for_s": 1.0},
            ],
        },
    }
    path = tmp_path / "hub.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


@pytest.fixture
async def sensors() -> AsyncIterator[SensorServer]:
    server = SensorServer(SENSORS, seed=7)  # type: ignore[arg-type]
    await server.start()
    yield server
    await server.stop()


async def start_agent(
    runtime: HubRuntime, sensors: SensorServer, tmp_path: Path
) -> asyncio.subprocess.Process:
    """The real edge agent process (``python -m edge_agents``), polling every 0.1 s."""
    assert runtime.credentials is not None
    venue = {
        "agent": {"id": AGENT, "data_dir": str(tmp_path / "agent"), "heartbeat_s": 1.0},
        "venue": {"id": VENUE, "kind": "tech_courtroom", "name": "第一科技法庭"},
        "broker": {
            "url": str(runtime.broker_url),
            "password": runtime.credentials.password_for(AGENT),
        },
        "devices": [
            {
                "id": s,
                "driver": "http_sensor",
                "options": {"url": sensors.url_for(s), "interval_s": 0.1, "timeout_s": 1.0},
            }
            for s in SENSORS
        ],
    }
    path = tmp_path / "venue.toml"
    path.write_text(tomli_w.dumps(venue), encoding="utf-8")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_agents", "--config", str(path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def test_telemetry_reaches_both_stores_through_a_server_outage_and_alerts_fire(
    tmp_path: Path, victoria_metrics: Any, sensors: SensorServer
) -> None:
    vm = victoria_metrics
    config = load_hub_config(hub_toml(tmp_path, vm.url))
    accepted = Accepted()
    ready: asyncio.Future[HubRuntime] = asyncio.get_running_loop().create_future()

    def on_ready(runtime: HubRuntime) -> None:
        runtime.service.add_listener(accepted)
        ready.set_result(runtime)

    stop = asyncio.Event()
    hub = asyncio.create_task(run_hub(config, stop, on_ready=on_ready))
    agent: asyncio.subprocess.Process | None = None
    watcher: AlertWatcher | None = None
    try:
        async with asyncio.timeout(30):
            runtime = await asyncio.shield(ready)
        assert runtime.accounts is not None and runtime.credentials is not None
        assert runtime.telemetry is not None and runtime.telemetry.store is not None
        await runtime.accounts.create_user("tech-wang", "Tech-wang-pw-2024!", {"technician"})
        token = await runtime.accounts.create_api_token("tech-wang", "grafana")
        watcher = AlertWatcher(runtime, runtime.credentials.password_for(WATCHER))
        assert await asyncio.to_thread(watcher.subscribed.wait, 10), "alerts topic refused"
        registry = runtime.service.registry

        agent = await start_agent(runtime, sensors, tmp_path)
        async with aiohttp.ClientSession() as http:
            tech = Technician(http, runtime, token)
            await until(lambda: len(accepted.messages) >= 30, "a live telemetry stream")
            await until(
                lambda: asyncio.to_thread(lambda: vm.export(f'{{agent="{AGENT}"}}')),
                "the first points in VictoriaMetrics",
            )

            # the server goes away mid-stream: points wait in the durable spool
            await asyncio.to_thread(vm.stop)
            during = len(accepted.messages)
            await until(lambda: tech.sink_stat("spooled_points"), "spooled points in /metrics")
            spool_alert = await until(
                lambda: _firing(tech, SPOOL_ALERT), "the spool alert firing", timeout=15
            )
            assert "spool" in spool_alert["message"]
            assert len(accepted.messages) > during + 10, "the stream went on during the outage"

            # back: the spool drains, the alert resolves, the stream goes on
            await asyncio.to_thread(vm.start)
            await until(
                lambda: _zero(tech.sink_stat("spooled_points")), "the spool drained", timeout=30
            )
            await until(
                lambda: _resolved(tech, SPOOL_ALERT), "the spool alert resolved", timeout=15
            )
            after = len(accepted.messages)
            await until(lambda: len(accepted.messages) > after + 20, "the stream after the outage")

            # the agent dies: its devices go offline, the alert fires and goes out on MQTT
            agent.send_signal(signal.SIGKILL)
            await agent.wait()
            offline = await until(
                lambda: _firing(tech, OFFLINE_ALERT), "the offline alert firing", timeout=15
            )
            assert offline["severity"] == "warning" and "env-1" in offline["message"]
            record = registry.device(AGENT, "env-1")
            assert record is not None and record.state is HealthState.OFFLINE
            await until(lambda: "firing" in watcher.states(OFFLINE_ALERT), "offline alert on MQTT")
            spool_states = watcher.states(SPOOL_ALERT)
            assert spool_states[0] == "firing" and spool_states[-1] == "resolved", spool_states

            # nothing arrives any more: compare everything the hub accepted with both stores
            assert accepted.clashes == 0
            expected = accepted.samples()
            devices = {device for device, _ in accepted.messages}
            assert devices == {*SENSORS, "agent"}
            got = await asyncio.to_thread(_vm_samples, vm, expected)
            assert got == expected, _diff(expected, got)
            await _check_labels(vm, registry)
            stats = runtime.service.stats()
            assert stats["lost"] == 0
            assert runtime.service.seq.received(AGENT) == [(0, runtime.service.seq.highest(AGENT))]
            await _check_embedded(tech, accepted)
            influx = next(s for s in runtime.telemetry.sinks if s.name == "influxdb").stats()
            assert influx["dropped"] == influx["rejected"] == influx["spooled_points"] == 0
            assert influx["retries"] > 0, "the outage was seen by the sink"
            store = next(s for s in runtime.telemetry.sinks if s.name == "embedded").stats()
            # (its "duplicates" may count device_health rows: two health transitions of one
            # device in one ms keep the first; device points were compared one by one above)
            assert store["dropped"] == store["too_old"] == store["errors"] == 0
    finally:
        if agent is not None and agent.returncode is None:
            agent.kill()
            await agent.wait()
        if watcher is not None:
            watcher.close()
        stop.set()
        async with asyncio.timeout(60):
            await hub


async def _firing(tech: Technician, key: str) -> dict[str, Any] | None:
    alert = await tech.alert(key)
    return alert if alert is not None and alert["state"] == "firing" else None


async def _resolved(tech: Technician, key: str) -> bool:
    alert = await tech.alert(key)
    return alert is not None and alert["state"] == "resolved"


async def _zero(value: Any) -> bool:
    return await value == 0


def _vm_samples(
    vm: Any, expected: Counter[tuple[str, str, int, float]]
) -> Counter[tuple[str, str, int, float]]:
    """VictoriaMetrics' device samples of the agent once it holds as many as expected (plus one
    more poll, so late duplicates show too)."""
    match = f'{{__name__=~"device_.+", agent="{AGENT}"}}'

    def device_samples(samples: list[Any]) -> list[Any]:
        return [s for s in samples if not s.name.startswith("device_health_")]

    vm.wait_for(lambda s: len(device_samples(s)) >= expected.total(), match, timeout=30)
    want = {(name, device, ts): value for name, device, ts, value in expected}
    got: Counter[tuple[str, str, int, float]] = Counter()
    for s in device_samples(vm.wait_for_count(0, match)):
        key = (s.name, s.label("device"), s.ts_ms)
        value = want.get(key, s.value)
        # the expected value when VictoriaMetrics' copy equals it up to its float storage
        same = math.isclose(s.value, value, rel_tol=1e-12, abs_tol=1e-12)
        got[(*key, value if same else s.value)] += 1
    return got


def _diff(expected: Counter[Any], got: Counter[Any]) -> str:
    missing = expected - got
    extra = got - expected
    return f"missing {sum(missing.values())} e.g. {list(missing)[:3]}; extra {list(extra)[:3]}"


async def _check_labels(vm: Any, registry: Any) -> None:
    """Every device sample carries exactly agent, device, venue and kind, as the hub knows them."""
    samples = await asyncio.to_thread(vm.export, f'{{__name__=~"device_.+", agent="{AGENT}"}}')
    for s in samples:
        if s.name.startswith("device_health_"):
            continue
        record = registry.device(AGENT, s.label("device"))
        assert record is not None and record.kind
        want = (("agent", AGENT), ("device", record.id), ("kind", record.kind), ("venue", VENUE))
        assert s.labels == want, s


async def _check_embedded(tech: Technician, accepted: Accepted) -> None:
    """Each (device, metric) through the technician's series API: every point, once, raw."""
    for (device, metric), want in accepted.series().items():
        assert len(want) < 500, "few enough points for the API to answer them unbucketed"

        async def answered(device: str = device, metric: str = metric) -> list[tuple[int, float]]:
            body = await tech.get_json(
                f"/api/v1/telemetry/{AGENT}/{device}/series", metric=metric, range="15m"
            )
            return [(p["ts"], p["avg"]) for p in body["points"]]

        points: list[tuple[int, float]] = []

        async def complete(
            answered: Callable[[], Any] = answered, want: list[tuple[int, float]] = want
        ) -> bool:
            nonlocal points
            points = await answered()
            return len(points) >= len(want)

        await until(complete, f"{device} {metric} in the embedded store", timeout=10)
        assert points == want, f"{device} {metric}"
