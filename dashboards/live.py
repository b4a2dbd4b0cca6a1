"""Live updates for the pages: one WebSocket per page (``GET /ws``), hub changes fanned out as JSON.

A page connects, then subscribes to topics::

    → {"subscribe": ["devices", "alerts"]}
    ← {"type": "subscribed", "topics": ["alerts", "devices"]}
    ← {"type": "snapshot", "agents": [...], "devices": [...], "server_ms": 1714550400000}
    ← {"type": "device", "device": {... same shape as GET /api/v1/devices/{agent}/{device}}}
    ← [{"type": "telemetry", ...}, {"type": "alert", ...}]      (a batch: several in one frame)

Server → client messages (every one has ``type``; a frame is one message or a JSON array of them):

| type             | topic       | fields                                                            |
|------------------|-------------|-------------------------------------------------------------------|
| ``hello``        | —           | ``server_ms``, ``heartbeat_s``, ``topics`` (those the caller may use) |
| ``ping``         | —           | ``server_ms`` (every ``heartbeat_s``; besides the protocol pings)  |
| ``subscribed``   | —           | ``topics`` (the connection's current set)                          |
| ``error``        | —           | ``error`` (unknown or forbidden topic, bad message)                |
| ``snapshot``     | devices     | ``agents``, ``devices``, ``server_ms`` (on every subscribe)        |
| ``agent``        | devices     | ``agent`` (as ``GET /api/v1/agents``)                              |
| ``device``       | devices     | ``device`` (full device JSON; births, metadata, health changes)    |
| ``device_removed`` | devices   | ``agent``, ``device``                                              |
| ``telemetry``    | telemetry   | ``agent``, ``device``, ``metrics``, ``metrics_ts``, ``last_seen_ms``, ``bad_messages`` |
| ``event``        | events      | ``agent``, ``device``, ``ts``, ``seq``, ``event``, ``data``, ``historical`` |
| ``alert``        | alerts      | ``level`` (error/warning/ok), ``agent``, ``device``, ``old``, ``state``, ``reason``, ``ts`` |

Why it is built this way (LESSONS.md: a send loop that awaits each client in turn lets one stalled
client freeze everyone):

- every change is encoded once, then appended to each subscriber's **bounded queue** — never
  awaited — and each client has its **own sender task** that drains its queue into as few frames
  as it can. A client whose queue overflows is dropped (close code 1013, "try again later"; its
  page reconnects and gets a fresh snapshot), so a stalled browser costs the others nothing;
- telemetry (and audio liveness) is **coalesced per device** to at most one update per
  ``telemetry_interval_s``; device, health and agent changes are never coalesced or dropped
  except by the overflow rule;
- heartbeat: protocol pings every ``heartbeat_s`` (a peer that does not answer is closed) and an
  application ``ping`` message so a page can tell a dead connection from a quiet court.

Topics are deny-by-default like routes: :data:`TOPIC_ROLES` names who may subscribe to what.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from dashboards.api import SERVICE_KEY, agent_json, device_json
from dashboards.auth import PRINCIPAL_KEY, Principal, Role
from dashboards.routes import Route
from hub.registry import (
    AgentChanged,
    AudioReceived,
    DeviceChanged,
    DeviceRemoved,
    EventReceived,
    HealthChanged,
    HealthState,
    HubChange,
    TelemetryReceived,
)
from hub.service import HubService
from protocol.messages import now_ms

log = logging.getLogger(__name__)

#: Largest message a page may send (subscriptions are tiny).
MAX_CLIENT_MESSAGE: Final = 4096
#: How long a close handshake may take before the connection is cut.
CLOSE_TIMEOUT_S: Final = 2.0
#: Close code for a client dropped because it did not keep up (RFC 6455 "try again later").
CLOSE_TOO_SLOW: Final = WSCloseCode.TRY_AGAIN_LATER
MAX_TOPICS_PER_MESSAGE: Final = 16


class Topic(StrEnum):
    """What a page can subscribe to."""

    DEVICES = "devices"
    TELEMETRY = "telemetry"
    EVENTS = "events"
    ALERTS = "alerts"
    #: live transcript of hearings: partial and final segments (hub/live_transcriber.py)
    TRANSCRIPT = "transcript"


#: staff who may watch device health (as the JSON API's readers; counter staff work the queue)
_DEVICE_READERS: Final = frozenset(
    {Role.ADMIN, Role.TECHNICIAN, Role.COMMANDER, Role.JUDGE, Role.CLERK}
)
#: Who may subscribe to which topic; a topic missing here is refused to everyone.
TOPIC_ROLES: Final[Mapping[Topic, frozenset[Role]]] = MappingProxyType(
    {
        Topic.DEVICES: _DEVICE_READERS,
        Topic.TELEMETRY: _DEVICE_READERS,
        Topic.EVENTS: _DEVICE_READERS,
        Topic.ALERTS: _DEVICE_READERS,
        # what is said in a courtroom: for the bench and its clerk only
        Topic.TRANSCRIPT: frozenset({Role.JUDGE, Role.CLERK, Role.ADMIN}),
    }
)
#: every signed-in role may open the socket; the topics decide what it carries
_STAFF: Final = frozenset(r for r in Role if r is not Role.ANONYMOUS)

_ALERT_LEVEL: Final = MappingProxyType(
    {
        HealthState.ONLINE: "ok",
        HealthState.STALE: "warning",
        HealthState.OFFLINE: "error",
        HealthState.FAULT: "error",
    }
)

_ENCODER: Final = msgspec.json.Encoder()


class _ClientMessage(msgspec.Struct, frozen=True):
    """What a page sends: ``{"subscribe": [...]}``, ``{"unsubscribe": [...]}``, ``{"type": ...}``."""

    subscribe: list[str] | None = None
    unsubscribe: list[str] | None = None
    type: str = ""


_CLIENT_DECODER: Final = msgspec.json.Decoder(_ClientMessage)


@dataclass(frozen=True, slots=True)
class LiveOptions:
    """Tuning of the fan-out (the defaults suit a court; tests make them small)."""

    #: messages a client may have waiting; one more drops it (close 1013)
    queue_size: int = 1000
    #: at most one telemetry update per device per this many seconds
    telemetry_interval_s: float = 0.5
    #: protocol ping and application ``ping`` interval
    heartbeat_s: float = 15.0
    #: how often device counters that change without a notification are re-checked
    refresh_interval_s: float = 2.0
    #: most messages sent in one frame
    batch_max: int = 256
    #: kernel send buffer of each socket (0: the kernel's own, which grows to megabytes): kept
    #: small so a client that stops reading fills its queue, and is dropped, within seconds
    send_buffer_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        if self.queue_size < 1 or self.batch_max < 1 or self.send_buffer_bytes < 0:
            raise ValueError("queue_size and batch_max must be positive")
        if min(self.telemetry_interval_s, self.heartbeat_s, self.refresh_interval_s) <= 0:
            raise ValueError("intervals must be positive")


def encode(message: Mapping[str, Any]) -> str:
    """One message as compact JSON text (encoded once, sent to every subscriber)."""
    return _ENCODER.encode(message).decode("utf-8")


class LiveClient:
    """One connected page: its topics, its bounded queue and its own sender task."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        principal: Principal,
        peer: str,
        options: LiveOptions,
        transport: asyncio.BaseTransport | None = None,
    ) -> None:
        self.ws = ws
        self.principal = principal
        self.peer = peer
        self._transport = transport
        self.topics: set[Topic] = set()
        self.sent = 0
        self._options = options
        self._queue: deque[str] = deque()
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        #: the socket failed under the sender: further messages are discarded
        self._gone = False

    @property
    def queued(self) -> int:
        """Messages waiting to be sent."""
        return len(self._queue)

    @property
    def dropped(self) -> bool:
        """True once the client was cut off (overflow or shutdown)."""
        return self._closer is not None

    def offer(self, text: str) -> bool:
        """Queue one encoded message without waiting; False when the queue is full."""
        if self._gone:
            return True  # the read loop is about to notice; nothing to deliver to
        if len(self._queue) >= self._options.queue_size:
            return False
        self._queue.append(text)
        if not self._wake.is_set():
            self._wake.set()
        return True

    def start(self) -> None:
        """Start the sender task."""
        self._sender = asyncio.create_task(self._send_loop(), name=f"live-send-{self.peer}")

    async def _send_loop(self) -> None:
        """Drain the queue into frames: one message as itself, several as a JSON array."""
        queue, ws, batch_max = self._queue, self.ws, self._options.batch_max
        try:
            while True:
                if not queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                count = min(len(queue), batch_max)
                if count == 1:
                    frame = queue.popleft()
                else:
                    frame = "[" + ",".join([queue.popleft() for _ in range(count)]) + "]"
                await ws.send_str(frame)
                self.sent += count
        except ConnectionError:
            log.debug("live client gone while sending peer=%s", self.peer)
            self._gone = True
            self._queue.clear()
        except Exception:
            log.exception("live sender failed peer=%s", self.peer)
            self._gone = True
            self._queue.clear()

    def drop(self, code: int, reason: str, *, abort_after_s: float = CLOSE_TIMEOUT_S) -> None:
        """Stop sending, close with ``code``; cut the connection if the close does not finish."""
        if self._closer is not None:
            return
        self._queue.clear()
        if self._sender is not None:
            self._sender.cancel()
        self._closer = asyncio.create_task(
            self._close(code, reason.encode()[:120], abort_after_s), name=f"live-close-{self.peer}"
        )

    async def _close(self, code: int, message: bytes, abort_after_s: float) -> None:
        try:
            await asyncio.wait_for(
                self.ws.close(code=code, message=message, drain=False), abort_after_s
            )
        except (TimeoutError, ConnectionError):
            pass
        finally:
            # a peer that never reads would keep the socket and its send buffer forever;
            # after a completed close handshake there is nothing left to lose by cutting it
            if isinstance(self._transport, asyncio.Transport):
                self._transport.abort()

    async def finish(self) -> None:
        """Stop the sender and wait for a pending close (after the socket's read loop ended)."""
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        if self._closer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._closer


class TelemetryCoalescer:
    """At most one update per device per interval: the first at once, the rest folded into one.

    Keys only: the message is built from the registry when it is emitted, so it always carries
    the device's latest values, and a burst of 50 messages costs one update.
    """

    def __init__(
        self,
        interval_s: float,
        emit: Callable[[str, str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval_s
        self._emit = emit
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}

    def offer(self, agent: str, device: str) -> None:
        """The device has news; emit now or schedule one emit at the end of its interval."""
        key = (agent, device)
        if key in self._timers:
            return  # an update is already due; it will carry this news too
        now = self._clock()
        last = self._last.get(key)
        if last is None or now - last >= self._interval:
            self._last[key] = now
            self._emit(agent, device)
            return
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(last + self._interval - now, self._flush, key)

    def _flush(self, key: tuple[str, str]) -> None:
        self._timers.pop(key, None)
        self._last[key] = self._clock()
        self._emit(*key)

    def forget(self, agent: str, device: str) -> None:
        """The device is gone: drop its pending update."""
        key = (agent, device)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._last.pop(key, None)

    def close(self) -> None:
        """Cancel every pending update."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


class LiveHub:
    """Fans hub changes out to the connected pages (loop only)."""

    def __init__(self, service: HubService, options: LiveOptions | None = None) -> None:
        self.service = service
        self.options = options or LiveOptions()
        self._clients: set[LiveClient] = set()
        self._subscribers: dict[Topic, set[LiveClient]] = {topic: set() for topic in Topic}
        self._coalescer = TelemetryCoalescer(
            self.options.telemetry_interval_s, self._emit_telemetry
        )
        self._unsubscribe: Callable[[], None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: last bad-message count sent per device (its counter changes without a notification)
        self._bad_sent: dict[tuple[str, str], int] = {}
        self.published = 0
        self.dropped = 0

    # lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen to the hub and start the heartbeat and refresh tasks."""
        if self._unsubscribe is not None:
            return
        for device in self.service.registry.devices():
            self._bad_sent[device.key] = device.bad_messages
        self._unsubscribe = self.service.add_listener(self._on_change)
        self._tasks = [
            asyncio.create_task(self._heartbeat_forever(), name="live-heartbeat"),
            asyncio.create_task(self._refresh_forever(), name="live-refresh"),
        ]

    async def close_all(self, code: int = WSCloseCode.GOING_AWAY) -> None:
        """Close every connection (server shutdown), waiting at most the close timeout."""
        clients = list(self._clients)
        for client in clients:
            self._forget(client)
            client.drop(code, "server shutting down")
        await asyncio.gather(*(client.finish() for client in clients), return_exceptions=True)

    async def stop(self) -> None:
        """Stop listening; close what is still connected."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._coalescer.close()
        await self.close_all()

    def stats(self) -> dict[str, int]:
        """Counters for tests and the benchmark."""
        return {
            "clients": len(self._clients),
            "published": self.published,
            "dropped": self.dropped,
            "queued": sum(c.queued for c in self._clients),
        }

    # connections ----------------------------------------------------------------------------------
    def attach(
        self,
        ws: web.WebSocketResponse,
        principal: Principal,
        peer: str,
        transport: asyncio.BaseTransport | None = None,
    ) -> LiveClient:
        """A new page connection: greet it and start its sender."""
        client = LiveClient(ws, principal, peer, self.options, transport)
        self._clients.add(client)
        client.offer(
            encode(
                {
                    "type": "hello",
                    "server_ms": now_ms(),
                    "heartbeat_s": self.options.heartbeat_s,
                    "topics": sorted(self.allowed_topics(principal)),
                }
            )
        )
        client.start()
        log.info("live client connected user=%s peer=%s", principal.name, peer)
        return client

    async def detach(self, client: LiveClient) -> None:
        """The page's socket closed: forget it and stop its sender."""
        self._forget(client)
        await client.finish()
        log.info("live client disconnected user=%s peer=%s", client.principal.name, client.peer)

    def _forget(self, client: LiveClient) -> None:
        self._clients.discard(client)
        for subscribers in self._subscribers.values():
            subscribers.discard(client)

    @staticmethod
    def allowed_topics(principal: Principal) -> set[Topic]:
        """The topics ``principal``'s roles open."""
        return {t for t, roles in TOPIC_ROLES.items() if principal.roles & roles}

    def on_client_message(self, client: LiveClient, text: str) -> None:
        """A message from the page: subscribe or unsubscribe (anything else is answered or ignored)."""
        try:
            message = _CLIENT_DECODER.decode(text)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._send(client, {"type": "error", "error": f"bad message: {exc}"})
            return
        if message.type == "ping":
            self._send(client, {"type": "pong", "server_ms": now_ms()})
        if message.subscribe is None and message.unsubscribe is None:
            return
        subscribe, unsubscribe = message.subscribe or [], message.unsubscribe or []
        if len(subscribe) + len(unsubscribe) > MAX_TOPICS_PER_MESSAGE:
            self._send(client, {"type": "error", "error": "too many topics"})
            return
        added = self._topics(client, subscribe)
        removed = self._topics(client, unsubscribe)
        for topic in removed:
            client.topics.discard(topic)
            self._subscribers[topic].discard(client)
        for topic in added:
            client.topics.add(topic)
            self._subscribers[topic].add(client)
        self._send(client, {"type": "subscribed", "topics": sorted(client.topics)})
        if Topic.DEVICES in added:
            # what changed before the subscription (or while the page was disconnected)
            self._send(client, self._snapshot())

    def _topics(self, client: LiveClient, names: Iterable[str]) -> set[Topic]:
        allowed = self.allowed_topics(client.principal)
        topics: set[Topic] = set()
        for name in names:
            try:
                topic = Topic(name)
            except ValueError:
                self._send(client, {"type": "error", "error": f"unknown topic {name[:64]!r}"})
                continue
            if topic not in allowed:
                self._send(client, {"type": "error", "error": f"topic {topic} is not open to you"})
                continue
            topics.add(topic)
        return topics

    def _send(self, client: LiveClient, message: Mapping[str, Any]) -> None:
        """One message to one client (still subject to its queue bound)."""
        if not client.offer(encode(message)):
            self._overflow([client])

    # fan-out --------------------------------------------------------------------------------------
    def publish(self, topic: Topic, message: Mapping[str, Any]) -> None:
        """Encode once, queue for every subscriber of ``topic``; never waits."""
        subscribers = self._subscribers[topic]
        if not subscribers:
            return
        text = encode(message)
        self.published += 1
        full = [client for client in subscribers if not client.offer(text)]
        if full:
            self._overflow(full)

    def _broadcast(self, message: Mapping[str, Any]) -> None:
        text = encode(message)
        full = [client for client in self._clients if not client.offer(text)]
        if full:
            self._overflow(full)

    def _overflow(self, clients: Iterable[LiveClient]) -> None:
        for client in clients:
            if client.dropped:
                continue
            self._forget(client)
            self.dropped += 1
            log.warning(
                "live client dropped: queue overflow user=%s peer=%s queued=%d sent=%d",
                client.principal.name,
                client.peer,
                client.queued,
                client.sent,
            )
            client.drop(CLOSE_TOO_SLOW, "client too slow")

    # hub changes -> messages ------------------------------------------------------------------------
    def _on_change(self, change: HubChange) -> None:
        """The hub's listener (on the loop, inside ingest): turn the change into messages."""
        match change:
            case TelemetryReceived(agent=agent, device=device, telemetry=telemetry):
                if not telemetry.historical:  # replays never change what the page shows
                    self._coalescer.offer(agent, device)
            case AudioReceived(agent=agent, device=device):
                self._coalescer.offer(agent, device)  # liveness ticks with the frames
            case HealthChanged():
                self._publish_device(change.agent, change.device)
                self.publish(
                    Topic.ALERTS,
                    {
                        "type": "alert",
                        "level": _ALERT_LEVEL[change.new],
                        "agent": change.agent,
                        "device": change.device,
                        "old": change.old.value,
                        "state": change.new.value,
                        "reason": change.reason,
                        "ts": change.ts,
                    },
                )
            case DeviceChanged(agent=agent, device=device):
                self._publish_device(agent, device)
            case DeviceRemoved(agent=agent, device=device):
                self._coalescer.forget(agent, device)
                self._bad_sent.pop((agent, device), None)
                self.publish(
                    Topic.DEVICES, {"type": "device_removed", "agent": agent, "device": device}
                )
            case AgentChanged(agent=agent_id):
                record = self.service.registry.agent(agent_id)
                if record is not None:
                    self.publish(
                        Topic.DEVICES, {"type": "agent", "agent": agent_json(self.service, record)}
                    )
            case EventReceived(agent=agent, device=device, event=event):
                self.publish(
                    Topic.EVENTS,
                    {
                        "type": "event",
                        "agent": agent,
                        "device": device,
                        "ts": event.ts,
                        "seq": event.seq,
                        "event": event.type,
                        "data": event.data,
                        "historical": event.historical,
                    },
                )
                if not event.historical:
                    self._coalescer.offer(agent, device)

    def _publish_device(self, agent_id: str, device_id: str) -> None:
        registry = self.service.registry
        device = registry.device(agent_id, device_id)
        if device is None:
            return
        self._bad_sent[device.key] = device.bad_messages
        body = device_json(self.service, device, registry.agent(agent_id), now_ms())
        self.publish(Topic.DEVICES, {"type": "device", "device": body})

    def _emit_telemetry(self, agent_id: str, device_id: str) -> None:
        device = self.service.registry.device(agent_id, device_id)
        if device is None:
            return
        self.publish(
            Topic.TELEMETRY,
            {
                "type": "telemetry",
                "agent": agent_id,
                "device": device_id,
                "metrics": device.metrics,
                "metrics_ts": device.metrics_ts,
                "last_seen_ms": device.last_seen_ms,
                "bad_messages": device.bad_messages,
            },
        )

    def _snapshot(self) -> dict[str, Any]:
        registry, now = self.service.registry, now_ms()
        return {
            "type": "snapshot",
            "server_ms": now,
            "agents": [agent_json(self.service, a) for a in registry.agents()],
            "devices": [
                device_json(self.service, d, registry.agent(d.agent), now)
                for d in registry.devices()
            ],
        }

    # periodic -------------------------------------------------------------------------------------
    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.heartbeat_s)
            self._broadcast({"type": "ping", "server_ms": now_ms()})

    async def _refresh_forever(self) -> None:
        """Bad-message counters change without a notification: send devices whose count moved."""
        while True:
            await asyncio.sleep(self.options.refresh_interval_s)
            try:
                for device in self.service.registry.devices():
                    if self._bad_sent.get(device.key) != device.bad_messages:
                        self._publish_device(device.agent, device.id)
            except Exception:  # the refresher must outlive a bug in one pass
                log.exception("live refresh failed")


LIVE_KEY: Final = web.AppKey("live_hub", LiveHub)


def _same_origin(request: web.Request) -> bool:
    """A browser's WebSocket must come from our own pages (cross-site WebSocket hijacking)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser (tools, tests); credentials are still required
    return urlsplit(origin).netloc.lower() == request.host.lower()


def _limit_send_buffer(request: web.Request, size: int) -> None:
    """Bound what the kernel holds for one client (the per-client queue bounds the rest)."""
    if not size or request.transport is None:
        return
    sock = request.transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


async def live_socket(request: web.Request) -> web.StreamResponse:
    """``GET /ws``: the page's live connection."""
    if not _same_origin(request):
        log.warning(
            "live socket from another origin refused origin=%s", request.headers.get("Origin")
        )
        raise web.HTTPForbidden(reason="Forbidden: cross-origin WebSocket")
    hub = request.app[LIVE_KEY]
    principal = request[PRINCIPAL_KEY]
    ws = web.WebSocketResponse(
        heartbeat=hub.options.heartbeat_s,
        # every client would compress the same frame again: CPU we spend on fan-out instead
        compress=False,
        max_msg_size=MAX_CLIENT_MESSAGE,
        timeout=CLOSE_TIMEOUT_S,
    )
    _limit_send_buffer(request, hub.options.send_buffer_bytes)
    await ws.prepare(request)
    client = hub.attach(ws, principal, request.remote or "?", request.transport)
    try:
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                hub.on_client_message(client, message.data)
    finally:
        await hub.detach(client)
    return ws


async def live_context(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx`` of the console: the fan-out runs while the app does."""
    hub = app[LIVE_KEY]
    await hub.start()
    yield
    await hub.stop()


async def close_live_sockets(app: web.Application) -> None:
    """``on_shutdown``: close the sockets first, or the server waits for their handlers."""
    await app[LIVE_KEY].close_all()


def create_live_hub(app: web.Application, options: LiveOptions | None = None) -> LiveHub:
    """Attach a :class:`LiveHub` for the app's hub service, started and stopped with the app."""
    hub = LiveHub(app[SERVICE_KEY], options)
    app[LIVE_KEY] = hub
    app.cleanup_ctx.append(live_context)
    app.on_shutdown.append(close_live_sockets)
    return hub


ROUTES: Final[tuple[Route, ...]] = (Route("GET", "/ws", live_socket, _STAFF),)
