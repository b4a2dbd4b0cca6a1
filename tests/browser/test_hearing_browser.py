"""The hearing console (``/hearing``) in headless Chromium, on real hearing, transcript and live
services (SQLite on a temporary folder, the console's own LiveHub and live video):

a judge opens a hearing in ``court-1`` and sees the red REC banner and the room's camera; a
partial and then a final segment are published on the app's live hub (the final also stored, as
the live transcriber does), and the page shows the greyed partial, then the final line; the clerk
(a second browser) catches up with the stored transcript, corrects a line (a revision beside the
machine text) and adds a note; the judge takes a recess for mediation (amber banner with the
reason), resumes, closes and seals (both confirmed): the banner shows the lock, corrections and
notes are off, and the export link downloads the sealed bundle (a zip). Screenshot
``hearing.png`` (1280×800) like the console's.

The console is built here with the page's routes (the hub's ``console_app`` wires them in too).
"""

from __future__ import annotations

import asyncio
import io
import shutil
import struct
import threading
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import cv2
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from argon2 import PasswordHasher
from browser_harness import MIN_SCREENSHOT_BYTES, VIEWPORT, ZH, Login, Traffic, open_context
from playwright.async_api import Browser, BrowserContext, Page, expect

from dashboards import pages_hearing, pages_video, recordings_api, sessions, transcript_api
from dashboards.app import ConsoleOptions, create_console_app
from dashboards.live import LIVE_KEY, LiveHub, Topic
from dashboards.pages import DEFAULT_NAV, PASSWORD_CHANGE_PAGES
from dashboards.recordings_api import RECORDINGS_KEY, RecordingsContext
from dashboards.sessions import (
    ACCOUNTS_KEY,
    AUDIT_KEY,
    ApiTokenAuthenticator,
    SessionAuthenticator,
    csrf_middleware,
)
from dashboards.transcript_api import TRANSCRIPT_KEY, TranscriptContext
from hub.accounts import AccountStore
from hub.audit import AuditLog
from hub.config import hub_config_from_dict
from hub.hearings import HearingService
from hub.live_video import CameraView, FrameChannel, LiveVideo
from hub.recording_index import DB_FILE, RecordingIndex
from hub.service import HubService
from hub.transcript_store import TranscriptStore
from protocol.messages import now_ms
from transcription.stream import FinalSegment, Word

pytestmark = pytest.mark.asyncio(loop_scope="module")

JUDGE: Final = Login("zhou", "zhou-Passw0rd-1", ("judge",), "审判长周")
CLERK: Final = Login("wu", "wu-Passw0rd-1", ("clerk",), "书记员吴")
COURT_NAME: Final = "示范人民法院"
ZONE: Final = ZoneInfo("Asia/Shanghai")
VENUE: Final = "court-1"
CAMERA: Final = CameraView(
    "court-1-cam-1", "审判席", VENUE, "tech_courtroom", "online", recording=True
)


def frame_jpeg(n: int) -> bytes:
    """A 320×180 picture with a frame counter."""
    image = np.zeros((180, 320, 3), dtype=np.uint8)
    image[:] = (60, 50 + n % 50, 40)
    cv2.putText(image, f"court-1 #{n}", (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


class Capture:
    """A capture thread publishing 5 frames/s into the camera's channel."""

    def __init__(self, channel: FrameChannel) -> None:
        self.channel = channel
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="fake-capture", daemon=True)

    def run(self) -> None:
        n = 0
        while not self.stop.wait(0.2):
            n += 1
            self.channel.publish_threadsafe(frame_jpeg(n), now_ms())


@dataclass
class Court:
    url: str
    live: LiveHub
    hearings: HearingService
    store: TranscriptStore


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def court(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Court]:
    work = tmp_path_factory.mktemp("hearing")
    data_dir = work / "hub"
    accounts = await AccountStore.open(
        work, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    audit = await AuditLog.open(data_dir)
    index = await RecordingIndex.open(data_dir / DB_FILE, data_dir / "recordings")
    hearings = await HearingService.open(data_dir, index, audit)
    store = await TranscriptStore.open(data_dir)
    for login in (JUDGE, CLERK):
        await accounts.create_user(
            login.username,
            login.password,
            login.roles,
            display_name=login.display_name,
            language="zh-CN",
            must_change_password=False,
        )
    video = LiveVideo()
    capture = Capture(video.add_camera(CAMERA))
    capture.thread.start()

    def setup(app: web.Application) -> None:
        app[ACCOUNTS_KEY] = accounts
        app[AUDIT_KEY] = audit
        app[RECORDINGS_KEY] = RecordingsContext(index, hearings, None, None, data_dir / DB_FILE)
        app[TRANSCRIPT_KEY] = TranscriptContext(store, hearings, None)
        pages_video.install_live_video(app, video)

    config = hub_config_from_dict({"hub": {"data_dir": str(data_dir)}})
    app = create_console_app(
        HubService(config, "mqtt://127.0.0.1:1", "hub", "x"),
        [
            SessionAuthenticator(accounts, allowed_while_password_change=PASSWORD_CHANGE_PAGES),
            ApiTokenAuthenticator(accounts),
        ],
        options=ConsoleOptions(
            court_name=COURT_NAME, nav=(*DEFAULT_NAV, pages_hearing.HEARING_NAV)
        ),
        extra_routes=(
            *sessions.ROUTES,
            *pages_hearing.ROUTES,
            *pages_video.ROUTES,
            *recordings_api.ROUTES,
            *transcript_api.ROUTES,
        ),
        extra_middlewares=[csrf_middleware],
        setup=setup,
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Court(f"http://{host}:{port}", app[LIVE_KEY], hearings, store)
    finally:
        capture.stop.set()
        capture.thread.join(5)
        await asyncio.wait_for(runner.cleanup(), 30)
        await store.close()
        await hearings.close()
        await index.close()
        await audit.close()
        await accounts.close()


@dataclass
class Browsers:
    contexts: list[BrowserContext]
    traffic: Traffic


@pytest_asyncio.fixture(loop_scope="module")
async def browsers(court: Court, browser: Browser) -> AsyncIterator[Browsers]:
    """Fresh browser contexts on the court's console; fails on foreign requests or page errors."""
    origin = urlsplit(court.url)
    opened = Browsers([], Traffic((origin.scheme, origin.netloc)))
    try:
        yield opened
    finally:
        for context in opened.contexts:
            await context.close()
    problems = [f"request outside the hub: {u}" for u in opened.traffic.foreign()]
    problems += opened.traffic.unexpected_errors()
    assert not problems, problems


async def signed_in(court: Court, browser: Browser, browsers: Browsers, login: Login) -> Page:
    """A new browser signed in as ``login``, on the hearing page."""
    context = await open_context(browser, browsers.traffic)
    browsers.contexts.append(context)
    page = await context.new_page()
    await page.goto(court.url + "/login?next=/hearing", wait_until="load")
    await page.get_by_test_id("login-username").fill(login.username)
    await page.get_by_test_id("login-password").fill(login.password)
    await page.get_by_test_id("login-submit").click()
    await page.wait_for_url(court.url + "/hearing")
    await expect(page.get_by_test_id("user-name")).to_have_text(login.display_name)
    return page


def clock(ms: int) -> str:
    """Court local time of ``ms`` as the transcript shows it."""
    return datetime.fromtimestamp(ms / 1000, ZONE).strftime("%H:%M:%S")


async def screenshot(page: Page, shots: list[Path], name: str) -> None:
    """``name.png`` of the 1280×800 viewport, saved like the console's."""
    await page.evaluate("document.fonts.ready.then(() => true)")
    first = shots[0] / f"{name}.png"
    await page.screenshot(path=str(first), animations="disabled", caret="hide")
    data = first.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{first} is not a PNG"
    assert struct.unpack(">II", data[16:24]) == (VIEWPORT["width"], VIEWPORT["height"])
    assert len(data) >= MIN_SCREENSHOT_BYTES, f"{first} is only {len(data)} bytes"
    for folder in shots[1:]:
        shutil.copyfile(first, folder / first.name)


async def test_a_hearing_from_opening_to_its_sealed_export(
    court: Court, browser: Browser, browsers: Browsers, screenshot_dirs: list[Path]
) -> None:
    judge = await signed_in(court, browser, browsers, JUDGE)
    await expect(judge.locator("h1")).to_have_text(ZH["hearing.title"])
    await judge.get_by_test_id("venue-select").select_option(VENUE)
    banner = judge.get_by_test_id("hearing-banner")
    await expect(banner).to_have_attribute("data-state", "none")
    await expect(judge.get_by_test_id("act-start")).to_be_disabled()

    # the room's camera, live
    tile = judge.locator('[data-testid="video-tile"][data-camera="court-1-cam-1"]')
    await expect(tile).to_have_count(1)
    await expect(tile.locator("img")).to_have_js_property("complete", True)
    await judge.wait_for_function(
        "() => document.querySelector('[data-camera=\"court-1-cam-1\"] img').naturalWidth === 320"
    )

    # open a hearing now
    await expect(judge.get_by_test_id("new-form")).to_be_visible()
    await judge.get_by_test_id("new-title").fill("张三诉李四买卖合同纠纷")
    await judge.get_by_test_id("new-case").fill("(2026)京0101民初1号")
    await judge.get_by_test_id("new-submit").click()
    await expect(banner).to_have_attribute("data-state", "open")
    await expect(judge.get_by_test_id("hearing-state")).to_have_text(ZH["js.hearing.banner.open"])
    await expect(judge.get_by_test_id("hearing-title")).to_contain_text("张三诉李四")
    hearing = court.hearings.current(VENUE)
    assert hearing is not None and hearing.state == "open" and hearing.opened_by == JUDGE.username
    for action, enabled in (
        ("start", False),
        ("recess", True),
        ("resume", False),
        ("close", True),
        ("seal", False),
    ):
        button = judge.get_by_test_id(f"act-{action}")
        await (expect(button).to_be_enabled() if enabled else expect(button).to_be_disabled())
    await expect(judge.get_by_test_id("act-export")).to_have_attribute("aria-disabled", "true")
    await expect(judge.get_by_test_id("events").locator("li")).to_have_count(2)  # scheduled, open

    # a second hearing in the busy room is refused (409), and the page says why
    browsers.traffic.expected_errors.append(("status of 409 ", "/api/v1/hearings)"))
    await expect(judge.get_by_test_id("new-form")).to_be_hidden()
    await judge.locator("#hearing-new summary").click()
    await judge.get_by_test_id("new-title").fill("另案")
    await judge.get_by_test_id("new-case").fill("(2026)京0101民初2号")
    await judge.get_by_test_id("new-submit").click()
    error = judge.get_by_test_id("hearing-error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text(f"venue {VENUE} is already in hearing {hearing.id}")
    await judge.locator("#hearing-new summary").click()
    await expect(error).to_be_hidden()
    assert len(court.hearings.all()) == 1

    # live: a partial (greyed), then the final replaces it
    await expect(judge.get_by_test_id("transcript")).to_have_attribute("data-live", "subscribed")
    start_us = now_ms() * 1000
    court.live.publish(
        Topic.TRANSCRIPT,
        {
            "type": "partial",
            "hearing": hearing.id,
            "seat": "judge",
            "text": "现在开庭",
            "ts_us": start_us,
        },
    )
    partial = judge.get_by_test_id("partials").locator("li")
    await expect(partial).to_have_count(1)
    await expect(partial).to_contain_text("审判长")
    await expect(partial).to_contain_text("现在开庭")
    await expect(partial).to_have_class("tx-line tx-partial")
    final = FinalSegment(
        "judge",
        "现在开庭 核对当事人身份",
        start_us,
        start_us + 2_000_000,
        (Word("现在开庭", start_us, start_us + 900_000, 0.93),),
        0.9,
    )
    segment_id = await court.store.add_final(hearing.id, "court-1/mic-1/judge", final)
    stored = await court.store.segment(segment_id)
    assert stored is not None
    court.live.publish(
        Topic.TRANSCRIPT, {"type": "final", "hearing": hearing.id, "segment": stored.to_json()}
    )
    line = judge.locator(f'#transcript li[data-segment="{segment_id}"]')
    await expect(line).to_have_text(f"{clock(start_us // 1000)}审判长现在开庭 核对当事人身份")
    await expect(partial).to_have_count(0)
    # a second seat, its own colour; a final for another hearing is not shown
    other = FinalSegment(
        "plaintiff", "原告到庭", start_us + 3_000_000, start_us + 4_000_000, (), 0.8
    )
    second_id = await court.store.add_final(hearing.id, "court-1/mic-1/plaintiff", other)
    second = await court.store.segment(second_id)
    assert second is not None
    court.live.publish(
        Topic.TRANSCRIPT,
        {
            "type": "final",
            "hearing": "h-other",
            "segment": {**second.to_json(), "hearing": "h-other"},
        },
    )
    court.live.publish(
        Topic.TRANSCRIPT, {"type": "final", "hearing": hearing.id, "segment": second.to_json()}
    )
    await expect(judge.locator("#transcript li")).to_have_count(2)
    seats = judge.locator("#transcript .tx-seat")
    colours = [await seats.nth(i).evaluate("e => getComputedStyle(e).color") for i in range(2)]
    assert colours[0] != colours[1], "each seat has its own colour"

    # the clerk, in another browser: catches up with the stored transcript, corrects a line
    clerk = await signed_in(court, browser, browsers, CLERK)
    await clerk.get_by_test_id("venue-select").select_option(VENUE)
    await expect(clerk.get_by_test_id("hearing-banner")).to_have_attribute("data-state", "open")
    clerk_line = clerk.locator(f'#transcript li[data-segment="{segment_id}"]')
    await expect(clerk_line).to_contain_text("现在开庭 核对当事人身份")
    await expect(clerk.locator("#transcript li")).to_have_count(2)
    await clerk_line.click()
    edit = clerk_line.locator("input.tx-edit")
    await expect(edit).to_be_focused()
    await edit.fill("现在开庭，核对当事人身份。")
    await edit.press("Enter")
    await expect(clerk_line.locator(".tx-text")).to_have_text("现在开庭，核对当事人身份。")
    await expect(clerk_line.locator(".tx-mark")).to_have_text(ZH["js.hearing.corrected"])
    title = await clerk_line.get_attribute("title")
    assert title is not None and "现在开庭 核对当事人身份" in title  # the machine text on hover
    revised = await court.store.segment(segment_id)
    assert revised is not None and revised.machine_text == "现在开庭 核对当事人身份"
    assert [(r.text, r.by) for r in revised.revisions] == [
        ("现在开庭，核对当事人身份。", CLERK.username)
    ]
    # the judge's page shows the clerk's correction live, without a reload
    judge_line = judge.locator(f'#transcript li[data-segment="{segment_id}"]')
    await expect(judge_line.locator(".tx-text")).to_have_text("现在开庭，核对当事人身份。")

    # a note at "now"
    before = now_ms()
    await clerk.get_by_test_id("note-text").fill("原告提交补充证据三份")
    await clerk.get_by_test_id("note-add").click()
    note = clerk.get_by_test_id("notes").locator("li")
    await expect(note).to_have_count(1)
    await expect(note).to_contain_text("原告提交补充证据三份")
    notes = await court.store.notes(hearing.id)
    assert len(notes) == 1 and notes[0].author == CLERK.username
    assert before - 5_000 <= notes[0].ts_ms <= now_ms() + 5_000
    await expect(note.locator("time")).to_have_text(clock(notes[0].ts_ms))

    # the judge's page shows the clerk's note with its next poll
    await expect(judge.get_by_test_id("notes").locator("li")).to_contain_text(
        "原告提交补充证据三份"
    )
    await screenshot(judge, screenshot_dirs, "hearing")

    # recess for mediation, resume
    await judge.get_by_test_id("recess-reason").select_option("mediation")
    await judge.get_by_test_id("act-recess").click()
    await expect(banner).to_have_attribute("data-state", "recess")
    await expect(judge.get_by_test_id("hearing-state")).to_have_text(
        ZH["js.hearing.banner.recess"].format(reason=ZH["js.hearing.reason.mediation"])
    )
    await expect(judge.get_by_test_id("events").locator("li").last).to_contain_text("调解")
    await expect(judge.get_by_test_id("act-recess")).to_be_disabled()
    await judge.get_by_test_id("act-resume").click()
    await expect(banner).to_have_attribute("data-state", "open")
    recesses = await court.hearings.recesses(hearing.id)
    assert len(recesses) == 1 and recesses[0][1] is not None and recesses[0][2] == "mediation"

    # close: asked first; "cancel" leaves it open
    await judge.get_by_test_id("act-close").click()
    await expect(judge.get_by_test_id("confirm")).to_be_visible()
    await judge.get_by_test_id("confirm-cancel").click()
    await expect(judge.get_by_test_id("confirm")).to_be_hidden()
    assert court.hearings.get(hearing.id).state == "open"  # type: ignore[union-attr]
    await judge.get_by_test_id("act-close").click()
    await judge.get_by_test_id("confirm-ok").click()
    await expect(banner).to_have_attribute("data-state", "closed")
    await expect(judge.get_by_test_id("act-seal")).to_be_enabled()
    await expect(judge.get_by_test_id("hearing-lock")).to_be_hidden()

    # seal: the lock, no more corrections or notes
    await judge.get_by_test_id("act-seal").click()
    await expect(judge.get_by_test_id("confirm-text")).to_contain_text("张三诉李四")
    await judge.get_by_test_id("confirm-ok").click()
    await expect(banner).to_have_attribute("data-state", "sealed")
    await expect(judge.get_by_test_id("hearing-lock")).to_be_visible()
    await expect(judge.get_by_test_id("hearing-state")).to_have_text(ZH["js.hearing.banner.sealed"])
    await expect(judge.get_by_test_id("note-text")).to_be_disabled()
    for action in ("start", "recess", "resume", "close", "seal"):
        await expect(judge.get_by_test_id(f"act-{action}")).to_be_disabled()
    judge_line = judge.locator(f'#transcript li[data-segment="{second_id}"]')
    await judge_line.click()
    await expect(judge_line.locator("input")).to_have_count(0)
    # the clerk's page follows within its poll
    await expect(clerk.get_by_test_id("hearing-lock")).to_be_visible()
    await expect(clerk.get_by_test_id("note-text")).to_be_disabled()

    # the export link downloads the sealed bundle
    export = judge.get_by_test_id("act-export")
    await expect(export).not_to_have_attribute("aria-disabled", "true")
    async with judge.expect_download() as info:
        await export.click()
    download = await info.value
    assert download.suggested_filename == f"{hearing.id}.zip"
    data = await asyncio.to_thread((await download.path()).read_bytes)
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        assert bundle.testzip() is None
        assert any(name.endswith(".json") for name in bundle.namelist()), bundle.namelist()
