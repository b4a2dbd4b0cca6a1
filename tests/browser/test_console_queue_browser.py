"""The hall queue in headless Chromium: a counter clerk calls and serves a ticket on ``/counter``
while the anonymous hall board (``/board``) shows the call live, without a reload; the board says
"网络中断" while its channel is down and recovers by itself; and it never shows a name or a
kiosk's request id. Screenshots ``counter.png`` (1280×800) and ``board.png`` (1920×1080, the big
screen) are saved like the console's (see ``conftest.py``).

The hub is one per module, so the tests share its queue: the first ticket of the day is A001."""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path
from typing import Final

import pytest
from browser_harness import MIN_SCREENSHOT_BYTES, ZH, Console, ConsoleHub, Login
from playwright.async_api import Locator, Page, ViewportSize, WebSocketRoute, expect

pytestmark = pytest.mark.asyncio(loop_scope="module")

CLERK: Final = Login("liming-w1", "liming-Passw0rd-1", ("counter",), "柜台书记员李明")
#: the kiosks' request ids of the tickets the tests issue (never on the board)
REQUEST_IDS: Final = ("kiosk-1-req-7f3a9c", "kiosk-1-req-b21e04", "kiosk-2-req-c99d13")
BIG_SCREEN: Final = ViewportSize(width=1920, height=1080)
#: reconnect after a drop: 1, 2, 4, at most 5 s (±25 %), plus the hello
RECONNECT_TIMEOUT_MS: Final = 20_000


async def ensure_clerk(hub: ConsoleHub) -> None:
    """The counter clerk's account (created once per hub)."""
    accounts = hub.runtime.accounts
    assert accounts is not None
    if await accounts.get(CLERK.username) is None:
        await accounts.create_user(
            CLERK.username,
            CLERK.password,
            CLERK.roles,
            display_name=CLERK.display_name,
            language="zh-CN",
            must_change_password=False,
        )


def board_call(board: Page) -> Locator:
    """The calls in the board's "now calling" list, newest first."""
    return board.get_by_test_id("board-calls").locator("li.board-call")


def board_waiting(board: Page, prefix: str) -> Locator:
    """The waiting count cell of the service with letter ``prefix``."""
    row = board.locator("#board-services tr").filter(has_text=re.compile(rf"^{prefix} "))
    return row.locator("td.num").first


async def open_board(board: Page, console: Console) -> None:
    """The anonymous hall board, connected."""
    await board.goto(console.url("/board"), wait_until="load")
    await expect(board.locator("body")).to_have_attribute("data-live", "up")
    await expect(board.get_by_test_id("board-court")).to_be_visible()


async def big_screenshot(page: Page, shots: list[Path], name: str) -> Path:
    """``name.png`` of the board on a 1920×1080 big screen, saved like the console's."""
    await page.set_viewport_size(BIG_SCREEN)
    await page.evaluate("document.fonts.ready.then(() => true)")
    first = shots[0] / f"{name}.png"
    await page.screenshot(path=str(first), animations="disabled", caret="hide")
    data = first.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{first} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (BIG_SCREEN["width"], BIG_SCREEN["height"]), (width, height)
    assert len(data) >= MIN_SCREENSHOT_BYTES, f"{first} is only {len(data)} bytes"
    for folder in shots[1:]:
        shutil.copyfile(first, folder / first.name)
    return first


async def test_the_clerk_calls_a_ticket_and_the_board_shows_it_live(
    console: Console, screenshot_dirs: list[Path]
) -> None:
    hub = console.hub
    queue = hub.runtime.queue
    assert queue is not None, "the hub runs the hall queue"
    await ensure_clerk(hub)
    page = console.page
    await console.sign_in(CLERK, then="/counter")
    await expect(page.locator("h1")).to_have_text(ZH["counter.title"])
    await page.get_by_test_id("counter-select").select_option("1")
    await expect(page.get_by_test_id("counter-link")).to_have_attribute("data-state", "up")
    await expect(page.get_by_test_id("current-number")).to_have_text("—")
    await expect(page.get_by_test_id("current-state")).to_have_text(ZH["js.counter.idle"])

    async with console.another_browser() as board:
        await open_board(board, console)
        await expect(board.locator("#board-no-calls")).to_be_visible()
        await expect(board_call(board)).to_have_count(0)

        first = await queue.issue("filing", request_id=REQUEST_IDS[0], source="kiosk-1")
        second = await queue.issue("filing", request_id=REQUEST_IDS[1], source="kiosk-1")
        assert (first.number, second.number) == ("A001", "A002")
        # both pages hear the queue change without a reload
        await expect(board_waiting(board, "A")).to_have_text("2")
        waiting_here = page.locator('[data-service="filing"] [data-count]')
        await expect(waiting_here).to_have_text("2")

        await page.get_by_test_id("act-call-next").click()
        await expect(page.get_by_test_id("current-number")).to_have_text("A001")
        await expect(page.get_by_test_id("counter-error")).to_be_hidden()
        await expect(page.get_by_test_id("act-call-next")).to_be_disabled()
        await expect(waiting_here).to_have_text("1")

        calls = board_call(board)
        await expect(calls).to_have_count(1)
        await expect(calls.first.locator(".board-number")).to_have_text("A001")
        await expect(calls.first.locator(".board-window")).to_have_text(
            ZH["js.board.window"].format(n=1)
        )
        await expect(calls.first).to_have_class(re.compile(r"(^|\s)flash(\s|$)"))
        await expect(board.locator("#board-no-calls")).to_be_hidden()
        await expect(board_waiting(board, "A")).to_have_text("1")

        await page.get_by_test_id("act-start").click()
        await expect(page.get_by_test_id("current-state")).to_have_text(
            ZH["js.counter.state_serving"]
        )
        await console.screenshot("counter")
        await big_screenshot(board, screenshot_dirs, "board")

        await page.get_by_test_id("act-done").click()
        await expect(page.get_by_test_id("current-number")).to_have_text("—")
        await expect(page.get_by_test_id("act-call-next")).to_be_enabled()
        # the next call replaces nothing on the page but is the board's newest
        await page.get_by_test_id("act-call-next").click()
        await expect(page.get_by_test_id("current-number")).to_have_text("A002")
        await expect(calls.first.locator(".board-number")).to_have_text("A002")
        await expect(board_waiting(board, "A")).to_have_text("0")
        await page.get_by_test_id("act-done").click()
        await expect(page.get_by_test_id("current-number")).to_have_text("—")

        # nobody waits: the clerk is told so inline
        await page.get_by_test_id("act-call-next").click()
        await expect(page.get_by_test_id("counter-error")).to_have_text(ZH["js.counter.nobody"])


async def test_the_board_shows_network_down_and_recovers(console: Console) -> None:
    page = console.page
    blocked = False
    live: list[WebSocketRoute] = []

    async def board_socket(ws: WebSocketRoute) -> None:
        if blocked:
            await ws.close(code=1011, reason="network down")
            return
        ws.connect_to_server()
        live.append(ws)

    await page.route_web_socket(re.compile(r"/ws/board$"), board_socket)
    await open_board(page, console)
    down = page.get_by_test_id("board-down")
    await expect(down).to_be_hidden()

    blocked = True
    for ws in live:
        await ws.close(code=1011, reason="network down")
    await expect(down).to_be_visible()
    await expect(down).to_have_text(ZH["board.down"])
    await expect(page.locator("body")).to_have_attribute("data-live", "down")
    connects = len(live)

    blocked = False
    await expect(down).to_be_hidden(timeout=RECONNECT_TIMEOUT_MS)
    await expect(page.locator("body")).to_have_attribute("data-live", "up")
    assert len(live) > connects, "the board reconnected through a new socket"


async def test_the_board_shows_numbers_never_names_or_request_ids(console: Console) -> None:
    hub = console.hub
    queue = hub.runtime.queue
    assert queue is not None
    await ensure_clerk(hub)
    ticket = await queue.issue("consult", request_id=REQUEST_IDS[2], source="kiosk-2")
    await queue.call_next("3")
    page = console.page
    frames: list[str] = []
    page.on(
        "websocket",
        lambda ws: ws.on("framereceived", lambda f: frames.append(f if isinstance(f, str) else "")),
    )
    await open_board(page, console)
    calls = board_call(page)
    await expect(calls.first.locator(".board-number")).to_have_text(ticket.number)
    await expect(calls.first.locator(".board-window")).to_have_text(
        ZH["js.board.window"].format(n=3)
    )
    text = await page.locator("body").inner_text()
    html = await page.content()
    for secret in (CLERK.display_name, CLERK.username, *REQUEST_IDS, "kiosk-"):
        assert secret not in text, f"the board shows {secret!r}"
        assert secret not in html, f"the board's page holds {secret!r}"
        assert not [f for f in frames if secret in f], f"the board channel carries {secret!r}"
    assert any(ticket.number in f for f in frames), "the board channel carried the snapshot"
    await queue.done("3")
