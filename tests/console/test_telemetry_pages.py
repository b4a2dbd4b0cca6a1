"""The technician's telemetry API and pages (``dashboards/telemetry_api.py``,
``dashboards/pages_telemetry.py``) over HTTP, with every role's token:

technicians and admins read a device's metric names, its series (bucketed to at most 500 points,
avg/min/max of real stored samples) and its state timeline (from transitions written to the hub's
real SQLite store), and a venue's series; clerks, counter staff, judges and commanders get 403,
anonymous callers 401. Bad ranges and metrics are 400s that say what is allowed, unknown devices
and venues 404, a hub without a telemetry store 503. The pages carry one canvas per metric and
load the vendored Chart.js from the hub.

The points live in the hub's real embedded store (:class:`hub.embedded_tsdb.EmbeddedStore`),
written as :class:`~hub.telemetry_points.Point` objects like the telemetry pipeline writes them.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from test_console_app_harness import BROWSER, auth, birth, console, make_service

from dashboards import pages_telemetry, telemetry_api
from dashboards.auth import Role
from dashboards.pages_telemetry import CHART_JS_URL, install_telemetry_pages
from dashboards.telemetry_api import MAX_POINTS, UNKNOWN, StateSegment, state_segments
from hub.embedded_tsdb import EmbeddedStore
from hub.registry import DeviceRecord, DirtyRows, HealthState, StateLogEntry
from hub.service import HubService
from hub.store import FlushBatch
from hub.telemetry_config import EmbeddedSection
from hub.telemetry_points import Point
from protocol.messages import DeviceInfo, VenueKind, now_ms

ROUTES = (*telemetry_api.ROUTES, *pages_telemetry.ROUTES)
MINUTE = 60_000


def device_point(agent: str, device: str, ts: int, **fields: float) -> Point:
    tags = {"agent": agent, "device": device, "venue": "hall", "kind": "sensor"}
    return Point.make("device", tags, fields, ts)


def hall(service: HubService) -> None:
    """One hall (two sensors) and one courtroom (a camera)."""
    birth(
        service,
        "hall-1",
        venue_id="hall",
        kind=VenueKind.LITIGATION_HALL,
        name="诉讼服务中心",
        devices=[
            DeviceInfo(id="env-1", kind="env_sensor", model="TH-20"),
            DeviceInfo(id="ups-1", kind="ups", model="UPS-3K"),
        ],
    )
    birth(
        service,
        "court-1",
        venue_id="court-1",
        kind=VenueKind.TECH_COURTROOM,
        name="第一科技法庭",
        devices=[DeviceInfo(id="cam-1", kind="camera")],
    )


@pytest.fixture
async def site(
    tmp_path: Path,
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], HubService, EmbeddedStore, int]]:
    service = make_service(tmp_path)
    await service.store.open()
    hall(service)
    reader = await EmbeddedStore.open(EmbeddedSection(), tmp_path / "telemetry")
    now = now_ms()
    # env-1: temperature every second over the last 10 minutes, a sine-ish saw 20..25
    reader.write(
        [
            device_point(
                "hall-1", "env-1", now - i * 1000, temperature_c=20 + (i % 6), humidity_pct=40
            )
            for i in range(600)
        ]
    )
    reader.write([device_point("hall-1", "env-1", now - 2 * 3_600_000, temperature_c=99.0)])
    reader.write([device_point("hall-1", "ups-1", now - 5000, load_pct=31.0)])
    await reader.flush()
    try:
        async with console(
            service,
            extra_routes=ROUTES,
            setup=lambda app: install_telemetry_pages(app, reader),
        ) as client:
            yield client, service, reader, now
    finally:
        await reader.stop()
        await service.store.close()


Site = tuple[TestClient[web.Request, web.Application], HubService, EmbeddedStore, int]


# roles ------------------------------------------------------------------------------------------


def concrete(path: str) -> str:
    values = {"agent": "hall-1", "device": "env-1", "venue": "hall"}
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


async def test_technicians_and_admins_read_everyone_else_is_refused(site: Site) -> None:
    client = site[0]
    for route in ROUTES:
        path = concrete(route.path) + ("?metric=temperature_c" if "series" in route.path else "")
        assert route.roles == {Role.ADMIN, Role.TECHNICIAN}, route.path
        for role in (Role.TECHNICIAN, Role.ADMIN):
            r = await client.get(path, headers=auth(role))
            assert r.status == 200, (route.path, role, await r.text())
        for role in (Role.CLERK, Role.COUNTER, Role.JUDGE, Role.COMMANDER):
            r = await client.get(path, headers=auth(role))
            assert r.status == 403, (route.path, role)
        r = await client.get(path)
        assert r.status == 401, route.path


# parameters -------------------------------------------------------------------------------------


async def test_bad_parameters_are_400_with_what_is_allowed(site: Site) -> None:
    client = site[0]
    base = "/api/v1/telemetry/hall-1/env-1"
    cases = {
        f"{base}/series?metric=temperature_c&range=1y": "use one of 15m, 6h, 7d",
        f"{base}/states?range=15": "use one of 15m, 6h, 7d",
        f"{base}/series?range=15m": "missing metric",
        f"{base}/series?metric=temp%20c": "bad metric name",
        f"{base}/series?metric=" + "x" * 200: "bad metric name",
        f"{base}/series?metric=pressure_hpa": "unknown metric 'pressure_hpa' for hall-1/env-1: "
        "humidity_pct, temperature_c",
        "/api/v1/telemetry/venue/hall/series?metric=a;b": "bad metric name",
        "/api/v1/telemetry/venue/hall/series?metric=load_pct&range=2d": "use one of",
    }
    for path, message in cases.items():
        r = await client.get(path, headers=auth(Role.TECHNICIAN))
        assert r.status == 400, path
        assert message in (await r.json())["error"], path


async def test_unknown_devices_and_venues_are_404(site: Site) -> None:
    client = site[0]
    for path in (
        "/api/v1/telemetry/hall-1/nope/metrics",
        "/api/v1/telemetry/nobody/env-1/series?metric=temperature_c",
        "/api/v1/telemetry/hall-1/nope/states",
        "/api/v1/telemetry/venue/moon/series?metric=temperature_c",
        "/api/v1/telemetry/venue/moon/metrics",
        "/technician/telemetry/hall-1/nope",
        "/technician/venue/moon",
    ):
        r = await client.get(path, headers=auth(Role.TECHNICIAN))
        assert r.status == 404, path
        assert "no " in (await r.json())["error"]


async def test_without_a_telemetry_store_series_are_503_and_the_page_says_so(
    tmp_path: Path,
) -> None:
    service = make_service(tmp_path)
    hall(service)
    await service.store.open()
    try:
        async with console(service, extra_routes=ROUTES) as client:
            r = await client.get(
                "/api/v1/telemetry/hall-1/env-1/series?metric=x", headers=auth(Role.ADMIN)
            )
            assert r.status == 503 and "no telemetry" in (await r.json())["error"]
            r = await client.get("/api/v1/telemetry/hall-1/env-1/states", headers=auth(Role.ADMIN))
            assert r.status == 200  # the state timeline comes from the hub store, not telemetry
            page = await client.get("/technician/telemetry/hall-1/env-1", headers=auth(Role.ADMIN))
            assert page.status == 200
            assert 'data-testid="telemetry-no-store"' in await page.text()
    finally:
        await service.store.close()


# data -------------------------------------------------------------------------------------------


async def test_metric_names_and_a_bucketed_series_of_real_points(site: Site) -> None:
    client, _, _, now = site
    headers = auth(Role.TECHNICIAN)
    r = await client.get("/api/v1/telemetry/hall-1/env-1/metrics", headers=headers)
    assert (await r.json())["metrics"] == ["humidity_pct", "temperature_c"]

    r = await client.get(
        "/api/v1/telemetry/hall-1/env-1/series?metric=temperature_c&range=15m", headers=headers
    )
    body = await r.json()
    assert r.headers["Cache-Control"] == "no-store"
    assert body["metric"] == "temperature_c" and body["range"] == "15m"
    assert body["end_ms"] - body["start_ms"] == 15 * MINUTE and body["end_ms"] >= now
    points = body["points"]
    # 600 samples at 1 s in 1.8 s buckets: fewer points than samples, all of them covered
    assert 300 <= len(points) <= MAX_POINTS
    assert [p["ts"] for p in points] == sorted(p["ts"] for p in points)
    assert all(body["start_ms"] <= p["ts"] < body["end_ms"] for p in points)
    assert all(20 <= p["min"] <= p["avg"] <= p["max"] <= 25 for p in points)
    assert any(p["min"] < p["max"] for p in points)  # buckets really aggregate
    assert max(p["max"] for p in points) == 25 and min(p["min"] for p in points) == 20

    # the 99 °C sample two hours ago is outside 15 min, inside 6 h
    r = await client.get(
        "/api/v1/telemetry/hall-1/env-1/series?metric=temperature_c&range=6h", headers=headers
    )
    six = (await r.json())["points"]
    assert len(six) <= MAX_POINTS and max(p["max"] for p in six) == 99.0
    r = await client.get(
        "/api/v1/telemetry/hall-1/env-1/series?metric=temperature_c", headers=headers
    )
    assert (await r.json())["range"] == "15m"  # the default


async def test_a_venue_has_one_series_per_device_that_stored_the_metric(site: Site) -> None:
    client = site[0]
    headers = auth(Role.ADMIN)
    r = await client.get("/api/v1/telemetry/venue/hall/metrics", headers=headers)
    assert (await r.json())["metrics"] == ["humidity_pct", "load_pct", "temperature_c"]
    r = await client.get("/api/v1/telemetry/venue/hall/series?metric=load_pct", headers=headers)
    series = (await r.json())["series"]
    assert [(s["agent"], s["device"]) for s in series] == [("hall-1", "ups-1")]
    assert [p["avg"] for p in series[0]["points"]] == [31.0]
    r = await client.get("/api/v1/telemetry/venue/court-1/series?metric=fps", headers=headers)
    assert r.status == 200 and (await r.json())["series"] == []


async def test_the_state_timeline_shows_an_offline_span_from_the_hub_store(site: Site) -> None:
    client, service, _, now = site
    t0 = now - 12 * MINUTE
    log = [
        StateLogEntry("hall-1", "env-1", now - 3 * 86_400_000, HealthState.ONLINE, ""),
        StateLogEntry("hall-1", "env-1", t0, HealthState.OFFLINE, "agent offline"),
        StateLogEntry("hall-1", "env-1", t0 + 2 * MINUTE, HealthState.STALE, "no message in 3 s"),
        StateLogEntry("hall-1", "env-1", t0 + 3 * MINUTE, HealthState.ONLINE, ""),
    ]
    await service.store.write(FlushBatch(DirtyRows([], [], [], log)))
    r = await client.get(
        "/api/v1/telemetry/hall-1/env-1/states?range=15m", headers=auth(Role.ADMIN)
    )
    body = await r.json()
    spans = [(s["state"], s["start_ms"] - body["start_ms"]) for s in body["segments"]]
    start = body["start_ms"]
    assert [s for s, _ in spans] == ["online", "offline", "stale", "online"]
    assert spans[0][1] == 0 and body["segments"][-1]["end_ms"] == body["end_ms"]
    offline = body["segments"][1]
    assert (offline["start_ms"], offline["end_ms"]) == (t0, t0 + 2 * MINUTE)
    assert offline["reason"] == "agent offline"
    assert all(a["end_ms"] == b["start_ms"] for a, b in itertools.pairwise(body["segments"]))
    assert start < t0 and body["truncated"] is False


def entry(ts: int, state: HealthState, reason: str = "") -> StateLogEntry:
    return StateLogEntry("a", "d", ts, state, reason)


def test_state_segments_edge_cases() -> None:
    online, offline = HealthState.ONLINE, HealthState.OFFLINE
    # nothing before the range: the part before the first transition is unknown
    assert state_segments([entry(150, offline)], start_ms=100, end_ms=200) == [
        StateSegment(UNKNOWN, "", 100, 150),
        StateSegment("offline", "", 150, 200),
    ]
    # no transitions at all: the registry's current state from when it began
    current = DeviceRecord("a", "d", "kiosk", state=HealthState.FAULT, state_since_ms=120)
    assert state_segments([], start_ms=100, end_ms=200, current=current) == [
        StateSegment(UNKNOWN, "", 100, 120),
        StateSegment("fault", "", 120, 200),
    ]
    current.state_since_ms = 10
    assert state_segments([], start_ms=100, end_ms=200, current=current) == [
        StateSegment("fault", "", 100, 200)
    ]
    # same state again (a new reason) merges; the first reason stays
    merged = state_segments(
        [entry(50, offline, "agent offline"), entry(150, offline, "reported offline")],
        start_ms=100,
        end_ms=200,
    )
    assert merged == [StateSegment("offline", "agent offline", 100, 200)]
    # transitions after the end are ignored; an empty range has no segments
    assert state_segments([entry(50, online), entry(250, offline)], start_ms=100, end_ms=200) == [
        StateSegment("online", "", 100, 200)
    ]
    assert state_segments([entry(50, online)], start_ms=200, end_ms=200) == []


# pages ------------------------------------------------------------------------------------------


def page_config(html: str) -> dict[str, object]:
    match = re.search(r'<script type="application/json" id="telemetry-config">(.*?)</script>', html)
    assert match, "no telemetry config in the page"
    data: dict[str, object] = json.loads(match.group(1))
    return data


async def test_the_device_page_has_a_chart_per_metric_and_the_vendored_library(
    site: Site,
) -> None:
    client = site[0]
    r = await client.get(
        "/technician/telemetry/hall-1/env-1", headers=auth(Role.TECHNICIAN, **BROWSER)
    )
    assert r.status == 200
    html = await r.text()
    assert re.findall(r'<canvas data-testid="chart" data-metric="([\w.]+)"', html) == [
        "humidity_pct",
        "temperature_c",
    ]
    config = page_config(html)
    assert config["base"] == "/api/v1/telemetry/hall-1/env-1"
    assert config["ranges"] == ["15m", "6h", "7d"] and config["store"] is True
    assert f'<script src="{CHART_JS_URL}"></script>' in html
    assert 'data-testid="range-15m"' in html and 'aria-pressed="true"' in html
    assert "设备遥测" in html and "在线状态" in html  # Chinese by default
    english = await client.get(
        "/technician/telemetry/hall-1/env-1", headers=auth(Role.TECHNICIAN, "en", **BROWSER)
    )
    assert "Online state" in await english.text()

    lib = await client.get(CHART_JS_URL, headers=auth(Role.TECHNICIAN))
    assert lib.status == 200 and lib.headers["Content-Type"].startswith("text/javascript")
    assert lib.headers["X-Content-Type-Options"] == "nosniff"
    assert "Chart.js v3.9.1" in (await lib.text())[:200]
    assert (pages_telemetry.CHART_JS.parent / "LICENSE").read_text().count("MIT") >= 1


async def test_the_venue_page_lists_its_devices_and_the_union_of_metrics(site: Site) -> None:
    client = site[0]
    r = await client.get("/technician/venue/hall", headers=auth(Role.ADMIN, **BROWSER))
    assert r.status == 200
    html = await r.text()
    config = page_config(html)
    assert config["mode"] == "venue" and config["venue"] == "hall"
    assert config["metrics"] == ["humidity_pct", "load_pct", "temperature_c"]
    assert [d["device"] for d in config["devices"]] == ["env-1", "ups-1"]  # type: ignore[attr-defined]
    assert html.count('data-testid="state-row"') == 2
    assert '<h1 data-testid="telemetry-heading">诉讼服务中心</h1>' in html


async def test_the_technician_page_links_each_device_to_its_charts(site: Site) -> None:
    client = site[0]
    r = await client.get("/technician", headers=auth(Role.TECHNICIAN, **BROWSER))
    html = await r.text()
    for device in ("hall-1/env-1", "hall-1/ups-1", "court-1/cam-1"):
        assert f'href="/technician/telemetry/{device}" data-testid="device-charts"' in html
