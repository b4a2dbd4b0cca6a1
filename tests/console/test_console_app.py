"""The console app as a whole: one route table, deny by default, assets vendored, catalogs complete,
and the wiring the hub uses (cookie sessions, CSRF, admin API) composed through the factory."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfoNotFoundError

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher
from test_console_app_harness import BROWSER, auth, authenticators, console, court, make_service

import dashboards
from dashboards import admin_api, sessions
from dashboards.api import POLICY_KEY
from dashboards.app import CONSOLE_ROUTES, ConsoleOptions, create_console_app
from dashboards.auth import Handler, Role
from dashboards.i18n import SUPPORTED_LANGUAGES, Catalogs
from dashboards.live import LIVE_KEY
from dashboards.pages import PASSWORD_CHANGE_PAGES, NavItem
from dashboards.routes import Route
from dashboards.sessions import (
    ACCOUNTS_KEY,
    AUDIT_KEY,
    SESSION_COOKIE,
    ApiTokenAuthenticator,
    SessionAuthenticator,
    csrf_middleware,
)
from hub.accounts import AccountStore
from hub.audit import AuditLog
from hub.service import HubService

PACKAGE = Path(dashboards.__file__).parent
ASSET_DIRS = (PACKAGE / "templates", PACKAGE / "static", PACKAGE / "i18n")
PASSWORD = "correct horse 9"


def registered(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


# the route table --------------------------------------------------------------------------------


def test_one_table_declares_every_route_and_nothing_else(tmp_path: Path) -> None:
    app = create_console_app(make_service(tmp_path), [])
    policy = app[POLICY_KEY]
    assert policy.undeclared(app) == []
    assert registered(app) == {(rule.method, rule.path) for rule in policy.rules()}
    anonymous = {(r.method, r.path) for r in policy.rules() if Role.ANONYMOUS in r.roles}
    assert anonymous == {
        ("GET", "/api/v1/health"),
        ("GET", "/login"),
        ("GET", "/static/{name}"),
    }
    assert policy.rule_for("GET", "/technician").roles == {Role.ADMIN, Role.TECHNICIAN}  # type: ignore[union-attr]
    for path in ("/admin/users", "/admin/audit"):
        assert policy.rule_for("GET", path).roles == {Role.ADMIN}  # type: ignore[union-attr]


def test_extra_routes_join_the_table_and_may_not_redeclare(tmp_path: Path) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": True})

    extra = Route("GET", "/api/v1/hello", hello, frozenset({Role.JUDGE}))
    app = create_console_app(make_service(tmp_path), [], extra_routes=[extra])
    assert app[POLICY_KEY].rule_for("GET", "/api/v1/hello") == extra.rule
    with pytest.raises(ValueError, match="declared twice"):
        create_console_app(make_service(tmp_path), [], extra_routes=[CONSOLE_ROUTES[0]])


def test_an_unknown_time_zone_fails_when_the_app_is_built(tmp_path: Path) -> None:
    with pytest.raises(ZoneInfoNotFoundError):
        create_console_app(make_service(tmp_path), [], options=ConsoleOptions(timezone="Mars/Base"))


async def test_setup_and_extra_middlewares_run(tmp_path: Path) -> None:
    marker = web.AppKey("marker", str)
    seen: list[str] = []

    @web.middleware
    async def tag(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen.append(request.path)
        return await handler(request)

    def setup(app: web.Application) -> None:
        app[marker] = "set by the lead"

    service = make_service(tmp_path)
    async with console(service, extra_middlewares=[tag], setup=setup) as client:
        assert client.app is not None and client.app[marker] == "set by the lead"
        assert isinstance(client.app[LIVE_KEY].service, HubService)
        r = await client.get("/technician", headers=auth(Role.TECHNICIAN))
        assert r.status == 200
        r = await client.get("/technician", headers=BROWSER)
        assert r.status == 200 and "/login" in str(r.url)  # followed the redirect
    # extra middlewares run after the access check: only the allowed requests reach them
    assert seen == ["/technician", "/login"]


async def test_pages_of_other_modules_join_the_nav_and_the_login_redirect(tmp_path: Path) -> None:
    async def hall(request: web.Request) -> web.Response:
        return web.Response(text="<p>hall</p>", content_type="text/html")

    page = Route("GET", "/hall", hall, frozenset({Role.COUNTER, Role.ADMIN}))
    nav = (*ConsoleOptions().nav, NavItem("/hall", "nav.users", "tile.users", "i-users"))
    options = ConsoleOptions(nav=nav)
    async with console(make_service(tmp_path), options, extra_routes=[page]) as client:
        r = await client.get("/hall", headers=BROWSER, allow_redirects=False)
        assert r.status == 302 and r.headers["Location"] == "/login?next=/hall"
        r = await client.get("/hall", headers=auth(Role.TECHNICIAN, **BROWSER))
        assert r.status == 403 and 'data-testid="forbidden"' in await r.text()
        home = await (await client.get("/", headers=auth(Role.COUNTER))).text()
        assert 'data-testid="nav-hall"' in home and 'data-testid="tile-hall"' in home
        assert 'data-testid="nav-technician"' not in home
        home = await (await client.get("/", headers=auth(Role.TECHNICIAN))).text()
        assert 'data-testid="nav-hall"' not in home


async def test_an_undeclared_route_is_forbidden_even_to_admins(tmp_path: Path) -> None:
    async def secret(request: web.Request) -> web.Response:
        return web.json_response({"secret": True})

    def setup(app: web.Application) -> None:
        app.router.add_get("/secret", secret)  # behind the table's back

    async with console(make_service(tmp_path), setup=setup) as client:
        r = await client.get("/secret", headers=auth(Role.ADMIN, **BROWSER))
        assert r.status == 403 and "not declared" in (await r.json())["error"]


# assets ---------------------------------------------------------------------------------------


def asset_files() -> list[Path]:
    return sorted(p for d in ASSET_DIRS for p in d.rglob("*") if p.is_file())


def test_no_page_needs_anything_from_outside_the_hub() -> None:
    """Court intranets are closed: no script, style, font or link may point elsewhere."""
    url = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.I)
    found = {}
    for path in asset_files():
        text = path.read_text(encoding="utf-8")
        hits = re.findall(r"https?://", text, re.I) + url.findall(text)
        if hits:
            found[str(path.relative_to(PACKAGE))] = hits
    assert found == {}
    assert any(p.suffix == ".js" for p in asset_files())
    assert any(p.suffix == ".css" for p in asset_files())


def test_package_data_ships_every_asset() -> None:
    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["*"]
    suffixes = {p.removeprefix("*") for p in patterns}
    for path in asset_files():
        assert path.suffix in suffixes, f"{path.name} would be left out of the wheel"
    deps = pyproject["project"]["dependencies"]
    assert any(d.startswith("jinja2") for d in deps)


def test_static_files_are_flat_and_known() -> None:
    for path in (PACKAGE / "static").iterdir():
        assert path.is_file() and not path.name.startswith(".")


async def test_static_files_are_served_without_traversal(tmp_path: Path) -> None:
    async with console(make_service(tmp_path)) as client:
        r = await client.get("/static/console.js")
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/javascript")
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "window.Courthub" in await r.text()
        r = await client.get("/static/console.css")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/css")
        r = await client.head("/static/console.css")
        assert r.status == 200
        for path in (
            "/static/..%2Fapp.py",
            "/static/%2e%2e%2fapp.py",
            "/static/..%2F..%2Fpyproject.toml",
            "/static/.hidden.js",
            "/static/missing.js",
            "/static/console.py",
            "/static/%2Fetc%2Fpasswd",
        ):
            r = await client.get(path)
            assert r.status == 404, path
            assert "import" not in await r.text()
        for path in (
            "/static/",
            "/static",
            "/static/..",
            "/static/../app.py",
            "/static/x/../../app.py",
        ):
            r = await client.get(path)
            assert r.status in (401, 404), path  # no listing, no route outside static/


# catalogs ---------------------------------------------------------------------------------------


def catalog(language: str) -> dict[str, str]:
    data: dict[str, str] = json.loads(
        (PACKAGE / "i18n" / f"{language}.json").read_text(encoding="utf-8")
    )
    return data


def test_both_catalogs_have_the_same_keys_and_placeholders() -> None:
    zh, en = catalog("zh-CN"), catalog("en")
    assert set(zh) == set(en)
    for key in zh:
        assert set(re.findall(r"\{(\w+)\}", zh[key])) == set(re.findall(r"\{(\w+)\}", en[key])), key
        assert zh[key].strip() and en[key].strip(), key
    assert Catalogs.load().languages == SUPPORTED_LANGUAGES


def test_every_text_the_pages_use_is_in_the_catalogs() -> None:
    keys = set(catalog("en"))
    used: set[str] = set()
    for path in (PACKAGE / "templates").glob("*.html"):
        used |= set(re.findall(r"\bt\(\s*[\"']([\w.-]+)[\"']", path.read_text(encoding="utf-8")))
    for path in (PACKAGE / "static").glob("*.js"):
        used |= set(re.findall(r"\bt\(\s*\"([\w.-]+)\"", path.read_text(encoding="utf-8")))
    for path in PACKAGE.glob("pages*.py"):
        used |= set(
            re.findall(
                r"\"((?:nav|tile|tech|home|login|password|users|audit|error)\.[\w.]+)\"",
                path.read_text(encoding="utf-8"),
            )
        )
    used = {k for k in used if not k.endswith((".", ".html"))}  # prefixes and template names
    assert len(used) > 50
    assert used - keys == set()
    for role in Role:
        if role is not Role.ANONYMOUS:
            assert f"role.{role.value}" in keys
    for state in ("online", "stale", "offline", "fault"):
        assert f"state.{state}" in keys


# composed with the real sign-in ---------------------------------------------------------------------


@dataclass
class SignedInConsole:
    client: TestClient[web.Request, web.Application]
    accounts: AccountStore
    service: HubService


@pytest.fixture
async def signed_in_console(tmp_path: Path) -> AsyncIterator[SignedInConsole]:
    """The console wired as the hub wires it: sessions, API tokens, CSRF, admin API."""
    accounts = await AccountStore.open(
        tmp_path, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    audit = await AuditLog.open(tmp_path)
    service = make_service(tmp_path / "hub")
    court(service)

    def setup(app: web.Application) -> None:
        app[ACCOUNTS_KEY] = accounts
        app[AUDIT_KEY] = audit

    app = create_console_app(
        service,
        [
            SessionAuthenticator(accounts, allowed_while_password_change=PASSWORD_CHANGE_PAGES),
            ApiTokenAuthenticator(accounts),
            *authenticators(),
        ],
        extra_routes=(*sessions.ROUTES, *admin_api.ROUTES),
        extra_middlewares=[csrf_middleware],
        setup=setup,
    )
    try:
        async with TestClient(TestServer(app)) as client:
            yield SignedInConsole(client, accounts, service)
    finally:
        await audit.close()
        await accounts.close()


async def test_a_signed_in_technician_uses_the_pages_and_the_socket(
    signed_in_console: SignedInConsole,
) -> None:
    c = signed_in_console
    await c.accounts.create_user(
        "li", PASSWORD, ["technician"], language="en", must_change_password=False
    )
    r = await c.client.post("/api/v1/session", json={"username": "li", "password": PASSWORD})
    assert r.status == 200
    csrf = (await r.json())["csrf_token"]
    r = await c.client.get("/technician", headers=BROWSER)
    page = await r.text()
    assert r.status == 200 and f'<meta name="csrf-token" content="{csrf}">' in page
    assert "Devices" in page  # the account's language
    # the page's command call: CSRF header required for a cookie session
    url = "/api/v1/devices/hall-1/kiosk-1/commands"
    r = await c.client.post(url, json={"name": "reboot"})
    assert r.status == 403 and "csrf" in (await r.json())["error"]
    r = await c.client.post(
        url, json={"name": "reboot", "timeout_s": 0.2}, headers={"X-CSRF-Token": csrf}
    )
    assert r.status not in (401, 403)  # reached the hub (no broker here: it answers an error)
    async with c.client.ws_connect("/ws") as ws:
        hello = await ws.receive_json(timeout=5)
        assert hello["type"] == "hello" and "devices" in hello["topics"]
    # signing out ends it: the next page visit goes to the login page
    r = await c.client.delete("/api/v1/session", headers={"X-CSRF-Token": csrf})
    assert r.status == 200
    r = await c.client.get("/technician", headers=BROWSER, allow_redirects=False)
    assert r.status == 302 and r.headers["Location"].startswith("/login")


async def test_an_account_that_must_change_its_password_is_sent_to_that_page(
    signed_in_console: SignedInConsole,
) -> None:
    c = signed_in_console
    await c.accounts.create_user("wang", PASSWORD, ["admin"], must_change_password=True)
    r = await c.client.post("/api/v1/session", json={"username": "wang", "password": PASSWORD})
    assert r.status == 200 and (await r.json())["must_change_password"] is True
    for path in ("/", "/technician", "/admin/users"):
        r = await c.client.get(path, headers=BROWSER, allow_redirects=False)
        assert r.status == 302 and r.headers["Location"] == "/account/password", path
    r = await c.client.get("/account/password", headers=BROWSER)
    assert r.status == 200 and 'id="password-form"' in await r.text()
    r = await c.client.get("/api/v1/devices", allow_redirects=False)
    assert r.status == 403  # programs keep the JSON answer
    cookie = c.client.session.cookie_jar.filter_cookies(c.client.make_url("/"))
    assert SESSION_COOKIE in cookie


async def test_the_socket_refuses_other_sites_and_anonymous_callers(tmp_path: Path) -> None:
    async with console(make_service(tmp_path)) as client:
        r = await client.get("/ws", headers={"Origin": "http://evil.example", **auth(Role.ADMIN)})
        assert r.status == 403
        r = await client.get("/ws")
        assert r.status == 401
        host = client.make_url("/").host
        port = client.make_url("/").port
        async with client.ws_connect(
            "/ws", headers=auth(Role.ADMIN), origin=f"http://{host}:{port}"
        ) as ws:
            msg = await ws.receive(timeout=5)
            assert msg.type is WSMsgType.TEXT and json.loads(msg.data)["type"] == "hello"
