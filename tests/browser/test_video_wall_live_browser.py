"""The video wall end to end: the REAL hub (:func:`hub.app.run_hub` with ``[recorder]``) recording
real simulated cameras, watched in headless Chromium.

Cameras (320×240, 10 fps): an MJPEG and an H.264 camera in courtroom ``court-1``, and an MJPEG
camera in interrogation room ``interro-1`` that only judges may watch. The recorder pulls them
(MJPEG through OpenCV, H.264 by stream copy); the wall's live pictures come from the recorder's
capture thread (MJPEG) or from the on-demand ffmpeg transcoder (H.264, only while watched).

- a commander sees the two courtroom cameras (not the interrogation room), both pictures move
  (canvas fingerprints of the <img> and the frame numbers the page shows), REC marks once
  segments are indexed; every stream opened is a ``live_feed_started`` audit row; when the
  commander leaves, the H.264 camera's live ffmpeg stops;
- a judge sees all three;
- the MJPEG courtroom camera is cut (refusing connections): within the stall timeout its tile
  is offline with "offline since" and its last still, the hub raises ``camera-lost:<id>``;
  restored, the tile goes live again and the alert clears.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from browser_harness import LIVE_TIMEOUT_MS, ZH, Login, Traffic, open_context
from playwright.async_api import Browser, Locator, Page, expect

from hub.app import HubRuntime, VideoParts, run_hub
from hub.audit import Action
from hub.config import hub_config_from_dict
from simulators.camera import CameraSimConfig, SimulatedCamera

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

COURT_NAME: Final = "示范人民法院"
WIDTH, HEIGHT, FPS = 320, 240, 10.0
COMMANDER: Final = Login("commander", "commander-Passw0rd-1", ("commander",), "执行指挥长")
JUDGE: Final = Login("judge", "judge-Passw0rd-1", ("judge",), "审判员")
MJPEG_CAM: Final = "court-1-cam-1"
H264_CAM: Final = "court-1-cam-2"
INTERRO_CAM: Final = "interro-1-cam-1"
COURT_CAMS: Final = (MJPEG_CAM, H264_CAM)
#: small, fast recorder settings: 2 s segments, an outage noticed after 3 s, retried every 1 s
RECORDER: Final[dict[str, Any]] = {
    "segment_s": 2,
    "stall_timeout_s": 3,
    "reconnect_interval_s": 1,
    "health_interval_s": 1,
    "headroom_mb": 0,
}
#: the wall polls every 2 s; an outage is noticed within stall_timeout_s
WALL_TIMEOUT_MS: Final = 12_000


@dataclass(frozen=True)
class SimCamera:
    """One simulated camera and where the hub's config puts it."""

    id: str
    codec: str
    venue: str
    venue_kind: str
    name: str
    live_roles: tuple[str, ...] = ()


SIM_CAMERAS: Final = (
    SimCamera(MJPEG_CAM, "mjpeg", "court-1", "tech_courtroom", "审判席"),
    SimCamera(H264_CAM, "h264", "court-1", "tech_courtroom", "旁听席"),
    SimCamera(INTERRO_CAM, "mjpeg", "interro-1", "interrogation_room", "讯问室", ("judge",)),
)


@dataclass
class LiveWall:
    """The running hub, its video parts and the simulated cameras it records."""

    runtime: HubRuntime
    video: VideoParts
    cameras: dict[str, SimulatedCamera]

    @property
    def url(self) -> str:
        return self.runtime.api_url


async def start_cameras() -> dict[str, SimulatedCamera]:
    cameras: dict[str, SimulatedCamera] = {}
    try:
        for sim in SIM_CAMERAS:
            camera = SimulatedCamera(
                CameraSimConfig(name=sim.id, codec=sim.codec, width=WIDTH, height=HEIGHT, fps=FPS)  # type: ignore[arg-type]
            )
            await camera.start()
            cameras[sim.id] = camera
    except BaseException:
        await asyncio.gather(*(c.stop() for c in cameras.values()), return_exceptions=True)
        raise
    return cameras


def recorder_cameras(cameras: dict[str, SimulatedCamera]) -> list[dict[str, Any]]:
    """``[[recorder.cameras]]`` for the simulated cameras."""
    return [
        {
            "id": sim.id,
            "venue": sim.venue,
            "venue_kind": sim.venue_kind,
            "name": sim.name,
            "url": cameras[sim.id].url,
            "fps": FPS,
            "live_roles": list(sim.live_roles),
        }
        for sim in SIM_CAMERAS
    ]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live_wall(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveWall]:
    work = tmp_path_factory.mktemp("live-wall")
    cameras = await start_cameras()
    config = hub_config_from_dict(
        {
            "hub": {"data_dir": str(work / "hub"), "court_name": COURT_NAME},
            "api": {"port": 0},
            "recorder": {**RECORDER, "cameras": recorder_cameras(cameras)},
        }
    )
    ready: asyncio.Future[HubRuntime] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(run_hub(config, stop, on_ready=ready.set_result))
    try:
        waiting: set[asyncio.Future[Any]] = {task, ready}
        done, _ = await asyncio.wait(waiting, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # the hub's start-up error
            pytest.fail("the hub stopped during start-up")
        if not done:
            pytest.fail("the hub did not get ready within 60 s")
        runtime = ready.result()
        assert runtime.accounts is not None and runtime.video is not None
        for login in (COMMANDER, JUDGE):
            await runtime.accounts.create_user(
                login.username,
                login.password,
                login.roles,
                display_name=login.display_name,
                language="zh-CN",
                must_change_password=False,
            )
        yield LiveWall(runtime, runtime.video, cameras)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await asyncio.gather(*(c.stop() for c in cameras.values()), return_exceptions=True)


@pytest_asyncio.fixture(loop_scope="module")
async def open_page(
    live_wall: LiveWall, browser: Browser
) -> AsyncIterator[Callable[[], Awaitable[tuple[Page, Traffic]]]]:
    """Opens fresh browser contexts on the hub; each must stay on the hub and log no error."""
    origin = urlsplit(live_wall.url)
    opened: list[tuple[Any, Traffic]] = []

    async def new_page() -> tuple[Page, Traffic]:
        traffic = Traffic((origin.scheme, origin.netloc))
        context = await open_context(browser, traffic)
        opened.append((context, traffic))
        return await context.new_page(), traffic

    try:
        yield new_page
    finally:
        for context, _ in opened:
            await context.close()
    problems: list[str] = []
    for _, traffic in opened:
        problems += [f"request outside the hub: {u}" for u in traffic.foreign()]
        problems += traffic.unexpected_errors()
    assert not problems, problems


async def sign_in_to_wall(page: Page, wall: LiveWall, login: Login) -> None:
    await page.goto(wall.url + "/login?next=/wall", wait_until="load")
    await page.get_by_test_id("login-username").fill(login.username)
    await page.get_by_test_id("login-password").fill(login.password)
    await page.get_by_test_id("login-submit").click()
    await page.wait_for_url(wall.url + "/wall", timeout=LIVE_TIMEOUT_MS)
    await expect(page.locator("h1")).to_have_text(ZH["wall.title"])


def tile(page: Page, camera: str) -> Locator:
    return page.locator(f'[data-testid="wall-tile"][data-camera="{camera}"]')


async def picture_signature(page: Page, camera: str) -> str:
    """A fingerprint of what the tile's <img> shows now (drawn onto a canvas); "" before the
    first picture decodes."""
    signature: str = await page.evaluate(
        """(id) => {
          const img = document.querySelector('[data-camera="' + id + '"] img');
          if (!img || !img.naturalWidth) return "";
          const canvas = document.createElement("canvas");
          canvas.width = 64; canvas.height = 48;
          const g = canvas.getContext("2d");
          g.drawImage(img, 0, 0, 64, 48);
          const d = g.getImageData(0, 0, 64, 48).data;
          let h = 0;
          for (let i = 0; i < d.length; i += 4) h = (h * 31 + d[i] + d[i + 1] + d[i + 2]) | 0;
          return img.naturalWidth + ":" + h;
        }""",
        camera,
    )
    return signature


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 10.0
) -> None:
    """Poll ``predicate`` (sync or async) until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting until {what}"
        await asyncio.sleep(0.1)


async def expect_moving_picture(page: Page, camera: str, timeout: float = 10.0) -> None:
    """The tile is live and its picture changes, and the frame number it shows advances."""
    t = tile(page, camera)
    await expect(t).to_have_attribute("data-picture", "live", timeout=WALL_TIMEOUT_MS)
    deadline = time.monotonic() + timeout
    first = await picture_signature(page, camera)
    while first == "":
        assert time.monotonic() < deadline, f"{camera}: no live picture decodes"
        await asyncio.sleep(0.1)
        first = await picture_signature(page, camera)
    while await picture_signature(page, camera) == first:
        assert time.monotonic() < deadline, f"{camera}: the picture does not move"
        await asyncio.sleep(0.1)
    seq = await t.get_attribute("data-seq")
    await expect(t).not_to_have_attribute("data-seq", seq or "", timeout=WALL_TIMEOUT_MS)
    assert await t.get_by_test_id("wall-img").evaluate("img => img.naturalWidth") == WIDTH


def live_decoders(url: str) -> list[int]:
    """Pids of ffmpeg processes decoding ``url`` into JPEGs for the wall (the recorder's own
    stream-copy ffmpeg reads the same URL, but writes segments, not ``mpjpeg``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if argv and argv[0].endswith(b"ffmpeg") and url.encode() in argv and b"mpjpeg" in argv:
            pids.append(int(proc.name))
    return pids


async def feeds_started(wall: LiveWall, login: Login) -> list[str]:
    """Cameras of the ``live_feed_started`` audit rows of ``login``."""
    assert wall.runtime.audit is not None
    rows = await wall.runtime.audit.entries(
        actor=login.username, action=Action.LIVE_FEED_STARTED.value, limit=1000
    )
    return [row.target for row in rows]


async def test_a_commander_watches_the_courtroom_cameras_live(
    live_wall: LiveWall, open_page: Callable[[], Awaitable[tuple[Page, Traffic]]]
) -> None:
    wall = live_wall
    # before anybody watches, the H.264 camera's wall picture is a still of a closed segment
    transcoder = wall.video.recorder.live_transcoder(H264_CAM)
    channel = wall.video.live.channel(H264_CAM)
    assert channel is not None and transcoder is not None
    await wait_for(lambda: channel.latest() is not None, "a still of the H.264 camera")
    assert transcoder.frames == 0 and not transcoder.running
    page, traffic = await open_page()
    await sign_in_to_wall(page, wall, COMMANDER)
    # the courtroom's two cameras; the interrogation room is for judges only
    await expect(page.get_by_test_id("wall-tile")).to_have_count(2)
    await expect(tile(page, INTERRO_CAM)).to_have_count(0)
    for sim in SIM_CAMERAS[:2]:
        t = tile(page, sim.id)
        await expect(t.get_by_test_id("wall-name")).to_have_text(sim.name)
        await expect(t.get_by_test_id("wall-venue")).to_contain_text(sim.venue)
    # both pictures move: the MJPEG one from the recorder's capture thread, the H.264 one
    # through the transcoder the hub started because somebody watches
    for camera in COURT_CAMS:
        await expect_moving_picture(page, camera)
    assert transcoder.running
    assert transcoder.frames > 0
    assert len(live_decoders(wall.cameras[H264_CAM].url)) == 1
    # REC once each camera has recorded segments
    for camera in COURT_CAMS:
        await wait_for(partial(has_segments, wall, camera), f"{camera} has indexed segments")
    for camera in COURT_CAMS:
        t = tile(page, camera)
        await expect(t.get_by_test_id("wall-rec")).to_be_visible()
        await expect(t.get_by_test_id("wall-rec")).to_have_text(ZH["js.wall.rec"])
        await expect(t.get_by_test_id("wall-state")).to_have_text(ZH["state.online"])
    # every stream the commander's browser opened is one audit row, nothing else
    opened = sorted(
        path.split("/")[2]
        for path in (urlsplit(u).path for u in traffic.requests)
        if path.endswith("/live.mjpg")
    )
    assert set(opened) == set(COURT_CAMS), opened
    assert sorted(await feeds_started(wall, COMMANDER)) == opened
    # the commander leaves: the H.264 camera's live decoder stops
    await page.context.close()
    await wait_for(lambda: not transcoder.running, "the live transcoder stops")
    await wait_for(lambda: not live_decoders(wall.cameras[H264_CAM].url), "no live ffmpeg is left")
    assert channel.viewers == 0


async def shows_picture(img: Locator) -> bool:
    """The <img> has loaded a whole camera picture."""
    width = await img.evaluate("i => i.complete ? i.naturalWidth : 0")
    return bool(width == WIDTH)


async def has_segments(wall: LiveWall, camera: str) -> bool:
    return bool(await wall.video.index.segments(camera=camera))


async def test_a_judge_sees_every_camera(
    live_wall: LiveWall,
    open_page: Callable[[], Awaitable[tuple[Page, Traffic]]],
    screenshot_dirs: list[Path],
) -> None:
    page, _ = await open_page()
    await sign_in_to_wall(page, live_wall, JUDGE)
    await expect(page.get_by_test_id("wall-tile")).to_have_count(3)
    interro = tile(page, INTERRO_CAM)
    await expect(interro.get_by_test_id("wall-name")).to_have_text("讯问室")
    await expect(interro.get_by_test_id("wall-venue")).to_contain_text(
        ZH["venue.interrogation_room"]
    )
    await expect_moving_picture(page, INTERRO_CAM)
    await expect_moving_picture(page, H264_CAM)
    # the judge's wall of real simulated cameras (burnt-in name and clock), for the README
    await page.set_viewport_size({"width": 1600, "height": 900})
    shot = screenshot_dirs[0] / "wall-live.png"
    await page.screenshot(path=str(shot), animations="disabled", caret="hide")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for folder in screenshot_dirs[1:]:
        shutil.copyfile(shot, folder / shot.name)


async def test_a_cut_camera_turns_offline_and_comes_back(
    live_wall: LiveWall, open_page: Callable[[], Awaitable[tuple[Page, Traffic]]]
) -> None:
    wall = live_wall
    alerts = wall.video.alerts
    key = f"camera-lost:{MJPEG_CAM}"
    page, _ = await open_page()
    await sign_in_to_wall(page, wall, COMMANDER)
    await expect_moving_picture(page, MJPEG_CAM)
    t = tile(page, MJPEG_CAM)

    camera = wall.cameras[MJPEG_CAM]
    camera.refuse(True)
    try:
        await camera.disconnect()
        # within the stall timeout (+ the wall's 2 s poll): offline, since when, the last still
        await expect(t).to_have_attribute("data-state", "offline", timeout=WALL_TIMEOUT_MS)
        await expect(t).to_have_attribute("data-picture", "still")
        await expect(t.get_by_test_id("wall-state")).to_have_text(ZH["state.offline"])
        view = wall.video.live.view(MJPEG_CAM)
        assert view is not None and view.offline_since_ms is not None
        since = await page.evaluate("(ms) => window.Courthub.formatTime(ms)", view.offline_since_ms)
        await expect(t.get_by_test_id("wall-offline")).to_have_text(
            ZH["js.wall.offline_since"].format(time=since)
        )
        await expect(t.get_by_test_id("wall-rec")).to_be_hidden()
        img = t.get_by_test_id("wall-img")
        await expect(img).to_have_attribute(
            "src", re.compile(rf"^/video/{MJPEG_CAM}/still\.jpg\?seq=\d+$")
        )
        await expect(img).to_be_visible()
        await wait_for(lambda: shows_picture(img), "the last still shows")
        await wait_for(lambda: alerts.is_active(key), f"the alert {key} is raised")
        # the other courtroom camera is not affected
        await expect(tile(page, H264_CAM)).to_have_attribute("data-state", "online")
        await expect(tile(page, H264_CAM)).to_have_attribute("data-picture", "live")
        assert not alerts.is_active(f"camera-lost:{H264_CAM}")
    finally:
        camera.refuse(False)
    # back: live again, the alert cleared
    await expect(t).to_have_attribute("data-state", "online", timeout=WALL_TIMEOUT_MS)
    await expect(t.get_by_test_id("wall-offline")).to_be_hidden()
    await expect_moving_picture(page, MJPEG_CAM)
    await wait_for(lambda: not alerts.is_active(key), f"the alert {key} is cleared")


async def test_a_viewer_right_after_the_last_one_keeps_the_h264_picture(
    live_wall: LiveWall,
) -> None:
    """The last viewer leaving and a new one arriving in the same loop turn (a page reload, a
    tile switching still → live) must leave the transcoder running for the new viewer."""
    channel = live_wall.video.live.channel(H264_CAM)
    transcoder = live_wall.video.recorder.live_transcoder(H264_CAM)
    assert channel is not None and transcoder is not None
    await wait_for(lambda: channel.viewers == 0, "nobody watches the H.264 camera")
    async with channel.viewer() as first:
        assert await first.next(10) is not None
    async with channel.viewer() as second:  # attached before the loop runs anything else
        await asyncio.sleep(0.5)
        assert transcoder.running, "the new viewer's transcoder was stopped"
        await second.next(10)  # the newest frame there is (maybe from before)
        assert await second.next(10) is not None, "no new frame for the new viewer"
    await wait_for(lambda: not transcoder.running, "the live transcoder stops")
