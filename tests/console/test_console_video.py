"""Live video: the frame channels' fan-out (skip to newest, thread hand-over, first/last viewer
hooks) and the console's video wall routes over real HTTP — who may watch which camera, MJPEG
streams to many viewers while one never reads, the audit row of each stream start, stills, and
a console shutdown that ends open streams instead of waiting for them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from test_console_app_harness import BROWSER, STAFF_ROLES, auth, authenticators, make_service

from dashboards import pages_video
from dashboards.api import POLICY_KEY
from dashboards.app import ConsoleOptions, create_console_app
from dashboards.auth import Role
from dashboards.pages import DEFAULT_NAV
from dashboards.pages_video import VIDEO_ROLES, LiveStreams, VideoOptions, install_live_video
from dashboards.sessions import AUDIT_KEY
from hub.audit import Action, AuditLog
from hub.live_video import CameraView, FrameChannel, LiveVideo

HALL = CameraView("hall-cam", "大厅全景", "第一诉讼服务大厅", "litigation_hall", state="online")
COURT = CameraView(
    "court-cam", "审判席", "第三科技法庭", "tech_courtroom", state="online", recording=True
)
#: an interrogation room only judges may watch
ROOM = CameraView(
    "room-cam",
    "提讯室一",
    "远程提讯室",
    "interrogation_room",
    state="online",
    live_roles=frozenset({"judge"}),
)


def jpeg(n: int, size: int = 0) -> bytes:
    """A real JPEG with ``n`` in it, padded after EOI to about ``size`` bytes when asked."""
    image = np.full((36, 64, 3), n % 256, dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    body = data.tobytes()
    return body + bytes(max(0, size - len(body)))


# the channel on its own ------------------------------------------------------------------------


async def test_a_viewer_gets_the_newest_frame_and_skips_the_rest() -> None:
    live = LiveVideo()
    channel = live.add_camera(HALL)
    async with channel.viewer() as viewer:
        assert await viewer.next(0.01) is None  # nothing yet: timeout
        for i in range(1, 6):
            channel.publish(jpeg(i), ts_ms=1000 + i)
        frame = await viewer.next(1)
        assert frame is not None and (frame.seq, frame.ts_ms) == (5, 1005)
        assert await viewer.next(0.01) is None  # nothing newer
        channel.publish(jpeg(6), ts_ms=1006)
        channel.publish(jpeg(7), ts_ms=1007)
        frame = await viewer.next(1)
        assert frame is not None and frame.seq == 7
        assert (viewer.delivered, viewer.skipped) == (2, 1)


async def test_a_waiting_viewer_wakes_on_publish_and_a_new_one_gets_the_latest() -> None:
    channel = LiveVideo().add_camera(HALL)
    async with channel.viewer() as first:
        waiting = asyncio.create_task(first.next(10))
        await asyncio.sleep(0)
        channel.publish(jpeg(1), ts_ms=1)
        frame = await asyncio.wait_for(waiting, 5)
        assert frame is not None and frame.seq == 1
    async with channel.viewer() as late:
        frame = await late.next(0)
        assert frame is not None and frame.seq == 1  # the still right away


async def test_what_is_not_a_jpeg_is_counted_and_dropped() -> None:
    channel = LiveVideo().add_camera(HALL)
    channel.publish(b"GIF89a", ts_ms=1)
    channel.publish(b"", ts_ms=2)
    assert channel.latest() is None
    assert channel.bad_frames == 2


async def test_a_capture_thread_publishes_through_one_pending_hand_over() -> None:
    channel = LiveVideo().add_camera(HALL)
    frames = [jpeg(i) for i in range(200)]

    def capture() -> None:
        for i, data in enumerate(frames):
            channel.publish_threadsafe(data, ts_ms=i)

    async with channel.viewer() as viewer:
        thread = threading.Thread(target=capture)
        thread.start()
        thread.join()  # blocks the loop: every hand-over after the first coalesces
        frame = await viewer.next(5)
        assert frame is not None
        assert frame.ts_ms == 199 and frame.jpeg == frames[199]
        assert channel.published + channel.coalesced == 200
        assert channel.coalesced > 0
        assert await viewer.next(0.05) is None  # no backlog of callbacks behind it


async def test_the_first_and_last_viewer_hooks_run_once_each() -> None:
    calls: list[str] = []
    channel = LiveVideo().add_camera(
        HALL,
        on_first_viewer=lambda: calls.append("first"),
        on_last_viewer=lambda: calls.append("last"),
    )
    async with channel.viewer(), channel.viewer(), channel.viewer():
        assert channel.viewers == 3
        assert calls == ["first"]
    assert calls == ["first", "last"] and channel.viewers == 0


async def test_views_change_and_listeners_hear_it() -> None:
    live = LiveVideo()
    heard: list[CameraView] = []
    unsubscribe = live.add_listener(heard.append)
    live.add_camera(HALL)
    live.update("hall-cam", state="offline", offline_since_ms=5000)
    live.update("hall-cam", state="offline", offline_since_ms=5000)  # no change: not heard
    assert [(v.state, v.offline_since_ms) for v in heard] == [("online", None), ("offline", 5000)]
    with pytest.raises(ValueError, match="cannot be updated"):
        live.update("hall-cam", name="x")
    with pytest.raises(KeyError):
        live.update("nope", state="online")
    with pytest.raises(ValueError, match="state"):
        live.update("hall-cam", state="sleeping")
    unsubscribe()
    live.update("hall-cam", recording=True)
    assert len(heard) == 2
    with pytest.raises(ValueError, match="already"):
        live.add_camera(HALL)


# the console ------------------------------------------------------------------------------------


@dataclass
class VideoConsole:
    client: TestClient[web.Request, web.Application]
    server: TestServer
    live: LiveVideo
    streams: LiveStreams
    audit: AuditLog
    channels: dict[str, FrameChannel]

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


@contextlib.asynccontextmanager
async def video_console(
    tmp_path: Path, hooks: list[str] | None = None
) -> AsyncIterator[VideoConsole]:
    """The console with the wall's routes and three cameras (bearer tokens of every role)."""
    audit = await AuditLog.open(tmp_path)
    live = LiveVideo()
    channels: dict[str, FrameChannel] = {}
    for view in (HALL, COURT, ROOM):
        if hooks is not None and view is COURT:
            channels[view.id] = live.add_camera(
                view,
                on_first_viewer=lambda: hooks.append("first"),
                on_last_viewer=lambda: hooks.append("last"),
            )
        else:
            channels[view.id] = live.add_camera(view)
    installed: list[LiveStreams] = []

    def setup(app: web.Application) -> None:
        app[AUDIT_KEY] = audit
        installed.append(install_live_video(app, live, VideoOptions(tick_s=0.1)))

    app = create_console_app(
        make_service(tmp_path / "hub"),
        authenticators(),
        options=ConsoleOptions(nav=(*DEFAULT_NAV, pages_video.WALL_NAV)),
        extra_routes=pages_video.ROUTES,
        setup=setup,
    )
    server = TestServer(app)
    try:
        async with TestClient(server) as client:
            yield VideoConsole(client, server, live, installed[0], audit, channels)
    finally:
        await audit.close()


async def read_part(content: aiohttp.StreamReader) -> tuple[int, bytes] | None:
    """The next multipart part of an MJPEG stream as (seq, jpeg); ``None`` at its end."""
    line = await content.readline()
    while line in (b"\r\n", b"\n"):
        line = await content.readline()
    if not line or line.strip() == b"--frame--":
        return None
    assert line.strip() == b"--frame", line
    headers: dict[str, str] = {}
    while (line := await content.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("ascii").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await content.readexactly(int(headers["content-length"]))
    assert headers["content-type"] == "image/jpeg"
    return int(headers["x-frame-seq"]), body


def concrete(path: str, camera: str = "hall-cam") -> str:
    return path.replace("{camera}", camera)


async def test_the_video_routes_are_declared_for_their_roles(tmp_path: Path) -> None:
    async with video_console(tmp_path) as c:
        c.channels["hall-cam"].publish(jpeg(1), ts_ms=1)
        policy = c.client.app[POLICY_KEY]
        assert policy.undeclared(c.client.app) == []
        assert {r.roles for r in pages_video.ROUTES} == {VIDEO_ROLES}
        wrong = []
        for route in pages_video.ROUTES:
            if route.path.endswith("live.mjpg"):
                continue  # a stream: tested below
            for role in (*STAFF_ROLES, None):
                r = await c.client.get(concrete(route.path), headers=auth(role) if role else {})
                expected = 200 if role in VIDEO_ROLES else 401 if role is None else 403
                if r.status != expected:
                    wrong.append(f"{route.path} {role}: {r.status}")
        assert wrong == []
        # a browser without a session is sent to sign in, one without the role gets the 403 page
        r = await c.client.get("/wall", headers=BROWSER, allow_redirects=False)
        assert r.status == 302 and r.headers["Location"].startswith("/login")
        r = await c.client.get("/wall", headers=auth(Role.COUNTER, **BROWSER))
        assert r.status == 403 and "text/html" in r.headers["Content-Type"]


async def test_a_camera_narrowed_to_judges_is_invisible_and_forbidden_to_a_commander(
    tmp_path: Path,
) -> None:
    async with video_console(tmp_path) as c:
        for channel in c.channels.values():
            channel.publish(jpeg(1), ts_ms=1)
        commander, judge = auth(Role.COMMANDER), auth(Role.JUDGE)
        r = await c.client.get("/api/v1/cameras", headers=commander)
        ids = [cam["id"] for cam in (await r.json())["cameras"]]
        assert ids == ["court-cam", "hall-cam"]  # venue order; no interrogation room
        r = await c.client.get("/api/v1/cameras", headers=judge)
        assert {cam["id"] for cam in (await r.json())["cameras"]} == {
            "court-cam",
            "hall-cam",
            "room-cam",
        }
        for path in ("/video/room-cam/still.jpg", "/video/room-cam/live.mjpg"):
            r = await c.client.get(path, headers=commander)
            assert r.status == 403, path
            assert "may not watch" in (await r.json())["error"]
        r = await c.client.get("/video/room-cam/still.jpg", headers=judge)
        assert r.status == 200
        page = await (await c.client.get("/wall", headers=commander)).text()
        assert "提讯室一" not in page and "room-cam" not in page
        assert "court-cam" in page
        assert (await c.client.get("/video/nope/still.jpg", headers=judge)).status == 404
        entries = await c.audit.entries(action=Action.LIVE_FEED_STARTED)
        assert entries == []  # a refused stream is no stream


async def test_the_still_is_the_newest_frame_and_never_cached(tmp_path: Path) -> None:
    async with video_console(tmp_path) as c:
        h = auth(Role.COMMANDER)
        r = await c.client.get("/video/hall-cam/still.jpg", headers=h)
        assert r.status == 404
        assert "not sent a picture" in (await r.json())["error"]
        c.channels["hall-cam"].publish(jpeg(1), ts_ms=1)
        c.channels["hall-cam"].publish(jpeg(2), ts_ms=2)
        r = await c.client.get("/video/hall-cam/still.jpg", headers=h)
        assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"
        assert r.headers["Cache-Control"] == "no-store"
        assert await r.read() == jpeg(2) and r.headers["X-Frame-Seq"] == "2"
        cams = (await (await c.client.get("/api/v1/cameras", headers=h)).json())["cameras"]
        hall = next(cam for cam in cams if cam["id"] == "hall-cam")
        assert hall["seq"] == 2 and hall["has_still"] is True and hall["live_age_s"] > 0


async def test_each_stream_start_is_one_audit_row(tmp_path: Path) -> None:
    async with video_console(tmp_path) as c:
        channel = c.channels["court-cam"]
        async with c.client.get("/video/court-cam/live.mjpg", headers=auth(Role.COMMANDER)) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
            for i in range(1, 4):
                channel.publish(jpeg(i), ts_ms=i)
                part = await asyncio.wait_for(read_part(r.content), 5)
                assert part is not None and part[0] == i
        entries = await c.audit.entries(action=Action.LIVE_FEED_STARTED)
        assert len(entries) == 1
        (entry,) = entries
        assert (entry.actor, entry.target) == ("user-commander", "court-cam")
        assert entry.detail["venue"] == "第三科技法庭"
        assert entry.detail["venue_kind"] == "tech_courtroom"


async def stalled_client(c: VideoConsole, path: str) -> socket.socket:
    """A client that asks for a stream and never reads (tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (c.server.host, c.server.port))  # type: ignore[arg-type]
    request = (
        f"GET {path} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: {auth(Role.COMMANDER)['Authorization']}\r\n\r\n"
    )
    await asyncio.get_running_loop().sock_sendall(sock, request.encode())
    return sock


async def test_many_viewers_keep_up_while_one_stalls_and_one_publish_reaches_all(
    tmp_path: Path,
) -> None:
    hooks: list[str] = []
    async with video_console(tmp_path, hooks) as c:
        channel = c.channels["court-cam"]
        path = "/video/court-cam/live.mjpg"
        stalled = await stalled_client(c, path)
        async with contextlib.AsyncExitStack() as stack:
            readers = [
                await stack.enter_async_context(c.client.get(path, headers=auth(Role.COMMANDER)))
                for _ in range(4)
            ]
            await wait_until(lambda: channel.viewers == 5, "five viewers attached")
            assert hooks == ["first"]  # one upstream, however many watch
            # 40 big frames: far more than the stalled client's buffers hold
            for i in range(1, 41):
                channel.publish(jpeg(i, size=256 * 1024), ts_ms=i)
                for r in readers:  # each publish reaches every reading viewer
                    part = await asyncio.wait_for(read_part(r.content), 10)
                    assert part is not None and part[0] == i
            assert channel.published == 40
            # the stalled one is stuck on an early frame; the others never waited for it
            stuck = [s for s in c.streams._streams if s.viewer.delivered < 40]
            assert len(stuck) == 1 and stuck[0].viewer.delivered < 10
            # once it reads again it jumps to the newest frame, skipping the rest
            stalled.setblocking(True)
            stalled.settimeout(10)
            channel.publish(jpeg(41), ts_ms=41)
            received = await asyncio.to_thread(drain_until, stalled, b"X-Frame-Seq: 41\r\n")
            assert b"X-Frame-Seq: 20\r\n" not in received
            assert stuck[0].viewer.skipped > 20
        stalled.close()
        await wait_until(lambda: channel.viewers == 0, "every viewer gone")
        assert hooks == ["first", "last"]


def drain_until(sock: socket.socket, marker: bytes) -> bytes:
    """Everything ``sock`` receives until ``marker`` has come."""
    data = b""
    while marker not in data:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise AssertionError("stream ended before " + marker.decode())
        data += chunk
    return data


async def wait_until(predicate: object, what: str, timeout: float = 10.0) -> None:
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_stopping_the_console_ends_open_streams(tmp_path: Path) -> None:
    async with video_console(tmp_path) as c:
        channel = c.channels["hall-cam"]
        channel.publish(jpeg(1), ts_ms=1)
        session = aiohttp.ClientSession()
        try:
            stalled = await stalled_client(c, "/video/hall-cam/live.mjpg")
            r = await session.get(c.url("/video/hall-cam/live.mjpg"), headers=auth(Role.JUDGE))
            assert r.status == 200
            part = await asyncio.wait_for(read_part(r.content), 5)
            assert part is not None and part[0] == 1
            await wait_until(lambda: channel.viewers == 2, "two viewers")
            # the console stops (as the hub does on shutdown): nothing waits for the streams
            await asyncio.wait_for(c.server.close(), 20)
            with contextlib.suppress(aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                assert await asyncio.wait_for(read_part(r.content), 5) is None
            assert channel.viewers == 0
            assert c.streams.open == 0
            stalled.close()
        finally:
            await session.close()
