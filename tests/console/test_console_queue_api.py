"""The hall queue's JSON API: who may call what, counter actions with CSRF, 409s, audit."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_console_app_harness import CSRF, STAFF_ROLES, auth, make_service
from test_console_queue_harness import QUEUE_ROUTES, queue_console

from dashboards.api import POLICY_KEY
from dashboards.auth import Role
from dashboards.queue_api import AUDIT_ACTIONS, COUNTER_ROLES
from hub.accounts import AccountStore
from hub.app import console_app
from hub.audit import AuditLog
from hub.config import hub_config_from_dict
from hub.queue_service import QueueService

COUNTER_1 = "/api/v1/queue/counters/1"


def concrete(path: str) -> str:
    return path.replace("{counter}", "1")


async def test_every_queue_route_opens_exactly_to_its_roles(tmp_path: Path) -> None:
    async with queue_console(tmp_path) as c:
        wrong = []
        for route in QUEUE_ROUTES:
            if route.path == "/ws/board":
                continue  # a WebSocket; tested in the board tests
            for role in (*STAFF_ROLES, None):
                headers = auth(role, **{"X-CSRF-Token": CSRF}) if role else {}
                r = await c.client.request(
                    route.method, concrete(route.path), json={}, headers=headers
                )
                open_to_all = Role.ANONYMOUS in route.roles
                allowed = open_to_all or (role is not None and role in route.roles)
                expected_refusal = 401 if role is None else 403
                if allowed == (r.status in (401, 403)) or (
                    not allowed and r.status != expected_refusal
                ):
                    wrong.append(f"{route.method} {route.path} {role}: {r.status}")
        assert wrong == []
    actions = {r.path.rsplit("/", 1)[-1] for r in QUEUE_ROUTES if r.method == "POST"}
    assert actions == set(AUDIT_ACTIONS)
    for route in QUEUE_ROUTES:
        if route.method == "POST":
            assert route.roles == COUNTER_ROLES == {Role.COUNTER, Role.ADMIN}
        if route.path == "/api/v1/queue":
            assert route.roles == set(STAFF_ROLES)


async def test_a_clerk_works_the_queue_through_the_api_with_csrf(tmp_path: Path) -> None:
    async with queue_console(tmp_path) as c:
        await c.queue.issue("filing", request_id="r1", source="kiosk-1")
        await c.queue.issue("filing", request_id="r2", source="kiosk-1")
        csrf = await c.sign_in("clerk1", ["counter"])
        r = await c.client.post(f"{COUNTER_1}/call-next")
        assert r.status == 403 and "csrf" in (await r.json())["error"]
        h = {"X-CSRF-Token": csrf}
        r = await c.client.post(f"{COUNTER_1}/call-next", headers=h)
        assert r.status == 200
        body = await r.json()
        assert body["ticket"]["number"] == "A001" and body["ticket"]["state"] == "called"
        assert (await c.queue.current("1")).number == "A001"  # type: ignore[union-attr]
        for action, state in (("recall", "called"), ("start", "serving"), ("done", "done")):
            r = await c.client.post(f"{COUNTER_1}/{action}", headers=h)
            assert r.status == 200, await r.text()
            assert (await r.json())["ticket"]["state"] == state
        r = await c.client.get(COUNTER_1)
        assert (await r.json())["ticket"] is None
        # the next one goes to consultation, at the front of that queue
        await c.client.post(f"{COUNTER_1}/call-next", headers=h)
        r = await c.client.post(f"{COUNTER_1}/transfer", json={"to_service": "consult"}, headers=h)
        assert r.status == 200
        ticket = (await r.json())["ticket"]
        assert (ticket["number"], ticket["service"], ticket["state"]) == (
            "A002",
            "consult",
            "waiting",
        )
        r = await c.client.get("/api/v1/queue")
        snapshot = await r.json()
        waiting = {s["code"]: s["waiting"] for s in snapshot["services"]}
        assert waiting["consult"] == 1 and waiting["filing"] == 0
        assert {"id": "1", "open": True, "services": ["filing"], "current": None} in snapshot[
            "counters"
        ]
        # every change is audited with the acting user
        entries = await c.audit.entries(actor="clerk1")
        actions = [e.action for e in reversed(entries) if e.action.startswith("queue_")]
        assert actions == [
            "queue_call_next",
            "queue_recall",
            "queue_start",
            "queue_done",
            "queue_call_next",
            "queue_transfer",
        ]
        transfer = entries[0]
        assert transfer.target == "1" and transfer.detail["number"] == "A002"
        assert transfer.detail["to_service"] == "consult"


async def test_a_refused_action_is_409_with_the_chinese_message(tmp_path: Path) -> None:
    async with queue_console(tmp_path) as c:
        csrf = await c.sign_in("clerk2", ["counter"])
        h = {"X-CSRF-Token": csrf}
        r = await c.client.post(f"{COUNTER_1}/recall", headers=h)
        assert r.status == 409
        body = await r.json()
        assert body["code"] == "no_ticket" and "本窗口当前没有已呼叫的号" in body["error"]
        # nobody waits: not an error, just no ticket
        r = await c.client.post(f"{COUNTER_1}/call-next", headers=h)
        assert r.status == 200 and (await r.json())["ticket"] is None
        await c.queue.issue("filing")
        await c.queue.issue("filing")
        assert (await c.client.post(f"{COUNTER_1}/call-next", headers=h)).status == 200
        r = await c.client.post(f"{COUNTER_1}/call-next", headers=h)
        assert r.status == 409 and (await r.json())["code"] == "counter_busy"
        r = await c.client.post(f"{COUNTER_1}/close", headers=h)
        assert r.status == 409 and "关窗" in (await r.json())["error"]
        r = await c.client.post(f"{COUNTER_1}/transfer", json={}, headers=h)
        assert r.status == 409 and (await r.json())["code"] == "bad_transfer"
        r = await c.client.post("/api/v1/queue/counters/99/call-next", headers=h)
        assert r.status == 409 and (await r.json()) == {
            "error": "没有99号窗口。",
            "code": "unknown_counter",
        }
        r = await c.client.post(f"{COUNTER_1}/transfer", json={"to_service": 3}, headers=h)
        assert r.status == 400
        # refusals change nothing and are not audited as changes
        entries = await c.audit.entries(actor="clerk2")
        assert [e.action for e in entries if e.action.startswith("queue_")] == [
            "queue_call_next",
            "queue_call_next",
        ]
        assert (await c.queue.current("1")).number == "A001"  # type: ignore[union-attr]


async def test_open_and_close_a_counter(tmp_path: Path) -> None:
    async with queue_console(tmp_path) as c:
        h = auth(Role.ADMIN, **{"X-CSRF-Token": CSRF})
        assert (await c.client.post(f"{COUNTER_1}/close", headers=h)).status == 200
        r = await c.client.get(COUNTER_1, headers=auth(Role.COUNTER))
        assert (await r.json())["counter"]["open"] is False
        await c.queue.issue("filing")
        r = await c.client.post(f"{COUNTER_1}/call-next", headers=h)
        assert r.status == 409 and (await r.json())["code"] == "counter_closed"
        assert (await c.client.post(f"{COUNTER_1}/open", headers=h)).status == 200
        r = await c.client.post(f"{COUNTER_1}/call-next", headers=h)
        assert (await r.json())["ticket"]["number"] == "A001"


@pytest.mark.parametrize("with_queue", [True, False])
async def test_the_hub_console_wires_the_queue_routes(tmp_path: Path, with_queue: bool) -> None:
    config = hub_config_from_dict({"hub": {"data_dir": str(tmp_path)}})
    accounts = await AccountStore.open(tmp_path)
    audit = await AuditLog.open(tmp_path)
    queue = await QueueService.open(tmp_path) if with_queue else None
    try:
        app = console_app(
            config, make_service(tmp_path), "secret-token", accounts, audit, queue=queue
        )
        policy = app[POLICY_KEY]
        assert policy.undeclared(app) == []
        for route in QUEUE_ROUTES:
            assert policy.rule_for(route.method, route.path) is not None
        async with TestClient(TestServer(app)) as client:
            h = {"Authorization": "Bearer secret-token"}
            r = await client.get("/api/v1/queue", headers=h)
            assert r.status == (200 if with_queue else 503)
            r = await client.get("/board")
            assert r.status == 200
    finally:
        if queue is not None:
            await queue.close()
        await audit.close()
        await accounts.close()
