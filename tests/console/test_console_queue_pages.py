"""The counter page, the hall board page and the board's anonymous live channel."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType
from test_console_app_harness import BROWSER, CSRF, auth, html_problems, wait_for
from test_console_queue_harness import COURT, queue_console

from dashboards.auth import Role
from dashboards.live import CLOSE_TOO_SLOW
from dashboards.pages_board import BoardHub, BoardOptions
from hub.queue_service import QueueConfig, QueueService


def nav_links(page: str) -> set[str]:
    nav = re.search(r'<nav class="nav".*?</nav>', page, re.S)
    return (
        set(re.findall(r'<a class="nav-link[^"]*" href="([^"]+)"', nav.group(0))) if nav else set()
    )


async def test_the_counter_page_is_for_counter_staff(tmp_path: Path) -> None:
    async with queue_console(tmp_path) as c:
        for role in (Role.COUNTER, Role.ADMIN):
            r = await c.client.get("/counter", headers=auth(role, **BROWSER))
            page = await r.text()
            assert r.status == 200 and html_problems(page) == []
            assert 'data-testid="act-call-next"' in page and "呼叫下一位" in page
            assert page.count("<option value=") >= 8  # four windows, four services
            assert "/static/counter.js" in page and f'content="{CSRF}"' in page
        r = await c.client.get("/counter", headers=auth(Role.COUNTER, "en", **BROWSER))
        assert "Call next" in await r.text()
        r = await c.client.get(
            "/counter", headers=auth(Role.TECHNICIAN, **BROWSER), allow_redirects=False
        )
        assert r.status == 403 and 'data-testid="forbidden"' in await r.text()
        r = await c.client.get("/counter", headers=BROWSER, allow_redirects=False)
        assert r.status == 302 and r.headers["Location"].startswith("/login?next=")
        for script in ("counter.js", "counter.css", "board.js", "board.css"):
            assert (await c.client.get(f"/static/{script}")).status == 200


async def test_nav_links_the_counter_page_and_the_board(tmp_path: Path) -> None:
    async with queue_console(tmp_path) as c:
        expected = {
            Role.COUNTER: {"/counter"},
            Role.ADMIN: {"/technician", "/admin/users", "/admin/audit", "/counter", "/board"},
            Role.TECHNICIAN: {"/technician", "/board"},
            Role.JUDGE: set(),
        }
        for role, links in expected.items():
            page = await (await c.client.get("/", headers=auth(role, **BROWSER))).text()
            assert nav_links(page) == links, role
            assert set(re.findall(r'class="tile" href="([^"]+)"', page)) == links, role


async def test_the_board_renders_anonymously_without_names(tmp_path: Path) -> None:
    async with queue_console(tmp_path) as c:
        await c.sign_in("zhang", ["counter"])  # a signed-in name must never reach the board
        c.client.session.cookie_jar.clear()
        await c.queue.issue("filing", request_id="secret-request-7", source="kiosk-1")
        await c.queue.call_next("1")
        r = await c.client.get("/board", headers=BROWSER, allow_redirects=False)
        page = await r.text()
        assert r.status == 200 and html_problems(page) == []
        assert COURT in page and 'data-testid="board-clock"' in page
        assert 'data-testid="board-down"' in page and "网络中断" in page
        assert 'data-testid="board-sound"' in page
        assert 'data-testid="user-menu"' not in page and "zhang" not in page
        assert "secret-request-7" not in page and "kiosk-1" not in page
        assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")


async def receive_until(ws: Any, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
    """The first message (frames may be batches) for which ``predicate`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.01, deadline - loop.time()))
        assert msg.type == WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        for message in data if isinstance(data, list) else [data]:
            if predicate(message):
                return message  # type: ignore[no-any-return]


async def test_the_board_channel_delivers_a_snapshot_after_a_call(tmp_path: Path) -> None:
    async with queue_console(tmp_path) as c:
        await c.queue.issue("filing", request_id="secret-request-8", source="kiosk-1")
        async with c.client.ws_connect("/ws/board") as ws:  # no credentials at all
            hello = await receive_until(ws, lambda m: m["type"] == "hello")
            assert hello["heartbeat_s"] == 0.5
            first = await receive_until(ws, lambda m: m["type"] == "board")
            assert first["snapshot"]["now_calling"] == []
            assert {s["code"]: s["waiting"] for s in first["snapshot"]["services"]}["filing"] == 1
            r = await c.client.post(
                "/api/v1/queue/counters/2/call-next",
                headers=auth(Role.COUNTER, **{"X-CSRF-Token": CSRF}),
            )
            assert r.status == 200
            update = await receive_until(
                ws, lambda m: m["type"] == "board" and m["snapshot"]["now_calling"]
            )
            call = update["snapshot"]["now_calling"][0]
            assert (call["number"], call["counter"], call["state"]) == ("A001", "2", "called")
            text = json.dumps(update, ensure_ascii=False)
            assert "secret-request-8" not in text and "kiosk-1" not in text
            assert '"id": 1,' not in text and "issued_at" not in text
            # a heartbeat even when the hall is quiet
            await receive_until(ws, lambda m: m["type"] == "ping", timeout=3)
        await wait_for(lambda: c.board.clients == 0, what="board detached")


async def test_a_burst_of_changes_is_coalesced(tmp_path: Path) -> None:
    options = BoardOptions(heartbeat_s=30, coalesce_s=0.3)
    async with queue_console(tmp_path, options) as c, c.client.ws_connect("/ws/board") as ws:
        await receive_until(ws, lambda m: m["type"] == "board")
        for _ in range(10):
            await c.queue.issue("payment")
        await receive_until(
            ws,
            lambda m: (
                m["type"] == "board"
                and {s["code"]: s["waiting"] for s in m["snapshot"]["services"]}["payment"] == 10
            ),
        )
        assert c.board.published <= 2  # ten changes, one snapshot (two on a slow machine)


async def test_the_board_channel_refuses_other_sites(tmp_path: Path) -> None:
    async with queue_console(tmp_path) as c:
        r = await c.client.get(
            "/ws/board",
            headers={
                "Origin": "http://evil.example",
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            },
        )
        assert r.status == 403


class StalledSocket:
    """A board that never reads: every send blocks."""

    def __init__(self) -> None:
        self.closed_with: int | None = None

    async def send_str(self, _text: str) -> None:
        await asyncio.Event().wait()

    async def close(self, *, code: int, message: bytes, drain: bool = True) -> bool:
        self.closed_with = code
        return True


async def test_a_board_that_never_reads_is_dropped(tmp_path: Path) -> None:
    queue = await QueueService.open(tmp_path, QueueConfig())
    hub = BoardHub(BoardOptions(queue_size=3, heartbeat_s=30, coalesce_s=0.01))
    await hub.start(queue)
    try:
        stalled = StalledSocket()
        client = hub.attach(stalled, "stalled", None)  # type: ignore[arg-type]
        for _ in range(6):
            await queue.issue("filing")
            await asyncio.sleep(0.05)  # each change its own snapshot
        await wait_for(lambda: hub.dropped == 1, what="stalled board dropped")
        assert hub.clients == 0 and client.dropped
        await client.finish()
        assert stalled.closed_with == CLOSE_TOO_SLOW
    finally:
        await hub.stop()
        await queue.close()
