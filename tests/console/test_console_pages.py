"""The console's pages: who may open them, what they show, in which language and time zone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_console_app_harness import (
    BROWSER,
    CSRF,
    STAFF_ROLES,
    auth,
    birth,
    console,
    court,
    html_problems,
    make_service,
)

from dashboards.app import ConsoleOptions
from dashboards.auth import Role
from dashboards.i18n import Catalogs
from dashboards.pages_technician import reason_text
from hub.registry import HealthState
from hub.service import HubService
from protocol.messages import DeviceInfo, VenueKind

#: page -> roles that may open it
PAGES = {
    "/": set(STAFF_ROLES),
    "/account/password": set(STAFF_ROLES),
    "/technician": {Role.ADMIN, Role.TECHNICIAN},
    "/admin/users": {Role.ADMIN},
    "/admin/audit": {Role.ADMIN},
}
NAV = {"/technician", "/admin/users", "/admin/audit"}


@pytest.fixture
def service(tmp_path: Path) -> HubService:
    """A court with two venues and four devices."""
    s = make_service(tmp_path)
    court(s)
    return s


def nav_links(page: str) -> set[str]:
    """The hrefs of the top bar's links."""
    nav = re.search(r'<nav class="nav".*?</nav>', page, re.S)
    return (
        set(re.findall(r'<a class="nav-link[^"]*" href="([^"]+)"', nav.group(0))) if nav else set()
    )


def attr(page: str, name: str) -> str:
    """The value of the first ``name="..."`` attribute on the page."""
    match = re.search(rf'{name}="([^"]*)"', page)
    assert match, name
    return match.group(1)


# who may open what ------------------------------------------------------------------------------


async def test_pages_open_to_their_roles_and_refused_to_others(service: HubService) -> None:
    async with console(service) as client:
        for path, roles in PAGES.items():
            for role in STAFF_ROLES:
                r = await client.get(path, headers=auth(role, **BROWSER), allow_redirects=False)
                if role in roles:
                    assert r.status == 200, (path, role)
                    assert r.content_type == "text/html"
                    assert html_problems(await r.text()) == [], (path, role)
                else:
                    # a browser gets a page saying so; a program gets the API's JSON
                    assert r.status == 403, (path, role)
                    assert r.content_type == "text/html"
                    assert 'data-testid="forbidden"' in await r.text()
                    r = await client.get(path, headers=auth(role), allow_redirects=False)
                    assert r.status == 403 and r.content_type == "application/json"
                    assert "error" in await r.json()


async def test_a_browser_without_a_session_is_sent_to_login(service: HubService) -> None:
    async with console(service) as client:
        for path in PAGES:
            r = await client.get(path + "?x=1", headers=BROWSER, allow_redirects=False)
            assert r.status == 302, path
            assert r.headers["Location"].startswith("/login?next=")
            assert "x%3D1" in r.headers["Location"] or "x=1" in r.headers["Location"]
            # programs still get 401 JSON; and so does a browser asking for an API route
            r = await client.get(path, allow_redirects=False)
            assert r.status == 401 and r.content_type == "application/json"
        r = await client.get("/api/v1/devices", headers=BROWSER, allow_redirects=False)
        assert r.status == 401
        r = await client.post("/technician", headers=BROWSER, allow_redirects=False)
        assert r.status == 401  # only GETs are redirected
        r = await client.get("/login", headers=BROWSER)
        assert r.status == 200 and 'id="login-form"' in await r.text()


async def test_login_page_goes_back_to_local_pages_only(service: HubService) -> None:
    async with console(service) as client:
        for given, expected in (
            ("/technician", "/technician"),
            ("/admin/audit?actor=x", "/admin/audit?actor=x"),
            ("//evil.example/x", "/"),
            ("https:evil", "/"),
            ("/\\evil.example", "/"),
            ("", "/"),
        ):
            r = await client.get("/login", params={"next": given}, headers=BROWSER)
            assert attr(await r.text(), "data-next") == expected.replace("&", "&amp;"), given


# navigation by role -----------------------------------------------------------------------------


async def test_nav_and_home_tiles_show_only_pages_the_role_may_open(service: HubService) -> None:
    async with console(service) as client:
        for role in STAFF_ROLES:
            allowed = {p for p in NAV if role in PAGES[p]}
            r = await client.get("/", headers=auth(role, **BROWSER))
            page = await r.text()
            assert nav_links(page) == allowed, role
            tiles = set(re.findall(r'class="tile" href="([^"]+)"', page))
            assert tiles == allowed, role
            assert ('data-testid="no-tiles"' in page) == (not allowed)
            assert 'data-testid="user-menu"' in page and 'data-testid="logout"' in page
            assert "Name of " + role.value in page


async def test_anonymous_pages_have_no_nav_or_user_menu(service: HubService) -> None:
    async with console(service) as client:
        page = await (await client.get("/login")).text()
    assert nav_links(page) == set()
    assert 'data-testid="user-menu"' not in page
    assert 'data-testid="lang-switch"' in page


# language -------------------------------------------------------------------------------------


async def test_chinese_by_default_english_for_a_user_who_chose_it(service: HubService) -> None:
    async with console(service) as client:
        zh = await (await client.get("/technician", headers=auth(Role.TECHNICIAN))).text()
        en = await (await client.get("/technician", headers=auth(Role.TECHNICIAN, "en"))).text()
    assert '<html lang="zh-CN">' in zh and "设备运维" in zh and "在线" in zh
    assert "Devices" not in zh
    assert '<html lang="en">' in en and "Devices" in en and "Online" in en
    assert "设备运维" not in en
    # the switch offers both languages, the current one pressed
    assert re.search(r'data-lang-choice="en"[^>]*aria-pressed="true"', en)
    assert re.search(r'data-lang-choice="zh-CN"[^>]*aria-pressed="true"', zh)


async def test_anonymous_pages_follow_the_lang_cookie_and_query(service: HubService) -> None:
    async with console(service) as client:
        page = await (await client.get("/login")).text()
        assert "登录" in page
        r = await client.get("/login?lang=en")
        assert "Sign in" in await r.text()
        assert r.cookies["lang"].value == "en"  # remembered for the next anonymous page
        page = await (await client.get("/login")).text()
        assert "Sign in" in page
        client.session.cookie_jar.clear()
        for cookie, shown in (("lang=zh-CN", "登录"), ("lang=en", "Sign in"), ("lang=xx", "登录")):
            r = await client.get("/login", headers={"Cookie": cookie})
            assert shown in await r.text(), cookie


async def test_page_scripts_get_their_texts_in_the_page_language(service: HubService) -> None:
    async with console(service) as client:
        en = await (await client.get("/technician", headers=auth(Role.ADMIN, "en"))).text()
    texts = re.search(r'<script type="application/json" id="ui-texts">(.*?)</script>', en, re.S)
    assert texts is not None
    assert '"age.seconds": "{n} s ago"' in texts.group(1)
    assert '"state.offline": "Offline"' in texts.group(1)


# time zone ------------------------------------------------------------------------------------


async def test_times_are_shown_in_the_courts_zone(tmp_path: Path) -> None:
    service = make_service(tmp_path)
    court(service)
    device = service.registry.device("hall-1", "kiosk-1")
    assert device is not None
    # 2024-05-01 00:00:00 UTC
    service.registry.set_health(device, HealthState.FAULT, "paper jam", 1_714_521_600_000)
    card = r'data-device="hall-1/kiosk-1".*?data-testid="device-since"[^>]*>([^<]*)<'
    for zone, shown in (("Asia/Shanghai", "05-01 08:00"), ("Europe/London", "05-01 01:00")):
        async with console(service, ConsoleOptions(timezone=zone)) as client:
            page = await (await client.get("/technician", headers=auth(Role.TECHNICIAN))).text()
        assert f'data-timezone="{zone}"' in page
        match = re.search(card, page, re.S)
        assert match and match.group(1) == shown, zone
        assert 'datetime="2024-05-01T00:00:00.000+00:00"' in page  # machine time stays UTC


# technician's page ----------------------------------------------------------------------------


async def test_technician_page_groups_devices_by_venue(service: HubService) -> None:
    registry = service.registry
    printer = registry.device("hall-1", "printer-1")
    cam = registry.device("court-1", "cam-2")
    assert printer is not None and cam is not None
    registry.set_health(printer, HealthState.FAULT, "paper out", printer.state_since_ms + 1)
    registry.set_health(cam, HealthState.OFFLINE, "agent offline", cam.state_since_ms + 1)
    printer.bad_messages = 7
    async with console(service) as client:
        page = await (await client.get("/technician", headers=auth(Role.TECHNICIAN))).text()
    page = page.split('<template id="tpl-venue">')[0]  # the blanks for the script come after

    venues = re.findall(r'<section class="venue" data-testid="venue" data-venue="([^"]+)"', page)
    assert venues == ["hall", "court-3"]  # the hall first, then courtrooms
    assert "第一诉讼服务大厅" in page and "诉讼服务大厅" in page and "科技法庭" in page
    hall, courtroom = page.split('data-venue="court-3"')
    assert 'data-device="hall-1/kiosk-1"' in hall and 'data-device="court-1/cam-1"' in courtroom
    assert 'data-agent="hall-1" data-online="true"' in hall

    cards = dict(re.findall(r'data-device="([^"]+)" data-agent="[^"]+" data-state="([^"]+)"', page))
    assert cards == {
        "hall-1/kiosk-1": "online",
        "hall-1/printer-1": "fault",
        "court-1/cam-1": "online",
        "court-1/cam-2": "offline",
    }
    # colour (class) and icon and word for every state
    assert '<article class="device state-offline"' in page
    assert 'href="#i-offline"' in page and 'href="#i-fault"' in page
    assert "故障" in page
    # the hub's English reasons in the page's language, the raw text kept as the tooltip
    assert 'title="paper out">打印机缺纸</p>' in page
    assert 'title="agent offline">边缘代理离线</p>' in page

    def commands(key: str) -> list[str]:
        card = page.split(f'data-device="{key}"')[1].split("</article>")[0]
        assert 'data-testid="device-age"' in card
        return re.findall(r'data-command="([^"]+)" data-testid="command-button"', card)

    assert commands("hall-1/kiosk-1") == ["reboot", "show_message"]
    assert commands("hall-1/printer-1") == ["print"]
    assert commands("court-1/cam-1") == []
    assert commands("court-1/cam-2") == ["identify"]
    printer_card = page.split('data-device="hall-1/printer-1"')[1].split("</article>")[0]
    assert re.search(r'data-testid="device-bad">7<', printer_card)
    assert "P58" in printer_card
    counts = dict(
        re.findall(r'data-testid="summary-(\w+)">.*?<b class="summary-count">(\d+)<', page, re.S)
    )
    assert counts == {"offline": "1", "fault": "1", "stale": "0", "online": "2"}


async def test_offline_devices_have_their_command_buttons_disabled(service: HubService) -> None:
    registry = service.registry
    cam = registry.device("court-1", "cam-2")
    assert cam is not None
    registry.set_health(cam, HealthState.OFFLINE, "no answer within 2 s", cam.state_since_ms + 1)
    async with console(service) as client:
        zh = await (await client.get("/technician", headers=auth(Role.TECHNICIAN))).text()
        en = await (await client.get("/technician", headers=auth(Role.TECHNICIAN, "en"))).text()
    for page, why, reason in (
        (zh, "设备离线，暂时不能下发指令", "2 秒内无应答"),
        (en, "The device is offline; commands are unavailable", "No answer within 2 s"),
    ):
        offline = page.split('data-device="court-1/cam-2"')[1].split("</article>")[0]
        assert f'data-command="identify" data-testid="command-button" disabled title="{why}"' in (
            offline
        )
        assert f'title="no answer within 2 s">{reason}</p>' in offline
        online = page.split('data-device="hall-1/kiosk-1"')[1].split("</article>")[0]
        assert 'data-command="reboot" data-testid="command-button">' in online
        assert "disabled" not in online
    # the script gets the same reason table and its texts, for live updates
    rules = re.search(r'<script type="application/json" id="reason-rules">(.*?)</script>', zh)
    assert rules is not None and "reason.no_answer" in rules.group(1)
    texts = re.search(r'<script type="application/json" id="ui-texts">(.*?)</script>', zh, re.S)
    assert texts is not None
    assert json.loads(texts.group(1))["reason.no_answer"] == "{n} 秒内无应答"


@pytest.mark.parametrize(
    ("language", "reason", "shown"),
    [
        ("zh-CN", "", ""),
        ("zh-CN", "agent offline", "边缘代理离线"),
        ("zh-CN", "starting", "正在启动"),
        ("zh-CN", "kiosk broker unreachable", "无法连接自助终端消息服务"),
        ("zh-CN", "bad response", "设备应答无效"),
        ("zh-CN", "no answer within 0.1 s", "0.1 秒内无应答"),
        ("zh-CN", "no message in 30 s", "30 秒内未收到报文"),
        ("zh-CN", "printer jam, card reader fault", "打印机卡纸；读卡器故障"),
        ("zh-CN", "paper out, toner low", "paper out, toner low"),  # a part unknown: raw
        ("zh-CN", "lamp broken", "lamp broken"),
        ("en", "paper out", "Paper out"),
        ("en", "no answer within 2 s", "No answer within 2 s"),
    ],
)
def test_state_reasons_are_translated(language: str, reason: str, shown: str) -> None:
    t = Catalogs.load().translator(language)
    assert reason_text(t, reason) == shown


async def test_venue_kind_is_hidden_when_it_is_the_name(tmp_path: Path) -> None:
    service = make_service(tmp_path)
    birth(service, "hall-2", venue_id="h", kind=VenueKind.LITIGATION_HALL, name="诉讼服务大厅")
    async with console(service) as client:
        page = await (await client.get("/technician", headers=auth(Role.ADMIN))).text()
    page = page.split('<template id="tpl-venue">')[0]
    assert 'data-testid="venue-kind" hidden></span>' in page
    assert page.count("诉讼服务大厅") == 1


async def test_pages_carry_the_sessions_csrf_token(service: HubService) -> None:
    async with console(service) as client:
        page = await (await client.get("/technician", headers=auth(Role.TECHNICIAN))).text()
        login = await (await client.get("/login")).text()
    assert f'<meta name="csrf-token" content="{CSRF}">' in page
    assert '<meta name="csrf-token" content="">' in login
    assert 'data-live-topics="devices,telemetry,alerts"' in page


async def test_technician_page_without_devices_says_so(tmp_path: Path) -> None:
    async with console(make_service(tmp_path)) as client:
        page = await (await client.get("/technician", headers=auth(Role.ADMIN))).text()
    assert re.search(r'data-testid="no-devices">', page)  # shown (no hidden attribute)
    assert html_problems(page) == []


async def test_text_from_agents_is_escaped(tmp_path: Path) -> None:
    service = make_service(tmp_path)
    birth(
        service,
        "hall-9",
        venue_id="x",
        kind=VenueKind.LITIGATION_HALL,
        name='<script>alert("venue")</script>',
        devices=[
            DeviceInfo(id="k", kind="<b>kiosk</b>", model='"><img src=x>', capabilities=["<i>"])
        ],
    )
    async with console(service) as client:
        page = await (await client.get("/technician", headers=auth(Role.ADMIN))).text()
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert "<b>kiosk</b>" not in page and '"><img' not in page
    assert html_problems(page) == []


async def test_admin_pages_render_their_forms(service: HubService) -> None:
    async with console(service) as client:
        users = await (await client.get("/admin/users", headers=auth(Role.ADMIN))).text()
        audit = await (await client.get("/admin/audit", headers=auth(Role.ADMIN, "en"))).text()
        password = await (await client.get("/account/password", headers=auth(Role.COUNTER))).text()
    for role in STAFF_ROLES:
        assert f'value="{role.value}" data-testid="user-role-{role.value}"' in users
    assert 'value="anonymous"' not in users
    assert 'src="/static/users.js"' in users
    for name in ("actor", "action", "since", "until"):
        assert f'name="{name}"' in audit
    assert 'data-testid="audit-verify"' in audit and "Verify chain" in audit
    assert 'data-page-size="100"' in audit
    # the scripts show action codes and language codes as words
    assert '"action.login": "Sign-in"' in audit
    assert '"action.device_command": "Device command"' in audit
    assert (
        '<option value="zh-CN" selected>中文</option><option value="en">English</option>' in users
    )
    texts = re.search(r'<script type="application/json" id="ui-texts">(.*?)</script>', users, re.S)
    assert texts is not None and json.loads(texts.group(1))["action.login"] == "登录"
    assert 'name="old_password"' in password and 'name="new_password"' in password


async def test_pages_forbid_outside_resources_by_header(service: HubService) -> None:
    async with console(service) as client:
        r = await client.get("/technician", headers=auth(Role.TECHNICIAN))
        login = await client.get("/login")
    for response in (r, login):
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"
