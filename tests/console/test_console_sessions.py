"""The console's sign-in over HTTP: cookies, CSRF, lock-out, expiry, API tokens, admin API, and
every role against every route.

The app under test is assembled the way the console is: ``access_middleware`` (session cookie,
per-user API token, the hub's admin token) then ``csrf_middleware``, over the routes of
``dashboards.sessions``, ``dashboards.admin_api`` and ``dashboards.api``. Time is a fake clock.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from dashboards import admin_api, api, sessions
from dashboards.auth import (
    AccessPolicy,
    BearerTokenAuthenticator,
    Principal,
    Role,
    access_middleware,
)
from dashboards.sessions import (
    ACCOUNTS_KEY,
    AUDIT_KEY,
    SESSION_COOKIE,
    ApiTokenAuthenticator,
    SessionAuthenticator,
    csrf_middleware,
)
from hub.accounts import ROLES, AccountStore, Session
from hub.audit import AuditLog
from hub.config import hub_config_from_dict
from hub.service import HubService

PASSWORD = "correct horse 9"
ADMIN_TOKEN = "the-hubs-own-admin-token"
ALL_ROUTES = (*sessions.ROUTES, *admin_api.ROUTES, *api.ROUTES)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Console:
    client: TestClient[web.Request, web.Application]
    app: web.Application
    policy: AccessPolicy
    accounts: AccountStore
    audit: AuditLog
    clock: FakeClock


def build_app(accounts: AccountStore, audit: AuditLog, data_dir: Path) -> web.Application:
    policy = AccessPolicy(r.rule for r in ALL_ROUTES)
    hub_admin = Principal("api-token", frozenset({Role.ADMIN}))
    authenticators = [
        SessionAuthenticator(accounts),
        ApiTokenAuthenticator(accounts),
        BearerTokenAuthenticator(ADMIN_TOKEN, hub_admin),
    ]
    app = web.Application(middlewares=[access_middleware(policy, authenticators), csrf_middleware])
    app[ACCOUNTS_KEY] = accounts
    app[AUDIT_KEY] = audit
    config = hub_config_from_dict({"hub": {"data_dir": str(data_dir)}})
    # never started: enough for handlers that read the registry (as in test_hub_api)
    app[api.SERVICE_KEY] = HubService(config, "mqtt://127.0.0.1:1", "hub", "x")
    for route in ALL_ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    return app


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    clock = FakeClock()
    accounts = await AccountStore.open(
        tmp_path,
        clock=clock,
        hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
    )
    audit = await AuditLog.open(tmp_path, clock=clock)
    app = build_app(accounts, audit, tmp_path)
    policy = AccessPolicy(r.rule for r in ALL_ROUTES)
    try:
        async with TestClient(TestServer(app)) as client:
            yield Console(client, app, policy, accounts, audit, clock)
    finally:
        await audit.close()
        await accounts.close()


def with_session(session: Session, *, csrf: bool = True) -> dict[str, str]:
    headers = {"Cookie": f"{SESSION_COOKIE}={session.id}"}
    if csrf:
        headers["X-CSRF-Token"] = session.csrf_token
    return headers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def sign_in(console: Console, username: str, password: str = PASSWORD) -> dict[str, Any]:
    r = await console.client.post(
        "/api/v1/session", json={"username": username, "password": password}
    )
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


# every role × every route ------------------------------------------------------------------------


def registered_routes(app: web.Application) -> list[tuple[str, str]]:
    return sorted(
        {
            (route.method, route.resource.canonical)
            for route in app.router.routes()
            if route.resource is not None and route.method != "HEAD"
        }
    )


def test_every_registered_route_has_an_explicit_rule(tmp_path: Path) -> None:
    app = build_app(None, None, tmp_path)  # type: ignore[arg-type]
    policy = AccessPolicy(r.rule for r in ALL_ROUTES)
    assert policy.undeclared(app) == []
    declared = sorted((rule.method, rule.path) for rule in policy.rules())
    assert registered_routes(app) == declared  # no stale rows either
    for rule in policy.rules():
        if Role.ANONYMOUS in rule.roles:
            assert rule.path in ("/api/v1/health", "/api/v1/session"), rule
        if rule.path.startswith(("/api/v1/users", "/api/v1/audit")):
            assert rule.roles == {Role.ADMIN}, rule


@pytest.mark.parametrize("role", [*ROLES, "anonymous"])
async def test_each_role_gets_exactly_the_routes_opened_to_it(console: Console, role: str) -> None:
    """Built from the routes registered on the app: a route without a rule fails here too."""
    username = f"user-{role}"
    if role != "anonymous":
        await console.accounts.create_user(username, PASSWORD, [role])
    wrong = []
    for method, path in registered_routes(console.app):
        rule = console.policy.rule_for(method, path)
        assert rule is not None, f"{method} {path} has no role rule"
        headers: dict[str, str] = {}
        if role != "anonymous":
            # a fresh session each time: DELETE /api/v1/session ends the one it is called with
            headers = with_session(await console.accounts.create_session(username))
        async with console.client.request(
            method, concrete(path), json={}, headers=headers
        ) as response:
            allowed = Role.ANONYMOUS in rule.roles or Role(role) in rule.roles
            refused = response.status in (401, 403)
            expected = 401 if role == "anonymous" else 403
            if allowed == refused or (refused and response.status != expected):
                wrong.append(f"{method} {path}: {response.status} {await response.text()}")
    assert wrong == [], f"role {role}:\n" + "\n".join(wrong)


# sign-in -----------------------------------------------------------------------------------------


async def test_sign_in_sets_a_strict_httponly_cookie(console: Console) -> None:
    await console.accounts.create_user("judge1", PASSWORD, ["judge"], display_name="李法官")
    r = await console.client.post(
        "/api/v1/session", json={"username": "judge1", "password": PASSWORD}
    )
    assert r.status == 200
    body = await r.json()
    assert body["user"]["username"] == "judge1" and body["user"]["roles"] == ["judge"]
    assert body["must_change_password"] is False and len(body["csrf_token"]) >= 43
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    assert "Max-Age" not in cookie and "expires" not in cookie.lower()
    assert r.headers["Cache-Control"] == "no-store"
    me = await console.client.get("/api/v1/me")
    assert me.status == 200
    assert await me.json() == {
        "username": "judge1",
        "display_name": "李法官",
        "roles": ["judge"],
        "language": "zh-CN",
        "must_change_password": False,
        "via": "session",
    }
    [entry] = await console.audit.entries(action="login")
    assert (entry.actor, entry.target, entry.source) == ("judge1", "judge1", "127.0.0.1")


async def test_wrong_and_unknown_users_get_the_same_answer(console: Console) -> None:
    await console.accounts.create_user("judge1", PASSWORD, ["judge"])
    answers = []
    for username, password in (("judge1", "wrong password"), ("nobody", PASSWORD)):
        r = await console.client.post(
            "/api/v1/session", json={"username": username, "password": password}
        )
        answers.append((r.status, await r.json(), "Set-Cookie" in r.headers))
    assert answers[0] == answers[1] == (401, {"error": "wrong username or password"}, False)
    failed = await console.audit.entries(action="login_failed")
    assert [(e.target, e.detail, e.source) for e in failed] == [
        ("nobody", {"reason": "bad_credentials"}, "127.0.0.1"),
        ("judge1", {"reason": "bad_credentials"}, "127.0.0.1"),
    ]
    r = await console.client.post("/api/v1/session", json={"username": "judge1"})
    assert r.status == 400


async def test_a_password_typed_as_username_is_not_audited(console: Console) -> None:
    r = await console.client.post(
        "/api/v1/session", json={"username": "My Secret P@ss", "password": "x"}
    )
    assert r.status == 401
    [entry] = await console.audit.entries(action="login_failed")
    assert entry.target == "" and "Secret" not in str(entry.to_json())


async def test_disabled_user_cannot_sign_in(console: Console) -> None:
    await console.accounts.create_user("judge1", PASSWORD, ["judge"])
    await console.accounts.set_disabled("judge1", True)
    r = await console.client.post(
        "/api/v1/session", json={"username": "judge1", "password": PASSWORD}
    )
    assert r.status == 403 and await r.json() == {"error": "account disabled"}


async def test_form_sign_in_works(console: Console) -> None:
    await console.accounts.create_user("judge1", PASSWORD, ["judge"])
    r = await console.client.post(
        "/api/v1/session", data={"username": "judge1", "password": PASSWORD}
    )
    assert r.status == 200 and SESSION_COOKIE in r.cookies


async def test_lockout_answers_429_with_retry_after_then_unlocks(console: Console) -> None:
    await console.accounts.create_user("clerk1", PASSWORD, ["clerk"])
    for _ in range(5):
        r = await console.client.post(
            "/api/v1/session", json={"username": "clerk1", "password": "wrong password"}
        )
        assert r.status == 401
    r = await console.client.post(
        "/api/v1/session", json={"username": "clerk1", "password": PASSWORD}
    )
    assert r.status == 429
    assert r.headers["Retry-After"] == "300"
    assert "try again" in (await r.json())["error"]
    console.clock.advance(120)
    r = await console.client.post(
        "/api/v1/session", json={"username": "clerk1", "password": PASSWORD}
    )
    assert r.status == 429 and r.headers["Retry-After"] == "180"
    console.clock.advance(180)
    await sign_in(console, "clerk1")
    assert len(await console.audit.entries(action="login_failed")) == 5


async def test_sign_in_from_another_origin_is_refused(console: Console) -> None:
    await console.accounts.create_user("judge1", PASSWORD, ["judge"])
    body = {"username": "judge1", "password": PASSWORD}
    host = f"{console.client.host}:{console.client.port}"
    for origin in ("http://evil.example", "null", f"http://{host}.evil.example"):
        r = await console.client.post("/api/v1/session", json=body, headers={"Origin": origin})
        assert r.status == 403, origin
        assert await r.json() == {"error": "cross-origin request refused"}
    r = await console.client.post(
        "/api/v1/session", json=body, headers={"Origin": f"http://{host}"}
    )
    assert r.status == 200


async def test_a_new_sign_in_replaces_the_old_session(console: Console) -> None:
    await console.accounts.create_user("judge1", PASSWORD, ["judge"])
    old = await console.accounts.create_session("judge1")
    r = await console.client.post(
        "/api/v1/session",
        json={"username": "judge1", "password": PASSWORD},
        headers={"Cookie": f"{SESSION_COOKIE}={old.id}"},
    )
    assert r.status == 200
    assert r.cookies[SESSION_COOKIE].value != old.id
    assert await console.accounts.session(old.id) is None  # no session fixation


async def test_sign_out_ends_the_session_and_clears_the_cookie(console: Console) -> None:
    await console.accounts.create_user("judge1", PASSWORD, ["judge"])
    body = await sign_in(console, "judge1")
    r = await console.client.delete("/api/v1/session", headers={"X-CSRF-Token": "wrong"})
    assert r.status == 403  # sign-out is state-changing too
    cookie_value = console.client.session.cookie_jar.filter_cookies(console.client.make_url("/"))[
        SESSION_COOKIE
    ].value
    r = await console.client.delete("/api/v1/session", headers={"X-CSRF-Token": body["csrf_token"]})
    assert r.status == 200
    cleared = r.headers["Set-Cookie"]
    assert f"{SESSION_COOKIE}=" in cleared and "Max-Age=0" in cleared
    assert await console.accounts.session(cookie_value) is None
    r = await console.client.get(
        "/api/v1/me", headers={"Cookie": f"{SESSION_COOKIE}={cookie_value}"}
    )
    assert r.status == 401
    assert [e.actor for e in await console.audit.entries(action="logout")] == ["judge1"]


async def test_cookie_is_secure_over_tls(console: Console, tmp_path: Path) -> None:
    await console.accounts.create_user("judge1", PASSWORD, ["judge"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*self_signed_certificate(tmp_path))
    server = TestServer(build_app(console.accounts, console.audit, tmp_path / "tls"))
    await server.start_server(ssl=context)
    connector = aiohttp.TCPConnector(ssl=False)  # the test's own self-signed certificate
    async with TestClient(server, connector=connector) as client:
        assert str(client.make_url("/")).startswith("https://")
        r = await client.post("/api/v1/session", json={"username": "judge1", "password": PASSWORD})
        assert r.status == 200
        cookie = r.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# expiry ------------------------------------------------------------------------------------------


async def test_idle_session_expires(console: Console) -> None:
    await console.accounts.create_user("judge1", PASSWORD, ["judge"])
    await sign_in(console, "judge1")
    console.clock.advance(29 * 60)
    assert (await console.client.get("/api/v1/me")).status == 200  # activity restarts the timer
    console.clock.advance(29 * 60)
    assert (await console.client.get("/api/v1/me")).status == 200
    console.clock.advance(30 * 60)
    r = await console.client.get("/api/v1/me")
    assert r.status == 401


async def test_busy_session_still_ends_after_its_lifetime(console: Console) -> None:
    await console.accounts.create_user("judge1", PASSWORD, ["judge"])
    await sign_in(console, "judge1")
    for _ in range(8 * 3 - 1):
        console.clock.advance(20 * 60)
        assert (await console.client.get("/api/v1/me")).status == 200
    console.clock.advance(20 * 60)
    assert (await console.client.get("/api/v1/me")).status == 401


# CSRF --------------------------------------------------------------------------------------------


async def test_csrf_token_required_for_session_changes(console: Console) -> None:
    await console.accounts.create_user("judge1", PASSWORD, ["judge"])
    body = await sign_in(console, "judge1")
    change = {"language": "en"}
    r = await console.client.put("/api/v1/me/language", json=change)
    assert r.status == 403 and await r.json() == {"error": "csrf token missing or wrong"}
    r = await console.client.put(
        "/api/v1/me/language", json=change, headers={"X-CSRF-Token": body["csrf_token"][:-1]}
    )
    assert r.status == 403
    other = await console.accounts.create_session("judge1")  # a valid token, of another session
    r = await console.client.put(
        "/api/v1/me/language", json=change, headers={"X-CSRF-Token": other.csrf_token}
    )
    assert r.status == 403
    assert (await console.accounts.get("judge1")).language == "zh-CN"  # type: ignore[union-attr]
    r = await console.client.put(
        "/api/v1/me/language", json=change, headers={"X-CSRF-Token": body["csrf_token"]}
    )
    assert r.status == 200 and (await r.json())["user"]["language"] == "en"
    # reads need no token
    assert (await console.client.get("/api/v1/me")).status == 200


async def test_csrf_token_in_a_form_field(console: Console) -> None:
    await console.accounts.create_user("judge1", PASSWORD, ["judge"])
    body = await sign_in(console, "judge1")
    r = await console.client.post("/api/v1/session", data={"x": "1"})  # anonymous route: fine
    assert r.status == 400
    r = await console.client.delete("/api/v1/session", data={"_csrf": "nope"})
    assert r.status == 403
    r = await console.client.delete("/api/v1/session", data={"_csrf": body["csrf_token"]})
    assert r.status == 200


async def test_cross_origin_session_request_refused_even_with_token(console: Console) -> None:
    await console.accounts.create_user("judge1", PASSWORD, ["judge"])
    session = await console.accounts.create_session("judge1")
    r = await console.client.put(
        "/api/v1/me/language",
        json={"language": "en"},
        headers={**with_session(session), "Origin": "http://evil.example"},
    )
    assert r.status == 403


async def test_bearer_tokens_need_no_csrf_token(console: Console) -> None:
    await console.accounts.create_user("tech1", PASSWORD, ["technician"])
    token = await console.accounts.create_api_token("tech1", "script")
    r = await console.client.put(
        "/api/v1/me/language", json={"language": "en"}, headers=bearer(token)
    )
    assert r.status == 200
    r = await console.client.put(
        "/api/v1/users/tech1/roles", json={"roles": ["judge"]}, headers=bearer(ADMIN_TOKEN)
    )
    assert r.status == 200


# forced password change --------------------------------------------------------------------------


async def test_first_admin_must_change_the_one_time_password(console: Console) -> None:
    one_time = await console.accounts.ensure_first_admin()
    assert one_time is not None
    body = await sign_in(console, "admin", one_time)
    assert body["must_change_password"] is True
    csrf = {"X-CSRF-Token": body["csrf_token"]}
    me = await console.client.get("/api/v1/me")
    assert me.status == 200 and (await me.json())["must_change_password"] is True
    for method, path in (("GET", "/api/v1/users"), ("GET", "/api/v1/stats")):
        r = await console.client.request(method, path, headers=csrf)
        assert r.status == 403 and await r.json() == {"error": "password change required"}
    r = await console.client.put(
        "/api/v1/me/password",
        json={"old_password": "not the one", "new_password": "brand new secret 1"},
        headers=csrf,
    )
    assert r.status == 400 and "current password" in (await r.json())["error"]
    r = await console.client.put(
        "/api/v1/me/password",
        json={"old_password": one_time, "new_password": "short"},
        headers=csrf,
    )
    assert r.status == 400 and "at least 10" in (await r.json())["error"]
    old_cookie = console.client.session.cookie_jar.filter_cookies(console.client.make_url("/"))[
        SESSION_COOKIE
    ].value
    r = await console.client.put(
        "/api/v1/me/password",
        json={"old_password": one_time, "new_password": "brand new secret 1"},
        headers=csrf,
    )
    assert r.status == 200
    changed = await r.json()
    assert changed["must_change_password"] is False
    assert r.cookies[SESSION_COOKIE].value != old_cookie  # a fresh session for this browser
    assert await console.accounts.session(old_cookie) is None
    assert (await console.client.get("/api/v1/users")).status == 200
    [entry] = await console.audit.entries(action="password_changed")
    assert (entry.actor, entry.detail) == ("admin", {"by": "self"})


# API tokens --------------------------------------------------------------------------------------


async def test_per_user_api_tokens(console: Console) -> None:
    await console.accounts.create_user("tech1", PASSWORD, ["technician"])
    body = await sign_in(console, "tech1")
    csrf = {"X-CSRF-Token": body["csrf_token"]}
    r = await console.client.post("/api/v1/me/api-tokens", json={"label": "nagios"}, headers=csrf)
    assert r.status == 201
    created = await r.json()
    token, token_id = created["token"], created["id"]
    [audited] = await console.audit.entries(action="api_token_created")
    assert audited.detail == {"id": token_id, "label": "nagios"}
    assert token not in str(audited.to_json())
    console.client.session.cookie_jar.clear()
    me = await console.client.get("/api/v1/me", headers=bearer(token))
    assert me.status == 200 and (await me.json())["via"] == "api_token"
    assert (await console.client.get("/api/v1/devices", headers=bearer(token))).status == 200
    assert (await console.client.get("/api/v1/users", headers=bearer(token))).status == 403
    # a token cannot mint more tokens
    r = await console.client.post(
        "/api/v1/me/api-tokens", json={"label": "more"}, headers=bearer(token)
    )
    assert r.status == 403
    listed = await (await console.client.get("/api/v1/me/api-tokens", headers=bearer(token))).json()
    assert [t["id"] for t in listed["tokens"]] == [token_id]
    assert "token" not in listed["tokens"][0]
    r = await console.client.delete(f"/api/v1/me/api-tokens/{token_id}", headers=bearer(token))
    assert r.status == 200
    assert (await console.client.get("/api/v1/me", headers=bearer(token))).status == 401
    assert (await console.client.get("/api/v1/me", headers=bearer("cht_" + "x" * 43))).status == 401


# admin API ---------------------------------------------------------------------------------------


async def test_admin_manages_users_and_every_change_is_audited(console: Console) -> None:
    await console.accounts.create_user("root1", PASSWORD, ["admin"])
    session = await console.accounts.create_session("root1")
    admin = with_session(session)
    r = await console.client.post(
        "/api/v1/users",
        json={
            "username": "clerk1",
            "password": "initial secret 1",
            "roles": ["clerk"],
            "display_name": "张书记员",
            "language": "zh-CN",
        },
        headers=admin,
    )
    assert r.status == 201
    assert (await r.json())["user"]["must_change_password"] is True
    r = await console.client.post(
        "/api/v1/users",
        json={"username": "clerk1", "password": "initial secret 1", "roles": ["clerk"]},
        headers=admin,
    )
    assert r.status == 409
    r = await console.client.post(
        "/api/v1/users",
        json={"username": "x", "password": "initial secret 1", "roles": ["boss"]},
        headers=admin,
    )
    assert r.status == 400 and "unknown role" in (await r.json())["error"]
    r = await console.client.put(
        "/api/v1/users/clerk1/roles", json={"roles": ["clerk", "judge"]}, headers=admin
    )
    assert r.status == 200 and (await r.json())["user"]["roles"] == ["clerk", "judge"]
    r = await console.client.put(
        "/api/v1/users/nobody/roles", json={"roles": ["clerk"]}, headers=admin
    )
    assert r.status == 404
    clerk_session = await console.accounts.create_session("clerk1")
    r = await console.client.put(
        "/api/v1/users/clerk1/disabled", json={"disabled": True}, headers=admin
    )
    assert r.status == 200 and (await r.json())["user"]["disabled"] is True
    r = await console.client.get("/api/v1/me", headers=with_session(clerk_session))
    assert r.status == 401  # disabling ended the session
    r = await console.client.put(
        "/api/v1/users/root1/disabled", json={"disabled": True}, headers=admin
    )
    assert r.status == 400 and "last enabled admin" in (await r.json())["error"]
    r = await console.client.put(
        "/api/v1/users/clerk1/password", json={"password": "temporary pw 77"}, headers=admin
    )
    assert r.status == 200 and (await r.json())["user"]["must_change_password"] is True
    users = await (await console.client.get("/api/v1/users", headers=admin)).json()
    assert [u["username"] for u in users["users"]] == ["clerk1", "root1"]
    assert "argon2" not in str(users) and all("password_hash" not in u for u in users["users"])

    r = await console.client.get("/api/v1/audit", headers=admin)
    entries = (await r.json())["entries"]
    assert [(e["action"], e["actor"], e["target"]) for e in entries] == [
        ("password_changed", "root1", "clerk1"),
        ("user_disabled", "root1", "clerk1"),
        ("roles_changed", "root1", "clerk1"),
        ("user_created", "root1", "clerk1"),
    ]
    assert entries[2]["detail"] == {"old": ["clerk"], "new": ["clerk", "judge"]}
    assert all(e["source"] == "127.0.0.1" for e in entries)


async def test_audit_endpoint_filters_and_verifies(console: Console) -> None:
    await console.accounts.create_user("root1", PASSWORD, ["admin"])
    admin = with_session(await console.accounts.create_session("root1"))
    for i in range(5):
        console.clock.advance(10)
        await console.audit.record("alice" if i % 2 else "bob", "export", target=f"t{i}")
    first_ts = (await console.audit.entries(limit=1000))[-1].ts_ms

    async def query(**params: Any) -> list[str]:
        r = await console.client.get(
            "/api/v1/audit", params={k: str(v) for k, v in params.items()}, headers=admin
        )
        assert r.status == 200, await r.text()
        return [e["target"] for e in (await r.json())["entries"]]

    assert await query() == ["t4", "t3", "t2", "t1", "t0"]
    assert await query(actor="alice") == ["t3", "t1"]
    assert await query(action="login") == []
    assert await query(since=first_ts + 10_000, until=first_ts + 30_000) == ["t2", "t1"]
    assert await query(limit=2, offset=1) == ["t3", "t2"]
    for bad in ({"limit": "0"}, {"limit": "5000"}, {"since": "yesterday"}, {"offset": "-1"}):
        r = await console.client.get("/api/v1/audit", params=bad, headers=admin)
        assert r.status == 400, bad
    r = await console.client.get("/api/v1/audit/verify", headers=admin)
    assert await r.json() == {"ok": True, "checked": 5, "problems": [], "notes": []}


async def test_device_commands_are_audited(console: Console) -> None:
    await console.accounts.create_user("tech1", PASSWORD, ["technician"])
    session = await console.accounts.create_session("tech1")
    r = await console.client.post(
        "/api/v1/devices/court-1/ptz-1/commands",
        json={"name": "goto_preset", "args": {"preset": 2}},
        headers=with_session(session),
    )
    assert r.status == 404  # no such device on a hub with no agents
    [entry] = await console.audit.entries(action="device_command")
    assert (entry.actor, entry.target, entry.source) == ("tech1", "court-1/ptz-1", "127.0.0.1")
    assert entry.detail["name"] == "goto_preset" and entry.detail["ok"] is False
    assert entry.detail["status"] == "unknown_device"
