"""The technician's alerts panel in headless Chromium, on a console built here with a real
:class:`hub.alerts.AlertBoard` under ``RECORDINGS_KEY`` (with a real recording index and hearing
service, as the hub wires them). A technician sees "无告警" first; alerts raised on the board show
up within one poll, newest first, coloured by severity, with their message, source, "since"
time in the court's zone and a ticking age; a cleared one leaves the active list for "已恢复".
When the API answers 503 the panel goes away and the device page keeps working. A counter clerk
gets the 403 page. Screenshot ``alerts.png`` (1280×800) like the other browser tests."""

from __future__ import annotations

import asyncio
import shutil
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from aiohttp import web
from argon2 import PasswordHasher
from browser_harness import (
    MIN_SCREENSHOT_BYTES,
    VIEWPORT,
    ZH,
    Login,
    Traffic,
    open_context,
)
from playwright.async_api import Browser, Locator, Page, Route, expect

from dashboards import alerts_api, pages_technician, recordings_api, sessions
from dashboards.alerts_api import install_alerts
from dashboards.app import ConsoleOptions, create_console_app
from dashboards.pages import PASSWORD_CHANGE_PAGES
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
from hub.hearings import HearingService
from hub.recording_index import DB_FILE, RecordingIndex
from hub.service import HubService

pytestmark = pytest.mark.asyncio(loop_scope="module")

TECH: Final = Login("li", "li-Passw0rd-1", ("technician",), "运维工程师李")
CLERK: Final = Login("qian", "qian-Passw0rd-1", ("counter",), "柜台书记员钱")
COURT_NAME: Final = "示范人民法院"
CAMERA_LOST: Final = "camera-lost:court-1-cam-1"
LOST_MESSAGE: Final = "摄像机 court-1-cam-1 信号中断 / camera court-1-cam-1 lost"
#: computed colours of the severity words (alerts.css)
RED: Final = "rgb(198, 40, 40)"
AMBER: Final = "rgb(154, 103, 0)"


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """The panel asks every second here (4 s in the hub) so that the file stays quick."""
    monkeypatch.setattr(pages_technician, "ALERTS_POLL_MS", 1000)


@dataclass
class Site:
    url: str
    alerts: AlertBoard


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    work = tmp_path_factory.mktemp("alerts")
    data_dir = work / "hub"
    accounts = await AccountStore.open(
        work, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    audit = await AuditLog.open(work)
    index = await RecordingIndex.open(data_dir / DB_FILE, data_dir / "recordings")
    hearings = await HearingService.open(data_dir, index, audit)
    alerts = await AlertBoard.open(data_dir)
    for login in (TECH, CLERK):
        await accounts.create_user(
            login.username,
            login.password,
            login.roles,
            display_name=login.display_name,
            language="zh-CN",
            must_change_password=False,
        )

    def setup(app: web.Application) -> None:
        app[ACCOUNTS_KEY] = accounts
        app[AUDIT_KEY] = audit
        app[RECORDINGS_KEY] = RecordingsContext(index, hearings, None, alerts, data_dir / DB_FILE)
        install_alerts(app, alerts)

    config = hub_config_from_dict({"hub": {"data_dir": str(data_dir)}})
    app = create_console_app(
        HubService(config, "mqtt://127.0.0.1:1", "hub", "x"),
        [
            SessionAuthenticator(accounts, allowed_while_password_change=PASSWORD_CHANGE_PAGES),
            ApiTokenAuthenticator(accounts),
        ],
        options=ConsoleOptions(court_name=COURT_NAME),
        extra_routes=(*sessions.ROUTES, *recordings_api.ROUTES, *alerts_api.ROUTES),
        extra_middlewares=[csrf_middleware],
        setup=setup,
    )
    runner = web.AppRunner(app)
    await runner.setup()
    server = web.TCPSite(runner, "127.0.0.1", 0)
    await server.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Site(f"http://{host}:{port}", alerts)
    finally:
        await asyncio.wait_for(runner.cleanup(), 30)
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


async def sign_in(page: Page, site: Site, login: Login, then: str) -> None:
    await page.goto(site.url + f"/login?next={then}", wait_until="load")
    await page.get_by_test_id("login-username").fill(login.username)
    await page.get_by_test_id("login-password").fill(login.password)
    await page.get_by_test_id("login-submit").click()
    await page.wait_for_url(site.url + then)


def alert_row(list_: Locator, key: str) -> Locator:
    return list_.locator(f'[data-testid="alert"][data-key="{key}"]')


async def test_a_technician_sees_alerts_come_and_go(
    site: Site, page: tuple[Page, Traffic], screenshot_dirs: list[Path]
) -> None:
    p, _ = page
    await sign_in(p, site, TECH, "/technician")
    panel = p.get_by_test_id("alerts-panel")
    active = panel.get_by_test_id("alerts-active")
    await expect(panel.locator("h2")).to_have_text(ZH["alerts.title"])
    await expect(panel.get_by_test_id("alerts-empty")).to_have_text(ZH["alerts.empty"])
    await expect(panel.get_by_test_id("alerts-count")).to_have_text("0")
    await expect(panel.get_by_test_id("alerts-cleared")).to_be_hidden()

    # one that came and went, a warning, then the camera is lost (newest): all in one poll
    board = site.alerts
    await board.raise_alert(
        "index-failed:court-1-cam-2",
        "court-1-cam-2 片段入库失败 / segment indexing failed",
        source="recorder",
    )
    await board.clear("index-failed:court-1-cam-2")
    await board.raise_alert(
        "disk-headroom", "录像磁盘剩余 8% / recording disk 8% free", source="recorder"
    )
    lost = await board.raise_alert(
        CAMERA_LOST, LOST_MESSAGE, source="recorder", severity=Severity.CRITICAL
    )
    await expect(panel.get_by_test_id("alerts-count")).to_have_text("2")
    rows = active.get_by_test_id("alert")
    await expect(rows).to_have_count(2)
    await expect(panel.get_by_test_id("alerts-empty")).to_be_hidden()
    first = rows.first
    await expect(first).to_have_attribute("data-key", CAMERA_LOST)  # newest first
    await expect(first).to_have_attribute("data-severity", "critical")
    await expect(first.get_by_test_id("alert-message")).to_have_text(LOST_MESSAGE)
    await expect(first.get_by_test_id("alert-source")).to_have_text("recorder")
    await expect(first.locator(".alert-sev")).to_have_text(ZH["js.alerts.critical"])
    await expect(first.locator(".alert-sev")).to_have_css("color", RED)
    await expect(first).to_have_css("border-left-color", RED)
    since = await p.evaluate("(ms) => window.Courthub.formatTime(ms)", lost.raised_ms)
    await expect(first.get_by_test_id("alert-since")).to_have_text(
        ZH["js.alerts.since"].format(time=since)
    )
    await expect(first.get_by_test_id("alert-age")).to_contain_text("秒前")
    warning = alert_row(active, "disk-headroom")
    await expect(warning.locator(".alert-sev")).to_have_css("color", AMBER)
    await expect(panel).to_have_attribute("data-worst", "critical")
    cleared = panel.get_by_test_id("alerts-cleared")
    await expect(cleared).to_be_visible()
    await expect(panel.get_by_test_id("alerts-cleared-count")).to_have_text("1")
    await cleared.locator("summary").click()
    await expect(alert_row(cleared, "index-failed:court-1-cam-2")).to_be_visible()

    await screenshot(p, screenshot_dirs, "alerts")

    # the camera is back: its alert leaves the active list for the cleared ones
    await board.clear(CAMERA_LOST)
    await expect(alert_row(active, CAMERA_LOST)).to_have_count(0)
    await expect(panel.get_by_test_id("alerts-count")).to_have_text("1")
    await expect(panel).to_have_attribute("data-worst", "warning")
    await expect(alert_row(cleared, CAMERA_LOST)).to_have_attribute("data-cleared", "true")
    await expect(panel.get_by_test_id("alerts-cleared-count")).to_have_text("2")
    await board.clear("disk-headroom")
    await expect(panel.get_by_test_id("alerts-empty")).to_be_visible()
    await expect(panel.get_by_test_id("alerts-count")).to_have_text("0")


async def test_without_the_recorder_the_panel_goes_away_quietly(
    site: Site, page: tuple[Page, Traffic]
) -> None:
    p, traffic = page
    traffic.expected_errors.append(("status of 503 ", "/api/v1/alerts"))
    answered: list[int] = []

    async def recorder_not_running(route: Route) -> None:
        answered.append(503)
        await route.fulfill(
            status=503, content_type="application/json", body='{"error": "recorder not running"}'
        )

    await p.route("**/api/v1/alerts", recorder_not_running)
    await sign_in(p, site, TECH, "/technician")
    await expect(p.get_by_test_id("alerts-panel")).to_be_hidden()
    assert answered, "the page polled the alerts"
    # the rest of the page still works
    await expect(p.get_by_test_id("no-devices")).to_be_visible()
    await p.get_by_test_id("problems-only").check()
    await expect(p.get_by_test_id("venues")).to_have_class("venues problems-only")


async def test_a_counter_clerk_may_not_open_the_technician_page(
    site: Site, page: tuple[Page, Traffic]
) -> None:
    p, traffic = page
    traffic.expected_errors.append(("status of 403 ", "/technician"))
    await sign_in(p, site, CLERK, "/")
    response = await p.goto(site.url + "/technician", wait_until="load")
    assert response is not None and response.status == 403
    await expect(p.locator("h1")).to_have_text(ZH["error.403.title"])
    await expect(p.get_by_test_id("alerts-panel")).to_have_count(0)


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
