"""A full console with sign-in, audit, the hall queue and the board channel, for the queue tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher
from test_console_app_harness import authenticators, make_service

from dashboards import admin_api, pages_board, pages_counter, queue_api, sessions
from dashboards.app import ConsoleOptions, create_console_app
from dashboards.pages import DEFAULT_NAV, PASSWORD_CHANGE_PAGES
from dashboards.pages_board import BoardHub, BoardOptions, install_board
from dashboards.queue_api import QUEUE_KEY
from dashboards.sessions import (
    ACCOUNTS_KEY,
    AUDIT_KEY,
    ApiTokenAuthenticator,
    SessionAuthenticator,
    csrf_middleware,
)
from hub.accounts import AccountStore
from hub.audit import AuditLog
from hub.queue_service import QueueConfig, QueueService

PASSWORD = "correct horse 9"
COURT = "某某区人民法院"
QUEUE_ROUTES = (*queue_api.ROUTES, *pages_counter.ROUTES, *pages_board.ROUTES)


@dataclass
class QueueConsole:
    client: TestClient[web.Request, web.Application]
    app: web.Application
    accounts: AccountStore
    audit: AuditLog
    queue: QueueService
    board: BoardHub

    async def sign_in(self, username: str, roles: list[str]) -> str:
        """Create the account, sign in with a cookie session; returns its CSRF token."""
        await self.accounts.create_user(username, PASSWORD, roles, must_change_password=False)
        r = await self.client.post(
            "/api/v1/session", json={"username": username, "password": PASSWORD}
        )
        assert r.status == 200, await r.text()
        token: str = (await r.json())["csrf_token"]
        return token


@contextlib.asynccontextmanager
async def queue_console(
    tmp_path: Path, board: BoardOptions | None = None
) -> AsyncIterator[QueueConsole]:
    """The console as ``hub.app.console_app`` builds it, plus every test role's bearer token."""
    accounts = await AccountStore.open(
        tmp_path, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    audit = await AuditLog.open(tmp_path)
    queue = await QueueService.open(tmp_path / "queue", QueueConfig())
    hub: list[BoardHub] = []

    def setup(app: web.Application) -> None:
        app[ACCOUNTS_KEY] = accounts
        app[AUDIT_KEY] = audit
        app[QUEUE_KEY] = queue
        hub.append(install_board(app, board or BoardOptions(heartbeat_s=0.5, coalesce_s=0.05)))

    app = create_console_app(
        make_service(tmp_path / "hub"),
        [
            SessionAuthenticator(accounts, allowed_while_password_change=PASSWORD_CHANGE_PAGES),
            ApiTokenAuthenticator(accounts),
            *authenticators(),
        ],
        options=ConsoleOptions(court_name=COURT, nav=(*DEFAULT_NAV, *pages_counter.QUEUE_NAV)),
        extra_routes=(*sessions.ROUTES, *admin_api.ROUTES, *QUEUE_ROUTES),
        extra_middlewares=[csrf_middleware],
        setup=setup,
    )
    try:
        async with TestClient(TestServer(app)) as client:
            yield QueueConsole(client, app, accounts, audit, queue, hub[0])
    finally:
        await queue.close()
        await audit.close()
        await accounts.close()
