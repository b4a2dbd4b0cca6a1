"""The web console: one aiohttp application with the JSON API, the pages, live updates and assets.

:func:`create_console_app` assembles every route table (``dashboards.api.ROUTES``, the page
modules' ``ROUTES``, ``dashboards.live.ROUTES``, ``dashboards.pages_static.ROUTES`` and the
caller's ``extra_routes``) into **one** :class:`~dashboards.auth.AccessPolicy`, deny by default.
Middlewares, outermost first:

1. :func:`dashboards.pages.browser_middleware` — a browser opening a page without a session is
   sent to ``/login`` (302), one without the role gets an HTML 403; programs keep the JSON;
2. the API's JSON-errors middleware (every error as ``{"error": ...}``);
3. :func:`dashboards.auth.access_middleware` with the policy and ``authenticators``;
4. ``extra_middlewares`` (the session's CSRF check goes here).

The live fan-out (:class:`dashboards.live.LiveHub`) starts and stops with the app; ``setup(app)``
runs last so the caller can set more app keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from dashboards import api, live, pages_account, pages_admin, pages_static, pages_technician
from dashboards.api import MAX_BODY, POLICY_KEY, SERVICE_KEY, json_errors_middleware
from dashboards.auth import AccessPolicy, Authenticator, access_middleware
from dashboards.i18n import Catalogs
from dashboards.live import LiveOptions, create_live_hub
from dashboards.pages import (
    DEFAULT_NAV,
    RENDERER_KEY,
    NavItem,
    PageRenderer,
    ShellSettings,
    browser_middleware,
)
from dashboards.routes import Route
from hub.service import HubService

log = logging.getLogger(__name__)

#: The console's HTML pages.
PAGE_ROUTES: Final[tuple[Route, ...]] = (
    *pages_account.ROUTES,
    *pages_technician.ROUTES,
    *pages_admin.ROUTES,
)
#: Every route the console serves besides the caller's extras.
CONSOLE_ROUTES: Final[tuple[Route, ...]] = (
    *api.ROUTES,
    *PAGE_ROUTES,
    *live.ROUTES,
    *pages_static.ROUTES,
)


def is_page(route: Route) -> bool:
    """A route a person opens in the browser (every ``GET`` outside the API, socket, assets).

    Those are the ones a browser without a session is redirected to ``/login`` from — the
    console's own pages and any an ``extra_routes`` table adds.
    """
    return (
        route.method == "GET"
        and not route.path.startswith(("/api/", "/static/"))
        and route.path != "/ws"
    )


@dataclass(frozen=True)
class ConsoleOptions:
    """How the console presents this court."""

    #: the court's zone; times are stored in UTC and shown in it (``hub.timezone``)
    timezone: str = "Asia/Shanghai"
    court_name: str = "人民法院"
    #: mark cookies the console sets ``Secure`` (behind HTTPS)
    secure_cookies: bool = False
    #: pages in the top bar (who sees which link follows the access table)
    nav: tuple[NavItem, ...] = DEFAULT_NAV
    live: LiveOptions = field(default_factory=LiveOptions)


def create_console_app(
    service: HubService,
    authenticators: Sequence[Authenticator],
    *,
    options: ConsoleOptions = ConsoleOptions(),
    extra_routes: Sequence[Route] = (),
    extra_middlewares: Sequence[Middleware] = (),
    setup: Callable[[web.Application], None] | None = None,
) -> web.Application:
    """The console application for ``service``; callers are checked by ``authenticators``.

    Raises ``ValueError`` for a route declared twice and ``ZoneInfoNotFoundError`` for an
    unknown time zone, at build time rather than on the first request.
    """
    routes = (*CONSOLE_ROUTES, *extra_routes)
    policy = AccessPolicy(route.rule for route in routes)
    page_paths = [route.path for route in routes if is_page(route)]
    app = web.Application(
        middlewares=[
            browser_middleware(page_paths),
            json_errors_middleware,
            access_middleware(policy, authenticators),
            *extra_middlewares,
        ],
        client_max_size=MAX_BODY,
    )
    app[SERVICE_KEY] = service
    app[POLICY_KEY] = policy
    settings = ShellSettings(
        court_name=options.court_name,
        timezone=options.timezone,
        secure_cookies=options.secure_cookies,
        nav=options.nav,
    )
    app[RENDERER_KEY] = PageRenderer(settings, Catalogs.load())
    create_live_hub(app, options.live)
    for route in routes:
        if route.method == "GET":
            app.router.add_get(route.path, route.handler)  # HEAD too (the policy maps it to GET)
        else:
            app.router.add_route(route.method, route.path, route.handler)
    if setup is not None:
        setup(app)
    log.info(
        "console app built routes=%d court=%s timezone=%s",
        len(routes),
        options.court_name,
        options.timezone,
    )
    return app
