"""The hearing console page (``/hearing``) over real HTTP: who may open it, what it offers whom,
which venues it lists. The page's behaviour in a browser is ``tests/browser/test_hearing_browser.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from test_console_app_harness import (
    BROWSER,
    CSRF,
    auth,
    birth,
    console,
    html_problems,
    make_service,
)

from dashboards import pages_hearing, pages_video, recordings_api, transcript_api
from dashboards.app import ConsoleOptions
from dashboards.auth import Role
from dashboards.pages import DEFAULT_NAV
from dashboards.recordings_api import RECORDINGS_KEY, RecordingsContext
from dashboards.sessions import AUDIT_KEY, csrf_middleware
from dashboards.transcript_api import TRANSCRIPT_KEY, TranscriptContext
from hub.audit import AuditLog
from hub.hearings import HearingService
from hub.live_video import CameraView, LiveVideo
from hub.recording_index import DB_FILE, RecordingIndex
from hub.transcript_store import TranscriptStore
from protocol.messages import VenueKind

CAMERAS = (
    CameraView("court-1-cam-1", "审判席", "court-1", "tech_courtroom", "online"),
    CameraView(
        "interro-1-cam-1",
        "讯问室",
        "interro-1",
        "interrogation_room",
        "online",
        live_roles=frozenset({"judge"}),
    ),
    CameraView("field-1", "执行一组", "field", "command_center", "online"),
)


@dataclass
class Rig:
    client: TestClient[web.Request, web.Application]
    hearings: HearingService

    async def page(self, role: Role | None, language: str = "zh-CN") -> tuple[int, str]:
        headers = auth(role, language, **BROWSER) if role else BROWSER
        r = await self.client.get("/hearing", headers=headers, allow_redirects=False)
        return r.status, (await r.text() if r.status != 302 else r.headers["Location"])


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    data_dir = tmp_path / "hub"
    index = await RecordingIndex.open(data_dir / DB_FILE, data_dir / "recordings")
    audit = await AuditLog.open(data_dir)
    hearings = await HearingService.open(data_dir, index, audit)
    store = await TranscriptStore.open(data_dir)
    live = LiveVideo()
    for view in CAMERAS:
        live.add_camera(view)
    service = make_service(tmp_path / "svc")
    birth(service, "court-3", venue_id="court-3", kind=VenueKind.TECH_COURTROOM, name="第三法庭")
    birth(service, "hall-1", venue_id="hall", kind=VenueKind.LITIGATION_HALL, name="大厅")

    def setup(app: web.Application) -> None:
        app[AUDIT_KEY] = audit
        app[RECORDINGS_KEY] = RecordingsContext(index, hearings, None, None, data_dir / DB_FILE)
        app[TRANSCRIPT_KEY] = TranscriptContext(store, hearings, None)
        pages_video.install_live_video(app, live)

    try:
        async with console(
            service,
            ConsoleOptions(nav=(*DEFAULT_NAV, pages_hearing.HEARING_NAV)),
            extra_routes=(
                *pages_hearing.ROUTES,
                *pages_video.ROUTES,
                *recordings_api.ROUTES,
                *transcript_api.ROUTES,
            ),
            extra_middlewares=[csrf_middleware],
            setup=setup,
        ) as client:
            yield Rig(client, hearings)
    finally:
        await store.close()
        await hearings.close()
        await audit.close()
        await index.close()


def page_data(page: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="hearing-data">(.*?)</script>', page)
    assert found, "the page carries its JSON"
    data: dict[str, Any] = json.loads(found.group(1))
    return data


def nav_links(page: str) -> set[str]:
    nav = re.search(r'<nav class="nav".*?</nav>', page, re.S)
    return (
        set(re.findall(r'<a class="nav-link[^"]*" href="([^"]+)"', nav.group(0))) if nav else set()
    )


async def test_the_page_opens_to_judges_clerks_and_admins_only(rig: Rig) -> None:
    for role in (Role.JUDGE, Role.CLERK, Role.ADMIN):
        status, page = await rig.page(role)
        assert status == 200, role
        assert html_problems(page) == [], role
        assert 'data-testid="hearing-banner"' in page and "/static/hearing.js" in page
        assert f'content="{CSRF}"' in page  # the page's POSTs carry the CSRF token
        assert 'data-live-topics="transcript"' in page  # the live transcript topic
        assert "庭审控制台" in page and "开庭" in page and "休庭" in page
    for role in (Role.COUNTER, Role.COMMANDER, Role.TECHNICIAN):
        status, page = await rig.page(role)
        assert status == 403 and 'data-testid="forbidden"' in page, role
    status, location = await rig.page(None)
    assert status == 302 and location.startswith("/login?next=")
    status, page = await rig.page(Role.CLERK, "en")
    assert status == 200 and "Hearing console" in page and "Recess" in page
    for asset in ("hearing.js", "hearing.css"):
        assert (await rig.client.get(f"/static/{asset}")).status == 200


async def test_the_nav_links_the_page_for_the_bench(rig: Rig) -> None:
    for role in (Role.JUDGE, Role.CLERK, Role.ADMIN):
        page = await (await rig.client.get("/", headers=auth(role, **BROWSER))).text()
        assert "/hearing" in nav_links(page), role
        _, hearing_page = await rig.page(role)
        assert 'aria-current="page"' in hearing_page and "庭审" in hearing_page
    for role in (Role.COUNTER, Role.COMMANDER, Role.TECHNICIAN):
        page = await (await rig.client.get("/", headers=auth(role, **BROWSER))).text()
        assert "/hearing" not in nav_links(page), role


async def test_venues_come_from_registry_cameras_and_hearings(rig: Rig) -> None:
    await rig.hearings.open_hearing(
        title="甲诉乙", case_no="(2026)民初7号", venues=["court-9"], by="j"
    )
    _, page = await rig.page(Role.JUDGE)
    venues = page_data(page)["venues"]
    # courtrooms first, then interrogation rooms, then venues only hearings name; never the hall
    # or a command center
    assert [v["id"] for v in venues] == ["court-1", "court-3", "interro-1", "court-9"]
    assert {v["id"]: v["name"] for v in venues}["court-3"] == "第三法庭"
    assert '<option value="court-3">第三法庭 (court-3)</option>' in page


async def test_what_each_role_may_do_and_watch(rig: Rig) -> None:
    expected = {
        # role: (cameras, control, annotate/revise)
        Role.JUDGE: ({"court-1-cam-1", "interro-1-cam-1"}, True, True),
        Role.CLERK: ({"court-1-cam-1"}, True, True),  # the courtroom's, not the interrogation
        Role.ADMIN: ({"court-1-cam-1"}, True, False),  # the interrogation room is judges' only
    }
    for role, (cameras, control, annotate) in expected.items():
        _, page = await rig.page(role)
        data = page_data(page)
        assert {c["id"] for c in data["cameras"]} == cameras, role
        assert all(c["live_url"] == f"/video/{c['id']}/live.mjpg" for c in data["cameras"])
        assert data["can_control"] is control and data["can_export"] is control, role
        assert data["can_annotate"] is annotate and data["can_revise"] is annotate, role
        assert data["reasons"] == ["recess", "non_public_evidence", "mediation"]
        assert data["recordings"] is True and data["transcripts"] is True
