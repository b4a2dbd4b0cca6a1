"""Sign-in for the console and the API: cookie sessions, per-user API tokens, CSRF protection.

- :class:`SessionAuthenticator` turns the ``courthub_session`` cookie into a :class:`Principal`
  (``via="session"``) and puts the session's CSRF token on the request.
- :class:`ApiTokenAuthenticator` does the same for ``Authorization: Bearer cht_…`` tokens
  (``via="api_token"``); the hub's own admin token (:class:`dashboards.auth.BearerTokenAuthenticator`)
  keeps working beside it.
- :func:`csrf_middleware` (placed *after* the access middleware) makes every state-changing
  request of a cookie session carry the session's CSRF token (``X-CSRF-Token`` header, or the
  ``_csrf`` field of a form post), and refuses state-changing requests of cookie sessions and
  anonymous callers whose ``Origin`` names another host. Bearer tokens are exempt: a browser
  never sends them on its own, so another site cannot ride on them.
- A user whose password must be changed (first admin, reset by an admin) may only read
  ``/api/v1/me``, change the password and sign out until then.

Routes (:data:`ROUTES`):

| route                                   | roles     | what                                  |
|-----------------------------------------|-----------|---------------------------------------|
| ``POST   /api/v1/session``              | anyone    | sign in ``{username, password}``      |
| ``DELETE /api/v1/session``              | all roles | sign out                              |
| ``GET    /api/v1/me``                   | all roles | who am I                              |
| ``PUT    /api/v1/me/password``          | all roles | ``{old_password, new_password}``      |
| ``PUT    /api/v1/me/language``          | all roles | ``{language: "zh-CN" or "en"}``       |
| ``GET    /api/v1/me/api-tokens``        | all roles | my API tokens (ids and labels)        |
| ``POST   /api/v1/me/api-tokens``        | all roles | ``{label}`` → the token, shown once   |
| ``DELETE /api/v1/me/api-tokens/{id}``   | all roles | revoke one of my tokens               |

Session cookies are ``HttpOnly``, ``SameSite=Strict``, ``Path=/`` and ``Secure`` when the request
came over TLS. Sign-ins, failed sign-ins, sign-outs, password changes and new tokens go to the
audit trail with the caller's address. Passwords, tokens and session ids are never logged.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import web

from dashboards.auth import CSRF_TOKEN_KEY, PRINCIPAL_KEY, Handler, Principal, Role
from dashboards.routes import Route
from hub.accounts import (
    AccountError,
    AccountStore,
    LoginResult,
    Session,
    UnknownUserError,
    User,
    UserExistsError,
    api_token_id,
    validate_username,
)
from hub.audit import Action, AuditLog

log = logging.getLogger(__name__)

#: The error a user with a one-time password gets elsewhere; pages match it to redirect.
PASSWORD_CHANGE_REQUIRED: Final = "password change required"

SESSION_COOKIE: Final = "courthub_session"
CSRF_HEADER: Final = "X-CSRF-Token"
CSRF_FORM_FIELD: Final = "_csrf"

#: The account store and the audit trail of the console; the app factory sets both.
ACCOUNTS_KEY: Final = web.AppKey("accounts", AccountStore)
AUDIT_KEY: Final = web.AppKey("audit_log", AuditLog)
#: The cookie session of the request (set by :class:`SessionAuthenticator`).
SESSION_KEY: Final = web.RequestKey("session", Session)

#: Every real role (not the anonymous pseudo-role): routes any signed-in user may call.
ALL_ROLES: Final = frozenset(Role) - {Role.ANONYMOUS}
#: What a user who must change the password may still call.
PASSWORD_CHANGE_ROUTES: Final = frozenset(
    {
        ("GET", "/api/v1/me"),
        ("HEAD", "/api/v1/me"),
        ("PUT", "/api/v1/me/password"),
        ("DELETE", "/api/v1/session"),
    }
)
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_FORM_TYPES: Final = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
_USER_VIAS: Final = frozenset({"session", "api_token"})


# authenticators ---------------------------------------------------------------------------------


class SessionAuthenticator:
    """The ``courthub_session`` cookie → :class:`Principal` (``via="session"``)."""

    def __init__(
        self,
        accounts: AccountStore,
        *,
        allowed_while_password_change: Iterable[tuple[str, str]] = (),
    ) -> None:
        """``allowed_while_password_change`` adds ``(method, path)`` pairs (e.g. the HTML
        change-password page) to :data:`PASSWORD_CHANGE_ROUTES`."""
        self._accounts = accounts
        self._allowed = PASSWORD_CHANGE_ROUTES | {
            (m.upper(), p) for m, p in allowed_while_password_change
        }

    def __repr__(self) -> str:
        return "SessionAuthenticator()"

    async def authenticate(self, request: web.Request) -> Principal | None:
        """The signed-in user of the request's cookie, or ``None``."""
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id:
            return None
        found = await self._accounts.session_user(session_id)
        if found is None:
            return None
        session, user = found
        _enforce_password_change(request, user, self._allowed)
        request[CSRF_TOKEN_KEY] = session.csrf_token
        request[SESSION_KEY] = session
        return principal_for(user, via="session")


class ApiTokenAuthenticator:
    """``Authorization: Bearer cht_…`` (a per-user API token) → :class:`Principal`."""

    def __init__(
        self,
        accounts: AccountStore,
        *,
        allowed_while_password_change: Iterable[tuple[str, str]] = (),
    ) -> None:
        """See :class:`SessionAuthenticator` for ``allowed_while_password_change``."""
        self._accounts = accounts
        self._allowed = PASSWORD_CHANGE_ROUTES | {
            (m.upper(), p) for m, p in allowed_while_password_change
        }

    def __repr__(self) -> str:
        return "ApiTokenAuthenticator()"

    async def authenticate(self, request: web.Request) -> Principal | None:
        """The owner of the request's API token, or ``None``."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        user = await self._accounts.user_for_api_token(token.strip())
        if user is None:
            return None
        _enforce_password_change(request, user, self._allowed)
        return principal_for(user, via="api_token")


def principal_for(user: User, *, via: str) -> Principal:
    """The principal of an account (roles unknown to the console are dropped)."""
    known = {r.value for r in ALL_ROLES}
    return Principal(
        name=user.username,
        roles=frozenset(Role(r) for r in user.roles if r in known),
        via=via,
        language=user.language,
        display_name=user.display_name or user.username,
    )


def _enforce_password_change(
    request: web.Request, user: User, allowed: frozenset[tuple[str, str]]
) -> None:
    if not user.must_change_password:
        return
    resource = request.match_info.route.resource
    if resource is None:  # unknown path: the router answers 404/405 anyway
        return
    if (request.method.upper(), resource.canonical) in allowed:
        return
    raise http_error(403, PASSWORD_CHANGE_REQUIRED)


# CSRF -------------------------------------------------------------------------------------------


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CSRF defence for state-changing requests; place it after the access middleware."""
    if request.method.upper() in _SAFE_METHODS:
        return await handler(request)
    principal = request.get(PRINCIPAL_KEY)
    if principal is not None and principal.via != "session":
        return await handler(request)  # bearer credentials carry no ambient authority
    if not _same_origin(request):
        log.warning(
            "cross-origin request refused method=%s path=%s origin=%r",
            request.method,
            request.path,
            request.headers.get("Origin", "")[:200],
        )
        return _json_error(403, "cross-origin request refused")
    if principal is None:
        return await handler(request)  # anonymous (sign-in): SameSite=Strict + Origin
    expected = request.get(CSRF_TOKEN_KEY, "")
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.content_type in _FORM_TYPES:
        value = (await request.post()).get(CSRF_FORM_FIELD)
        given = value if isinstance(value, str) else None
    if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
        log.warning(
            "csrf check failed principal=%s method=%s path=%s",
            principal.name,
            request.method,
            request.path,
        )
        return _json_error(403, "csrf token missing or wrong")
    return await handler(request)


def _same_origin(request: web.Request) -> bool:
    """``True`` unless the request has an ``Origin`` naming another host than ``Host``."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not sent by non-browser clients; browsers send it on cross-site posts
    netloc = urlsplit(origin).netloc.lower()
    return bool(netloc) and netloc == request.host.lower()


# handlers ---------------------------------------------------------------------------------------


async def post_session(request: web.Request) -> web.Response:
    """Sign in with ``{username, password}`` (JSON or form); sets the session cookie."""
    accounts, audit = _services(request)
    body = await _read_body(request)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise http_error(400, "username and password are required")
    source = request.remote or ""
    result = await accounts.login(username, password, source=source)
    if not result.ok or result.user is None:
        return await _refused_login(audit, result, username, source)
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        await accounts.delete_session(old)  # a fresh id at every sign-in: no session fixation
    session = await accounts.create_session(result.user.username)
    await audit.record(
        result.user.username, Action.LOGIN, target=result.user.username, source=source
    )
    response = web.json_response(
        {
            "user": user_json(result.user),
            "csrf_token": session.csrf_token,
            "must_change_password": result.user.must_change_password,
        }
    )
    set_session_cookie(response, request, session)
    return response


async def _refused_login(
    audit: AuditLog, result: LoginResult, username: str, source: str
) -> web.Response:
    if result.reason == "locked":
        # not audited: refusals while locked cost no hash and could flood the trail; the
        # failures that caused the lock are there
        retry = max(1, math.ceil(result.retry_after_s))
        response = _json_error(429, f"too many failed sign-ins; try again in {retry} s")
        response.headers["Retry-After"] = str(retry)
        return response
    name = username.strip().lower()
    try:
        target = validate_username(name)
    except AccountError:
        target = ""  # could be a password typed into the wrong field: not kept
    await audit.record(
        target or "(unknown)",
        Action.LOGIN_FAILED,
        target=target,
        detail={"reason": result.reason},
        source=source,
    )
    if result.reason == "disabled":
        return _json_error(403, "account disabled")
    return _json_error(401, "wrong username or password")


async def delete_session(request: web.Request) -> web.Response:
    """Sign out: end the cookie session and clear the cookie."""
    accounts, audit = _services(request)
    principal = request[PRINCIPAL_KEY]
    session = request.get(SESSION_KEY)
    if session is not None:
        await accounts.delete_session(session.id)
    await audit.record(
        principal.name, Action.LOGOUT, target=principal.name, source=request.remote or ""
    )
    response = web.json_response({"ok": True})
    response.del_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="Strict", secure=request.secure
    )
    return response


async def get_me(request: web.Request) -> web.Response:
    """The caller: name, display name, roles, language, whether the password must change."""
    principal = request[PRINCIPAL_KEY]
    user = await _user_of(request, principal)
    if user is None:
        # the hub's admin token is no account: describe the principal alone
        return web.json_response(
            {
                "username": principal.name,
                "display_name": principal.display_name or principal.name,
                "roles": sorted(r.value for r in principal.roles),
                "language": principal.language,
                "must_change_password": False,
                "via": principal.via,
            }
        )
    return web.json_response(
        {
            "username": user.username,
            "display_name": user.display_name or user.username,
            "roles": sorted(user.roles),
            "language": user.language,
            "must_change_password": user.must_change_password,
            "via": principal.via,
        }
    )


async def put_my_password(request: web.Request) -> web.Response:
    """Change one's own password ``{old_password, new_password}``; other sessions end."""
    accounts, audit = _services(request)
    principal = request[PRINCIPAL_KEY]
    await _require_account(request, principal)
    body = await _read_body(request)
    old, new = body.get("old_password"), body.get("new_password")
    if not isinstance(old, str) or not isinstance(new, str):
        raise http_error(400, "old_password and new_password are required")
    source = request.remote or ""
    try:
        result = await accounts.change_password(principal.name, old, new, source=source)
    except AccountError as exc:
        raise account_error(exc) from None
    if result.reason == "locked":
        return await _refused_login(audit, result, principal.name, source)
    if not result.ok:
        await audit.record(
            principal.name,
            Action.LOGIN_FAILED,
            target=principal.name,
            detail={"reason": result.reason, "during": "password_change"},
            source=source,
        )
        # 400, not 401/403: the caller is signed in; only the old password was wrong
        raise http_error(400, "the current password is wrong")
    await audit.record(
        principal.name,
        Action.PASSWORD_CHANGED,
        target=principal.name,
        detail={"by": "self"},
        source=source,
    )
    body_out: dict[str, Any] = {"ok": True, "must_change_password": False}
    response = web.json_response(body_out)
    if principal.via == "session":
        # every session ended with the change; this browser continues on a fresh one
        session = await accounts.create_session(principal.name)
        body_out["csrf_token"] = session.csrf_token
        response = web.json_response(body_out)
        set_session_cookie(response, request, session)
    return response


async def put_my_language(request: web.Request) -> web.Response:
    """Set one's UI language ``{language}``."""
    accounts, _ = _services(request)
    principal = request[PRINCIPAL_KEY]
    await _require_account(request, principal)
    language = (await _read_body(request)).get("language")
    if not isinstance(language, str):
        raise http_error(400, "language is required")
    try:
        user = await accounts.set_language(principal.name, language)
    except AccountError as exc:
        raise account_error(exc) from None
    return web.json_response({"user": user_json(user)})


async def get_my_api_tokens(request: web.Request) -> web.Response:
    """One's API tokens (ids, labels, times; never the tokens)."""
    accounts, _ = _services(request)
    principal = request[PRINCIPAL_KEY]
    await _require_account(request, principal)
    tokens = await accounts.list_api_tokens(principal.name)
    return web.json_response(
        {
            "tokens": [
                {
                    "id": t.id,
                    "label": t.label,
                    "created_ms": t.created_ms,
                    "last_used_ms": t.last_used_ms,
                }
                for t in tokens
            ]
        }
    )


async def post_my_api_token(request: web.Request) -> web.Response:
    """Create an API token ``{label}``; the answer holds the token, shown this once."""
    accounts, audit = _services(request)
    principal = request[PRINCIPAL_KEY]
    await _require_account(request, principal)
    label = (await _read_body(request)).get("label")
    if not isinstance(label, str):
        raise http_error(400, "label is required")
    if principal.via != "session":
        # a leaked token must not be able to mint more of itself
        raise http_error(403, "API tokens can only be created from a signed-in session")
    try:
        token = await accounts.create_api_token(principal.name, label)
    except AccountError as exc:
        raise account_error(exc) from None
    token_id = api_token_id(token)
    await audit.record(
        principal.name,
        Action.API_TOKEN_CREATED,
        target=principal.name,
        detail={"id": token_id, "label": label.strip()},
        source=request.remote or "",
    )
    response = web.json_response(
        {"token": token, "id": token_id, "label": label.strip()}, status=201
    )
    response.headers["Cache-Control"] = "no-store"
    return response


async def delete_my_api_token(request: web.Request) -> web.Response:
    """Revoke one of one's API tokens by id."""
    accounts, audit = _services(request)
    principal = request[PRINCIPAL_KEY]
    await _require_account(request, principal)
    token_id = request.match_info["token_id"]
    if not await accounts.revoke_api_token(principal.name, token_id):
        raise http_error(404, "no such token")
    await audit.record(
        principal.name,
        Action.API_TOKEN_REVOKED,
        target=principal.name,
        detail={"id": token_id},
        source=request.remote or "",
    )
    return web.json_response({"ok": True})


#: The routes of sign-in and of one's own account.
ROUTES: Final[tuple[Route, ...]] = (
    Route("POST", "/api/v1/session", post_session, frozenset({Role.ANONYMOUS})),
    Route("DELETE", "/api/v1/session", delete_session, ALL_ROLES),
    Route("GET", "/api/v1/me", get_me, ALL_ROLES),
    Route("PUT", "/api/v1/me/password", put_my_password, ALL_ROLES),
    Route("PUT", "/api/v1/me/language", put_my_language, ALL_ROLES),
    Route("GET", "/api/v1/me/api-tokens", get_my_api_tokens, ALL_ROLES),
    Route("POST", "/api/v1/me/api-tokens", post_my_api_token, ALL_ROLES),
    Route("DELETE", "/api/v1/me/api-tokens/{token_id}", delete_my_api_token, ALL_ROLES),
)


# helpers (public ones are shared with dashboards.admin_api and the pages) ------------------------


def user_json(user: User) -> dict[str, Any]:
    """A user as JSON (no secrets)."""
    return {
        "username": user.username,
        "display_name": user.display_name,
        "roles": sorted(user.roles),
        "language": user.language,
        "disabled": user.disabled,
        "must_change_password": user.must_change_password,
        "created_ms": user.created_ms,
        "last_login_ms": user.last_login_ms,
    }


def set_session_cookie(
    response: web.StreamResponse, request: web.Request, session: Session
) -> None:
    """Put ``session`` in the response's cookie: HttpOnly, SameSite=Strict, Secure over TLS.

    No ``Max-Age``: the cookie ends with the browser; the session's own lifetime is enforced
    by the server.
    """
    response.set_cookie(
        SESSION_COOKIE,
        session.id,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    response.headers["Cache-Control"] = "no-store"


def _services(request: web.Request) -> tuple[AccountStore, AuditLog]:
    return request.config_dict[ACCOUNTS_KEY], request.config_dict[AUDIT_KEY]


async def _user_of(request: web.Request, principal: Principal) -> User | None:
    if principal.via not in _USER_VIAS:
        return None
    return await request.config_dict[ACCOUNTS_KEY].get(principal.name)


async def _require_account(request: web.Request, principal: Principal) -> User:
    user = await _user_of(request, principal)
    if user is None:
        raise http_error(400, "this caller is not a user account (the hub's admin token?)")
    return user


async def read_json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (400 when it is not one)."""
    try:
        data = json.loads(await request.text() or "{}")
    except ValueError:
        raise http_error(400, "body must be a JSON object") from None
    if not isinstance(data, dict):
        raise http_error(400, "body must be a JSON object")
    return data


async def _read_body(request: web.Request) -> dict[str, Any]:
    """A JSON object body, or a form's fields (for a plain HTML sign-in form)."""
    if request.content_type in _FORM_TYPES:
        form = await request.post()
        return {k: v for k, v in form.items() if isinstance(v, str)}
    return await read_json_body(request)


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


_HTTP_ERRORS: Final[dict[int, type[web.HTTPException]]] = {
    400: web.HTTPBadRequest,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
}


def http_error(status: int, message: str) -> web.HTTPException:
    """An HTTP error whose body is ``{"error": message}``."""
    return _HTTP_ERRORS[status](
        text=json.dumps({"error": message}, ensure_ascii=False), content_type="application/json"
    )


def account_error(exc: AccountError) -> web.HTTPException:
    """The HTTP error of an account error: 404 unknown user, 409 user exists, else 400."""
    if isinstance(exc, UnknownUserError):
        return http_error(404, str(exc))
    if isinstance(exc, UserExistsError):
        return http_error(409, str(exc))
    return http_error(400, str(exc))
