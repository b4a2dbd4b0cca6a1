"""What the browser tests share: the court they run, their logins, the console's UI texts, and
:class:`Console` — one browser context on the hub that records every request, WebSocket,
JavaScript exception and console error, signs in and takes screenshots.

Screenshots (:meth:`Console.screenshot`) are PNGs of the 1280×800 viewport saved into a temporary
folder and, when ``COURTHUB_SCREENSHOTS`` names a folder (``make screenshots``), there too.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    ViewportSize,
    WebError,
    WebSocket,
    expect,
)

from hub.app import HubRuntime
from simulators.scenario import scenario_from_dict

CHROMIUM: Final = "/usr/bin/chromium"
CHROMIUM_ARGS: Final = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT: Final = ViewportSize(width=1280, height=800)
SCREENSHOTS_ENV: Final = "COURTHUB_SCREENSHOTS"
#: a page of text and tables at 1280×800 is tens of kB; a blank or broken one a few
MIN_SCREENSHOT_BYTES: Final = 20_000
#: live updates and commands on a loaded 2-core CI machine
LIVE_TIMEOUT_MS: Final = 10_000
#: the first birth of freshly started agent processes
START_TIMEOUT_MS: Final = 30_000
COURT_NAME: Final = "示范人民法院"

CATALOGS: Final = Path(__file__).resolve().parents[2] / "dashboards" / "i18n"
#: the console's UI texts: tests look for what the catalogs say, in the user's language
ZH: Final[dict[str, str]] = json.loads((CATALOGS / "zh-CN.json").read_text(encoding="utf-8"))
EN: Final[dict[str, str]] = json.loads((CATALOGS / "en.json").read_text(encoding="utf-8"))

#: one venue whose agent the tests kill, and one that must not notice
SCENARIO: Final = scenario_from_dict(
    {
        "court": {"name": COURT_NAME, "seed": 7},
        "venues": [
            {
                "agent": "hall-1",
                "kind": "litigation_hall",
                "name": "诉讼服务中心",
                "sensors": ["env", "ups"],
                "sensor_interval_s": 0.5,
            },
            {
                "agent": "court-1",
                "kind": "tech_courtroom",
                "name": "第一科技法庭",
                "sensors": ["env", "door"],
                "sensor_interval_s": 0.5,
            },
        ],
    }
)
#: ``agent/device`` of every sensor card the court shows
SENSOR_CARDS: Final = tuple(
    f"{venue.agent}/{device}" for venue in SCENARIO.venues for device, _ in venue.sensor_ids()
)


@dataclass(frozen=True)
class Login:
    """A console account the tests sign in with."""

    username: str
    password: str
    roles: tuple[str, ...]
    display_name: str


TECH: Final = Login("tech", "tech-Passw0rd-1", ("technician",), "运维工程师")
ADMIN: Final = Login("chief", "chief-Passw0rd-1", ("admin",), "系统管理员")
#: the technician whose language the language test switches (nobody else's pages change)
POLYGLOT: Final = Login("wang", "wang-Passw0rd-1", ("technician",), "王工程师")
USERS: Final = (TECH, ADMIN, POLYGLOT)


@dataclass
class ConsoleHub:
    """The running hub the browser talks to."""

    runtime: HubRuntime
    work_dir: Path

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return self.runtime.api_url

    @property
    def origin(self) -> tuple[str, str]:
        """(scheme, host:port) of the hub."""
        parts = urlsplit(self.url)
        return parts.scheme, parts.netloc


@dataclass
class Traffic:
    """What one browser context did: requests, sockets, errors."""

    origin: tuple[str, str]
    requests: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: console errors the test expects (a 401 of a wrong password…): all substrings of one match
    expected_errors: list[tuple[str, ...]] = field(default_factory=list)

    def on_request(self, request: Request) -> None:
        self.requests.append(request.url)

    def on_socket(self, socket: WebSocket) -> None:
        self.sockets.append(socket.url)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location.get("url", "") if message.location else ""
            self.errors.append(f"console error: {message.text}" + (f" ({where})" if where else ""))

    def on_web_error(self, error: WebError) -> None:
        self.errors.append(f"JavaScript exception: {error.error}")

    def foreign(self) -> list[str]:
        """URLs that left the hub (a closed court intranet has nothing else)."""
        allowed_schemes = {"http": "http", "ws": "http", "https": "https", "wss": "https"}
        out = []
        for url in (*self.requests, *self.sockets):
            parts = urlsplit(url)
            if parts.scheme == "data":
                continue
            scheme = allowed_schemes.get(parts.scheme)
            if (scheme, parts.netloc) != self.origin:
                out.append(url)
        return out

    def unexpected_errors(self) -> list[str]:
        """Errors nobody announced."""
        return [
            e
            for e in self.errors
            if not any(all(part in e for part in parts) for parts in self.expected_errors)
        ]

    def paths(self) -> set[str]:
        """Paths of every request and socket to the hub."""
        return {urlsplit(u).path for u in (*self.requests, *self.sockets)}


async def open_context(browser: Browser, traffic: Traffic) -> BrowserContext:
    """A new browser context (no cookies, 1280×800, Chinese, the court's zone) whose requests,
    sockets and errors go to ``traffic``."""
    context = await browser.new_context(
        viewport=VIEWPORT,
        locale="zh-CN",
        timezone_id="Asia/Shanghai",
        service_workers="block",
    )
    context.set_default_timeout(LIVE_TIMEOUT_MS)
    context.on("request", traffic.on_request)
    context.on("console", traffic.on_console)
    context.on("weberror", traffic.on_web_error)

    def watch(page: Page) -> None:
        page.on("websocket", traffic.on_socket)

    context.on("page", watch)
    return context


class Console:
    """The console in one browser context: open pages, sign in, take screenshots."""

    def __init__(
        self,
        hub: ConsoleHub,
        browser: Browser,
        context: BrowserContext,
        traffic: Traffic,
        shots: list[Path],
    ) -> None:
        self.hub = hub
        self.browser = browser
        self.context = context
        self.traffic = traffic
        self._shots = shots
        self._page: Page | None = None

    @property
    def page(self) -> Page:
        """The page (opened by :meth:`start`)."""
        assert self._page is not None
        return self._page

    async def start(self) -> None:
        """Open the context's page."""
        self._page = await self.context.new_page()

    @contextlib.asynccontextmanager
    async def another_browser(self) -> AsyncIterator[Page]:
        """A page in a second, fresh context (another computer), watched like the first."""
        context = await open_context(self.browser, self.traffic)
        try:
            yield await context.new_page()
        finally:
            await context.close()

    def url(self, path: str) -> str:
        """The hub's URL of ``path``."""
        return self.hub.url + path

    async def open(self, path: str) -> None:
        """Go to ``path`` and wait for the page's scripts to have run."""
        await self.page.goto(self.url(path), wait_until="load")

    def expect_http_error(self, status: int, path: str) -> None:
        """The test provokes an HTTP ``status`` answer to ``path``, which Chromium logs as a
        console error ("Failed to load resource: … status of 401 …")."""
        self.traffic.expected_errors.append((f"status of {status} ", f"({self.url(path)})"))

    async def sign_in(self, login: Login, then: str = "/") -> None:
        """Sign in through the login page, ending on ``then``."""
        page = self.page
        await self.open("/login" if then == "/" else f"/login?next={then}")
        await page.get_by_test_id("login-username").fill(login.username)
        await page.get_by_test_id("login-password").fill(login.password)
        await page.get_by_test_id("login-submit").click()
        await page.wait_for_url(self.url(then), timeout=LIVE_TIMEOUT_MS)
        await expect(page.get_by_test_id("user-name")).to_have_text(login.display_name)

    async def wait_live(self) -> None:
        """The page's live socket says hello (the top bar shows "live")."""
        await expect(self.page.get_by_test_id("live-status")).to_have_attribute(
            "data-live", "up", timeout=LIVE_TIMEOUT_MS
        )

    async def screenshot(self, name: str) -> Path:
        """``name.png`` of the viewport (1280×800); asserts it is a real picture of a page."""
        page = self.page
        await page.evaluate("document.fonts.ready.then(() => true)")
        first = self._shots[0] / f"{name}.png"
        await page.screenshot(path=str(first), animations="disabled", caret="hide")
        data = first.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{first} is not a PNG"
        width, height = struct.unpack(">II", data[16:24])
        assert (width, height) == (VIEWPORT["width"], VIEWPORT["height"]), (width, height)
        assert len(data) >= MIN_SCREENSHOT_BYTES, f"{first} is only {len(data)} bytes"
        for folder in self._shots[1:]:
            shutil.copyfile(first, folder / first.name)
        return first
