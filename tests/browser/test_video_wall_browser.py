"""The video wall in headless Chromium: three cameras in two venues fed by a capture thread
(synthetic JPEGs with a frame counter, published through ``FrameChannel.publish_threadsafe``),
one of them offline with its last still. A commander sees three labelled tiles, REC marks, live
pictures that move, the offline tile's "离线，自 … 起", and enlarges a tile (the other streams
stop); a counter clerk gets the 403 page. Screenshot ``wall.png`` (1920×1080) like the others.

The console is built here with the wall's routes (the hub's ``console_app`` wires them in too)."""

from __future__ import annotations

import asyncio
import shutil
import struct
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from argon2 import PasswordHasher
from browser_harness import MIN_SCREENSHOT_BYTES, ZH, Login, Traffic, open_context
from playwright.async_api import Browser, Page, ViewportSize, expect

from dashboards import pages_video, sessions
from dashboards.app import ConsoleOptions, create_console_app
from dashboards.pages import DEFAULT_NAV, PASSWORD_CHANGE_PAGES
from dashboards.sessions import (
    ACCOUNTS_KEY,
    AUDIT_KEY,
    ApiTokenAuthenticator,
    SessionAuthenticator,
    csrf_middleware,
)
from hub.accounts import AccountStore
from hub.audit import AuditLog
from hub.config import hub_config_from_dict
from hub.live_video import CameraView, FrameChannel, LiveVideo
from hub.service import HubService
from protocol.messages import now_ms

pytestmark = pytest.mark.asyncio(loop_scope="module")

COMMANDER: Final = Login("zhao", "zhao-Passw0rd-1", ("commander",), "指挥长赵")
CLERK: Final = Login("qian", "qian-Passw0rd-1", ("counter",), "柜台书记员钱")
BIG_SCREEN: Final = ViewportSize(width=1920, height=1080)
COURT_NAME: Final = "示范人民法院"
CAMERAS: Final = (
    CameraView(
        "court1-judge", "审判席", "第一科技法庭", "tech_courtroom", "online", recording=True
    ),
    CameraView("court1-hall", "旁听席", "第一科技法庭", "tech_courtroom", "online", recording=True),
    CameraView("field-3", "执行三组 单兵", "执行指挥中心", "command_center", "online"),
)
OFFLINE: Final = "field-3"


def frame_jpeg(name: str, n: int) -> bytes:
    """A 640×360 picture with the camera's name and the frame counter."""
    image = np.zeros((360, 640, 3), dtype=np.uint8)
    image[:] = (40 + n % 60, 60, 90)
    cv2.rectangle(image, ((n * 7) % 600, 150), ((n * 7) % 600 + 40, 190), (0, 200, 255), -1)
    cv2.putText(image, f"{name} #{n}", (20, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 2)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return data.tobytes()


class Capture:
    """A capture thread publishing 10 frames/s into each camera's channel."""

    def __init__(self, channels: dict[str, FrameChannel]) -> None:
        self.channels = channels
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="fake-capture", daemon=True)

    def run(self) -> None:
        n = 0
        while not self.stop.wait(0.1):
            n += 1
            for camera_id, channel in self.channels.items():
                channel.publish_threadsafe(frame_jpeg(camera_id, n), now_ms())


@dataclass
class Wall:
    url: str
    live: LiveVideo
    channels: dict[str, FrameChannel]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def wall(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Wall]:
    work = tmp_path_factory.mktemp("wall")
    accounts = await AccountStore.open(
        work, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    audit = await AuditLog.open(work)
    for login in (COMMANDER, CLERK):
        await accounts.create_user(
            login.username,
            login.password,
            login.roles,
            display_name=login.display_name,
            language="zh-CN",
            must_change_password=False,
        )
    live = LiveVideo()
    channels = {view.id: live.add_camera(view) for view in CAMERAS}
    # the field camera sent one picture, then its link dropped
    offline_at = now_ms() - 95_000
    channels[OFFLINE].publish(frame_jpeg(OFFLINE, 1), offline_at - 1000)
    live.update(OFFLINE, state="offline", offline_since_ms=offline_at)
    capture = Capture({k: v for k, v in channels.items() if k != OFFLINE})
    capture.thread.start()

    def setup(app: web.Application) -> None:
        app[ACCOUNTS_KEY] = accounts
        app[AUDIT_KEY] = audit
        pages_video.install_live_video(app, live)

    config = hub_config_from_dict({"hub": {"data_dir": str(work / "hub")}})
    app = create_console_app(
        HubService(config, "mqtt://127.0.0.1:1", "hub", "x"),
        [
            SessionAuthenticator(accounts, allowed_while_password_change=PASSWORD_CHANGE_PAGES),
            ApiTokenAuthenticator(accounts),
        ],
        options=ConsoleOptions(court_name=COURT_NAME, nav=(*DEFAULT_NAV, pages_video.WALL_NAV)),
        extra_routes=(*sessions.ROUTES, *pages_video.ROUTES),
        extra_middlewares=[csrf_middleware],
        setup=setup,
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Wall(f"http://{host}:{port}", live, channels)
    finally:
        capture.stop.set()
        capture.thread.join(5)
        await asyncio.wait_for(runner.cleanup(), 30)
        await audit.close()
        await accounts.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(wall: Wall, browser: Browser) -> AsyncIterator[tuple[Page, Traffic]]:
    origin = urlsplit(wall.url)
    traffic = Traffic((origin.scheme, origin.netloc))
    context = await open_context(browser, traffic)
    try:
        yield await context.new_page(), traffic
    finally:
        await context.close()
    problems = [f"request outside the hub: {u}" for u in traffic.foreign()]
    problems += traffic.unexpected_errors()
    assert not problems, problems


async def sign_in(page: Page, wall: Wall, login: Login) -> None:
    await page.goto(wall.url + "/login?next=/wall", wait_until="load")
    await page.get_by_test_id("login-username").fill(login.username)
    await page.get_by_test_id("login-password").fill(login.password)
    await page.get_by_test_id("login-submit").click()
    await page.wait_for_url(wall.url + "/wall")


def tile(page: Page, camera: str):  # type: ignore[no-untyped-def]
    return page.locator(f'[data-testid="wall-tile"][data-camera="{camera}"]')


async def picture_signature(page: Page, camera: str) -> str:
    """A fingerprint of what the tile's <img> shows now (drawn onto a canvas)."""
    signature: str = await page.evaluate(
        """(id) => {
          const img = document.querySelector('[data-camera="' + id + '"] img');
          if (!img || !img.naturalWidth) return "";
          const canvas = document.createElement("canvas");
          canvas.width = 64; canvas.height = 36;
          const g = canvas.getContext("2d");
          g.drawImage(img, 0, 0, 64, 36);
          const d = g.getImageData(0, 0, 64, 36).data;
          let h = 0;
          for (let i = 0; i < d.length; i += 4) h = (h * 31 + d[i] + d[i + 1] + d[i + 2]) | 0;
          return img.naturalWidth + ":" + h;
        }""",
        camera,
    )
    return signature


async def test_a_commander_watches_the_wall(
    wall: Wall, page: tuple[Page, Traffic], screenshot_dirs: list[Path]
) -> None:
    p, _ = page
    await sign_in(p, wall, COMMANDER)
    await expect(p.locator("h1")).to_have_text(ZH["wall.title"])
    tiles = p.get_by_test_id("wall-tile")
    await expect(tiles).to_have_count(3)
    for view in CAMERAS:
        t = tile(p, view.id)
        await expect(t.get_by_test_id("wall-name")).to_have_text(view.name)
        await expect(t.get_by_test_id("wall-venue")).to_contain_text(view.venue)
        await expect(t.get_by_test_id("wall-rec")).to_be_visible(visible=view.recording)
    await expect(tile(p, "court1-judge").get_by_test_id("wall-state")).to_have_text(
        ZH["state.online"]
    )
    # the live pictures move: the image decodes and changes, and the frame number advances
    for camera in ("court1-judge", "court1-hall"):
        await expect(tile(p, camera)).to_have_attribute("data-picture", "live")
        first = await picture_signature(p, camera)
        seq = await tile(p, camera).get_attribute("data-seq")
        deadline = time.monotonic() + 10
        while await picture_signature(p, camera) in ("", first):
            assert time.monotonic() < deadline, f"{camera}: the picture does not move"
            await asyncio.sleep(0.1)
        await expect(tile(p, camera)).not_to_have_attribute("data-seq", seq or "")
    assert wall.channels["court1-judge"].viewers == 1
    # the field camera is down: its last still, greyed, and since when
    down = tile(p, OFFLINE)
    await expect(down).to_have_attribute("data-picture", "still")
    await expect(down).to_have_class("wall-tile down")
    view = wall.live.view(OFFLINE)
    assert view is not None and view.offline_since_ms is not None
    since = await p.evaluate("(ms) => window.Courthub.formatTime(ms)", view.offline_since_ms)
    await expect(down.get_by_test_id("wall-offline")).to_have_text(
        ZH["js.wall.offline_since"].format(time=since)
    )
    await expect(down.get_by_test_id("wall-state")).to_have_text(ZH["state.offline"])
    assert await down.get_by_test_id("wall-img").evaluate("img => img.naturalWidth") == 640
    await expect(down.get_by_test_id("wall-age")).to_contain_text("分钟前")

    await big_screenshot(p, screenshot_dirs, "wall")

    # enlarge one: it fills the stage, the others become small stills (their streams stop)
    await tile(p, "court1-hall").click()
    await expect(p.get_by_test_id("wall-stage").get_by_test_id("wall-tile")).to_have_attribute(
        "data-camera", "court1-hall"
    )
    await expect(tile(p, "court1-judge")).to_have_attribute("data-picture", "still")
    await wait_for(lambda: wall.channels["court1-judge"].viewers == 0, "the small stream stops")
    assert wall.channels["court1-hall"].viewers == 1
    await p.keyboard.press("Escape")
    await expect(p.get_by_test_id("wall-stage")).to_be_hidden()
    await expect(tile(p, "court1-judge")).to_have_attribute("data-picture", "live")
    await wait_for(lambda: wall.channels["court1-judge"].viewers == 1, "the stream is back")

    # the camera comes back without a reload
    wall.live.update(OFFLINE, state="online", offline_since_ms=None)
    wall.channels[OFFLINE].publish(frame_jpeg(OFFLINE, 2), now_ms())
    await expect(down).to_have_attribute("data-state", "online")
    await expect(down.get_by_test_id("wall-offline")).to_be_hidden()
    wall.live.update(OFFLINE, state="offline", offline_since_ms=now_ms())


async def test_a_counter_clerk_may_not_open_the_wall(
    wall: Wall, page: tuple[Page, Traffic]
) -> None:
    p, traffic = page
    traffic.expected_errors.append(("status of 403 ", "/wall"))
    await p.goto(wall.url + "/login?next=/", wait_until="load")
    await p.get_by_test_id("login-username").fill(CLERK.username)
    await p.get_by_test_id("login-password").fill(CLERK.password)
    await p.get_by_test_id("login-submit").click()
    await p.wait_for_url(wall.url + "/")
    await expect(p.get_by_test_id("nav-wall")).to_have_count(0)
    response = await p.goto(wall.url + "/wall", wait_until="load")
    assert response is not None and response.status == 403
    await expect(p.locator("h1")).to_have_text(ZH["error.403.title"])
    assert await p.get_by_test_id("wall-tile").count() == 0


async def wait_for(predicate: object, what: str, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.05)


async def big_screenshot(page: Page, shots: list[Path], name: str) -> Path:
    """``name.png`` of the wall on a 1920×1080 screen, saved like the console's."""
    await page.set_viewport_size(BIG_SCREEN)
    await page.evaluate("document.fonts.ready.then(() => true)")
    first = shots[0] / f"{name}.png"
    await page.screenshot(path=str(first), animations="disabled", caret="hide")
    data = first.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{first} is not a PNG"
    assert struct.unpack(">II", data[16:24]) == (BIG_SCREEN["width"], BIG_SCREEN["height"])
    assert len(data) >= MIN_SCREENSHOT_BYTES, f"{first} is only {len(data)} bytes"
    for folder in shots[1:]:
        shutil.copyfile(first, folder / first.name)
    return first
