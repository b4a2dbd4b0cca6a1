"""The admin JSON API: accounts and the audit trail. Every route is for the ``admin`` role only.

| route                                              | what                                        |
|----------------------------------------------------|---------------------------------------------|
| ``GET  /api/v1/users``                             | every account                               |
| ``POST /api/v1/users``                             | create ``{username, password, roles, display_name, language, must_change_password}`` |
| ``PUT  /api/v1/users/{username}/roles``            | ``{roles: [...]}``                          |
| ``PUT  /api/v1/users/{username}/disabled``         | ``{disabled: bool}`` (disabling ends its sessions) |
| ``PUT  /api/v1/users/{username}/password``         | ``{password}``: a temporary password, to be changed at next sign-in |
| ``GET  /api/v1/audit?actor=&action=&since=&until=&limit=&offset=`` | audit entries, newest first |
| ``GET  /api/v1/audit/verify``                      | check the hash chain                        |

``since``/``until`` are UTC milliseconds (``until`` exclusive); ``limit`` is at most 1000.
Every change is audited with the acting admin as actor. The rules (password policy, known roles,
never disabling or demoting the last admin) live in :mod:`hub.accounts`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from dashboards.auth import PRINCIPAL_KEY, Role
from dashboards.routes import Route
from dashboards.sessions import (
    ACCOUNTS_KEY,
    AUDIT_KEY,
    account_error,
    http_error,
    read_json_body,
    user_json,
)
from hub.accounts import DEFAULT_LANGUAGE, AccountError
from hub.audit import MAX_LIMIT, Action

log = logging.getLogger(__name__)

_ADMIN: Final = frozenset({Role.ADMIN})


async def get_users(request: web.Request) -> web.Response:
    """Every account (no secrets)."""
    users = await request.config_dict[ACCOUNTS_KEY].list_users()
    return web.json_response({"users": [user_json(u) for u in users], "count": len(users)})


async def post_user(request: web.Request) -> web.Response:
    """Create an account; by default its password must be changed at first sign-in."""
    accounts = request.config_dict[ACCOUNTS_KEY]
    body = await read_json_body(request)
    username, password, roles = body.get("username"), body.get("password"), body.get("roles")
    display_name = body.get("display_name", "")
    language = body.get("language", DEFAULT_LANGUAGE)
    must_change = body.get("must_change_password", True)
    if not isinstance(username, str) or not isinstance(password, str):
        raise http_error(400, "username and password are required")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise http_error(400, "roles must be a list of role names")
    if not isinstance(display_name, str) or not isinstance(language, str):
        raise http_error(400, "display_name and language must be text")
    if not isinstance(must_change, bool):
        raise http_error(400, "must_change_password must be true or false")
    try:
        user = await accounts.create_user(
            username,
            password,
            roles,
            display_name=display_name,
            language=language,
            must_change_password=must_change,
        )
    except AccountError as exc:
        raise account_error(exc) from None
    await _audit(
        request,
        audit_action=Action.USER_CREATED,
        target=user.username,
        detail={"roles": sorted(user.roles), "must_change_password": must_change},
    )
    return web.json_response({"user": user_json(user)}, status=201)


async def put_user_roles(request: web.Request) -> web.Response:
    """Replace an account's roles ``{roles: [...]}``."""
    accounts = request.config_dict[ACCOUNTS_KEY]
    username = request.match_info["username"]
    roles = (await read_json_body(request)).get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise http_error(400, "roles must be a list of role names")
    before = await accounts.get(username)
    try:
        user = await accounts.set_roles(username, roles)
    except AccountError as exc:
        raise account_error(exc) from None
    await _audit(
        request,
        audit_action=Action.ROLES_CHANGED,
        target=username,
        detail={"old": sorted(before.roles) if before else [], "new": sorted(user.roles)},
    )
    return web.json_response({"user": user_json(user)})


async def put_user_disabled(request: web.Request) -> web.Response:
    """Disable (ending its sessions) or enable an account ``{disabled: bool}``."""
    accounts = request.config_dict[ACCOUNTS_KEY]
    username = request.match_info["username"]
    disabled = (await read_json_body(request)).get("disabled")
    if not isinstance(disabled, bool):
        raise http_error(400, "disabled must be true or false")
    try:
        user = await accounts.set_disabled(username, disabled)
    except AccountError as exc:
        raise account_error(exc) from None
    await _audit(
        request,
        audit_action=Action.USER_DISABLED if disabled else Action.USER_ENABLED,
        target=username,
        detail={"disabled": disabled},
    )
    return web.json_response({"user": user_json(user)})


async def put_user_password(request: web.Request) -> web.Response:
    """Give an account a temporary password ``{password}`` (changed at its next sign-in)."""
    accounts = request.config_dict[ACCOUNTS_KEY]
    username = request.match_info["username"]
    password = (await read_json_body(request)).get("password")
    if not isinstance(password, str):
        raise http_error(400, "password is required")
    try:
        await accounts.set_password(username, password, must_change=True)
    except AccountError as exc:
        raise account_error(exc) from None
    await _audit(
        request,
        audit_action=Action.PASSWORD_CHANGED,
        target=username,
        detail={"by": "admin", "must_change_password": True},
    )
    user = await accounts.get(username)
    return web.json_response({"user": user_json(user) if user else None})


async def get_audit(request: web.Request) -> web.Response:
    """Audit entries, newest first, filtered by actor, action and time."""
    query = request.query
    limit = _int_param(query, "limit", 200)
    offset = _int_param(query, "offset", 0)
    since = _int_param(query, "since", None)
    until = _int_param(query, "until", None)
    if limit is None or not 1 <= limit <= MAX_LIMIT:
        raise http_error(400, f"limit must be 1..{MAX_LIMIT}")
    if offset is None or offset < 0:
        raise http_error(400, "offset must be 0 or more")
    entries = await request.config_dict[AUDIT_KEY].entries(
        actor=query.get("actor") or None,
        action=query.get("action") or None,
        since_ms=since,
        until_ms=until,
        limit=limit,
        offset=offset,
    )
    return web.json_response(
        {
            "entries": [e.to_json() for e in entries],
            "count": len(entries),
            "limit": limit,
            "offset": offset,
        }
    )


async def get_audit_verify(request: web.Request) -> web.Response:
    """Check the audit trail's hash chain; ``ok`` false lists each problem by seq."""
    report = await request.config_dict[AUDIT_KEY].verify()
    if not report.ok:
        log.warning("audit verify found problems count=%d", len(report.problems))
    return web.json_response(report.to_json())


#: The admin routes (all ``admin`` only).
ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/api/v1/users", get_users, _ADMIN),
    Route("POST", "/api/v1/users", post_user, _ADMIN),
    Route("PUT", "/api/v1/users/{username}/roles", put_user_roles, _ADMIN),
    Route("PUT", "/api/v1/users/{username}/disabled", put_user_disabled, _ADMIN),
    Route("PUT", "/api/v1/users/{username}/password", put_user_password, _ADMIN),
    Route("GET", "/api/v1/audit", get_audit, _ADMIN),
    Route("GET", "/api/v1/audit/verify", get_audit_verify, _ADMIN),
)


# helpers ----------------------------------------------------------------------------------------


async def _audit(
    request: web.Request, *, audit_action: Action, target: str, detail: dict[str, Any]
) -> None:
    principal = request[PRINCIPAL_KEY]
    await request.config_dict[AUDIT_KEY].record(
        principal.name, audit_action, target=target, detail=detail, source=request.remote or ""
    )


def _int_param(query: Mapping[str, str], name: str, default: int | None) -> int | None:
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise http_error(400, f"{name} must be an integer") from None
