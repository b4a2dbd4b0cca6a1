"""The video wall: live camera feeds of every venue for the command center (MJPEG over HTTP).

| route                                | roles                                   |
|--------------------------------------|-----------------------------------------|
| ``GET /wall``                        | commander, judge, technician, admin     |
| ``GET /video/{camera}/live.mjpg``    | same, and the camera's ``live_roles``   |
| ``GET /video/{camera}/still.jpg``    | same, and the camera's ``live_roles``   |
| ``GET /api/v1/cameras``              | same; lists only cameras the caller may watch |

A camera's :attr:`~hub.live_video.CameraView.live_roles` narrows who may watch it (a remote
interrogation room may be open to judges only): for anyone else its live and still endpoints
answer 403 and it is absent from the wall and the camera list.

``live.mjpg`` is ``multipart/x-mixed-replace; boundary=frame``: one part per frame, taken from
the camera's :class:`~hub.live_video.FrameChannel` through a viewer that holds at most the newest
frame, so a slow client skips frames and never stalls the publisher or other clients. Each part
carries ``X-Frame-Seq`` and ``X-Frame-Ts`` (capture time, UTC ms). Every stream start is one row
of the audit trail (``live_feed_started``: camera, venue, user, address). A client that stops
reading for :attr:`VideoOptions.stall_timeout_s` is cut off; one that goes away is noticed within
:attr:`VideoOptions.tick_s` even when the camera sends nothing.

Wiring (the hub's ``console_app``): add :data:`ROUTES` to ``extra_routes``, :data:`WALL_NAV` to
the nav, and call :func:`install_live_video` in ``setup`` — it sets :data:`LIVE_VIDEO_KEY` and
registers the ``on_shutdown`` hook that ends open streams (an MJPEG stream never ends by itself,
and aiohttp would otherwise wait for it until its shutdown timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from dashboards.auth import PRINCIPAL_KEY, Principal, Role
from dashboards.pages import RENDERER_KEY, NavItem, add_security_headers
from dashboards.routes import Route
from dashboards.sessions import AUDIT_KEY, http_error
from hub.audit import Action
from hub.live_video import CameraView, Frame, LiveVideo, Viewer
from protocol.messages import now_ms

log = logging.getLogger(__name__)

#: the cameras of the court; :func:`install_live_video` sets it in the console's ``setup``
LIVE_VIDEO_KEY: Final = web.AppKey("live_video", LiveVideo)
#: who may open the wall at all (a camera's ``live_roles`` may narrow it further)
#: clerks: the hearing page shows them their courtroom's cameras (issue 6)
VIDEO_ROLES: Final = frozenset(
    {Role.COMMANDER, Role.JUDGE, Role.CLERK, Role.TECHNICIAN, Role.ADMIN}
)
#: the wall's entry in the top bar and on the home page
WALL_NAV: Final = NavItem("/wall", "nav.wall", "tile.wall", "i-shield")
BOUNDARY: Final = "frame"
MJPEG_CONTENT_TYPE: Final = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
#: venue kinds in the order the wall shows them
VENUE_ORDER: Final = ("command_center", "tech_courtroom", "interrogation_room", "litigation_hall")


@dataclass(frozen=True, slots=True)
class VideoOptions:
    """Tuning of the MJPEG streams (defaults suit a court; tests make them small)."""

    #: how often a waiting stream checks that its client is still there
    tick_s: float = 1.0
    #: a client that has not taken a frame for this long is cut off
    stall_timeout_s: float = 30.0
    #: kernel send buffer per stream: small, so a slow client holds few stale frames
    send_buffer_bytes: int = 256 * 1024
    #: on shutdown, how long streams may take to end before their connections are cut
    close_timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if min(self.tick_s, self.stall_timeout_s, self.close_timeout_s) <= 0:
            raise ValueError("video intervals must be positive")
        if self.send_buffer_bytes < 0:
            raise ValueError("send_buffer_bytes must not be negative")


@dataclass(eq=False)
class _Stream:
    camera: str
    user: str
    transport: asyncio.BaseTransport | None
    viewer: Viewer
    done: asyncio.Event = field(default_factory=asyncio.Event)


class LiveStreams:
    """The open MJPEG streams of one console app: counted, and ended when the app shuts down."""

    def __init__(self, options: VideoOptions | None = None) -> None:
        self.options = options or VideoOptions()
        self._streams: set[_Stream] = set()
        self._stopping = asyncio.Event()
        #: the newest encoded part per camera: every viewer of a frame sends the same bytes
        self._parts: dict[str, tuple[int, bytes]] = {}
        self.started = 0
        self.cut_slow = 0

    @property
    def open(self) -> int:
        """Streams being served now."""
        return len(self._streams)

    @property
    def stopping(self) -> bool:
        """True once the app is shutting down."""
        return self._stopping.is_set()

    def part(self, camera: str, frame: Frame) -> bytes:
        """The multipart part of ``frame`` (built once per frame, shared by its viewers)."""
        cached = self._parts.get(camera)
        if cached is not None and cached[0] == frame.seq:
            return cached[1]
        head = (
            f"--{BOUNDARY}\r\n"
            "Content-Type: image/jpeg\r\n"
            f"Content-Length: {len(frame.jpeg)}\r\n"
            f"X-Frame-Seq: {frame.seq}\r\n"
            f"X-Frame-Ts: {frame.ts_ms}\r\n\r\n"
        ).encode("ascii")
        data = head + frame.jpeg + b"\r\n"
        self._parts[camera] = (frame.seq, data)
        return data

    async def close_all(self) -> None:
        """End every stream; cut the connections of those that do not end in time."""
        self._stopping.set()
        streams = list(self._streams)
        if not streams:
            return
        log.info("ending live video streams count=%d", len(streams))
        for stream in streams:
            stream.viewer.close()
        waits = [asyncio.create_task(s.done.wait()) for s in streams]
        _, pending = await asyncio.wait(waits, timeout=self.options.close_timeout_s)
        for task in pending:
            task.cancel()
        for stream in streams:
            if not stream.done.is_set():
                _abort(stream.transport)  # stuck writing to a client that does not read

    def _add(self, stream: _Stream) -> None:
        self._streams.add(stream)
        self.started += 1

    def _remove(self, stream: _Stream) -> None:
        self._streams.discard(stream)
        stream.done.set()


LIVE_STREAMS_KEY: Final = web.AppKey("live_video_streams", LiveStreams)


async def _end_streams(app: web.Application) -> None:
    await app[LIVE_STREAMS_KEY].close_all()


def install_live_video(
    app: web.Application, live: LiveVideo, options: VideoOptions | None = None
) -> LiveStreams:
    """Serve ``live`` on ``app`` (call in the console's ``setup``): sets :data:`LIVE_VIDEO_KEY`
    and ends open streams on shutdown."""
    streams = LiveStreams(options)
    app[LIVE_VIDEO_KEY] = live
    app[LIVE_STREAMS_KEY] = streams
    app.on_shutdown.append(_end_streams)
    return streams


# access -----------------------------------------------------------------------------------------


def may_watch(principal: Principal, view: CameraView) -> bool:
    """True when one of the principal's roles is among the camera's ``live_roles``."""
    return any(role.value in view.live_roles for role in principal.roles)


def _live_of(request: web.Request) -> LiveVideo:
    live = request.config_dict.get(LIVE_VIDEO_KEY)
    if live is None:
        raise _error(503, "live video is not running")
    return live


def _camera(request: web.Request, live: LiveVideo) -> CameraView:
    """The camera of the URL: 404 when unknown, 403 when the caller may not watch it."""
    camera_id = request.match_info["camera"]
    view = live.view(camera_id)
    if view is None:
        raise _error(404, f"no camera {camera_id}")
    if not may_watch(request[PRINCIPAL_KEY], view):
        log.info("live video refused user=%s camera=%s", request[PRINCIPAL_KEY].name, camera_id)
        raise _error(403, "forbidden: your role may not watch this camera")
    return view


def _error(status: int, message: str) -> web.HTTPException:
    if status == 503:
        return web.HTTPServiceUnavailable(
            text=json.dumps({"error": message}), content_type="application/json"
        )
    return http_error(status, message)


def venue_rank(view: CameraView) -> tuple[int, str, str]:
    """Sort key of the wall: venue kind, venue, camera name."""
    kind = VENUE_ORDER.index(view.venue_kind) if view.venue_kind in VENUE_ORDER else 99
    return kind, view.venue, view.name or view.id


def camera_json(live: LiveVideo, view: CameraView, now: int) -> dict[str, Any]:
    """One camera as the wall reads it (never its ``live_roles``)."""
    channel = live.channel(view.id)
    latest = channel.latest() if channel is not None else None
    last_frame = live.last_frame_ms(view.id)
    return {
        "id": view.id,
        "name": view.name or view.id,
        "venue": view.venue,
        "venue_kind": view.venue_kind,
        "state": view.state,
        "recording": view.recording,
        "last_frame_ms": last_frame,
        "offline_since_ms": view.offline_since_ms,
        "live_age_s": None if last_frame is None else max(0.0, (now - last_frame) / 1000),
        "seq": latest.seq if latest is not None else None,
        "has_still": latest is not None,
        "viewers": channel.viewers if channel is not None else 0,
        "live_url": f"/video/{view.id}/live.mjpg",
        "still_url": f"/video/{view.id}/still.jpg",
    }


def visible_cameras(live: LiveVideo, principal: Principal) -> list[dict[str, Any]]:
    """The cameras ``principal`` may watch, in wall order."""
    now = now_ms()
    views = sorted((v for v in live.cameras() if may_watch(principal, v)), key=venue_rank)
    return [camera_json(live, v, now) for v in views]


# handlers ---------------------------------------------------------------------------------------


async def get_cameras(request: web.Request) -> web.Response:
    """``GET /api/v1/cameras``: what the wall shows, for the caller's roles."""
    live = _live_of(request)
    body = {"server_ms": now_ms(), "cameras": visible_cameras(live, request[PRINCIPAL_KEY])}
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def wall_page(request: web.Request) -> web.Response:
    """``GET /wall``: the video wall."""
    live = request.config_dict.get(LIVE_VIDEO_KEY)
    cameras = visible_cameras(live, request[PRINCIPAL_KEY]) if live is not None else []
    return request.app[RENDERER_KEY].render(
        request,
        "wall.html",
        page="wall",
        title_key="wall.title",
        cameras=cameras,
        video_running=live is not None,
    )


async def still_frame(request: web.Request) -> web.Response:
    """``GET /video/{camera}/still.jpg``: the camera's newest frame."""
    live = _live_of(request)
    view = _camera(request, live)
    channel = live.channel(view.id)
    frame = channel.latest() if channel is not None else None
    if frame is None:
        raise _error(404, f"camera {view.id} has not sent a picture yet")
    response = web.Response(
        body=frame.jpeg,
        content_type="image/jpeg",
        headers={
            "Cache-Control": "no-store",
            "X-Frame-Seq": str(frame.seq),
            "X-Frame-Ts": str(frame.ts_ms),
        },
    )
    add_security_headers(response)
    return response


def _limit_send_buffer(transport: asyncio.BaseTransport | None, size: int) -> None:
    if not size or transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _abort(transport: asyncio.BaseTransport | None) -> None:
    if isinstance(transport, asyncio.Transport):
        transport.abort()


async def _pump(
    request: web.Request,
    response: web.StreamResponse,
    viewer: Viewer,
    streams: LiveStreams,
    camera: str,
) -> str:
    """Write frames until the client goes, stalls or the hub stops; returns why it ended."""
    options = streams.options
    try:
        while True:
            frame = await viewer.next(options.tick_s)
            if viewer.closed or streams.stopping:
                return "hub stopping"
            if _gone(request):
                return "client gone"
            if frame is None:
                continue  # nothing new: look again whether the client is still there
            try:
                await asyncio.wait_for(
                    response.write(streams.part(camera, frame)), options.stall_timeout_s
                )
            except TimeoutError:
                streams.cut_slow += 1
                _abort(request.transport)
                return "client stalled"
    except ConnectionError:
        return "client gone"  # it went away while a frame was on its way


async def live_stream(request: web.Request) -> web.StreamResponse:
    """``GET /video/{camera}/live.mjpg``: the camera live, one multipart part per frame."""
    live = _live_of(request)
    view = _camera(request, live)
    channel = live.channel(view.id)
    streams = request.config_dict.get(LIVE_STREAMS_KEY) or LiveStreams()
    audit = request.config_dict.get(AUDIT_KEY)
    if channel is None or streams.stopping:
        raise _error(503, "live video is stopping")
    if audit is None:  # watching a courtroom live is always on the record
        raise _error(503, "audit trail not available: live video refused")
    principal = request[PRINCIPAL_KEY]
    if request.method == "HEAD":  # a link checker, not a viewer: no stream, no audit row
        return web.Response(headers={"Content-Type": MJPEG_CONTENT_TYPE})
    await audit.record(
        principal.name,
        Action.LIVE_FEED_STARTED,
        target=view.id,
        detail={"camera": view.id, "venue": view.venue, "venue_kind": view.venue_kind},
        source=request.remote or "",
    )
    response = web.StreamResponse(
        headers={
            "Content-Type": MJPEG_CONTENT_TYPE,
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a proxy in front must not buffer a live stream
        }
    )
    add_security_headers(response)
    _limit_send_buffer(request.transport, streams.options.send_buffer_bytes)
    await response.prepare(request)
    log.info(
        "live stream started camera=%s user=%s peer=%s", view.id, principal.name, request.remote
    )
    async with channel.viewer() as viewer:
        stream = _Stream(view.id, principal.name, request.transport, viewer)
        streams._add(stream)
        try:
            reason = await _pump(request, response, viewer, streams, view.id)
        finally:
            streams._remove(stream)
        log.info(
            "live stream ended camera=%s user=%s reason=%s frames=%d skipped=%d",
            view.id,
            principal.name,
            reason,
            viewer.delivered,
            viewer.skipped,
        )
    if not _gone(request):
        with contextlib.suppress(ConnectionError, TimeoutError):
            end = f"--{BOUNDARY}--\r\n".encode("ascii")
            await asyncio.wait_for(response.write(end), streams.options.close_timeout_s)
            await response.write_eof()
    return response


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/wall", wall_page, VIDEO_ROLES),
    Route("GET", "/video/{camera}/live.mjpg", live_stream, VIDEO_ROLES),
    Route("GET", "/video/{camera}/still.jpg", still_frame, VIDEO_ROLES),
    Route("GET", "/api/v1/cameras", get_cameras, VIDEO_ROLES),
)
