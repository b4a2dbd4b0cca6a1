"""The hall queue's JSON API: the snapshot for staff and the counter (window) actions.

| route                                                        | roles          |
|--------------------------------------------------------------|----------------|
| ``GET  /api/v1/queue``                                       | every staff role |
| ``GET  /api/v1/queue/counters/{counter}``                    | counter, admin |
| ``POST /api/v1/queue/counters/{counter}/call-next``          | counter, admin |
| ``POST /api/v1/queue/counters/{counter}/recall``             | counter, admin |
| ``POST /api/v1/queue/counters/{counter}/start``              | counter, admin |
| ``POST /api/v1/queue/counters/{counter}/done``               | counter, admin |
| ``POST /api/v1/queue/counters/{counter}/no-show``            | counter, admin |
| ``POST /api/v1/queue/counters/{counter}/hold``               | counter, admin |
| ``POST /api/v1/queue/counters/{counter}/transfer``           | counter, admin |
| ``POST /api/v1/queue/counters/{counter}/open``               | counter, admin |
| ``POST /api/v1/queue/counters/{counter}/close``              | counter, admin |

``transfer`` takes ``{"to_service": "consult"}`` or ``{"to_counter": "3"}``. A refused action
(:class:`~hub.queue_service.QueueError`) answers **409** ``{"error": <Chinese message for the
clerk>, "code": <stable code>}``. Every action that changed the queue is audited as
``queue_<action>`` (``queue_call_next``, ``queue_recall``, ``queue_start``, ``queue_done``,
``queue_no_show``, ``queue_hold``, ``queue_transfer``, ``queue_open``, ``queue_close``; the
names are stored, never rename one) with the acting user, the counter as target and the number.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from dashboards.auth import PRINCIPAL_KEY, Role
from dashboards.routes import Route
from dashboards.sessions import AUDIT_KEY, http_error, read_json_body
from hub.queue_service import QueueError, QueueService, QueueSnapshot, Ticket

log = logging.getLogger(__name__)

#: the running queue; the hub sets it in the console's ``setup``
QUEUE_KEY: Final = web.AppKey("queue_service", QueueService)

_STAFF: Final = frozenset(r for r in Role if r is not Role.ANONYMOUS)
#: who works a counter (admin stands in)
COUNTER_ROLES: Final = frozenset({Role.COUNTER, Role.ADMIN})
#: URL action -> audit action (stored: keep them stable)
AUDIT_ACTIONS: Final = {
    "call-next": "queue_call_next",
    "recall": "queue_recall",
    "start": "queue_start",
    "done": "queue_done",
    "no-show": "queue_no_show",
    "hold": "queue_hold",
    "transfer": "queue_transfer",
    "open": "queue_open",
    "close": "queue_close",
}


def queue_of(request: web.Request) -> QueueService:
    """The app's queue; 503 when this console runs without one."""
    queue = request.config_dict.get(QUEUE_KEY)
    if queue is None:
        raise web.HTTPServiceUnavailable(
            text='{"error": "queue not running"}', content_type="application/json"
        )
    return queue


def ticket_json(ticket: Ticket) -> dict[str, Any]:
    """A ticket for staff (numbers and times; tickets carry no names)."""
    return {
        "id": ticket.id,
        "number": ticket.number,
        "service": ticket.service,
        "priority": ticket.priority,
        "state": ticket.state,
        "counter": ticket.counter,
        "target_counter": ticket.target_counter,
        "recalls": ticket.recalls,
        "issued_at": ticket.issued_at,
        "called_at": ticket.called_at,
        "serving_at": ticket.serving_at,
    }


def snapshot_json(queue: QueueService, snapshot: QueueSnapshot) -> dict[str, Any]:
    """The snapshot as the board and the counter pages read it: numbers, windows and counts only."""
    return {
        "ts": snapshot.ts,
        "day": snapshot.day,
        "now_calling": [
            {
                "number": c.number,
                "counter": c.counter,
                "service": c.service,
                "state": c.state,
                "called_at": c.called_at,
                "recalls": c.recalls,
            }
            for c in snapshot.now_calling
        ],
        "services": [
            {
                "code": s.code,
                "prefix": s.prefix,
                "name": s.name or s.code,
                "waiting": snapshot.waiting.get(s.code, 0),
                "estimated_wait_s": snapshot.estimated_wait_s.get(s.code, 0),
            }
            for s in queue.config.services
        ],
        "counters": [
            {"id": c.id, "open": c.open, "services": list(c.services), "current": c.current}
            for c in snapshot.counters
        ],
        "held": snapshot.held,
    }


def queue_error(exc: QueueError) -> web.Response:
    """409 with the clerk's message and the stable code."""
    return web.json_response({"error": exc.message, "code": exc.code}, status=409)


async def get_queue(request: web.Request) -> web.Response:
    """The hall's state now."""
    queue = queue_of(request)
    return web.json_response(snapshot_json(queue, await queue.snapshot()))


async def get_counter(request: web.Request) -> web.Response:
    """One counter: open or not, its services and its active ticket."""
    queue = queue_of(request)
    counter = request.match_info["counter"]
    try:
        current = await queue.current(counter)
    except QueueError as exc:
        return queue_error(exc)
    snapshot = await queue.snapshot()
    view = next(c for c in snapshot.counters if c.id == counter)
    return web.json_response(
        {
            "counter": {"id": view.id, "open": view.open, "services": list(view.services)},
            "ticket": ticket_json(current) if current is not None else None,
        }
    )


Act = Callable[[QueueService, str, dict[str, Any]], Awaitable[Ticket | None]]


async def _transfer(queue: QueueService, counter: str, body: dict[str, Any]) -> Ticket:
    to_service, to_counter = body.get("to_service"), body.get("to_counter")
    if not isinstance(to_service, str | None) or not isinstance(to_counter, str | None):
        raise http_error(400, "to_service and to_counter must be text")
    return await queue.transfer(counter, to_service=to_service or None, to_counter=to_counter)


async def _open(queue: QueueService, counter: str, _body: dict[str, Any]) -> None:
    await queue.open_counter(counter)


async def _close(queue: QueueService, counter: str, _body: dict[str, Any]) -> None:
    await queue.close_counter(counter)


_ACTS: Final[dict[str, Act]] = {
    "call-next": lambda q, c, _b: q.call_next(c),
    "recall": lambda q, c, _b: q.recall(c),
    "start": lambda q, c, _b: q.start_serving(c),
    "done": lambda q, c, _b: q.done(c),
    "no-show": lambda q, c, _b: q.no_show(c),
    "hold": lambda q, c, _b: q.hold(c),
    "transfer": _transfer,
    "open": _open,
    "close": _close,
}


def _action_handler(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    act = _ACTS[name]
    audit_action = AUDIT_ACTIONS[name]

    async def handler(request: web.Request) -> web.Response:
        queue = queue_of(request)
        counter = request.match_info["counter"]
        body = await read_json_body(request) if name == "transfer" else {}
        try:
            ticket = await act(queue, counter, body)
        except QueueError as exc:
            log.info("queue action refused action=%s counter=%s code=%s", name, counter, exc.code)
            return queue_error(exc)
        detail: dict[str, Any] = {"number": ticket.number if ticket else None}
        if name == "transfer":
            detail.update(to_service=body.get("to_service"), to_counter=body.get("to_counter"))
        principal = request[PRINCIPAL_KEY]
        await request.config_dict[AUDIT_KEY].record(
            principal.name, audit_action, target=counter, detail=detail, source=request.remote or ""
        )
        return web.json_response(
            {"ok": True, "ticket": ticket_json(ticket) if ticket is not None else None}
        )

    handler.__name__ = f"post_queue_{audit_action.removeprefix('queue_')}"
    return handler


_COUNTER_PATH: Final = "/api/v1/queue/counters/{counter}"

ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/api/v1/queue", get_queue, _STAFF),
    Route("GET", _COUNTER_PATH, get_counter, COUNTER_ROLES),
    *(
        Route("POST", f"{_COUNTER_PATH}/{name}", _action_handler(name), COUNTER_ROLES)
        for name in _ACTS
    ),
)
