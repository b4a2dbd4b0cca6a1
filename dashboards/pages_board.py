"""The hall board: the big screen's page and its anonymous, read-only live channel.

| route            | roles                                                              |
|------------------|--------------------------------------------------------------------|
| ``GET /board``    | anonymous (admin and technician are named only so the top bar links it) |
| ``GET /ws/board`` | anonymous                                                          |

The board shows ticket numbers, windows, waiting counts and estimates — never names or ids. The
console's ``/ws`` needs a signed-in user, so the board has its own WebSocket that carries only
the board snapshot (:func:`dashboards.queue_api.snapshot_json`)::

    ← {"type": "hello", "server_ms": …, "heartbeat_s": 10}
    ← {"type": "board", "snapshot": {...}}        (on connect, then after every queue change)
    ← {"type": "ping", "server_ms": …}             (every ``heartbeat_s``)

Queue changes are **coalesced**: the first change schedules one snapshot ``coalesce_s`` later
and every change until then rides on it, so a burst of calls costs one snapshot, encoded once.
Each client is a :class:`dashboards.live.LiveClient` — a bounded queue drained by its own sender
task — and one whose queue overflows (it stopped reading) is dropped with close code 1013; the
page reconnects and gets a fresh snapshot. Pages reconnect within seconds (1, 2, 4 s, at most
5 s) and show "网络中断 / network down" meanwhile.

The chime is generated in the page (Web Audio), and browsers only play sound after a user
gesture: **the big screen needs one click** (the "enable sound" button) after it is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from dashboards.auth import Principal, Role
from dashboards.live import (
    CLOSE_TIMEOUT_S,
    CLOSE_TOO_SLOW,
    MAX_CLIENT_MESSAGE,
    LiveClient,
    LiveOptions,
    encode,
)
from dashboards.pages import RENDERER_KEY
from dashboards.queue_api import QUEUE_KEY, snapshot_json
from dashboards.routes import Route
from hub.queue_service import QueueChange, QueueService
from protocol.messages import now_ms

log = logging.getLogger(__name__)

#: the principal board clients are filed under (no roles: it is nobody)
BOARD_VIEWER: Final = Principal("board", frozenset(), via="anonymous")


@dataclass(frozen=True, slots=True)
class BoardOptions:
    """Tuning of the board channel (tests make it small)."""

    #: messages a board may have waiting; one more drops it
    queue_size: int = 32
    heartbeat_s: float = 10.0
    #: changes within this window share one snapshot
    coalesce_s: float = 0.2
    #: kernel send buffer per socket (small: a board that stops reading is dropped soon)
    send_buffer_bytes: int = 64 * 1024


class BoardHub:
    """Sends the board snapshot to every connected board (loop only)."""

    def __init__(self, options: BoardOptions | None = None) -> None:
        self.options = options or BoardOptions()
        self._live_options = LiveOptions(
            queue_size=self.options.queue_size, heartbeat_s=self.options.heartbeat_s
        )
        self.queue: QueueService | None = None
        self._clients: set[LiveClient] = set()
        self._pending: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.dropped = 0
        self.published = 0

    @property
    def clients(self) -> int:
        """Boards connected now."""
        return len(self._clients)

    async def start(self, queue: QueueService | None) -> None:
        """Follow ``queue`` (none: the channel only greets and pings)."""
        self.queue = queue
        if queue is not None:
            self._unsubscribe = queue.add_listener(self._on_change)
        self._heartbeat = asyncio.create_task(self._heartbeat_forever(), name="board-heartbeat")

    async def stop(self) -> None:
        """Stop following the queue and close every board."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        tasks = [*self._tasks, *([self._heartbeat] if self._heartbeat else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.close_all()

    async def close_all(self) -> None:
        """Close every board connection (shutdown)."""
        clients = list(self._clients)
        self._clients.clear()
        for client in clients:
            client.drop(WSCloseCode.GOING_AWAY, "server shutting down")
        await asyncio.gather(*(c.finish() for c in clients), return_exceptions=True)

    async def snapshot_text(self) -> str:
        """The board message of the queue as it is now."""
        if self.queue is None:
            return encode({"type": "board", "snapshot": None})
        snapshot = snapshot_json(self.queue, await self.queue.snapshot())
        return encode({"type": "board", "snapshot": snapshot})

    def attach(
        self, ws: web.WebSocketResponse, peer: str, transport: asyncio.BaseTransport | None
    ) -> LiveClient:
        """A new board: greet it and start its sender."""
        client = LiveClient(ws, BOARD_VIEWER, peer, self._live_options, transport)
        self._clients.add(client)
        client.offer(
            encode(
                {"type": "hello", "server_ms": now_ms(), "heartbeat_s": self.options.heartbeat_s}
            )
        )
        client.start()
        log.info("board connected peer=%s", peer)
        return client

    def send(self, client: LiveClient, text: str) -> None:
        """One message to one board (subject to its bound)."""
        if not client.offer(text):
            self._overflow(client)

    async def detach(self, client: LiveClient) -> None:
        """The board's socket closed."""
        self._clients.discard(client)
        await client.finish()
        log.info("board disconnected peer=%s", client.peer)

    def broadcast(self, text: str) -> None:
        """Queue ``text`` for every board; never waits."""
        for client in [c for c in self._clients if not c.offer(text)]:
            self._overflow(client)

    def _overflow(self, client: LiveClient) -> None:
        if client.dropped:
            return
        self._clients.discard(client)
        self.dropped += 1
        log.warning("board dropped: queue overflow peer=%s queued=%d", client.peer, client.queued)
        client.drop(CLOSE_TOO_SLOW, "client too slow")

    def _on_change(self, _change: QueueChange) -> None:
        if self._pending is not None:
            return  # a snapshot is due; it carries this change too
        loop = asyncio.get_running_loop()
        self._pending = loop.call_later(self.options.coalesce_s, self._publish_soon)

    def _publish_soon(self) -> None:
        self._pending = None
        task = asyncio.create_task(self._publish(), name="board-publish")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self) -> None:
        if not self._clients:
            return
        try:
            text = await self.snapshot_text()
        except Exception:
            log.exception("board snapshot failed")
            return
        self.published += 1
        self.broadcast(text)

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.heartbeat_s)
            self.broadcast(encode({"type": "ping", "server_ms": now_ms()}))


BOARD_KEY: Final = web.AppKey("board_hub", BoardHub)


async def _board_context(app: web.Application) -> AsyncIterator[None]:
    hub = app[BOARD_KEY]
    await hub.start(app.get(QUEUE_KEY))
    yield
    await hub.stop()


async def _close_boards(app: web.Application) -> None:
    await app[BOARD_KEY].close_all()


def install_board(app: web.Application, options: BoardOptions | None = None) -> BoardHub:
    """Attach the board channel; it follows ``app[QUEUE_KEY]`` from start-up on."""
    hub = BoardHub(options)
    app[BOARD_KEY] = hub
    app.cleanup_ctx.append(_board_context)
    app.on_shutdown.append(_close_boards)
    return hub


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


async def board_socket(request: web.Request) -> web.StreamResponse:
    """``GET /ws/board``: numbers and windows only, for anyone (the hall screen has no user)."""
    if not _same_origin(request):
        raise web.HTTPForbidden(reason="Forbidden: cross-origin WebSocket")
    hub = request.app.get(BOARD_KEY)
    if hub is None:
        raise web.HTTPServiceUnavailable(reason="board channel not running")
    ws = web.WebSocketResponse(
        heartbeat=hub.options.heartbeat_s,
        compress=False,
        max_msg_size=MAX_CLIENT_MESSAGE,
        timeout=CLOSE_TIMEOUT_S,
    )
    if hub.options.send_buffer_bytes and request.transport is not None:
        sock = request.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, hub.options.send_buffer_bytes)
    await ws.prepare(request)
    client = hub.attach(ws, request.remote or "?", request.transport)
    try:
        hub.send(client, await hub.snapshot_text())
        async for message in ws:
            if message.type is WSMsgType.TEXT and message.data == '{"type":"ping"}':
                hub.send(client, encode({"type": "pong", "server_ms": now_ms()}))
    finally:
        await hub.detach(client)
    return ws


async def board_page(request: web.Request) -> web.Response:
    """The hall's big screen."""
    renderer = request.app[RENDERER_KEY]
    return renderer.render(request, "board.html", page="board", title_key="board.title")


#: ``/board`` is open to everyone; admin and technician are listed so the top bar links it
BOARD_ROLES: Final = frozenset({Role.ANONYMOUS, Role.ADMIN, Role.TECHNICIAN})

ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/board", board_page, BOARD_ROLES),
    Route("GET", "/ws/board", board_socket, frozenset({Role.ANONYMOUS})),
)
