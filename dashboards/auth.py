"""Access control of the web API: deny by default, open a route only to the roles it names.

- Every route is declared in one table (:class:`AccessPolicy`, built from ``dashboards.api``'s
  route table) with the roles allowed to use it. A request to a route missing from the table is
  refused with 403 even with valid credentials, so a route added in a hurry is never open.
- A route open to :attr:`Role.ANONYMOUS` needs no credential; any other needs one (else 401),
  and the caller's roles must meet the route's (else 403).
- Credentials come from :class:`Authenticator` objects tried in turn. Today there is one: a
  bearer API token with role ``admin``; accounts with passwords and sessions can be added as
  further authenticators without touching the routes.

Secrets are compared with :func:`hmac.compare_digest` and never logged.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final, Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

log = logging.getLogger(__name__)

API_TOKEN_FILE: Final = "api-token"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Role(StrEnum):
    """Who may do what. ``anonymous`` marks routes that need no credential at all."""

    ANONYMOUS = "anonymous"
    ADMIN = "admin"
    TECHNICIAN = "technician"
    JUDGE = "judge"
    CLERK = "clerk"
    COMMANDER = "commander"
    #: hall window staff (call next, recall, transfer)
    COUNTER = "counter"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    name: str
    roles: frozenset[Role]
    via: str = "token"
    #: UI language of the user (message catalog name), chosen per user
    language: str = "zh-CN"
    display_name: str = ""


PRINCIPAL_KEY: Final = web.RequestKey("principal", Principal)
#: The CSRF token of a cookie session, set by the session middleware; pages put it in
#: ``<meta name="csrf-token">`` and scripts send it as ``X-CSRF-Token`` on every non-GET call.
CSRF_TOKEN_KEY: Final = web.RequestKey("csrf_token", str)


class Authenticator(Protocol):
    """Turns a request's credential into a :class:`Principal`, or ``None`` when it has none."""

    async def authenticate(self, request: web.Request) -> Principal | None: ...


class BearerTokenAuthenticator:
    """``Authorization: Bearer <token>`` against one secret token."""

    def __init__(self, token: str, principal: Principal) -> None:
        if not token:
            raise ValueError("empty API token")
        if Role.ANONYMOUS in principal.roles:
            raise ValueError("a principal cannot hold the anonymous pseudo-role")
        self._token = token.encode()
        self._principal = principal

    def __repr__(self) -> str:
        return f"BearerTokenAuthenticator(principal={self._principal.name!r})"

    async def authenticate(self, request: web.Request) -> Principal | None:
        """The principal when the request carries the token."""
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return None
        if hmac.compare_digest(given.strip().encode(), self._token):
            return self._principal
        return None


@dataclass(frozen=True, slots=True)
class RouteRule:
    """One declared route: method, canonical path (``/api/v1/devices/{agent}``) and roles."""

    method: str
    path: str
    roles: frozenset[Role]


class AccessPolicy:
    """The route table: which roles may call which route."""

    def __init__(self, rules: Iterable[RouteRule]) -> None:
        self._rules: dict[tuple[str, str], RouteRule] = {}
        for rule in rules:
            key = (rule.method.upper(), rule.path)
            if key in self._rules:
                raise ValueError(f"route declared twice: {key[0]} {key[1]}")
            if not rule.roles:
                raise ValueError(f"route {key[0]} {key[1]} opens to no role")
            self._rules[key] = rule

    def rules(self) -> list[RouteRule]:
        """Every rule."""
        return list(self._rules.values())

    def rule_for(self, method: str, path: str) -> RouteRule | None:
        """The rule of a route (``HEAD`` follows ``GET``), or ``None`` when undeclared."""
        method = method.upper()
        rule = self._rules.get((method, path))
        if rule is None and method == "HEAD":
            rule = self._rules.get(("GET", path))
        return rule

    def undeclared(self, app: web.Application) -> list[tuple[str, str]]:
        """Routes registered on ``app`` that the table does not declare (should be none)."""
        missing = []
        for route in app.router.routes():
            resource = route.resource
            if resource is None:
                continue
            if self.rule_for(route.method, resource.canonical) is None:
                missing.append((route.method, resource.canonical))
        return missing


def access_middleware(policy: AccessPolicy, authenticators: Sequence[Authenticator]) -> Middleware:
    """The aiohttp middleware enforcing ``policy``."""

    async def authenticate(request: web.Request) -> Principal | None:
        for authenticator in authenticators:
            principal = await authenticator.authenticate(request)
            if principal is not None:
                return principal
        return None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if resource is None:
            # no such route (404/405): still no answer without a credential
            if await authenticate(request) is None:
                return _unauthorized()
            return await handler(request)
        rule = policy.rule_for(request.method, resource.canonical)
        if rule is None:
            log.warning(
                "request to an undeclared route refused method=%s path=%s",
                request.method,
                resource.canonical,
            )
            return _json_error(403, "forbidden: route not declared in the access table")
        if Role.ANONYMOUS in rule.roles:
            return await handler(request)
        principal = await authenticate(request)
        if principal is None:
            return _unauthorized()
        if not principal.roles & rule.roles:
            log.info(
                "request refused principal=%s method=%s path=%s",
                principal.name,
                request.method,
                resource.canonical,
            )
            return _json_error(403, "forbidden: your role may not use this route")
        request[PRINCIPAL_KEY] = principal
        return await handler(request)

    return middleware


def load_or_create_api_token(data_dir: Path) -> str:
    """The API token in ``data_dir/api-token``, created (0600) on first start. Blocking I/O."""
    path = data_dir / API_TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if token:
        return token
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    log.info("api token created path=%s", path)
    return token


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _unauthorized() -> web.Response:
    response = _json_error(401, "unauthorized: send Authorization: Bearer <api token>")
    response.headers["WWW-Authenticate"] = 'Bearer realm="courthub"'
    return response
