"""The alerts API over real HTTP (aiohttp test server, real alerts.db and audit.db): who may read
and acknowledge, the ack flow with CSRF and audit, the rule list, the live push, the panel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient
from test_console_app_harness import BROWSER, CSRF, STAFF_ROLES, auth, console, make_service

from dashboards import alerts_api
from dashboards.alerts_api import install_alerts
from dashboards.auth import Role
from dashboards.sessions import csrf_middleware
from hub.alert_rules import DEFAULT_RULES
from hub.alerts import ACK_ACTION, AlertBoard, Severity
from hub.audit import AuditLog

Client = TestClient[web.Request, web.Application]
READERS = {Role.ADMIN, Role.TECHNICIAN, Role.COMMANDER}
ACKERS = {Role.ADMIN, Role.TECHNICIAN}


@dataclass
class Rig:
    client: Client
    board: AlertBoard
    audit: AuditLog

    async def call(
        self, method: str, path: str, role: Role | None, *, csrf: bool = True
    ) -> tuple[int, Any]:
        headers = {}
        if role is not None:
            headers = auth(role, **({"X-CSRF-Token": CSRF} if csrf else {}))
        r = await self.client.request(method, path, json={}, headers=headers)
        return r.status, await r.json()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    audit = await AuditLog.open(tmp_path)
    board = await AlertBoard.open(tmp_path, audit=audit)

    def setup(app: web.Application) -> None:
        install_alerts(app, board, rules=DEFAULT_RULES, evaluate_interval_s=5)

    try:
        async with console(
            make_service(tmp_path / "svc"),
            extra_routes=alerts_api.ROUTES,
            extra_middlewares=[csrf_middleware],
            setup=setup,
        ) as client:
            yield Rig(client, board, audit)
    finally:
        await board.close()
        await audit.close()


async def test_who_may_read_and_acknowledge(rig: Rig) -> None:
    alert = await rig.board.raise_alert("disk-headroom", "低 / low", source="recorder")
    for role in (None, *STAFF_ROLES):
        refused = 401 if role is None else 403
        for path in ("/api/v1/alerts", "/api/v1/alerts/rules"):
            status, _ = await rig.call("GET", path, role)
            assert (status == 200) if role in READERS else (status == refused), (role, path)
        status, _ = await rig.call("POST", "/api/v1/alerts/424242/ack", role)
        assert (status == 404) if role in ACKERS else (status == refused), role
    assert rig.board.active()[0].acked_by is None
    assert alert.id != 424242


async def test_the_ack_flow(rig: Rig) -> None:
    alert = await rig.board.raise_alert(
        "camera-lost:cam-1",
        "摄像机离线 / camera lost",
        source="recorder",
        severity=Severity.CRITICAL,
    )
    await rig.board.set_pending(
        "rule:fps:court-1/cam-2", "帧率过低 / low fps", source="alert-rules"
    )
    status, body = await rig.call("GET", "/api/v1/alerts", Role.COMMANDER)
    assert status == 200
    assert [(a["id"], a["state"], a["acked_by"]) for a in body["active"]] == [
        (alert.id, "firing", None)
    ]
    assert [(a["key"], a["state"], a["id"]) for a in body["pending"]] == [
        ("rule:fps:court-1/cam-2", "pending", 0)
    ]
    assert [a["id"] for a in body["history"]] == [alert.id]  # pending is not history

    ack = f"/api/v1/alerts/{alert.id}/ack"
    status, body = await rig.call("POST", ack, Role.TECHNICIAN, csrf=False)
    assert status == 403 and "csrf" in body["error"]
    assert rig.board.active()[0].acked_by is None

    status, body = await rig.call("POST", ack, Role.TECHNICIAN)
    assert status == 200
    assert (body["id"], body["state"], body["acked_by"]) == (alert.id, "firing", "user-technician")
    assert body["acked_ms"] >= body["fired_ms"]
    (entry,) = await rig.audit.entries(action=ACK_ACTION)
    assert (entry.actor, entry.target) == ("user-technician", "camera-lost:cam-1")
    assert entry.source == "127.0.0.1"

    status, body = await rig.call("POST", ack, Role.ADMIN)
    assert status == 409 and "user-technician" in body["error"]
    _, body = await rig.call("GET", "/api/v1/alerts", Role.TECHNICIAN)
    assert body["active"][0]["acked_by"] == "user-technician"

    await rig.board.clear(alert.key)
    status, body = await rig.call("POST", ack, Role.ADMIN)
    assert status == 409 and "resolved" in body["error"]
    for bad in ("abc", "0", "-1"):
        status, _ = await rig.call("POST", f"/api/v1/alerts/{bad}/ack", Role.ADMIN)
        assert status == 404, bad
    assert len(await rig.audit.entries(action=ACK_ACTION)) == 1

    status, body = await rig.call("GET", "/api/v1/alerts?history=1", Role.ADMIN)
    assert status == 200 and len(body["history"]) == 1
    assert body["history"][0]["state"] == "resolved"
    for bad in ("0", "x", "5000"):
        status, _ = await rig.call("GET", f"/api/v1/alerts?history={bad}", Role.ADMIN)
        assert status == 400, bad


async def test_the_rule_list(rig: Rig) -> None:
    status, body = await rig.call("GET", "/api/v1/alerts/rules", Role.TECHNICIAN)
    assert status == 200 and body["evaluate_interval_s"] == 5
    rules = {r["name"]: r for r in body["rules"]}
    assert set(rules) == {r.name for r in DEFAULT_RULES}
    silent = rules["mic-silent"]
    assert (silent["kind"], silent["threshold"], silent["for_s"], silent["severity"]) == (
        "mic_silent",
        -60.0,
        120.0,
        "warning",
    )
    assert rules["disk-headroom"]["metric"] == "disk_free_pct"


async def test_without_a_board_the_api_answers_503(tmp_path: Path) -> None:
    async with console(make_service(tmp_path), extra_routes=alerts_api.ROUTES) as client:
        for path in ("/api/v1/alerts", "/api/v1/alerts/rules"):
            r = await client.get(path, headers=auth(Role.TECHNICIAN))
            assert r.status == 503 and "alert board" in (await r.json())["error"]
        r = await client.get("/technician", headers=auth(Role.TECHNICIAN, **BROWSER))
        assert r.status == 200 and 'id="alerts-panel"' not in await r.text()


async def test_every_change_is_pushed_on_the_live_alerts_topic(rig: Rig) -> None:
    async with rig.client.ws_connect("/ws", headers=auth(Role.TECHNICIAN)) as ws:
        await ws.send_json({"subscribe": ["alerts"]})
        await _next(ws, "subscribed")
        await rig.board.set_pending("rule:paper:hall-1/kiosk-1", "纸张将尽", source="alert-rules")
        pending = (await _next(ws, "board_alert"))["alert"]
        assert (pending["state"], pending["id"]) == ("pending", 0)
        fired = await rig.board.raise_alert(
            "rule:paper:hall-1/kiosk-1", "纸张将尽", source="alert-rules"
        )
        assert (await _next(ws, "board_alert"))["alert"]["state"] == "firing"
        await rig.board.acknowledge(fired.id, "tech-wang")
        assert (await _next(ws, "board_alert"))["alert"]["acked_by"] == "tech-wang"
        await rig.board.clear(fired.key)
        resolved = (await _next(ws, "board_alert"))["alert"]
        assert (resolved["state"], resolved["id"]) == ("resolved", fired.id)


async def _next(ws: Any, kind: str) -> dict[str, Any]:
    """The next live message of type ``kind`` (frames may batch several)."""
    async with asyncio.timeout(5):
        while True:
            msg = await ws.receive()
            assert msg.type is WSMsgType.TEXT, msg
            data = json.loads(msg.data)
            for message in data if isinstance(data, list) else [data]:
                if message["type"] == kind:
                    return message  # type: ignore[no-any-return]


async def test_the_technician_page_embeds_the_board_for_its_first_paint(rig: Rig) -> None:
    alert = await rig.board.raise_alert("disk-headroom", "磁盘空间不足", source="recorder")
    await rig.board.acknowledge(alert.id, "tech-wang")
    await rig.board.set_pending("rule:x:hub/y", "待定条件", source="alert-rules")
    r = await rig.client.get("/technician", headers=auth(Role.TECHNICIAN, **BROWSER))
    assert r.status == 200
    page = await r.text()
    assert 'id="alerts-panel"' in page and 'data-testid="alert-ack"' in page
    assert "/static/alerts.js" in page
    start = page.index('<script type="application/json" id="alerts-initial">')
    embedded = json.loads(page[page.index(">", start) + 1 : page.index("</script>", start)])
    assert [a["acked_by"] for a in embedded["active"]] == ["tech-wang"]
    assert [a["state"] for a in embedded["pending"]] == ["pending"]
