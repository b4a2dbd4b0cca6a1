"""Helpers of the console tests: a hub service without a broker, principals of every role, births.

The service is never started: the tests drive its registry and health monitor directly, the way
ingest would, so pages and the live socket see births and health changes without MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import html.parser
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dashboards.app import ConsoleOptions, create_console_app
from dashboards.auth import CSRF_TOKEN_KEY, BearerTokenAuthenticator, Principal, Role
from hub.config import hub_config_from_dict
from hub.service import HubService
from protocol.messages import Birth, DeviceInfo, Venue, VenueKind, now_ms

#: what a browser sends when it opens a page
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
STAFF_ROLES = tuple(r for r in Role if r is not Role.ANONYMOUS)
CSRF = "csrf-token-of-the-session"


def token(role: Role, language: str = "zh-CN") -> str:
    """The bearer token of the test principal with ``role`` (and ``language``)."""
    return f"tok-{role.value}-{language}"


def auth(role: Role, language: str = "zh-CN", **headers: str) -> dict[str, str]:
    """Headers of a request by the principal with ``role``."""
    return {"Authorization": f"Bearer {token(role, language)}", **headers}


class SessionLikeAuthenticator(BearerTokenAuthenticator):
    """A bearer token that also sets the request's CSRF token, as a cookie session does."""

    async def authenticate(self, request: web.Request) -> Principal | None:
        principal = await super().authenticate(request)
        if principal is not None:
            request[CSRF_TOKEN_KEY] = CSRF
        return principal


def authenticators() -> list[BearerTokenAuthenticator]:
    """One principal per role and language; display name "Name of <role>"."""
    result: list[BearerTokenAuthenticator] = []
    for role in STAFF_ROLES:
        for language in ("zh-CN", "en"):
            principal = Principal(
                f"user-{role.value}",
                frozenset({role}),
                via="session",
                language=language,
                display_name=f"Name of {role.value}",
            )
            result.append(SessionLikeAuthenticator(token(role, language), principal))
    return result


def make_service(data_dir: Path, timezone: str = "Asia/Shanghai") -> HubService:
    """A hub service that is never started (no broker): enough for pages and the live socket."""
    config = hub_config_from_dict({"hub": {"data_dir": str(data_dir), "timezone": timezone}})
    return HubService(config, "mqtt://127.0.0.1:1", "hub", "x")


def birth(
    service: HubService,
    agent: str,
    *,
    venue_id: str,
    kind: VenueKind,
    name: str = "",
    devices: Iterable[DeviceInfo] = (),
    bdseq: int = 1,
) -> None:
    """A live birth of ``agent``, applied as ingest would."""
    service.health.on_birth(
        agent,
        Birth(
            ts=now_ms(),
            bdseq=bdseq,
            seq=0,
            venue=Venue(id=venue_id, kind=kind, name=name),
            devices=list(devices),
            agent_version="0.1.0",
        ),
        retained=False,
    )


def court(service: HubService) -> None:
    """Two venues: a hall (kiosk, printer) and a courtroom (two cameras)."""
    birth(
        service,
        "hall-1",
        venue_id="hall",
        kind=VenueKind.LITIGATION_HALL,
        name="第一诉讼服务大厅",
        devices=[
            DeviceInfo(
                id="kiosk-1",
                kind="kiosk",
                model="K100",
                firmware="2.3.1",
                capabilities=["reboot", "show_message"],
            ),
            DeviceInfo(id="printer-1", kind="ticket_printer", model="P58", capabilities=["print"]),
        ],
    )
    birth(
        service,
        "court-1",
        venue_id="court-3",
        kind=VenueKind.TECH_COURTROOM,
        name="第三科技法庭",
        devices=[
            DeviceInfo(id="cam-1", kind="camera", model="IPC-4K"),
            DeviceInfo(id="cam-2", kind="camera", model="IPC-4K", capabilities=["identify"]),
        ],
    )


@contextlib.asynccontextmanager
async def console(
    service: HubService,
    options: ConsoleOptions | None = None,
    **kwargs: Any,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """A test client of the console app for ``service`` (every role's token accepted)."""
    app = create_console_app(
        service, authenticators(), options=options or ConsoleOptions(), **kwargs
    )
    async with TestClient(TestServer(app)) as client:
        yield client


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds (fails the test after ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)


class TagBalance(html.parser.HTMLParser):
    """Records tags opened and not closed, or closed out of order (templates must nest)."""

    VOID = frozenset(
        {
            "area",
            "base",
            "br",
            "col",
            "embed",
            "hr",
            "img",
            "input",
            "link",
            "meta",
            "source",
            "wbr",
        }
    )
    #: inside inline SVG, ``<path/>``-style self-closing elements are fine
    SELF_CLOSING_OK = frozenset({"path", "circle", "rect", "use"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value:
                self.ids.append(value)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value:
                self.ids.append(value)
        if tag not in self.VOID and tag not in self.SELF_CLOSING_OK:
            self.problems.append(f"<{tag}/> is not a void element")

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            if tag in self.stack:
                while self.stack and self.stack.pop() != tag:
                    pass
            return
        self.stack.pop()


def html_problems(text: str) -> list[str]:
    """Nesting problems, unclosed tags and duplicate ids of a page (empty when well formed)."""
    parser = TagBalance()
    parser.feed(text)
    parser.close()
    problems = list(parser.problems)
    if parser.stack:
        problems.append(f"unclosed: {parser.stack}")
    duplicates = {i for i in parser.ids if parser.ids.count(i) > 1}
    if duplicates:
        problems.append(f"duplicate ids: {sorted(duplicates)}")
    return problems
