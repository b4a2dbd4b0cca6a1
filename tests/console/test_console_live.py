"""Live updates over ``GET /ws``: subscriptions, hub changes as JSON, coalesced telemetry, the
bounded per-client queue (a stalled client is dropped, the others keep everything), heartbeat."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from test_console_app_harness import (
    auth,
    authenticators,
    birth,
    console,
    court,
    make_service,
    wait_for,
)

from dashboards.app import ConsoleOptions, create_console_app
from dashboards.auth import Role
from dashboards.live import LIVE_KEY, LiveHub, LiveOptions, TelemetryCoalescer
from hub.registry import (
    DeviceRecord,
    EventReceived,
    HealthState,
    TelemetryReceived,
)
from hub.service import HubService
from protocol.messages import DeviceInfo, Event, Telemetry, VenueKind, now_ms

Client = Any  # TestClient[web.Request, web.Application]


@pytest.fixture
def service(tmp_path: Path) -> HubService:
    s = make_service(tmp_path)
    court(s)
    return s


def device(service: HubService, agent: str, device_id: str) -> DeviceRecord:
    record = service.registry.device(agent, device_id)
    assert record is not None
    return record


class Reader:
    """Reads a socket's frames into a list of messages (arrays are unpacked)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.frames = 0
        self.closed_with: int | None = None
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                self.frames += 1
                self.messages.extend(data if isinstance(data, list) else [data])
        self.closed_with = self.ws.close_code

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    async def wait(self, kind: str, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        await wait_for(lambda: len(self.of_type(kind)) >= count, timeout, f"{count} {kind}")
        return self.of_type(kind)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def subscribed(
    client: Client, topics: list[str], role: Role = Role.TECHNICIAN
) -> AsyncIterator[Reader]:
    async with client.ws_connect("/ws", headers=auth(role)) as ws:
        reader = Reader(ws)
        await reader.wait("hello")
        await ws.send_json({"subscribe": topics})
        await reader.wait("subscribed")
        try:
            yield reader
        finally:
            await reader.stop()


def live_hub(client: Client) -> LiveHub:
    return client.app[LIVE_KEY]  # type: ignore[no-any-return]


# subscriptions and messages ---------------------------------------------------------------------


async def test_hello_then_snapshot_then_a_health_change_within_a_second(
    service: HubService,
) -> None:
    async with console(service) as client, subscribed(client, ["devices", "alerts"]) as reader:
        hello = reader.of_type("hello")[0]
        assert hello["heartbeat_s"] == 15 and abs(hello["server_ms"] - now_ms()) < 5000
        assert set(hello["topics"]) == {"devices", "telemetry", "events", "alerts"}
        assert reader.of_type("subscribed")[0]["topics"] == ["alerts", "devices"]
        snapshot = (await reader.wait("snapshot"))[0]
        assert {(d["agent"], d["id"]) for d in snapshot["devices"]} == {
            ("hall-1", "kiosk-1"),
            ("hall-1", "printer-1"),
            ("court-1", "cam-1"),
            ("court-1", "cam-2"),
        }
        assert {a["id"] for a in snapshot["agents"]} == {"hall-1", "court-1"}

        cam = device(service, "court-1", "cam-2")
        service.registry.set_health(cam, HealthState.OFFLINE, "agent offline", now_ms())
        update = (await reader.wait("device", timeout=1.0))[0]["device"]
        assert (update["agent"], update["id"], update["state"]) == ("court-1", "cam-2", "offline")
        assert update["state_reason"] == "agent offline"
        assert update["venue"] == {
            "id": "court-3",
            "kind": "tech_courtroom",
            "name": "第三科技法庭",
        }
        alert = (await reader.wait("alert", timeout=1.0))[0]
        assert alert == {
            "type": "alert",
            "level": "error",
            "agent": "court-1",
            "device": "cam-2",
            "old": "online",
            "state": "offline",
            "reason": "agent offline",
            "ts": alert["ts"],
        }


async def test_births_deaths_and_removed_devices_reach_the_page(service: HubService) -> None:
    async with console(service) as client, subscribed(client, ["devices"]) as reader:
        await reader.wait("snapshot")
        birth(
            service,
            "hall-1",
            venue_id="hall",
            kind=VenueKind.LITIGATION_HALL,
            devices=[DeviceInfo(id="kiosk-1", kind="kiosk")],  # printer-1 is gone
            bdseq=2,
        )
        removed = (await reader.wait("device_removed"))[0]
        assert (removed["agent"], removed["device"]) == ("hall-1", "printer-1")
        agent = (await reader.wait("agent"))[0]["agent"]
        assert agent["id"] == "hall-1" and agent["online"] is True and agent["bdseq"] == 2


async def test_only_subscribed_topics_arrive(service: HubService) -> None:
    async with console(service) as client, subscribed(client, ["alerts"]) as reader:
        kiosk = device(service, "hall-1", "kiosk-1")
        service.registry.set_health(kiosk, HealthState.STALE, "no heartbeat", now_ms())
        alert = (await reader.wait("alert"))[0]
        assert alert["level"] == "warning"
        await asyncio.sleep(0.1)
        assert reader.of_type("device") == [] and reader.of_type("snapshot") == []
        await reader.ws.send_json({"unsubscribe": ["alerts"]})
        await reader.wait("subscribed", 2)
        assert reader.of_type("subscribed")[-1]["topics"] == []
        service.registry.set_health(kiosk, HealthState.ONLINE, "", now_ms())
        await asyncio.sleep(0.1)
        assert len(reader.of_type("alert")) == 1


async def test_topics_are_refused_to_roles_they_are_not_open_to(service: HubService) -> None:
    async with (
        console(service) as client,
        client.ws_connect("/ws", headers=auth(Role.COUNTER)) as ws,
    ):
        reader = Reader(ws)
        hello = (await reader.wait("hello"))[0]
        assert hello["topics"] == []  # counter staff work the queue, not the devices
        await ws.send_json({"subscribe": ["devices", "nonsense"]})
        errors = await reader.wait("error", 2)
        assert any("not open to you" in e["error"] for e in errors)
        assert any("unknown topic" in e["error"] for e in errors)
        assert (await reader.wait("subscribed"))[0]["topics"] == []
        await ws.send_str("{not json")
        await reader.wait("error", 3)
        await ws.send_json({"type": "ping"})
        await reader.wait("pong")
        await reader.stop()


async def test_events_are_forwarded(service: HubService) -> None:
    async with console(service) as client, subscribed(client, ["events"]) as reader:
        event = Event(ts=now_ms(), seq=5, type="ticket_taken", data={"ticket": "A012"})
        service.registry.notify(EventReceived("hall-1", "kiosk-1", event))
        got = (await reader.wait("event"))[0]
        assert got["event"] == "ticket_taken" and got["data"] == {"ticket": "A012"}
        assert (got["agent"], got["device"], got["seq"], got["historical"]) == (
            "hall-1",
            "kiosk-1",
            5,
            False,
        )


# telemetry is coalesced per device --------------------------------------------------------------


async def test_telemetry_is_coalesced_per_device(service: HubService) -> None:
    options = ConsoleOptions(live=LiveOptions(telemetry_interval_s=0.3))
    async with console(service, options) as client, subscribed(client, ["telemetry"]) as reader:
        kiosk = device(service, "hall-1", "kiosk-1")
        for i in range(50):  # a burst: one update now, one at the end of the interval
            kiosk.metrics["paper_pct"] = float(i)
            kiosk.last_seen_ms = now_ms()
            telemetry = Telemetry(ts=now_ms(), seq=i, metrics={"paper_pct": float(i)})
            service.registry.notify(TelemetryReceived("hall-1", "kiosk-1", telemetry))
        # another device is not held back by the first one's interval
        cam = device(service, "court-1", "cam-1")
        cam.metrics["fps"] = 25.0
        service.registry.notify(
            TelemetryReceived(
                "court-1", "cam-1", Telemetry(ts=now_ms(), seq=1, metrics={"fps": 25.0})
            )
        )
        # replays never change what the page shows
        replay = Telemetry(ts=1, seq=0, metrics={"paper_pct": -1.0}, historical=True)
        service.registry.notify(TelemetryReceived("hall-1", "kiosk-1", replay))
        updates = await reader.wait("telemetry", 3, timeout=2.0)
        await asyncio.sleep(0.5)
        kiosk_updates = [u for u in reader.of_type("telemetry") if u["device"] == "kiosk-1"]
        assert [u["metrics"]["paper_pct"] for u in kiosk_updates] == [0.0, 49.0]
        assert kiosk_updates[-1]["last_seen_ms"] == kiosk.last_seen_ms
        assert any(u["device"] == "cam-1" and u["metrics"] == {"fps": 25.0} for u in updates)


async def test_coalescer_emits_at_most_once_per_interval() -> None:
    now = [100.0]
    emitted: list[tuple[str, str]] = []
    coalescer = TelemetryCoalescer(0.5, lambda a, d: emitted.append((a, d)), clock=lambda: now[0])
    coalescer.offer("a", "d")
    coalescer.offer("a", "d")
    coalescer.offer("a", "d")
    assert emitted == [("a", "d")]  # the first at once; the rest wait for the interval
    now[0] += 0.6
    await asyncio.sleep(0.6)
    assert emitted == [("a", "d"), ("a", "d")]  # one more, carrying the folded news
    coalescer.offer("a", "x")
    coalescer.forget("a", "x")
    coalescer.offer("a", "x")
    assert emitted[-1] == ("a", "x")
    coalescer.close()


async def test_bad_message_counts_are_refreshed_without_a_notification(
    service: HubService,
) -> None:
    options = ConsoleOptions(live=LiveOptions(refresh_interval_s=0.05))
    async with console(service, options) as client, subscribed(client, ["devices"]) as reader:
        await reader.wait("snapshot")
        device(service, "hall-1", "printer-1").bad_messages = 4  # as ingest counts them
        update = (await reader.wait("device"))[0]["device"]
        assert (update["id"], update["bad_messages"]) == ("printer-1", 4)
        await asyncio.sleep(0.2)
        assert len(reader.of_type("device")) == 1  # sent once, not every refresh


# heartbeat ------------------------------------------------------------------------------------


async def test_heartbeat_pings_arrive(service: HubService) -> None:
    options = ConsoleOptions(live=LiveOptions(heartbeat_s=0.1))
    async with console(service, options) as client, subscribed(client, []) as reader:
        pings = await reader.wait("ping", 2, timeout=3.0)
        assert all(abs(p["server_ms"] - now_ms()) < 5000 for p in pings)


async def test_sockets_are_closed_when_the_app_stops(service: HubService) -> None:
    app = create_console_app(service, authenticators())
    server = TestServer(app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(server.make_url("/ws"), headers=auth(Role.ADMIN))
            reader = Reader(ws)
            await reader.wait("hello")
            await server.close()  # the hub stops: runner cleanup, on_shutdown closes sockets
            await wait_for(lambda: reader.closed_with is not None, 5, "close")
            assert reader.closed_with == aiohttp.WSCloseCode.GOING_AWAY
    finally:
        await server.close()


# bounded queue: a stalled client is dropped, the others get everything ---------------------------


async def stalled_socket(client: Client, topics: list[str]) -> socket.socket:
    """A WebSocket client that subscribes and then never reads again (tiny receive buffer)."""
    url = client.make_url("/ws")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (url.host, url.port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: {auth(Role.TECHNICIAN)['Authorization']}\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += await loop.sock_recv(sock, 1)  # byte by byte: leave the frames unread
    assert answer.startswith(b"HTTP/1.1 101"), answer
    payload = json.dumps({"subscribe": topics}).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    await loop.sock_sendall(sock, struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)
    return sock


async def test_a_stalled_client_is_dropped_and_the_others_get_every_message(
    service: HubService,
) -> None:
    options = ConsoleOptions(live=LiveOptions(queue_size=100))
    async with console(service, options) as client, subscribed(client, ["devices"]) as healthy:
        await healthy.wait("snapshot")
        stalled = await stalled_socket(client, ["devices"])
        hub = live_hub(client)
        await wait_for(lambda: hub.stats()["clients"] == 2, what="stalled client attached")
        await asyncio.sleep(0.2)  # its subscription is in
        kiosk = device(service, "hall-1", "kiosk-1")
        sent = 0
        try:
            # flip the kiosk's health in chunks, letting the healthy client catch up each time,
            # until the stalled client's queue overflows (kernel buffers fill first)
            while hub.stats()["dropped"] == 0 and sent < 50_000:
                for _ in range(50):
                    state = HealthState.STALE if sent % 2 == 0 else HealthState.ONLINE
                    service.registry.set_health(kiosk, state, f"n{sent}", now_ms())
                    sent += 1
                await healthy.wait("device", sent, timeout=5)
            assert hub.stats()["dropped"] == 1, f"stalled client not dropped after {sent}"
            # the page keeps receiving after the drop, and got every single change in order
            for _ in range(20):
                state = HealthState.STALE if sent % 2 == 0 else HealthState.ONLINE
                service.registry.set_health(kiosk, state, f"n{sent}", now_ms())
                sent += 1
            updates = await healthy.wait("device", sent, timeout=5)
            assert [u["device"]["state_reason"] for u in updates] == [f"n{i}" for i in range(sent)]
            assert hub.stats()["clients"] == 1
            assert healthy.closed_with is None
        finally:
            stalled.close()


async def test_a_client_that_goes_away_is_forgotten(service: HubService) -> None:
    async with console(service) as client:
        hub = live_hub(client)
        ws = await client.ws_connect("/ws", headers=auth(Role.ADMIN))
        await ws.send_json({"subscribe": ["devices"]})
        await wait_for(lambda: hub.stats()["clients"] == 1)
        await ws.close()
        await wait_for(lambda: hub.stats()["clients"] == 0, what="client forgotten")
        kiosk = device(service, "hall-1", "kiosk-1")
        service.registry.set_health(kiosk, HealthState.FAULT, "x", now_ms())  # no one to send to
        assert hub.stats()["dropped"] == 0
