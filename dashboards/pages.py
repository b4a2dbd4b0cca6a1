"""The shell every console page shares: templates, language, navigation by role, times, headers.

Pages are rendered on the server (Jinja2 templates in ``dashboards/templates``) with a little
vanilla JavaScript from ``dashboards/static``; nothing is fetched from outside the hub (court
intranets are closed). :class:`PageRenderer` renders a template inside the shell: the top bar with
the court's name, the links the caller's roles may open (read from the access table itself, so
the menu can never offer a page the policy refuses), the language switch and the user menu.

Times are stored in UTC milliseconds and shown in the court's zone (``hub.timezone``): the
``localtime`` template filter formats them on the server; scripts get UTC ms plus the zone name
(``<body data-timezone>``) and format with ``Intl.DateTimeFormat``.

:func:`browser_middleware` keeps the API deny-by-default answers for programs but turns them
into something a person can use: a browser (``Accept: text/html``) that opens a page without a
session is redirected to ``/login``; one whose role may not open it gets an HTML 403 page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web
from aiohttp.typedefs import Middleware
from yarl import URL

from dashboards.api import POLICY_KEY
from dashboards.auth import CSRF_TOKEN_KEY, PRINCIPAL_KEY, Principal, Role
from dashboards.i18n import (
    LANG_COOKIE,
    LANG_QUERY,
    LANGUAGE_NAMES,
    Catalogs,
    Translator,
    normalize_language,
    request_language,
)
from dashboards.sessions import PASSWORD_CHANGE_REQUIRED
from protocol.messages import now_ms

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Any]

#: No script, style, font or connection may come from anywhere but the hub itself.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
#: UI texts page scripts need (keys with these prefixes go to the browser as JSON)
SCRIPT_TEXT_PREFIXES: Final = (
    "js.",
    "state.",
    "age.",
    "venue.",
    "role.",
    "cmd.",
    "cap.",
    "agent.",
    "live.",
    "reason.",
    "action.",
)
LANG_COOKIE_MAX_AGE_S: Final = 365 * 86_400
LOGIN_PATH: Final = "/login"
PASSWORD_PATH: Final = "/account/password"
#: The error :mod:`dashboards.sessions` answers while an account must change its password first.
#: What a browser of such an account must still reach: give these to the session authenticators
#: (``allowed_while_password_change``) so the change-password page can open.
PASSWORD_CHANGE_PAGES: Final = (("GET", PASSWORD_PATH),)


@dataclass(frozen=True, slots=True)
class NavItem:
    """One page in the top bar and on the home page's tiles."""

    path: str
    label_key: str
    description_key: str
    #: id of a symbol in ``templates/_icons.html``
    icon: str

    @property
    def testid(self) -> str:
        """Stable name for browser tests: ``/admin/users`` → ``admin-users``."""
        return self.path.strip("/").replace("/", "-") or "home"


#: The pages of the console, in menu order. Who sees a link is decided by the access table.
DEFAULT_NAV: Final[tuple[NavItem, ...]] = (
    NavItem("/technician", "nav.technician", "tile.technician", "i-devices"),
    NavItem("/admin/users", "nav.users", "tile.users", "i-users"),
    NavItem("/admin/audit", "nav.audit", "tile.audit", "i-audit"),
)


@dataclass(frozen=True, slots=True)
class ShellSettings:
    """What the shell shows for this court."""

    court_name: str
    timezone: str
    secure_cookies: bool = False
    nav: tuple[NavItem, ...] = DEFAULT_NAV


class PageRenderer:
    """Renders console pages (templates inside the shell) for one court."""

    def __init__(self, settings: ShellSettings, catalogs: Catalogs) -> None:
        self.settings = settings
        self.zone = ZoneInfo(settings.timezone)  # raises for an unknown zone: fail at start
        self.catalogs = catalogs
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("dashboards", "templates"),
            autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters["localtime"] = self.localtime
        self._env.filters["iso_utc"] = iso_utc

    # formatting -----------------------------------------------------------------------------------
    def localtime(self, ms: int | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
        """UTC milliseconds as wall-clock time in the court's zone (``""`` for none)."""
        if not ms:
            return ""
        return datetime.fromtimestamp(ms / 1000, tz=self.zone).strftime(fmt)

    # navigation -----------------------------------------------------------------------------------
    def visible_nav(self, request: web.Request, principal: Principal | None) -> list[NavItem]:
        """The pages ``principal`` may open, by the app's access table."""
        if principal is None:
            return []
        policy = request.app[POLICY_KEY]
        items = []
        for item in self.settings.nav:
            rule = policy.rule_for("GET", item.path)
            if rule is not None and principal.roles & rule.roles:
                items.append(item)
        return items

    # rendering ------------------------------------------------------------------------------------
    def render(
        self,
        request: web.Request,
        template: str,
        *,
        page: str,
        title_key: str,
        status: int = 200,
        live_topics: Sequence[str] = (),
        **context: Any,
    ) -> web.Response:
        """``template`` inside the shell, in the caller's language, with the security headers."""
        language = request_language(request)
        t = self.catalogs.translator(language)
        principal = request.get(PRINCIPAL_KEY)
        html = self._env.get_template(template).render(
            t=t,
            lang=language,
            languages=[(code, LANGUAGE_NAMES[code]) for code in self.catalogs.languages],
            principal=principal,
            user_name=(principal.display_name or principal.name) if principal else "",
            role_labels=role_labels(t, principal.roles) if principal else [],
            nav=self.visible_nav(request, principal),
            current_path=request.path,
            csrf_token=request.get(CSRF_TOKEN_KEY, ""),
            court_name=self.settings.court_name,
            timezone=self.settings.timezone,
            server_ms=now_ms(),
            page=page,
            title=t(title_key),
            live_topics=list(live_topics),
            js_texts=t.subset(SCRIPT_TEXT_PREFIXES),
            age=lambda ms: age_text(t, ms, now_ms()),
            **context,
        )
        response = web.Response(text=html, content_type="text/html", status=status)
        add_security_headers(response)
        response.headers["Cache-Control"] = "no-store"  # pages carry the CSRF token
        self._remember_language(request, response)
        return response

    def render_forbidden(self, request: web.Request) -> web.Response:
        """The HTML 403 page for a signed-in browser whose roles may not open a page."""
        return self.render(
            request, "forbidden.html", page="forbidden", title_key="error.403.title", status=403
        )

    def _remember_language(self, request: web.Request, response: web.Response) -> None:
        """``?lang=`` on any page sets the cookie that anonymous pages (login) follow."""
        chosen = normalize_language(request.query.get(LANG_QUERY))
        if chosen is not None and chosen != request.cookies.get(LANG_COOKIE):
            response.set_cookie(
                LANG_COOKIE,
                chosen,
                max_age=LANG_COOKIE_MAX_AGE_S,
                path="/",
                samesite="Lax",
                httponly=False,  # not a secret; the language switch's script rewrites it
                secure=self.settings.secure_cookies,
            )


RENDERER_KEY: Final = web.AppKey("console_renderer", PageRenderer)


def add_security_headers(response: web.StreamResponse) -> None:
    """The headers every console response carries (CSP: nothing from outside the hub)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def iso_utc(ms: int | None) -> str:
    """UTC milliseconds as ISO 8601 (for ``<time datetime>``)."""
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def role_labels(t: Translator, roles: Iterable[Role]) -> list[str]:
    """The roles' names in the page's language, in the enum's order."""
    held = set(roles)
    return [t(f"role.{role.value}") for role in Role if role in held]


def age_text(t: Translator, ms: int | None, now: int) -> str:
    """ "3 秒前" / "3 s ago": how long ago ``ms`` was (the page's script keeps it ticking)."""
    if not ms:
        return t("age.never")
    seconds = max(0, (now - ms) // 1000)
    if seconds < 60:
        return t("age.seconds", n=seconds)
    if seconds < 3600:
        return t("age.minutes", n=seconds // 60)
    if seconds < 86_400:
        return t("age.hours", n=seconds // 3600)
    return t("age.days", n=seconds // 86_400)


def safe_next(value: str | None) -> str:
    """A local path to go to after login; anything else (another site) becomes ``/``."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def browser_middleware(page_paths: Iterable[str]) -> Middleware:
    """401 → 302 ``/login?next=…`` and 403 → HTML page, for browsers opening a page.

    Placed before the access middleware: the policy stays deny-by-default and programs keep
    their JSON answers; only a ``GET`` of a page route that accepts ``text/html`` is changed.
    A 403 because the account must change its password first sends the browser to that page.
    """
    pages = frozenset(page_paths)

    def is_page_visit(request: web.Request) -> bool:
        if request.method != "GET" or "text/html" not in request.headers.get("Accept", ""):
            return False
        resource = request.match_info.route.resource
        return resource is not None and resource.canonical in pages

    def for_browser(request: web.Request, answer: web.StreamResponse) -> web.StreamResponse | None:
        if answer.status not in (401, 403) or not is_page_visit(request):
            return None
        if answer.status == 401:
            return _redirect(URL(LOGIN_PATH).with_query(next=request.path_qs))
        if isinstance(answer, web.Response) and PASSWORD_CHANGE_REQUIRED in (answer.text or ""):
            return _redirect(URL(PASSWORD_PATH))
        return request.app[RENDERER_KEY].render_forbidden(request)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            replacement = for_browser(request, exc)
            if replacement is None:
                raise
            return replacement
        return for_browser(request, response) or response

    return middleware


def _redirect(location: URL) -> web.Response:
    response = web.Response(status=302, headers={"Location": str(location)})
    add_security_headers(response)
    return response
