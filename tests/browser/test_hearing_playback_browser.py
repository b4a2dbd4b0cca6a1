"""Playback of a closed hearing on the hearing console (``/hearing``) in headless Chromium, on
real hearing, transcript and recording-index services (SQLite in a temporary folder) and real
seat WAV files served by ``GET /api/v1/recordings/segments/{id}/media``:

the judge's track is two consecutive 2 s WAV segments, the plaintiff's one 4 s segment; three
transcript lines (judge at +0.5 s, judge at +2.7 s — inside the second file —, plaintiff at
+3.0 s). Clicking a line puts the audio at the line's offset inside the file covering it (0.7 s
into the judge's second file; the plaintiff's line switches the seat); playing (muted) from the
first line highlights it, goes on into the next file at its end and highlights the second line
when it is heard. The room's camera (an H.264 ``.ts`` covering the same 4 s, remuxed to MP4 by the
hub) follows the audio: at the clicked line's time, and playing along.
"""

from __future__ import annotations

import asyncio
import math
import struct
import threading
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from aiohttp import web
from argon2 import PasswordHasher
from browser_harness import Login, Traffic, open_context
from playwright.async_api import Browser, BrowserContext, Page, expect

from dashboards import pages_hearing, pages_video, recordings_api, sessions, transcript_api
from dashboards.app import ConsoleOptions, create_console_app
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
from hub.recording_index import DB_FILE, RecordingIndex, SegmentRecord
from hub.service import HubService
from hub.transcript_store import TranscriptStore
from protocol.messages import now_ms
from transcription.stream import FinalSegment

pytestmark = pytest.mark.asyncio(loop_scope="module")

JUDGE: Final = Login("zheng", "zheng-Passw0rd-1", ("judge",), "审判长郑")
VENUE: Final = "court-1"
JUDGE_TRACK: Final = "court-1-mic-1-judge"
PLAINTIFF_TRACK: Final = "court-1-mic-1-plaintiff"
RATE: Final = 16_000
CAMERA: Final = CameraView("court-1-cam-1", "审判席", VENUE, "tech_courtroom", "online")


@dataclass
class Court:
    url: str
    t0_ms: int
    #: transcript segment ids in time order: judge +0.5 s, judge +2.7 s, plaintiff +3.0 s
    lines: list[int]
    #: judge's first and second file, plaintiff's file, the camera's H.264 .ts
    files: list[SegmentRecord]


class Capture:
    """The camera's live tile: a small JPEG 5 times a second (the page shows it beside playback)."""

    def __init__(self, channel: FrameChannel) -> None:
        self.channel = channel
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="fake-capture", daemon=True)

    def run(self) -> None:
        import cv2
        import numpy as np

        ok, data = cv2.imencode(".jpg", np.zeros((90, 160, 3), dtype=np.uint8))
        assert ok
        while not self.stop.wait(0.2):
            self.channel.publish_threadsafe(data.tobytes(), now_ms())


async def write_ts(path: Path, seconds: float) -> None:
    """An H.264 MPEG-TS test picture, 10 frames/s, as the stream-copy recorder writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
        "-i", f"testsrc=size=320x240:rate=10:duration={seconds}",
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-pix_fmt", "yuv420p",
        "-f", "mpegts", "-y", str(path),
    )  # fmt: skip
    assert await proc.wait() == 0


def write_wav(path: Path, seconds: float, hz: float) -> None:
    """A mono 16-bit tone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * RATE)
    samples = (int(8000 * math.sin(2 * math.pi * hz * i / RATE)) for i in range(n))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(b"".join(struct.pack("<h", s) for s in samples))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def court(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Court]:
    work = tmp_path_factory.mktemp("playback")
    data_dir = work / "hub"
    root = data_dir / "recordings"
    accounts = await AccountStore.open(
        work, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    audit = await AuditLog.open(data_dir)
    index = await RecordingIndex.open(data_dir / DB_FILE, root)
    hearings = await HearingService.open(data_dir, index, audit)
    store = await TranscriptStore.open(data_dir)
    await accounts.create_user(
        JUDGE.username,
        JUDGE.password,
        JUDGE.roles,
        display_name=JUDGE.display_name,
        language="zh-CN",
        must_change_password=False,
    )
    hearing = await hearings.open_hearing(
        title="王五诉赵六借款合同纠纷", case_no="(2026)京0101民初9号", venues=[VENUE], by="zheng"
    )
    t0 = now_ms() - 60_000
    files: list[SegmentRecord] = []
    for track, start, seconds, hz in (
        (JUDGE_TRACK, 0, 2.0, 440.0),
        (JUDGE_TRACK, 2_000, 2.0, 550.0),
        (PLAINTIFF_TRACK, 0, 4.0, 330.0),
    ):
        path = root / track / "20261123" / f"{track}_{t0 + start}.wav"
        write_wav(path, seconds, hz)
        files.append(
            await index.add_segment(
                camera=track,
                venue=VENUE,
                session_id=hearing.id,
                path=path,
                start_ms=t0 + start,
                end_ms=t0 + start + int(seconds * 1000),
                frames=int(seconds * RATE),
            )
        )
    lines = []
    for seat, text, start, end in (
        ("judge", "现在开庭", 500, 1_500),
        ("judge", "请原告陈述诉讼请求", 2_700, 3_500),
        ("plaintiff", "请求判令被告还款", 3_000, 3_900),
    ):
        final = FinalSegment(seat, text, (t0 + start) * 1000, (t0 + end) * 1000, (), 0.9)
        lines.append(await store.add_final(hearing.id, f"court-1/mic-1/{seat}", final))
    ts = root / CAMERA.id / "20261123" / f"{CAMERA.id}_{t0}.ts"
    await write_ts(ts, 4.0)
    files.append(
        await index.add_segment(
            camera=CAMERA.id,
            venue=VENUE,
            session_id=hearing.id,
            path=ts,
            start_ms=t0,
            end_ms=t0 + 4_000,
            frames=40,
        )
    )
    video = LiveVideo()
    capture = Capture(video.add_camera(CAMERA))
    capture.thread.start()
    await hearings.close_hearing(hearing.id, by="zheng")

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
        options=ConsoleOptions(nav=(*DEFAULT_NAV, pages_hearing.HEARING_NAV)),
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
        yield Court(f"http://{host}:{port}", t0, lines, files)
    finally:
        capture.stop.set()
        capture.thread.join(5)
        await asyncio.wait_for(runner.cleanup(), 30)
        await store.close()
        await hearings.close()
        await index.close()
        await audit.close()
        await accounts.close()


@pytest_asyncio.fixture(loop_scope="module")
async def judge(court: Court, browser: Browser) -> AsyncIterator[Page]:
    """The judge, signed in, on the hearing page of court-1; fails on foreign requests or errors."""
    origin = urlsplit(court.url)
    traffic = Traffic((origin.scheme, origin.netloc))
    context: BrowserContext = await open_context(browser, traffic)
    try:
        page = await context.new_page()
        await page.goto(court.url + "/login?next=/hearing", wait_until="load")
        await page.get_by_test_id("login-username").fill(JUDGE.username)
        await page.get_by_test_id("login-password").fill(JUDGE.password)
        await page.get_by_test_id("login-submit").click()
        await page.wait_for_url(court.url + "/hearing")
        await page.get_by_test_id("venue-select").select_option(VENUE)
        yield page
    finally:
        await context.close()
    problems = [f"request outside the hub: {u}" for u in traffic.foreign()]
    problems += traffic.unexpected_errors()
    assert not problems, problems


async def audio_state(page: Page) -> tuple[str, float]:
    """The audio element's source path and current time."""
    src, at = await page.evaluate(
        "() => { const a = document.getElementById('play-audio');"
        " return [new URL(a.currentSrc || a.src).pathname, a.currentTime]; }"
    )
    return str(src), float(at)


def media_path(segment: SegmentRecord) -> str:
    return f"/api/v1/recordings/segments/{segment.id}/media"


async def wait_audio_at(page: Page, segment: SegmentRecord, offset_s: float) -> None:
    """Wait until the audio plays ``segment`` at ``offset_s`` (± 0.1 s)."""
    await page.wait_for_function(
        "([path, at]) => { const a = document.getElementById('play-audio');"
        " return a.readyState >= 1 && new URL(a.currentSrc || a.src).pathname === path"
        " && Math.abs(a.currentTime - at) <= 0.1; }",
        arg=[media_path(segment), offset_s],
        timeout=10_000,
    )


async def test_clicking_a_line_seeks_the_seat_audio_there(court: Court, judge: Page) -> None:
    await expect(judge.get_by_test_id("hearing-banner")).to_have_attribute("data-state", "closed")
    panel = judge.get_by_test_id("playback")
    await expect(panel).to_be_visible()
    lines = [judge.locator(f'#transcript li[data-segment="{i}"]') for i in court.lines]
    await expect(judge.locator("#transcript li")).to_have_count(3)
    seats = judge.get_by_test_id("play-seat").locator("option")
    await expect(seats).to_have_count(2)
    # the player starts at the first recording
    await wait_audio_at(judge, court.files[0], 0.0)

    # the judge's second line is 0.7 s into the judge's second file
    await lines[1].click()
    await wait_audio_at(judge, court.files[1], 0.7)
    src, at = await audio_state(judge)
    assert src == media_path(court.files[1]) and abs(at - 0.7) <= 0.1
    await expect(lines[1].locator("input")).to_have_count(0)  # a click seeks, it does not edit
    await expect(lines[1]).to_have_class("tx-line tx-playing")
    await expect(lines[0]).to_have_class("tx-line")

    # the plaintiff's line: the seat switches to the plaintiff's track, 3.0 s into it
    await lines[2].click()
    await expect(judge.get_by_test_id("play-seat")).to_have_value(PLAINTIFF_TRACK)
    await wait_audio_at(judge, court.files[2], 3.0)
    # both lines spoken at +3.0..3.5 s are highlighted
    await expect(lines[2]).to_have_class("tx-line tx-playing")
    await expect(lines[1]).to_have_class("tx-line tx-playing")

    # the camera's video (H.264 .ts remuxed to MP4 by the hub) follows: 3.0 s into its file
    await expect(judge.get_by_test_id("play-camera")).to_have_value(CAMERA.id)
    await judge.wait_for_function(
        "([path, at]) => { const v = document.getElementById('play-video');"
        " return v.readyState >= 1 && v.videoWidth === 320"
        " && new URL(v.currentSrc || v.src).pathname === path"
        " && Math.abs(v.currentTime - at) <= 0.15; }",
        arg=[media_path(court.files[3]), 3.0],
        timeout=10_000,
    )

    # a double-click corrects a closed hearing's line (until it is sealed)
    await lines[0].dblclick()
    edit = lines[0].locator("input.tx-edit")
    await expect(edit).to_be_focused()
    await edit.press("Escape")
    await expect(lines[0].locator("input")).to_have_count(0)


async def test_playing_highlights_the_line_and_goes_on_into_the_next_file(
    court: Court, judge: Page
) -> None:
    lines = [judge.locator(f'#transcript li[data-segment="{i}"]') for i in court.lines]
    await expect(judge.locator("#transcript li")).to_have_count(3)
    await wait_audio_at(judge, court.files[0], 0.0)
    await lines[0].click()
    await wait_audio_at(judge, court.files[0], 0.5)
    await judge.evaluate(
        "() => { const a = document.getElementById('play-audio'); a.muted = true;"
        " return a.play(); }"
    )
    await expect(lines[0]).to_have_class("tx-line tx-playing", timeout=5_000)
    # the first file ends at +2 s: play goes on in the second, and its line (+2.7 s) lights up
    await judge.wait_for_function(
        "path => { const a = document.getElementById('play-audio');"
        " return new URL(a.currentSrc || a.src).pathname === path && !a.paused; }",
        arg=media_path(court.files[1]),
        timeout=10_000,
    )
    await expect(lines[1]).to_have_class("tx-line tx-playing", timeout=10_000)
    await expect(lines[0]).to_have_class("tx-line")
    # the video plays along: its file covers the whole 4 s, at the audio's time (+2 s) ± 0.5 s
    await judge.wait_for_function(
        "() => { const a = document.getElementById('play-audio');"
        " const v = document.getElementById('play-video');"
        " return !v.paused && Math.abs(v.currentTime - (2 + a.currentTime)) <= 0.5; }",
        timeout=5_000,
    )
    await judge.evaluate("() => document.getElementById('play-audio').pause()")
