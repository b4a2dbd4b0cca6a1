"""The hub's JSON API (aiohttp): health, stats, agents, devices and device commands.

Every route is declared once in :data:`ROUTES` with the roles that may call it; the app is built
from that table and :mod:`dashboards.auth` refuses anything the table does not open. Handlers
only read the hub's registry and call its services; they hold no business rules.

| route                                               | roles                      |
|-----------------------------------------------------|----------------------------|
| ``GET  /api/v1/health``                             | anyone (liveness only)     |
| ``GET  /api/v1/stats``                              | admin, technician, commander, judge, clerk |
| ``GET  /api/v1/agents``                             | admin, technician, commander, judge, clerk |
| ``GET  /api/v1/devices?venue=&agent=&state=``       | admin, technician, commander, judge, clerk |
| ``GET  /api/v1/devices/{agent}/{device}``           | admin, technician, commander, judge, clerk |
| ``POST /api/v1/devices/{agent}/{device}/commands``  | admin, technician          |

Errors are ``{"error": "..."}``. Times are UTC milliseconds; ``timezone`` says how to show them.
Device commands go to the audit trail when the app carries one (``dashboards.sessions.AUDIT_KEY``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import msgspec
from aiohttp import web

from dashboards.auth import (
    PRINCIPAL_KEY,
    AccessPolicy,
    Authenticator,
    Role,
    access_middleware,
)
from dashboards.routes import Route
from dashboards.sessions import AUDIT_KEY
from hub.audit import Action
from hub.commands import CommandStatus
from hub.registry import AgentRecord, DeviceRecord, HealthState
from hub.service import HubService
from protocol.messages import now_ms

log = logging.getLogger(__name__)

SERVICE_KEY: Final = web.AppKey("hub_service", HubService)
POLICY_KEY: Final = web.AppKey("access_policy", AccessPolicy)

#: Largest request body the API reads (commands are small).
MAX_BODY: Final = 64 * 1024
MAX_COMMAND_TIMEOUT_S: Final = 60.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: staff who may look at device health (counter staff work the queue, not the devices)
_READERS: Final = frozenset({Role.ADMIN, Role.TECHNICIAN, Role.COMMANDER, Role.JUDGE, Role.CLERK})
_OPERATORS: Final = frozenset({Role.ADMIN, Role.TECHNICIAN})


class CommandRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``POST …/commands``."""

    name: str
    args: dict[str, Any] = {}
    timeout_s: float = 5.0


_COMMAND_REQUEST: Final = msgspec.json.Decoder(CommandRequest)

_STATUS_HTTP: Final = {
    CommandStatus.OK: 200,
    CommandStatus.FAILED: 200,  # the agent answered; ``ok: false`` carries its error
    CommandStatus.UNKNOWN_DEVICE: 404,
    CommandStatus.OFFLINE: 409,
    CommandStatus.UNSUPPORTED: 400,
    CommandStatus.BAD_REQUEST: 400,
    CommandStatus.DEADLINE: 504,
    CommandStatus.NOT_CONNECTED: 503,
}


# handlers ----------------------------------------------------------------------------------------


async def get_health(request: web.Request) -> web.Response:
    """Liveness only: anonymous callers learn nothing else."""
    return web.json_response({"status": "ok"})


async def get_stats(request: web.Request) -> web.Response:
    """The hub's counters and totals."""
    service = request.app[SERVICE_KEY]
    return web.json_response({**service.stats(), "timezone": service.config.hub.timezone})


async def get_agents(request: web.Request) -> web.Response:
    """Every agent with its venue, session and seq summary."""
    service = request.app[SERVICE_KEY]
    agents = [agent_json(service, a) for a in service.registry.agents()]
    return web.json_response(
        {"agents": agents, "count": len(agents), "timezone": service.config.hub.timezone}
    )


async def get_devices(request: web.Request) -> web.Response:
    """Devices, filtered by ``venue``, ``agent`` and ``state`` query parameters."""
    service = request.app[SERVICE_KEY]
    venue = request.query.get("venue")
    agent_id = request.query.get("agent")
    state_text = request.query.get("state")
    state: HealthState | None = None
    if state_text is not None:
        try:
            state = HealthState(state_text)
        except ValueError:
            allowed = ", ".join(s.value for s in HealthState)
            raise _error(400, f"state must be one of {allowed}") from None
    now = now_ms()
    devices = []
    for device in service.registry.devices():
        agent = service.registry.agent(device.agent)
        if agent_id is not None and device.agent != agent_id:
            continue
        if venue is not None and (agent is None or agent.venue_id != venue):
            continue
        if state is not None and device.state is not state:
            continue
        devices.append(device_json(service, device, agent, now))
    return web.json_response(
        {"devices": devices, "count": len(devices), "timezone": service.config.hub.timezone}
    )


async def get_device(request: web.Request) -> web.Response:
    """One device, with its recent health transitions."""
    service = request.app[SERVICE_KEY]
    agent_id, device_id = request.match_info["agent"], request.match_info["device"]
    device = service.registry.device(agent_id, device_id)
    if device is None:
        raise _error(404, f"unknown device {agent_id[:64]}/{device_id[:64]}")
    body = device_json(service, device, service.registry.agent(agent_id), now_ms())
    since = now_ms() - 7 * 86_400_000
    transitions = await service.device_transitions(agent_id, device_id, since_ms=since)
    body["transitions"] = [
        {"ts": e.ts, "state": e.state.value, "reason": e.reason} for e in transitions[-50:]
    ]
    body["timezone"] = service.config.hub.timezone
    return web.json_response(body)


async def post_command(request: web.Request) -> web.Response:
    """Run a device command and return its outcome."""
    service = request.app[SERVICE_KEY]
    agent_id, device_id = request.match_info["agent"], request.match_info["device"]
    try:
        body = _COMMAND_REQUEST.decode(await request.read())
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _error(400, f"bad command body: {exc}") from None
    if not body.name or len(body.name) > 64:
        raise _error(400, "name must be 1..64 characters")
    if not 0 < body.timeout_s <= MAX_COMMAND_TIMEOUT_S:
        raise _error(400, f"timeout_s must be in (0, {MAX_COMMAND_TIMEOUT_S:g}]")
    outcome = await service.call_command(agent_id, device_id, body.name, body.args, body.timeout_s)
    audit = request.config_dict.get(AUDIT_KEY)
    if audit is not None:
        principal = request.get(PRINCIPAL_KEY)
        try:
            await audit.record(
                principal.name if principal else "",
                Action.DEVICE_COMMAND,
                target=f"{agent_id}/{device_id}",
                detail={
                    "name": body.name,
                    "ok": outcome.ok,
                    "status": outcome.status.value,
                    "error": outcome.error,
                },
                source=request.remote or "",
            )
        except Exception:
            # the command has run: answering an error now would tell the caller it did not
            log.exception("device command not audited agent=%s device=%s", agent_id, device_id)
    return web.json_response(outcome.to_json(), status=_STATUS_HTTP[outcome.status])


#: The one route table: every route the API serves and the roles that may call it.
ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/api/v1/health", get_health, frozenset({Role.ANONYMOUS})),
    Route("GET", "/api/v1/stats", get_stats, _READERS),
    Route("GET", "/api/v1/agents", get_agents, _READERS),
    Route("GET", "/api/v1/devices", get_devices, _READERS),
    Route("GET", "/api/v1/devices/{agent}/{device}", get_device, _READERS),
    Route("POST", "/api/v1/devices/{agent}/{device}/commands", post_command, _OPERATORS),
)


def access_policy(routes: Sequence[Route] = ROUTES) -> AccessPolicy:
    """The access table of ``routes``."""
    return AccessPolicy(r.rule for r in routes)


def create_api_app(
    service: HubService,
    authenticators: Sequence[Authenticator],
    *,
    routes: Sequence[Route] = ROUTES,
) -> web.Application:
    """The API application for ``service``; callers are checked by ``authenticators``."""
    policy = access_policy(routes)
    app = web.Application(
        middlewares=[json_errors_middleware, access_middleware(policy, authenticators)],
        client_max_size=MAX_BODY,
    )
    app[SERVICE_KEY] = service
    app[POLICY_KEY] = policy
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
    return app


# helpers ------------------------------------------------------------------------------------------


@web.middleware
async def json_errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as ``{"error": "..."}``, including aiohttp's own 404/405/413."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        return web.json_response(
            {"error": exc.reason.lower()}, status=exc.status, headers=_allow(exc)
        )


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def _error(status: int, message: str) -> web.HTTPException:
    """An HTTP error whose body is ``{"error": message}``."""
    body = msgspec.json.encode({"error": message}).decode()
    return _HTTP_ERRORS[status](text=body, content_type="application/json")


_HTTP_ERRORS: Final[dict[int, type[web.HTTPException]]] = {
    400: web.HTTPBadRequest,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
}


def agent_json(service: HubService, agent: AgentRecord) -> dict[str, Any]:
    devices = service.registry.devices_of(agent.id)
    return {
        "id": agent.id,
        "venue": {"id": agent.venue_id, "kind": agent.venue_kind, "name": agent.venue_name},
        "online": agent.online,
        "bdseq": agent.bdseq,
        "version": agent.version,
        "last_birth_ms": agent.last_birth_ms,
        "last_seen_ms": agent.last_seen_ms,
        "devices": len(devices),
        "devices_online": sum(1 for d in devices if d.state is HealthState.ONLINE),
        "seq": service.seq.summary(agent.id),
    }


def device_json(
    service: HubService, device: DeviceRecord, agent: AgentRecord | None, now: int
) -> dict[str, Any]:
    stale_after = service.health.stale_after_s(device)
    return {
        "agent": device.agent,
        "id": device.id,
        "venue": {
            "id": agent.venue_id if agent else "",
            "kind": agent.venue_kind if agent else "",
            "name": agent.venue_name if agent else "",
        },
        "kind": device.kind,
        "model": device.model,
        "firmware": device.firmware,
        "capabilities": list(device.capabilities),
        "state": device.state.value,
        "state_reason": device.state_reason,
        "state_since_ms": device.state_since_ms,
        "reported_state": device.reported_state.value,
        "reported_reason": device.reported_reason,
        "heartbeat_s": device.heartbeat_s,
        "stale_after_s": stale_after,
        "last_seen_ms": device.last_seen_ms,
        # LESSONS.md: show the heartbeat's age, not only a flag
        "heartbeat_age_s": round((now - device.last_seen_ms) / 1000, 3)
        if device.last_seen_ms
        else None,
        "metrics": device.metrics,
        "metrics_ts": device.metrics_ts,
        "bad_messages": device.bad_messages,
    }
