"""Pages every signed-in person uses: home (tiles by role), login, and changing one's password.

The forms post JSON to the session and account API (``POST /api/v1/session``,
``PUT /api/v1/me/password``) from ``static/login.js`` and ``static/password.js``; these handlers
only render.

| route                    | roles                |
|--------------------------|----------------------|
| ``GET /``                | every signed-in role |
| ``GET /login``           | anyone               |
| ``GET /account/password`` | every signed-in role |
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

from dashboards.auth import Role
from dashboards.pages import RENDERER_KEY, safe_next
from dashboards.routes import Route

log = logging.getLogger(__name__)

#: every role a signed-in person can hold
STAFF: Final = frozenset(r for r in Role if r is not Role.ANONYMOUS)


async def home_page(request: web.Request) -> web.Response:
    """Tiles for each page the caller's roles may open."""
    renderer = request.app[RENDERER_KEY]
    return renderer.render(request, "home.html", page="home", title_key="home.title")


async def login_page(request: web.Request) -> web.Response:
    """The sign-in form (anonymous); ``next`` is where to go afterwards (local paths only)."""
    renderer = request.app[RENDERER_KEY]
    return renderer.render(
        request,
        "login.html",
        page="login",
        title_key="login.title",
        next_path=safe_next(request.query.get("next")),
    )


async def password_page(request: web.Request) -> web.Response:
    """The change-password form (also where a first sign-in with a temporary password lands)."""
    renderer = request.app[RENDERER_KEY]
    return renderer.render(request, "password.html", page="password", title_key="password.title")


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/", home_page, STAFF),
    Route("GET", "/login", login_page, frozenset({Role.ANONYMOUS})),
    Route("GET", "/account/password", password_page, STAFF),
)
