"""The web console in headless Chromium, as its users see it: sign in, watch a court's devices go
offline the moment its agent dies, run a device command, switch the language, the admin pages —
with nothing fetched from outside the hub and no script error on the way. The tests save a
screenshot of each page (see ``conftest.py``; ``make screenshots`` writes them to docs/)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from browser_harness import (
    ADMIN,
    EN,
    LIVE_TIMEOUT_MS,
    POLYGLOT,
    SENSOR_CARDS,
    START_TIMEOUT_MS,
    TECH,
    ZH,
    Console,
)
from playwright.async_api import Locator, Page, Route, expect

from device_drivers.http_sensor import HttpSensorOptions
from simulators.court import SimulatedCourt, sensor_server_id

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: how long the sensor driver waits for an answer (the simulated court keeps the default)
SENSOR_TIMEOUT_S = HttpSensorOptions(url="http://sensor/").timeout_s


def card(page: Page, key: str) -> Locator:
    """The device card of ``agent/device``."""
    return page.locator(f'[data-testid="device-card"][data-device="{key}"]')


def agent_cards(page: Page, agent: str) -> Locator:
    """Every device card of ``agent``."""
    return page.locator(f'[data-testid="device-card"][data-agent="{agent}"]')


async def expect_state(page: Page, key: str, state: str, timeout: float = LIVE_TIMEOUT_MS) -> None:
    """The card of ``key`` shows ``state``: attribute, colour class and the word a person reads."""
    found = card(page, key)
    await expect(found).to_have_attribute("data-state", state, timeout=timeout)
    await expect(found).to_have_class(re.compile(rf"(^|\s)state-{state}(\s|$)"))
    await expect(found.get_by_test_id("device-state")).to_have_text(ZH[f"state.{state}"])


async def clipped(page: Page, selector: str) -> list[str]:
    """Texts of elements matching ``selector`` that are cut off (ellipsis or overflow)."""
    texts: list[str] = await page.eval_on_selector_all(
        selector,
        "els => els.filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)",
    )
    return texts


async def all_sensors_online(console: Console) -> None:
    """The technician page shows every sensor of the court online (agents freshly started)."""
    await console.wait_live()
    for key in SENSOR_CARDS:
        await expect_state(console.page, key, "online", timeout=START_TIMEOUT_MS)


@contextlib.asynccontextmanager
async def agent_killed(court: SimulatedCourt, agent: str) -> AsyncIterator[None]:
    """``kill -9`` of ``agent``'s process, kept dead until the block ends (the court stops it)."""
    process = court.agents[agent]
    assert process.running, f"{agent} should be running before the kill"
    kills = process.kills
    task = asyncio.create_task(process.kill(down_s=60))
    try:
        while process.kills == kills and not task.done():
            await asyncio.sleep(0.01)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def label(command: str) -> str:
    """A command's button label in Chinese."""
    return ZH.get(f"cap.{command}", command)


# 1. sign in --------------------------------------------------------------------------------------


async def test_a_stranger_is_sent_to_sign_in_and_the_technician_lands_on_their_home(
    console: Console,
) -> None:
    page = console.page
    await console.open("/")
    await expect(page).to_have_url(re.compile(r"/login(\?|$)"))
    await expect(page.locator("h1")).to_have_text(ZH["login.title"])
    await expect(page.get_by_test_id("nav")).to_have_count(0)
    await console.screenshot("login")

    console.expect_http_error(401, "/api/v1/session")  # Chromium logs the refused sign-in
    await page.get_by_test_id("login-username").fill(TECH.username)
    await page.get_by_test_id("login-password").fill("not-the-password")
    await page.get_by_test_id("login-submit").click()
    error = page.get_by_test_id("login-error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text(ZH["js.login.failed"])
    await expect(page).to_have_url(re.compile(r"/login(\?|$)"))
    await expect(page.get_by_test_id("login-password")).to_have_value("")

    await page.get_by_test_id("login-password").fill(TECH.password)
    await page.get_by_test_id("login-submit").click()
    await page.wait_for_url(console.url("/"))
    await expect(page.locator("h1")).to_have_text(ZH["home.welcome"].format(name=TECH.display_name))
    await expect(page.get_by_test_id("user-name")).to_have_text(TECH.display_name)
    # a technician's pages: the device page, the hall board and the video wall, as tiles and
    # in the top bar
    tiles = page.get_by_test_id("tiles").locator("a.tile")
    await expect(tiles).to_have_count(3)
    await expect(page.get_by_test_id("tile-wall")).to_contain_text(ZH["nav.wall"])
    await expect(page.get_by_test_id("tile-board")).to_contain_text(ZH["nav.board"])
    await expect(page.get_by_test_id("tile-technician")).to_contain_text(ZH["nav.technician"])
    await expect(page.get_by_test_id("nav-technician")).to_be_visible()
    await expect(page.get_by_test_id("nav-admin-users")).to_have_count(0)

    # the user menu leads to the password page
    await page.get_by_test_id("user-menu").locator("summary").click()
    await expect(page.get_by_test_id("user-roles")).to_have_text(ZH["role.technician"])
    await page.get_by_test_id("menu-password").click()
    await page.wait_for_url(console.url("/account/password"))
    await expect(page.locator("h1")).to_have_text(ZH["password.title"])
    await page.get_by_test_id("password-old").fill(TECH.password)
    await page.get_by_test_id("password-new").fill("new-Passw0rd-1")
    await page.get_by_test_id("password-confirm").fill("new-Passw0rd-2")
    await page.get_by_test_id("password-submit").click()
    await expect(page.get_by_test_id("password-error")).to_have_text(ZH["js.password.mismatch"])
    await console.screenshot("account-password")

    # an admin page is refused with a page a person understands, not a JSON error
    console.expect_http_error(403, "/admin/users")
    await console.open("/admin/users")
    await expect(page.get_by_test_id("forbidden")).to_contain_text(ZH["error.403.title"])


# 2. a device goes offline live -------------------------------------------------------------------


async def test_killing_an_agent_turns_its_device_cards_offline_without_a_reload(
    console: Console, court: SimulatedCourt
) -> None:
    page = console.page
    ups = sensor_server_id("hall-1", "ups-1")
    court.sensors.set_reading(ups, "input_voltage_v", 219.637)  # a long name with a long value
    await console.sign_in(TECH, "/technician")
    await expect(page.locator("h1")).to_have_text(ZH["tech.title"])
    await all_sensors_online(console)
    # venues that appear live are appended in birth order; a page load orders them hall first
    await page.reload()
    await expect(page.get_by_test_id("venue-name")).to_have_text(["诉讼服务中心", "第一科技法庭"])
    await all_sensors_online(console)
    chip = page.locator('[data-testid="agent"][data-agent="court-1"]')
    await expect(chip).to_have_attribute("data-online", "true", timeout=LIVE_TIMEOUT_MS)
    # live telemetry: the env sensor's card shows readings
    await expect(card(page, "court-1/env-1").get_by_test_id("device-metrics")).to_contain_text(
        "temperature_c", timeout=LIVE_TIMEOUT_MS
    )
    await expect(card(page, "hall-1/ups-1").get_by_test_id("device-metrics")).to_contain_text(
        "219.637"
    )
    assert await clipped(page, ".metrics dd") == [], "a metric's value is cut off"
    await console.screenshot("technician")
    await page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    court_1 = await agent_cards(page, "court-1").count()
    assert court_1 >= 2

    loop = asyncio.get_running_loop()
    async with agent_killed(court, "court-1"):
        killed_at = loop.time()
        await expect_state(page, "court-1/env-1", "offline")
        took = loop.time() - killed_at
        for key in (k for k in SENSOR_CARDS if k.startswith("court-1/")):
            await expect_state(page, key, "offline")
        # every card of the dead agent, whatever it runs, and the agent's own chip
        offline = agent_cards(page, "court-1").and_(page.locator('[data-state="offline"]'))
        await expect(offline).to_have_count(court_1)
        await expect(chip).to_have_attribute("data-online", "false")
        await expect(chip).to_contain_text(ZH["agent.offline"])
        await expect(page.get_by_test_id("summary-offline").locator(".summary-count")).to_have_text(
            str(court_1)
        )
        # the other venue's agent is alive: its devices stay online
        for key in (k for k in SENSOR_CARDS if k.startswith("hall-1/")):
            await expect_state(page, key, "online")
        assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"
        await expect(page.get_by_test_id("live-banner")).to_be_hidden()
        # "problems only" leaves the dead venue's cards, each with its reason
        await page.get_by_test_id("problems-only").check()
        for key in SENSOR_CARDS:
            shown = expect(card(page, key))
            await (shown.to_be_visible() if key.startswith("court-1/") else shown.to_be_hidden())
        await expect(card(page, "court-1/env-1").get_by_test_id("device-reason")).to_be_visible()
        await console.screenshot("technician-offline")
    assert took < LIVE_TIMEOUT_MS / 1000, f"offline shown after {took:.1f} s"


# 3. run a command --------------------------------------------------------------------------------


async def test_a_command_from_a_device_card_shows_its_outcome_on_the_card(
    console: Console, court: SimulatedCourt
) -> None:
    page = console.page
    await console.sign_in(TECH, "/technician")
    await all_sensors_online(console)
    env = card(page, "court-1/env-1")
    result = env.get_by_test_id("command-result")
    poll = env.locator('button[data-command="poll_now"]')
    await expect(result).to_be_hidden()
    await expect(poll).to_have_text(label("poll_now"))

    await poll.click()
    await expect(result).to_have_attribute("data-outcome", "ok", timeout=LIVE_TIMEOUT_MS)
    await expect(result).to_contain_text(ZH["cmd.ok"].format(name=label("poll_now")))
    await expect(result).to_contain_text("temperature_c")
    await expect(poll).to_be_enabled()

    # a sensor that answers late: past a short deadline the card says so. The page always asks
    # for the API's default deadline (5 s), so the test shortens it on the way to the hub.
    sensor = sensor_server_id("court-1", "env-1")
    court.sensors.slow(sensor, 0.6 * SENSOR_TIMEOUT_S)  # the device stays online

    async def short_deadline(route: Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        await route.continue_(post_data=json.dumps({**body, "timeout_s": 0.4}))

    commands = console.url("/api/v1/devices/court-1/env-1/commands")
    await page.route(commands, short_deadline)
    console.expect_http_error(504, "/api/v1/devices/court-1/env-1/commands")
    await poll.click()
    await expect(result).to_have_attribute("data-outcome", "deadline", timeout=LIVE_TIMEOUT_MS)
    await expect(result).to_have_text(ZH["cmd.deadline"].format(name=label("poll_now")))
    await page.unroute(commands, short_deadline)
    await expect(poll).to_be_enabled()

    # a sensor that stops answering in time: the command fails, saying why, and the card turns
    # offline with the reason
    court.sensors.slow(sensor, 3 * SENSOR_TIMEOUT_S)
    # 409 "device is offline" when a regular poll failed first; either way the command fails
    console.expect_http_error(409, "/api/v1/devices/court-1/env-1/commands")
    await poll.click()
    await expect(result).to_have_attribute("data-outcome", "error", timeout=LIVE_TIMEOUT_MS)
    failed = ZH["cmd.failed"].format(name=label("poll_now"), error="")
    await expect(result).to_contain_text(failed)
    waited = f"{SENSOR_TIMEOUT_S:g} s"  # "no answer within 2 s"
    await expect(result).to_contain_text(waited)
    await expect_state(page, "court-1/env-1", "offline")
    # the reason in the page's language; the hub refuses commands now, so the buttons are off
    reason = env.get_by_test_id("device-reason")
    await expect(reason).to_have_text(ZH["reason.no_answer"].format(n=f"{SENSOR_TIMEOUT_S:g}"))
    await expect(reason).to_have_attribute("title", f"no answer within {waited}")
    await expect(poll).to_be_disabled()
    await expect(poll).to_have_attribute("title", ZH["cmd.offline"])
    await expect_state(page, "court-1/door-1", "online")


# 4. switch language ------------------------------------------------------------------------------


async def test_the_language_switch_changes_the_texts_and_is_remembered_for_the_user(
    console: Console,
) -> None:
    page = console.page
    await console.sign_in(POLYGLOT)
    html = page.locator("html")
    await expect(html).to_have_attribute("lang", "zh-CN")
    await expect(page.locator("h1")).to_have_text(
        ZH["home.welcome"].format(name=POLYGLOT.display_name)
    )
    await expect(page.get_by_test_id("nav-technician")).to_have_text(ZH["nav.technician"])
    await expect(page.get_by_test_id("lang-zh-CN")).to_have_attribute("aria-pressed", "true")

    await page.get_by_test_id("lang-en").click()
    await expect(html).to_have_attribute("lang", "en")
    await expect(page.locator("h1")).to_have_text(
        EN["home.welcome"].format(name=POLYGLOT.display_name)
    )
    await expect(page.get_by_test_id("nav-technician")).to_have_text(EN["nav.technician"])
    await expect(page.get_by_test_id("lang-en")).to_have_attribute("aria-pressed", "true")

    # the next page load, and the scripts' texts too
    await console.open("/technician")
    await expect(page.locator("h1")).to_have_text(EN["tech.title"])
    await console.wait_live()
    await expect(page.get_by_test_id("live-status")).to_contain_text(EN["live.up"])

    # stored for the user, not for this browser: a new browser signs in to English
    async with console.another_browser() as fresh:
        await fresh.goto(console.url("/login"))
        await expect(fresh.locator("html")).to_have_attribute("lang", "zh-CN")
        await fresh.get_by_test_id("login-username").fill(POLYGLOT.username)
        await fresh.get_by_test_id("login-password").fill(POLYGLOT.password)
        await fresh.get_by_test_id("login-submit").click()
        await fresh.wait_for_url(console.url("/"))
        await expect(fresh.locator("html")).to_have_attribute("lang", "en")
        await expect(fresh.get_by_test_id("nav-technician")).to_have_text(EN["nav.technician"])

    # and back
    await page.get_by_test_id("lang-zh-CN").click()
    await expect(html).to_have_attribute("lang", "zh-CN")
    await expect(page.locator("h1")).to_have_text(ZH["tech.title"])


# 5. admin pages ----------------------------------------------------------------------------------


async def test_the_admin_sees_the_users_and_a_verified_audit_trail_of_sign_ins(
    console: Console,
) -> None:
    page = console.page
    await console.sign_in(ADMIN)
    for tile in ("technician", "admin-users", "admin-audit"):
        await expect(page.get_by_test_id(f"tile-{tile}")).to_be_visible()
    await console.screenshot("home")

    await page.get_by_test_id("nav-admin-users").click()
    await page.wait_for_url(console.url("/admin/users"))
    await expect(page.locator("h1")).to_have_text(ZH["users.title"])
    rows = page.locator('[data-testid="users-table"] tr[data-testid="user-row"]')
    for login in (TECH, ADMIN, POLYGLOT):
        row = rows.and_(page.locator(f'[data-user="{login.username}"]'))
        await expect(row).to_contain_text(login.display_name)
        await expect(row).to_contain_text(ZH[f"role.{login.roles[0]}"])
    # languages by name, not code
    tech_row = rows.and_(page.locator(f'[data-user="{TECH.username}"]'))
    await expect(tech_row.locator('td[title="zh-CN"]')).to_have_text("中文")
    # the first admin, created at start, still has to change its one-time password
    first = rows.and_(page.locator('[data-user="admin"]'))
    await expect(first).to_contain_text(ZH["js.users.must_change"])
    await console.screenshot("admin-users")

    await page.get_by_test_id("nav-admin-audit").click()
    await page.wait_for_url(console.url("/admin/audit"))
    await expect(page.locator("h1")).to_have_text(ZH["audit.title"])
    # actions show as words; the code stays in the cell's title
    action = page.locator('td[data-action="login"]')
    logins = page.locator('[data-testid="audit-row"]').filter(has=action)
    await expect(logins.filter(has_text=ADMIN.username).first).to_be_visible()
    await expect(action.first).to_have_text(ZH["action.login"])
    await expect(action.first).to_have_attribute("title", "login")
    await page.get_by_test_id("audit-verify").click()
    verdict = page.get_by_test_id("audit-verify-result")
    await expect(verdict).to_have_attribute("data-outcome", "ok", timeout=LIVE_TIMEOUT_MS)
    await expect(verdict).to_contain_text(ZH["js.audit.verify_ok"].split("{")[0])
    await expect(verdict).to_have_class(re.compile(r"\bok\b"))
    await console.screenshot("admin-audit")
    # the filter narrows the list to one actor's sign-ins
    await page.get_by_test_id("audit-actor").fill(ADMIN.username)
    await page.get_by_test_id("audit-action").fill("login")
    await page.get_by_test_id("audit-search").click()
    await expect(page).to_have_url(re.compile(r"actor=chief"))
    await expect(page.locator('[data-testid="audit-row"]').first).to_contain_text(ADMIN.username)
    actors = await page.locator('[data-testid="audit-row"] td:nth-child(3)').all_text_contents()
    assert actors and set(actors) == {ADMIN.username}, actors


# 6. nothing from outside the hub -----------------------------------------------------------------


async def test_every_page_loads_everything_from_the_hub_itself(console: Console) -> None:
    """A court intranet is closed: pages, styles, scripts, API calls and the live socket all go to
    the hub's own origin (every test checks this on teardown; this one visits every page)."""
    page = console.page
    response = await page.goto(console.url("/login"))
    assert response is not None
    assert "default-src 'self'" in (await response.header_value("content-security-policy") or "")
    await console.sign_in(ADMIN)
    for path in ("/technician", "/account/password", "/admin/users", "/admin/audit"):
        await console.open(path)
        await expect(page.get_by_test_id("nav")).to_be_visible()
        if path == "/technician":
            await console.wait_live()
        if path == "/admin/users":
            await expect(page.locator('tr[data-testid="user-row"]').first).to_be_visible()
        if path == "/admin/audit":
            await expect(page.locator('tr[data-testid="audit-row"]').first).to_be_visible()
    traffic = console.traffic
    assert traffic.foreign() == [], traffic.foreign()
    paths = traffic.paths()
    expected = {
        "/login",
        "/",
        "/technician",
        "/account/password",
        "/admin/users",
        "/admin/audit",
        "/static/console.css",
        "/static/console.js",
        "/static/login.js",
        "/static/technician.js",
        "/static/users.js",
        "/static/audit.js",
        "/api/v1/session",
        "/api/v1/users",
        "/api/v1/audit",
        "/ws",
    }
    assert expected <= paths, sorted(expected - paths)
    assert {urlsplit(u).scheme for u in traffic.sockets} == {"ws"}
