"""Live video fan-out: the newest JPEG frame of each camera, served to any number of viewers.

The capture side (the recorder) holds exactly **one** upstream connection per camera and
publishes every frame it decodes into that camera's :class:`FrameChannel`; the web console's
viewers (MJPEG streams of the video wall) read from the channel. Nothing here knows about HTTP.

Why it is built this way (a send loop that awaits each client in turn lets one stalled client
freeze everyone):

- a channel keeps **only the newest frame**. Publishing never waits for a viewer and never
  queues per viewer: it replaces the frame and wakes the viewers. A viewer asking for the next
  frame gets the newest one it has not seen, so a slow viewer skips frames (counted) and costs
  neither the publisher nor the other viewers anything — memory stays one frame per camera;
- a capture thread publishes with :meth:`FrameChannel.publish_threadsafe`, which **coalesces**:
  while one hand-over to the loop is pending, newer frames replace its frame instead of queueing
  more callbacks, so a busy loop never accumulates a backlog of frames;
- ``on_first_viewer`` / ``on_last_viewer`` of a camera let a stream-copy camera (H.264, which
  the recorder does not decode) run a live JPEG transcoder only while somebody watches.

:class:`LiveVideo` also keeps what the wall shows about each camera (:class:`CameraView`: state,
recording, last frame, offline since, who may watch) and tells listeners when it changes.
Everything except :meth:`FrameChannel.publish_threadsafe` runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Final

log = logging.getLogger(__name__)

VENUE_KINDS: Final = frozenset(
    {"litigation_hall", "tech_courtroom", "interrogation_room", "command_center"}
)
CAMERA_STATES: Final = frozenset({"online", "offline", "fault", "starting"})
#: who may watch a camera live unless its venue says otherwise
DEFAULT_LIVE_ROLES: Final = frozenset({"commander", "judge", "clerk", "technician", "admin"})
#: the fields :meth:`LiveVideo.update` may change (the rest describe the camera itself)
UPDATABLE: Final = frozenset({"state", "recording", "last_frame_ms", "offline_since_ms"})
#: every JPEG starts with SOI
_JPEG_SOI: Final = b"\xff\xd8"
#: a bad frame is logged the first time and then every this many times (per channel)
_BAD_LOG_EVERY: Final = 100


@dataclass(frozen=True, slots=True)
class Frame:
    """One JPEG picture of a camera: ``seq`` counts 1, 2, 3… per channel; ``ts_ms`` is the
    capture time (UTC ms)."""

    seq: int
    ts_ms: int
    jpeg: bytes


@dataclass(frozen=True, slots=True)
class CameraView:
    """What the video wall shows about one camera."""

    id: str
    name: str
    venue: str
    #: ``litigation_hall`` | ``tech_courtroom`` | ``interrogation_room`` | ``command_center``
    venue_kind: str
    #: ``online`` | ``offline`` | ``fault`` | ``starting``
    state: str = "starting"
    recording: bool = False
    last_frame_ms: int | None = None
    offline_since_ms: int | None = None
    #: role names allowed to watch live (an interrogation room may be narrower than the default)
    live_roles: frozenset[str] = DEFAULT_LIVE_ROLES

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("camera id is empty")
        if self.venue_kind not in VENUE_KINDS:
            raise ValueError(
                f"camera {self.id}: venue_kind {self.venue_kind!r} is not one of "
                f"{sorted(VENUE_KINDS)}"
            )
        if self.state not in CAMERA_STATES:
            raise ValueError(
                f"camera {self.id}: state {self.state!r} is not one of {sorted(CAMERA_STATES)}"
            )
        if not isinstance(self.live_roles, frozenset):
            object.__setattr__(self, "live_roles", frozenset(self.live_roles))


class Viewer:
    """One watcher of a channel; use as ``async with channel.viewer() as viewer``.

    :meth:`next` returns the newest frame newer than the last one it returned, waiting for one
    when there is none; frames published in between are skipped (counted in :attr:`skipped`).
    """

    def __init__(self, channel: FrameChannel) -> None:
        self._channel = channel
        self._wake = asyncio.Event()
        self._last_seq = 0
        self._attached = False
        self._closed = False
        #: frames returned by :meth:`next`
        self.delivered = 0
        #: frames published while this viewer was busy, never returned to it
        self.skipped = 0

    @property
    def closed(self) -> bool:
        """True once the channel (or the hub) closed: :meth:`next` returns ``None`` at once."""
        return self._closed or self._channel.closed

    async def __aenter__(self) -> Viewer:
        self._channel._attach(self)
        self._attached = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._attached:
            self._attached = False
            self._channel._detach(self)

    def close(self) -> None:
        """End this viewer: a waiting :meth:`next` returns ``None`` (the hub is stopping)."""
        self._closed = True
        self._wake.set()

    def _notify(self) -> None:
        self._wake.set()

    def _take(self) -> Frame | None:
        frame = self._channel.latest()
        if frame is None or frame.seq <= self._last_seq:
            return None
        if self._last_seq:
            self.skipped += frame.seq - self._last_seq - 1
        self._last_seq = frame.seq
        self.delivered += 1
        return frame

    async def next(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet returned, waiting up to ``timeout`` seconds (``None``:
        forever); ``None`` on timeout or once :attr:`closed`."""
        if not self._attached:
            raise RuntimeError("use the viewer inside `async with channel.viewer()`")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self.closed:
            self._wake.clear()
            frame = self._take()
            if frame is not None:
                return frame
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return None
        return None


class FrameChannel:
    """The newest frame of one camera and its viewers (owned by the event loop)."""

    def __init__(
        self,
        camera_id: str,
        loop: asyncio.AbstractEventLoop,
        *,
        on_first_viewer: Callable[[], None] | None = None,
        on_last_viewer: Callable[[], None] | None = None,
    ) -> None:
        self.camera_id = camera_id
        self._loop = loop
        self._on_first = on_first_viewer
        self._on_last = on_last_viewer
        self._latest: Frame | None = None
        self._seq = 0
        self._viewers: set[Viewer] = set()
        self._closed = False
        # the hand-over from a capture thread: at most one callback pending, carrying the newest
        self._pending_lock = threading.Lock()
        self._pending: tuple[bytes, int] | None = None
        #: frames accepted
        self.published = 0
        #: frames refused (not JPEG); counted and logged, never raised from a capture thread
        self.bad_frames = 0
        #: thread-side frames replaced by a newer one before the loop took them
        self.coalesced = 0

    @property
    def viewers(self) -> int:
        """Viewers attached now."""
        return len(self._viewers)

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def latest(self) -> Frame | None:
        """The newest frame, or ``None`` before the first."""
        return self._latest

    def viewer(self) -> Viewer:
        """A new viewer (an async context manager; attached while inside it)."""
        return Viewer(self)

    # publishing -----------------------------------------------------------------------------------
    def publish(self, jpeg: bytes, ts_ms: int) -> None:
        """Make ``jpeg`` (captured at ``ts_ms``, UTC ms) the newest frame and wake the viewers.

        On the loop only. Never waits. Something that is not a JPEG is counted and dropped.
        """
        if self._closed:
            return
        if not isinstance(jpeg, bytes | bytearray | memoryview) or bytes(jpeg[:2]) != _JPEG_SOI:
            self.bad_frames += 1
            if self.bad_frames % _BAD_LOG_EVERY == 1:
                log.warning(
                    "live frame dropped: not a JPEG camera=%s bad_frames=%d",
                    self.camera_id,
                    self.bad_frames,
                )
            return
        self._seq += 1
        self._latest = Frame(self._seq, int(ts_ms), bytes(jpeg))
        self.published += 1
        for viewer in self._viewers:
            viewer._notify()

    def publish_threadsafe(self, jpeg: bytes, ts_ms: int) -> None:
        """:meth:`publish` from a capture thread.

        At most one hand-over is pending on the loop: a frame arriving while one is pending
        replaces it (counted in :attr:`coalesced`), so a busy loop never builds a backlog.
        """
        with self._pending_lock:
            already = self._pending is not None
            if already:
                self.coalesced += 1
            self._pending = (jpeg, ts_ms)
        if already:
            return
        try:
            self._loop.call_soon_threadsafe(self._take_pending)
        except RuntimeError:  # the loop is closed: the hub is gone, nobody watches
            with self._pending_lock:
                self._pending = None

    def _take_pending(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self.publish(*pending)

    # viewers --------------------------------------------------------------------------------------
    def _attach(self, viewer: Viewer) -> None:
        self._viewers.add(viewer)
        if len(self._viewers) == 1:
            self._call_hook(self._on_first, "on_first_viewer")

    def _detach(self, viewer: Viewer) -> None:
        if viewer not in self._viewers:
            return
        self._viewers.discard(viewer)
        if not self._viewers:
            self._call_hook(self._on_last, "on_last_viewer")

    def _call_hook(self, hook: Callable[[], None] | None, name: str) -> None:
        if hook is None:
            return
        try:
            hook()
        except Exception:  # a transcoder that fails to start must not break the viewer
            log.exception("live video hook failed camera=%s hook=%s", self.camera_id, name)

    def close(self) -> None:
        """Stop: every viewer's :meth:`Viewer.next` returns ``None``; publishing is ignored."""
        self._closed = True
        for viewer in list(self._viewers):
            viewer.close()


class LiveVideo:
    """The cameras of the court: their views for the wall and their frame channels."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """``loop`` is the loop the channels live on (default: the running loop when the first
        camera is added)."""
        self._loop = loop
        self._views: dict[str, CameraView] = {}
        self._channels: dict[str, FrameChannel] = {}
        self._listeners: list[Callable[[CameraView], None]] = []

    def add_camera(
        self,
        view: CameraView,
        *,
        on_first_viewer: Callable[[], None] | None = None,
        on_last_viewer: Callable[[], None] | None = None,
    ) -> FrameChannel:
        """Register a camera and return its channel; ``ValueError`` if the id is taken.

        ``on_first_viewer`` / ``on_last_viewer`` run on the loop when the first viewer attaches
        and when the last one leaves (a stream-copy camera starts its live transcoder only then).
        """
        if view.id in self._views:
            raise ValueError(f"camera {view.id} is already registered")
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(
                    "LiveVideo needs its event loop: pass loop= or add cameras on the loop"
                ) from None
        channel = FrameChannel(
            view.id, self._loop, on_first_viewer=on_first_viewer, on_last_viewer=on_last_viewer
        )
        self._views[view.id] = view
        self._channels[view.id] = channel
        log.info("live camera added camera=%s venue=%s", view.id, view.venue)
        self._notify(view)
        return channel

    def update(self, camera_id: str, **changes: object) -> None:
        """Change ``state``, ``recording``, ``last_frame_ms`` or ``offline_since_ms`` of a camera;
        listeners hear about it when something changed. ``KeyError`` for an unknown camera,
        ``ValueError`` for another field or a bad state."""
        current = self._views.get(camera_id)
        if current is None:
            raise KeyError(f"no camera {camera_id!r}")
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValueError(f"camera fields that cannot be updated: {sorted(unknown)}")
        new = dataclasses.replace(current, **changes)  # type: ignore[arg-type]
        if new == current:
            return
        self._views[camera_id] = new
        self._notify(new)

    def cameras(self) -> list[CameraView]:
        """Every camera's view, in the order they were added."""
        return list(self._views.values())

    def view(self, camera_id: str) -> CameraView | None:
        """One camera's view."""
        return self._views.get(camera_id)

    def channel(self, camera_id: str) -> FrameChannel | None:
        """One camera's frame channel."""
        return self._channels.get(camera_id)

    def last_frame_ms(self, camera_id: str) -> int | None:
        """When the camera's newest frame was captured: the newer of the view's
        ``last_frame_ms`` and the channel's newest frame (frames do not notify listeners)."""
        view, channel = self._views.get(camera_id), self._channels.get(camera_id)
        if view is None or channel is None:
            return None
        latest = channel.latest()
        stamps = [ms for ms in (view.last_frame_ms, latest.ts_ms if latest else None) if ms]
        return max(stamps) if stamps else None

    def add_listener(self, fn: Callable[[CameraView], None]) -> Callable[[], None]:
        """Call ``fn(view)`` on every view change (on the loop); returns the unsubscribe."""
        self._listeners.append(fn)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(fn)

        return remove

    def close(self) -> None:
        """Close every channel: viewers end (the hub is stopping)."""
        for channel in self._channels.values():
            channel.close()

    def _notify(self, view: CameraView) -> None:
        for fn in list(self._listeners):
            try:
                fn(view)
            except Exception:  # one broken listener must not stop the others
                log.exception("live video listener failed camera=%s", view.id)
