"""The JSON API and ``run_hub``: the hub's own Mosquitto, generated credentials, access control."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hub_harness import FakeAgent, echo_answer, wait_until

from dashboards.api import ROUTES, access_policy, create_api_app
from dashboards.auth import BearerTokenAuthenticator, Principal, Role
from hub.app import HubRuntime, run_hub
from hub.config import HubConfig, hub_config_from_dict
from hub.service import HubService
from protocol.messages import DeviceStatus


def hub_config(data_dir: Path) -> HubConfig:
    """Mode "own" with two agent accounts and a kiosk account, API on a free port."""
    return hub_config_from_dict(
        {
            "hub": {"data_dir": str(data_dir)},
            "broker": {
                "mode": "own",
                "accounts": [
                    {"username": "agent-a"},
                    {"username": "agent-b"},
                    {
                        "username": "kiosk-k9",
                        "role": "device",
                        "read": ["kiosk/k9/down"],
                        "write": ["kiosk/k9/up"],
                    },
                ],
            },
            "api": {"port": 0},
            "health": {"sweep_interval_s": 0.05},
        }
    )


@contextlib.asynccontextmanager
async def running_hub(config: HubConfig) -> AsyncIterator[HubRuntime]:
    """``run_hub`` in a task until the block ends."""
    stop = asyncio.Event()
    ready: asyncio.Future[HubRuntime] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_hub(config, stop, on_ready=ready.set_result))
    done, _ = await asyncio.wait({task, ready}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the start-up error
    assert ready in done, "hub did not become ready"
    try:
        yield ready.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubRuntime]:
    """A whole hub (own broker, service, API)."""
    async with running_hub(hub_config(tmp_path / "hub")) as runtime:
        yield runtime


@pytest.fixture
async def http(hub: HubRuntime) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP session against the hub's API (no credential)."""
    async with aiohttp.ClientSession(base_url=hub.api_url) as session:
        yield session


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


StartAgent = Callable[..., Awaitable[FakeAgent]]


@pytest.fixture
async def start_agent(hub: HubRuntime) -> AsyncIterator[StartAgent]:
    """Fake agents logged in with the passwords the hub generated; birth published."""
    agents: list[FakeAgent] = []

    async def start(agent_id: str = "agent-a", **kwargs: Any) -> FakeAgent:
        assert hub.credentials is not None
        agent = FakeAgent(
            hub.broker_url, agent_id, hub.credentials.password_for(agent_id), **kwargs
        )
        agents.append(agent)
        await agent.start()
        await agent.birth()
        await wait_until(lambda: hub.service.registry.agent(agent_id) is not None, what="birth")
        return agent

    yield start
    for agent in agents:
        await agent.stop()


# access control -------------------------------------------------------------------------------


async def test_health_is_open_everything_else_needs_the_token(
    hub: HubRuntime, http: aiohttp.ClientSession
) -> None:
    async with http.get("/api/v1/health") as r:
        assert r.status == 200 and await r.json() == {"status": "ok"}
    for headers in ({}, bearer("wrong"), {"Authorization": f"Basic {hub.api_token}"}):
        async with http.get("/api/v1/stats", headers=headers) as r:
            assert r.status == 401
            assert "error" in await r.json()
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    async with http.get("/api/v1/stats", headers=bearer(hub.api_token)) as r:
        assert r.status == 200
    async with http.get("/api/v1/no-such-route") as r:
        assert r.status == 401  # unknown paths say nothing to anonymous callers
    async with http.get("/api/v1/no-such-route", headers=bearer(hub.api_token)) as r:
        assert r.status == 404 and "error" in await r.json()


async def test_every_declared_route_refuses_anonymous_callers(
    hub: HubRuntime, http: aiohttp.ClientSession
) -> None:
    for route in ROUTES:
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        async with http.request(route.method, path) as r:
            expected = 200 if Role.ANONYMOUS in route.roles else 401
            assert r.status == expected, f"{route.method} {route.path}"


def _service(tmp_path: Path) -> HubService:
    """A service that is never started: enough for handlers that read the registry."""
    config = hub_config_from_dict({"hub": {"data_dir": str(tmp_path)}})
    return HubService(config, "mqtt://127.0.0.1:1", "hub", "x")


async def test_a_route_missing_from_the_table_is_forbidden(tmp_path: Path) -> None:
    admin = Principal("t", frozenset({Role.ADMIN}))
    app = create_api_app(_service(tmp_path), [BearerTokenAuthenticator("tok", admin)])

    async def secret(request: web.Request) -> web.Response:
        return web.json_response({"secret": True})

    app.router.add_get("/api/v1/secret", secret)  # added behind the table's back
    assert sorted(access_policy().undeclared(app)) == [
        ("GET", "/api/v1/secret"),
        ("HEAD", "/api/v1/secret"),
    ]
    async with TestClient(TestServer(app)) as client:
        r = await client.get("/api/v1/secret", headers=bearer("tok"))
        assert r.status == 403
        assert "not declared" in (await r.json())["error"]
        r = await client.get("/api/v1/stats", headers=bearer("tok"))
        assert r.status == 200


async def test_a_role_outside_the_route_roles_is_forbidden(tmp_path: Path) -> None:
    viewer = Principal("v", frozenset({Role.COMMANDER}))
    app = create_api_app(_service(tmp_path), [BearerTokenAuthenticator("tok", viewer)])
    async with TestClient(TestServer(app)) as client:
        r = await client.get("/api/v1/devices", headers=bearer("tok"))
        assert r.status == 200
        r = await client.post(
            "/api/v1/devices/a/b/commands", json={"name": "reboot"}, headers=bearer("tok")
        )
        assert r.status == 403


def test_route_table_covers_every_route_of_the_app(tmp_path: Path) -> None:
    app = create_api_app(_service(tmp_path), [])
    policy = access_policy()
    assert policy.undeclared(app) == []
    registered = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    declared = {(rule.method, rule.path) for rule in policy.rules()}
    assert registered == declared  # no stale rows either
    for rule in policy.rules():
        assert rule.roles, f"{rule.method} {rule.path} opens to nobody"
        if Role.ANONYMOUS in rule.roles:
            assert rule.path == "/api/v1/health", "only liveness is anonymous"


# data ------------------------------------------------------------------------------------------


async def test_devices_agents_and_stats(
    hub: HubRuntime, http: aiohttp.ClientSession, start_agent: StartAgent
) -> None:
    a = await start_agent("agent-a")
    await start_agent("agent-b")
    await a.state("printer-1", DeviceStatus.FAULT, "paper jam")
    await a.telemetry("kiosk-1", {"paper_pct": 42.0})
    kiosk = hub.service.registry.device("agent-a", "kiosk-1")
    assert kiosk is not None
    await wait_until(lambda: kiosk.metrics.get("paper_pct") == 42.0)
    auth = bearer(hub.api_token)

    async with http.get("/api/v1/devices", headers=auth) as r:
        body = await r.json()
    assert r.status == 200 and body["count"] == 4
    assert body["timezone"] == "Asia/Shanghai"
    async with http.get("/api/v1/devices?agent=agent-a&state=fault", headers=auth) as r:
        body = await r.json()
    assert [(d["agent"], d["id"], d["state_reason"]) for d in body["devices"]] == [
        ("agent-a", "printer-1", "paper jam")
    ]
    async with http.get("/api/v1/devices?venue=venue-agent-b", headers=auth) as r:
        assert {d["agent"] for d in (await r.json())["devices"]} == {"agent-b"}
    async with http.get("/api/v1/devices?state=sleepy", headers=auth) as r:
        assert r.status == 400 and "state must be one of" in (await r.json())["error"]

    async with http.get("/api/v1/devices/agent-a/kiosk-1", headers=auth) as r:
        device = await r.json()
    assert device["metrics"] == {"paper_pct": 42.0}
    assert device["capabilities"] == ["reboot", "message"]
    assert device["state"] == "online" and device["heartbeat_age_s"] is not None
    assert device["venue"]["id"] == "venue-agent-a"
    assert device["transitions"][0]["state"] == "online"
    async with http.get("/api/v1/devices/agent-a/nope", headers=auth) as r:
        assert r.status == 404 and "unknown device" in (await r.json())["error"]

    async with http.get("/api/v1/agents", headers=auth) as r:
        agents = (await r.json())["agents"]
    assert [(x["id"], x["online"], x["devices"]) for x in agents] == [
        ("agent-a", True, 2),
        ("agent-b", True, 2),
    ]
    assert agents[0]["seq"] == {"highest": 0, "received": 1, "missing": 0, "lost": 0}

    async with http.get("/api/v1/stats", headers=auth) as r:
        stats = await r.json()
    for key in (
        "agents_online",
        "agents_total",
        "devices_online",
        "devices_total",
        "messages_in",
        "bad_messages",
        "outbox_replayed",
        "duplicates",
        "lost",
        "rebirths_requested",
    ):
        assert key in stats, key
    assert stats["agents_online"] == 2 and stats["devices_total"] == 4
    assert stats["devices_online"] == 3 and stats["devices_fault"] == 1


async def test_commands_via_the_api(
    hub: HubRuntime, http: aiohttp.ClientSession, start_agent: StartAgent
) -> None:
    agent = await start_agent("agent-a", answer=echo_answer)
    auth = bearer(hub.api_token)
    url = "/api/v1/devices/agent-a/kiosk-1/commands"

    async with http.post(url, json={"name": "message", "args": {"t": "hi"}}, headers=auth) as r:
        body = await r.json()
    assert r.status == 200 and body["ok"] is True
    assert body["result"] == {"device": "kiosk-1", "args": {"t": "hi"}}

    for bad_body in (b"{", b'{"args": {}}', b'{"name": "reboot", "timeout_s": -1}', b"[]"):
        async with http.post(url, data=bad_body, headers=auth) as r:
            assert r.status == 400, bad_body
            assert "error" in await r.json()
    async with http.post(url, json={"name": "launch"}, headers=auth) as r:
        assert r.status == 400 and "no command" in (await r.json())["error"]
    async with http.post(
        "/api/v1/devices/agent-a/nope-1/commands", json={"name": "x"}, headers=auth
    ) as r:
        assert r.status == 404

    agent.answer = None  # the agent stops answering
    async with http.post(url, json={"name": "reboot", "timeout_s": 0.2}, headers=auth) as r:
        body = await r.json()
    assert r.status == 504 and body["error"] == "deadline exceeded"

    await agent.state("kiosk-1", DeviceStatus.OFFLINE, "powered off")
    kiosk = hub.service.registry.device("agent-a", "kiosk-1")
    assert kiosk is not None
    await wait_until(lambda: kiosk.reported_state is DeviceStatus.OFFLINE)
    async with http.post(url, json={"name": "reboot"}, headers=auth) as r:
        assert r.status == 409


# run_hub, credentials ------------------------------------------------------------------------


async def test_secrets_are_private_and_kept_across_restarts(tmp_path: Path) -> None:
    config = hub_config(tmp_path / "hub")
    async with running_hub(config) as first:
        assert first.credentials is not None and first.broker is not None
        passwords = {u: first.credentials.password_for(u) for u in ("hub", "agent-a", "kiosk-k9")}
        token = first.api_token
        # the generated agent password works against the hub's broker
        agent = FakeAgent(first.broker_url, "agent-b", first.credentials.password_for("agent-b"))
        await agent.start()
        await agent.stop()
        with pytest.raises(KeyError):
            first.credentials.password_for("agent-z")
    data = tmp_path / "hub"
    for secret in (data / "mqtt" / "credentials.json", data / "api-token"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    stored = json.loads((data / "mqtt" / "credentials.json").read_text())
    assert stored["passwords"] == {
        "hub": passwords["hub"],
        "agent-a": passwords["agent-a"],
        "agent-b": stored["passwords"]["agent-b"],
        "kiosk-k9": passwords["kiosk-k9"],
    }

    async with running_hub(config) as second:
        assert second.credentials is not None
        assert {u: second.credentials.password_for(u) for u in passwords} == passwords
        assert second.api_token == token
        assert second.service.connected
