"""The administrator's pages: user accounts and the audit log.

Both render a frame; ``static/users.js`` and ``static/audit.js`` read and write through the admin
API (``GET/POST /api/v1/users``, ``GET /api/v1/audit``, ``GET /api/v1/audit/verify``).

| route                 | roles |
|-----------------------|-------|
| ``GET /admin/users``  | admin |
| ``GET /admin/audit``  | admin |
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

from dashboards.auth import Role
from dashboards.pages import RENDERER_KEY
from dashboards.routes import Route

log = logging.getLogger(__name__)

_ADMIN: Final = frozenset({Role.ADMIN})
#: roles an administrator can give (the anonymous pseudo-role is not one)
ASSIGNABLE_ROLES: Final = tuple(r.value for r in Role if r is not Role.ANONYMOUS)
#: rows per page of the audit table
AUDIT_PAGE_SIZE: Final = 100


async def users_page(request: web.Request) -> web.Response:
    """The list of accounts and the form that creates one."""
    renderer = request.app[RENDERER_KEY]
    return renderer.render(
        request,
        "users.html",
        page="users",
        title_key="users.title",
        roles=ASSIGNABLE_ROLES,
    )


async def audit_page(request: web.Request) -> web.Response:
    """The audit log with filters, and the button that verifies its hash chain."""
    renderer = request.app[RENDERER_KEY]
    return renderer.render(
        request,
        "audit.html",
        page="audit",
        title_key="audit.title",
        page_size=AUDIT_PAGE_SIZE,
    )


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/admin/users", users_page, _ADMIN),
    Route("GET", "/admin/audit", audit_page, _ADMIN),
)
