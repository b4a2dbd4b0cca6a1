"""The technician's telemetry charts in headless Chromium, on a console built here with the
telemetry pages, a hub service whose state log is the real SQLite store, a real alert board and a
the hub's real embedded telemetry store (:class:`hub.embedded_tsdb.EmbeddedStore`) holding the
points:

a technician opens ``/technician/telemetry/hall-1/env-1`` and sees each metric drawn by the
vendored Chart.js (data points in the chart), the state timeline with the device's offline
stretch (grey, with its court-time start and end), and the alert that names the device (not the
other one); switching to 6 h redraws the charts over 6 h (the 2-hour-old sample appears); on the
15 min range a sample written after the page opened shows up without a reload. The venue page has
one line per device. Nothing is requested from anywhere but the hub. Screenshot
``technician-telemetry.png`` (1280×800) like the other browser tests.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from aiohttp import web
from argon2 import PasswordHasher
from browser_harness import MIN_SCREENSHOT_BYTES, VIEWPORT, ZH, Login, Traffic, open_context
from playwright.async_api import Browser, Page, expect

from dashboards import alerts_api, pages_telemetry, recordings_api, sessions, telemetry_api
from dashboards.app import ConsoleOptions, create_console_app
from dashboards.pages import PASSWORD_CHANGE_PAGES
from dashboards.pages_telemetry import install_telemetry_pages
from dashboards.recordings_api import RECORDINGS_KEY, RecordingsContext
from dashboards.sessions import (
    ACCOUNTS_KEY,
    AUDIT_KEY,
    ApiTokenAuthenticator,
    SessionAuthenticator,
    csrf_middleware,
)
from hub.accounts import AccountStore
from hub.alerts import AlertBoard, Severity
from hub.audit import AuditLog
from hub.config import hub_config_from_dict
from hub.embedded_tsdb import EmbeddedStore
from hub.hearings import HearingService
from hub.recording_index import DB_FILE, RecordingIndex
from hub.registry import DirtyRows, HealthState, StateLogEntry
from hub.service import HubService
from hub.store import FlushBatch
from hub.telemetry_config import EmbeddedSection
from hub.telemetry_points import Point
from protocol.messages import Birth, DeviceInfo, Venue, VenueKind, now_ms

pytestmark = pytest.mark.asyncio(loop_scope="module")

TECH: Final = Login("zhao", "zhao-Passw0rd-1", ("technician",), "运维工程师赵")
COURT_NAME: Final = "示范人民法院"
ZONE: Final = ZoneInfo("Asia/Shanghai")
MINUTE: Final = 60_000
DEVICE_PAGE: Final = "/technician/telemetry/hall-1/env-1"
#: the device's offline stretch: from 9 to 6 minutes ago
OFFLINE_FROM_MIN: Final = 9
OFFLINE_TO_MIN: Final = 6


def sample(agent: str, device: str, ts: int, **fields: float) -> Point:
    return Point.make("device", {"agent": agent, "device": device, "venue": "hall"}, fields, ts)


@dataclass
class Site:
    url: str
    points: EmbeddedStore
    #: when the data was made (UTC ms)
    now: int


@pytest.fixture(autouse=True)
def quick_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 15 min range redraws every second here (10 s in the hub) so the file stays quick."""
    monkeypatch.setitem(pages_telemetry.REFRESH_BY_RANGE, "15m", 1000)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    work = tmp_path_factory.mktemp("telemetry")
    data_dir = work / "hub"
    accounts = await AccountStore.open(
        work, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    audit = await AuditLog.open(work)
    index = await RecordingIndex.open(data_dir / DB_FILE, data_dir / "recordings")
    hearings = await HearingService.open(data_dir, index, audit)
    alerts = await AlertBoard.open(data_dir)
    await accounts.create_user(
        TECH.username,
        TECH.password,
        TECH.roles,
        display_name=TECH.display_name,
        language="zh-CN",
        must_change_password=False,
    )
    config = hub_config_from_dict({"hub": {"data_dir": str(data_dir)}})
    service = HubService(config, "mqtt://127.0.0.1:1", "hub", "x")
    await service.store.open()
    now = now_ms()
    service.health.on_birth(
        "hall-1",
        Birth(
            ts=now,
            bdseq=1,
            seq=0,
            venue=Venue(id="hall", kind=VenueKind.LITIGATION_HALL, name="诉讼服务中心"),
            devices=[
                DeviceInfo(id="env-1", kind="env_sensor", model="TH-20"),
                DeviceInfo(id="ups-1", kind="ups", model="UPS-3K"),
            ],
            agent_version="0.1.0",
        ),
        retained=False,
    )
    off, back = now - OFFLINE_FROM_MIN * MINUTE, now - OFFLINE_TO_MIN * MINUTE
    await service.store.write(
        FlushBatch(
            DirtyRows(
                [],
                [],
                [],
                [
                    StateLogEntry("hall-1", "env-1", now - 86_400_000, HealthState.ONLINE, ""),
                    StateLogEntry("hall-1", "env-1", off, HealthState.OFFLINE, "agent offline"),
                    StateLogEntry("hall-1", "env-1", back, HealthState.ONLINE, ""),
                ],
            )
        )
    )
    points = await EmbeddedStore.open(EmbeddedSection(), data_dir / "telemetry")
    # every 2 s over the last 14 minutes, except while offline
    samples = [
        sample(
            "hall-1",
            "env-1",
            ts,
            temperature_c=21.5 + 1.5 * ((ts // 20_000) % 4) + (ts % 3) * 0.2,
            humidity_pct=45 + (ts // 60_000) % 5,
        )
        for ts in range(now - 14 * MINUTE, now, 2000)
        if not off <= ts < back
    ]
    samples.append(sample("hall-1", "env-1", now - 2 * 3_600_000, temperature_c=35.0))
    points.write(samples)
    points.write(
        [
            sample("hall-1", "ups-1", ts, temperature_c=30 + (ts // 30_000) % 3, load_pct=42)
            for ts in range(now - 14 * MINUTE, now, 5000)
        ]
    )
    await points.flush()
    await alerts.raise_alert(
        "device-offline:hall-1/env-1",
        "环境传感器 env-1 离线 / env-1 offline",
        source="hall-1/env-1",
        severity=Severity.CRITICAL,
    )
    await alerts.raise_alert(
        "camera-lost:court-1-cam-1", "court-1-cam-1 lost", source="court-1-cam-1"
    )

    def setup(app: web.Application) -> None:
        app[ACCOUNTS_KEY] = accounts
        app[AUDIT_KEY] = audit
        app[RECORDINGS_KEY] = RecordingsContext(index, hearings, None, alerts, data_dir / DB_FILE)
        alerts_api.install_alerts(app, alerts)
        install_telemetry_pages(app, points)

    app = create_console_app(
        service,
        [
            SessionAuthenticator(accounts, allowed_while_password_change=PASSWORD_CHANGE_PAGES),
            ApiTokenAuthenticator(accounts),
        ],
        options=ConsoleOptions(court_name=COURT_NAME),
        extra_routes=(
            *sessions.ROUTES,
            *recordings_api.ROUTES,
            *alerts_api.ROUTES,
            *telemetry_api.ROUTES,
            *pages_telemetry.ROUTES,
        ),
        extra_middlewares=[csrf_middleware],
        setup=setup,
    )
    runner = web.AppRunner(app)
    await runner.setup()
    server = web.TCPSite(runner, "127.0.0.1", 0)
    await server.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Site(f"http://{host}:{port}", points, now)
    finally:
        await points.stop()
        await asyncio.wait_for(runner.cleanup(), 30)
        await service.store.close()
        await alerts.close()
        await hearings.close()
        await index.close()
        await audit.close()
        await accounts.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(site: Site, browser: Browser) -> AsyncIterator[tuple[Page, Traffic]]:
    origin = urlsplit(site.url)
    traffic = Traffic((origin.scheme, origin.netloc))
    context = await open_context(browser, traffic)
    try:
        yield await context.new_page(), traffic
    finally:
        await context.close()
    problems = [f"request outside the hub: {u}" for u in traffic.foreign()]
    problems += traffic.unexpected_errors()
    assert not problems, problems


async def sign_in(page: Page, site: Site, then: str) -> None:
    await page.goto(site.url + f"/login?next={then}", wait_until="load")
    await page.get_by_test_id("login-username").fill(TECH.username)
    await page.get_by_test_id("login-password").fill(TECH.password)
    await page.get_by_test_id("login-submit").click()
    await page.wait_for_url(site.url + then)


def court_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=ZONE).strftime("%Y-%m-%d %H:%M:%S")


async def chart_points(page: Page, metric: str, dataset: int = 0) -> int:
    count: int = await page.evaluate(
        """([metric, i]) => {
            const chart = Chart.getChart(document.querySelector(`canvas[data-metric="${metric}"]`));
            return chart ? chart.data.datasets[i].data.filter((p) => p.y !== null).length : -1;
        }""",
        [metric, dataset],
    )
    return count


async def x_span_ms(page: Page, metric: str) -> float:
    span: float = await page.evaluate(
        """(metric) => {
            const chart = Chart.getChart(document.querySelector(`canvas[data-metric="${metric}"]`));
            return chart.scales.x.max - chart.scales.x.min;
        }""",
        metric,
    )
    return span


async def test_a_technician_sees_charts_states_and_alerts_of_a_device(
    site: Site, page: tuple[Page, Traffic], screenshot_dirs: list[Path]
) -> None:
    p, traffic = page
    await sign_in(p, site, DEVICE_PAGE)
    charts = p.get_by_test_id("telemetry-charts")
    await expect(charts).to_have_attribute("data-loaded", "15m")
    await expect(p.locator("h1")).to_have_text("env-1")
    assert await chart_points(p, "temperature_c") > 100
    assert await chart_points(p, "humidity_pct") > 100
    band = await chart_points(p, "temperature_c", 2)  # the max of the min-max band
    assert band > 100
    assert await x_span_ms(p, "temperature_c") == 15 * MINUTE
    # the offline stretch leaves a gap in the line (a null point), not a straight bridge
    gaps = await p.evaluate(
        """() => Chart.getChart(document.querySelector('canvas[data-metric="temperature_c"]'))
            .data.datasets[0].data.filter((p) => p.y === null).length"""
    )
    assert gaps == 1

    # the state timeline: online, then offline (grey) 9 to 6 minutes ago, online again
    spans = p.get_by_test_id("state-span")
    await expect(spans).to_have_count(3)
    states = [await spans.nth(i).get_attribute("data-state") for i in range(3)]
    assert states == ["online", "offline", "online"]
    offline = p.locator('[data-testid="state-span"][data-state="offline"]')
    off_ms = site.now - OFFLINE_FROM_MIN * MINUTE
    back_ms = site.now - OFFLINE_TO_MIN * MINUTE
    assert await offline.get_attribute("data-start-ms") == str(off_ms)
    assert await offline.get_attribute("data-end-ms") == str(back_ms)
    title = await offline.get_attribute("title") or ""
    assert ZH["state.offline"] in title and court_time(off_ms) in title
    assert court_time(back_ms) in title
    colour = await offline.evaluate("(el) => getComputedStyle(el).backgroundColor")
    assert colour == "rgb(138, 147, 158)"  # grey
    box = await offline.bounding_box()
    bar = await p.get_by_test_id("state-timeline").bounding_box()
    assert box is not None and bar is not None
    assert abs(box["width"] / bar["width"] - 3 / 15) < 0.02  # 3 of the 15 minutes
    await expect(p.get_by_test_id("state-list")).to_contain_text(court_time(off_ms))
    await expect(p.get_by_test_id("state-list")).to_contain_text(ZH["reason.agent_offline"])
    # axis ticks on whole court-time minutes
    ticks = await p.evaluate(
        """() => Chart.getChart(document.querySelector('canvas[data-metric="temperature_c"]'))
            .scales.x.ticks.map((t) => t.value)"""
    )
    assert len(ticks) >= 4 and all(t % (3 * MINUTE) == 0 for t in ticks)

    # the alert naming the device, not the camera's
    alerts = p.get_by_test_id("telemetry-alert")
    await expect(alerts).to_have_count(1)
    await expect(alerts).to_have_attribute("data-key", "device-offline:hall-1/env-1")
    await expect(alerts).to_contain_text(ZH["js.alerts.critical"])
    await expect(alerts).to_contain_text("env-1 离线")

    await screenshot(p, screenshot_dirs, "technician-telemetry")

    # 6 h: the charts span 6 hours and the 2-hour-old 35 °C sample is in
    await p.get_by_test_id("range-6h").click()
    await expect(charts).to_have_attribute("data-loaded", "6h")
    await expect(p.get_by_test_id("range-6h")).to_have_attribute("aria-pressed", "true")
    await expect(p.get_by_test_id("range-15m")).to_have_attribute("aria-pressed", "false")
    assert await x_span_ms(p, "temperature_c") == 6 * 60 * MINUTE
    top = await p.evaluate(
        """() => Math.max(...Chart.getChart(
            document.querySelector('canvas[data-metric="temperature_c"]'))
            .data.datasets[2].data.map((p) => p.y))"""
    )
    assert top == 35.0
    await p.get_by_test_id("range-7d").click()
    await expect(charts).to_have_attribute("data-loaded", "7d")
    assert await x_span_ms(p, "temperature_c") == 7 * 24 * 60 * MINUTE
    assert await chart_points(p, "temperature_c") > 0

    assert f"{urlsplit(site.url).netloc}" in traffic.requests[0]
    assert "/static/vendor/chart.js/chart.min.js" in {urlsplit(u).path for u in traffic.requests}


async def test_the_15_minute_range_redraws_by_itself(
    site: Site, page: tuple[Page, Traffic]
) -> None:
    p, _ = page
    await sign_in(p, site, DEVICE_PAGE)
    await expect(p.get_by_test_id("telemetry-charts")).to_have_attribute("data-loaded", "15m")
    site.points.write([sample("hall-1", "env-1", now_ms(), humidity_pct=77.0)])
    # the max of the band's last bucket (its average mixes in the sample before it)
    redrawn = """() => {
        const data = Chart.getChart(document.querySelector('canvas[data-metric="humidity_pct"]'))
            .data.datasets[2].data;
        return data.length > 0 && data[data.length - 1].y === 77;
    }"""
    await p.wait_for_function(redrawn, timeout=10_000)
    await expect(p.get_by_test_id("telemetry-charts")).to_have_attribute("data-loaded", "15m")


async def test_the_venue_page_draws_a_line_per_device(
    site: Site, page: tuple[Page, Traffic]
) -> None:
    p, _ = page
    await sign_in(p, site, "/technician/venue/hall")
    await expect(p.get_by_test_id("telemetry-charts")).to_have_attribute("data-loaded", "15m")
    labels = await p.evaluate(
        """() => Chart.getChart(document.querySelector('canvas[data-metric="temperature_c"]'))
            .data.datasets.map((d) => d.label + ":" + d.data.length)"""
    )
    assert [label.split(":")[0] for label in labels] == ["env-1", "ups-1"]
    assert all(int(label.split(":")[1]) > 0 for label in labels)
    await expect(p.get_by_test_id("state-row")).to_have_count(2)
    await expect(
        p.locator('[data-device="hall-1/env-1"] [data-testid="state-span"][data-state="offline"]')
    ).to_have_count(1)


async def screenshot(page: Page, shots: list[Path], name: str) -> Path:
    """``name.png`` of the 1280×800 viewport, saved like the console's other screenshots."""
    await page.evaluate("document.fonts.ready.then(() => true)")
    first = shots[0] / f"{name}.png"
    await page.screenshot(path=str(first), animations="disabled", caret="hide")
    data = first.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{first} is not a PNG"
    assert struct.unpack(">II", data[16:24]) == (VIEWPORT["width"], VIEWPORT["height"])
    assert len(data) >= MIN_SCREENSHOT_BYTES, f"{first} is only {len(data)} bytes"
    for folder in shots[1:]:
        shutil.copyfile(first, folder / first.name)
    return first
