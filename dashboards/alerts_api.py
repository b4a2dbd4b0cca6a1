"""JSON API of the alert board (issue 7): alerts, their acknowledgement, and the alert rules.

| route                               | roles                        |
|-------------------------------------|------------------------------|
| ``GET  /api/v1/alerts``             | admin, technician, commander |
| ``POST /api/v1/alerts/{id}/ack``    | admin, technician            |
| ``GET  /api/v1/alerts/rules``       | admin, technician, commander |

``GET /api/v1/alerts`` answers ``{"active": [...firing...], "pending": [...], "history": [...],
"server_ms"}``; every alert is :meth:`hub.alerts.Alert.to_json` (``state`` pending / firing /
resolved, ``pending_ms``, ``fired_ms``, ``resolved_ms``, ``acked_by``, ``acked_ms``).
``history=<n>`` (1..1000, default 100) sets how many fired alerts the history holds.

``POST /api/v1/alerts/{id}/ack`` (CSRF-checked like every state-changing call of a cookie
session) acknowledges a firing alert: 200 with the alert, 404 for an unknown id, 409 when it is
resolved or already acknowledged (the message names who did). It is audited by the board
(action ``alert_ack``, the caller's address as source).

Without an alert board the routes answer 503. :func:`install_alerts` puts the board on the app
and pushes every change of it on the live socket's ``alerts`` topic as
``{"type": "board_alert", "alert": {...}}`` (the technician's panel listens for it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from dashboards.auth import PRINCIPAL_KEY, Role
from dashboards.live import LIVE_KEY, Topic
from dashboards.routes import Route
from dashboards.sessions import http_error
from hub.alert_rules import AlertRule
from hub.alerts import AckRefused, Alert, AlertBoard, UnknownAlert
from protocol.messages import now_ms

log = logging.getLogger(__name__)

WATCHERS: Final = frozenset({Role.ADMIN, Role.TECHNICIAN, Role.COMMANDER})
ACKERS: Final = frozenset({Role.ADMIN, Role.TECHNICIAN})
#: fired alerts in ``history`` unless the caller asks for another number
DEFAULT_HISTORY: Final = 100
MAX_HISTORY: Final = 1000
#: the live message type of a board change (the ``alert`` type is a device's health change)
LIVE_TYPE: Final = "board_alert"


@dataclass(frozen=True)
class AlertsContext:
    """What the alerts API serves from (see :func:`install_alerts`)."""

    board: AlertBoard
    rules: tuple[AlertRule, ...] = ()
    evaluate_interval_s: float | None = None


ALERTS_KEY: Final = web.AppKey("alerts", AlertsContext)


def install_alerts(
    app: web.Application,
    board: AlertBoard,
    *,
    rules: Iterable[AlertRule] = (),
    evaluate_interval_s: float | None = None,
) -> AlertsContext:
    """Serve ``board`` (and list ``rules``) on ``app``; push its changes to live pages.

    Call it from the console's ``setup`` (the live hub exists by then); the listener is removed
    when the app cleans up.
    """
    ctx = AlertsContext(board, tuple(rules), evaluate_interval_s)
    app[ALERTS_KEY] = ctx
    live = app.get(LIVE_KEY)
    if live is not None:
        remove = board.add_listener(lambda alert: live.publish(Topic.ALERTS, live_message(alert)))

        async def unhook(_app: web.Application) -> None:
            remove()

        app.on_cleanup.append(unhook)
    return ctx


def live_message(alert: Alert) -> dict[str, Any]:
    """The live socket's message for one change of the board."""
    return {"type": LIVE_TYPE, "alert": alert.to_json()}


async def alerts_body(board: AlertBoard, *, history: int = DEFAULT_HISTORY) -> dict[str, Any]:
    """What ``GET /api/v1/alerts`` answers (also embedded in pages for their first paint)."""
    fired = await board.history(limit=history)
    return {
        "active": [a.to_json() for a in board.active()],
        "pending": [a.to_json() for a in board.pending()],
        "history": [a.to_json() for a in fired],
        "server_ms": now_ms(),
    }


def board_of(request: web.Request) -> AlertBoard | None:
    """The app's alert board, or None."""
    ctx = request.config_dict.get(ALERTS_KEY)
    return ctx.board if ctx is not None else None


def _ctx(request: web.Request) -> AlertsContext:
    ctx = request.config_dict.get(ALERTS_KEY)
    if ctx is None:
        raise web.HTTPServiceUnavailable(
            text='{"error": "alert board not running"}', content_type="application/json"
        )
    return ctx


async def list_alerts(request: web.Request) -> web.Response:
    """Firing and pending alerts and the recent history."""
    ctx = _ctx(request)
    text = request.query.get("history", "")
    limit = DEFAULT_HISTORY
    if text:
        try:
            limit = int(text)
        except ValueError:
            raise http_error(400, "history must be an integer") from None
        if not 1 <= limit <= MAX_HISTORY:
            raise http_error(400, f"history must be 1..{MAX_HISTORY}")
    return web.json_response(await alerts_body(ctx.board, history=limit))


async def acknowledge(request: web.Request) -> web.Response:
    """Acknowledge the firing alert ``{id}`` as the signed-in user."""
    ctx = _ctx(request)
    try:
        alert_id = int(request.match_info["id"])
    except ValueError:
        raise http_error(404, "no such alert") from None
    user = str(request[PRINCIPAL_KEY].name)
    try:
        alert = await ctx.board.acknowledge(alert_id, user, source=request.remote or "")
    except UnknownAlert as exc:
        raise http_error(404, str(exc)) from None
    except AckRefused as exc:
        raise http_error(409, str(exc)) from None
    return web.json_response(alert.to_json())


async def list_rules(request: web.Request) -> web.Response:
    """The alert rules in force."""
    ctx = _ctx(request)
    return web.json_response(
        {
            "rules": [rule.to_json() for rule in ctx.rules],
            "evaluate_interval_s": ctx.evaluate_interval_s,
        }
    )


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/api/v1/alerts", list_alerts, WATCHERS),
    Route("POST", "/api/v1/alerts/{id}/ack", acknowledge, ACKERS),
    Route("GET", "/api/v1/alerts/rules", list_rules, WATCHERS),
)
