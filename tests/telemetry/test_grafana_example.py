"""The example Grafana dashboard and Prometheus config load, and ask only for data the hub writes.

Every Flux query must name a measurement of :mod:`hub.telemetry_points` (``device``,
``device_health``, ``hub``); the fields it asks for must be ones the hub or a device driver
really produces: ``hub`` fields are :meth:`hub.service.HubService.stats` keys or the sink
statistics the real sinks report (``stats()`` of InfluxSink and EmbeddedStore), ``device`` fields appear
as metric names in the drivers, the agent runtime or the recorder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from hub import telemetry_points
from hub.config import hub_config_from_dict
from hub.embedded_tsdb import EmbeddedStore
from hub.influx_sink import InfluxSink
from hub.service import HubService
from hub.telemetry_config import EmbeddedSection, InfluxSection

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "examples" / "grafana" / "courthub-influxdb.json"
PROMETHEUS = ROOT / "examples" / "prometheus" / "prometheus.yml"
#: where devices' metric names are written (drivers, the agent's own, the recorder's cameras)
METRIC_SOURCES = (
    *sorted((ROOT / "device_drivers").glob("*.py")),
    ROOT / "edge_agents" / "runtime.py",
    ROOT / "hub" / "recorder.py",
)
MEASUREMENT = re.compile(r'r\._measurement == "([^"]+)"')
FIELD = re.compile(r'r\._field == "([^"]+)"')
FIELD_PREFIX = re.compile(r"r\._field =~ /\^([a-z_]+)/")


def measurements_documented() -> set[str]:
    """The measurement names :mod:`hub.telemetry_points` documents (``device`` …)."""
    doc = telemetry_points.__doc__ or ""
    return set(re.findall(r"``(\w+)``\s+for\s+(?:a\s+device's|the\s+hub's)", doc))


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, Flux) of every panel target and template variable."""
    found = [
        (f"panel {p['title']!r} {t['refId']}", t["query"])
        for p in dashboard["panels"]
        for t in p["targets"]
    ]
    found += [
        (f"variable {v['name']!r}", v["query"])
        for v in dashboard["templating"]["list"]
        if v["type"] == "query"
    ]
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def test_the_conventions_name_three_measurements() -> None:
    assert measurements_documented() == {"device", "device_health", "hub"}


def test_the_dashboard_has_the_panels_and_variables_it_promises(dashboard: dict[str, Any]) -> None:
    variables = [v["name"] for v in dashboard["templating"]["list"]]
    assert variables == ["datasource", "venue", "agent", "device"]
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for words in (
        "device up",
        "fps",
        "microphone",
        "paper",
        "queue",
        "messages per second",
        "spool",
    ):
        assert words in titles, words
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"


def test_every_query_reads_a_known_measurement(dashboard: dict[str, Any]) -> None:
    known = measurements_documented()
    for where, flux in queries(dashboard):
        assert 'bucket: "courthub"' in flux, where
        named = set(MEASUREMENT.findall(flux))
        assert named, f"{where} names no measurement"
        assert named <= known, f"{where}: {named - known}"


def test_every_field_is_one_the_hub_or_a_device_writes(
    dashboard: dict[str, Any], tmp_path: Path
) -> None:
    service = HubService(
        hub_config_from_dict({"hub": {"data_dir": str(tmp_path)}}), "mqtt://127.0.0.1:1", "h", "x"
    )
    hub_fields = {k for k, v in service.stats().items() if isinstance(v, int | float)}
    # the sinks' own stats() keys: the pipeline writes them as `hub` points tagged `sink`
    influx = InfluxSink(InfluxSection(url="http://127.0.0.1:1"), data_dir=tmp_path / "i")
    embedded = EmbeddedStore(EmbeddedSection(), tmp_path / "e")
    sink_fields = set(influx.stats()) | set(embedded.stats())
    health_fields = {"state_code", "up", "last_seen_age_s"}  # hub/telemetry_pipeline.py
    device_source = "\n".join(p.read_text(encoding="utf-8") for p in METRIC_SOURCES)
    for where, flux in queries(dashboard):
        measurements = set(MEASUREMENT.findall(flux))
        for field in FIELD.findall(flux):
            if measurements == {"hub"}:
                assert field in hub_fields | sink_fields, f"{where}: hub field {field!r}"
            elif measurements == {"device_health"}:
                assert field in health_fields, f"{where}: device_health field {field!r}"
            else:
                assert measurements == {"device"}, where
                assert f'"{field}"' in device_source, f"{where}: no device writes {field!r}"
        for prefix in FIELD_PREFIX.findall(flux):
            assert f'f"{prefix}{{' in device_source, f"{where}: no device writes {prefix}*"


def test_the_prometheus_example_scrapes_metrics_with_a_bearer_token_file() -> None:
    # no YAML parser in the project: the keys that matter, read line by line (comments dropped)
    lines = [
        line.split("#", 1)[0].rstrip()
        for line in PROMETHEUS.read_text(encoding="utf-8").splitlines()
    ]
    text = "\n".join(line for line in lines if line.strip())
    assert "\t" not in text
    assert re.search(r"^scrape_configs:\n  - job_name: courthub$", text, re.M)
    assert re.search(r"^    metrics_path: /metrics$", text, re.M)
    assert re.search(
        r"^    authorization:\n      type: Bearer\n      credentials_file: /\S+$", text, re.M
    )
    assert re.search(r'^      - targets: \["[^"]+:\d+"\]$', text, re.M)
