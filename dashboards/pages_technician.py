"""The technician's device page: every agent and device of the court, grouped by venue.

Each device is a card: state (colour *and* icon), last seen as a ticking age, model and firmware,
bad-message count, latest metrics, and one button per capability that runs the command through
the hub (``POST /api/v1/devices/{agent}/{device}/commands``) and shows its outcome on the card.
The page renders the registry as it is now; ``static/technician.js`` keeps it current over the
live socket (topics ``devices``, ``telemetry``, ``alerts``). When the hub has an alert board, an
alerts panel tops the page (``static/alerts.js``: pushed on the live ``alerts`` topic, see
:mod:`dashboards.alerts_api`); it starts from the board's state embedded in the page.

| route              | roles             |
|--------------------|-------------------|
| ``GET /technician`` | admin, technician |
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from dashboards.alerts_api import alerts_body, board_of
from dashboards.api import SERVICE_KEY
from dashboards.auth import Role
from dashboards.i18n import Translator
from dashboards.live import Topic
from dashboards.pages import RENDERER_KEY
from dashboards.routes import Route
from hub.registry import AgentRecord, DeviceRecord, HealthState, Registry
from protocol.messages import VenueKind

log = logging.getLogger(__name__)

_TECHNICIANS: Final = frozenset({Role.ADMIN, Role.TECHNICIAN})
#: the order venues appear in (a hall first: that is where litigants wait)
VENUE_ORDER: Final = tuple(kind.value for kind in VenueKind)
#: worst first, for the summary
STATE_ORDER: Final = (HealthState.OFFLINE, HealthState.FAULT, HealthState.STALE, HealthState.ONLINE)
#: metrics shown on a card, at most (a driver may report dozens)
MAX_METRICS: Final = 8
#: alerts embedded in the page for the panel's first paint (the API's own history is longer)
ALERTS_HISTORY: Final = 50
#: how often the alerts panel asks ``GET /api/v1/alerts`` (read per page, so tests can shorten it)
ALERTS_POLL_MS = 4000
LIVE_TOPICS: Final = (Topic.DEVICES.value, Topic.TELEMETRY.value, Topic.ALERTS.value)
#: the state reasons the hub and the drivers give, in English, and their catalog keys. A pattern
#: matches a whole reason (or one part of a ", "-joined list); its group, if any, is ``{n}``. The
#: page's script gets the same table, so keep the patterns valid in JavaScript too.
REASON_RULES: Final = (
    (r"^agent offline$", "reason.agent_offline"),
    (r"^starting$", "reason.starting"),
    (r"^kiosk broker unreachable$", "reason.kiosk_unreachable"),
    (r"^printer jam$", "reason.printer_jam"),
    (r"^paper out$", "reason.paper_out"),
    (r"^card reader fault$", "reason.card_reader_fault"),
    (r"^bad response$", "reason.bad_response"),
    (r"^reported offline$", "reason.reported_offline"),
    (r"^reported fault$", "reason.reported_fault"),
    (r"^no answer within (\d+(?:\.\d+)?) s$", "reason.no_answer"),
    (r"^no message in (\d+(?:\.\d+)?) s$", "reason.no_message"),
)
_REASONS: Final = tuple((re.compile(pattern), key) for pattern, key in REASON_RULES)


def reason_text(t: Translator, reason: str) -> str:
    """``reason`` in the page's language; the raw text when any part of it is not known."""
    if not reason:
        return ""
    parts = []
    for part in reason.split(", "):
        for pattern, key in _REASONS:
            match = pattern.match(part)
            if match:
                parts.append(t(key, n=match.group(1)) if match.groups() else t(key))
                break
        else:
            return reason
    return t("reason.separator").join(parts)


@dataclass(frozen=True, slots=True)
class AgentView:
    """An agent as its venue's header shows it."""

    id: str
    online: bool
    version: str
    last_seen_ms: int


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What one device card shows."""

    agent: str
    id: str
    kind: str
    model: str
    firmware: str
    capabilities: tuple[str, ...]
    state: str
    reason: str
    since_ms: int
    last_seen_ms: int
    bad_messages: int
    metrics: tuple[tuple[str, str], ...]

    @property
    def key(self) -> str:
        """``agent/device``, the card's ``data-device``."""
        return f"{self.agent}/{self.id}"

    @classmethod
    def of(cls, device: DeviceRecord) -> DeviceView:
        """The card of a registry record."""
        return cls(
            agent=device.agent,
            id=device.id,
            kind=device.kind,
            model=device.model,
            firmware=device.firmware,
            capabilities=device.capabilities,
            state=device.state.value,
            reason=device.state_reason,
            since_ms=device.state_since_ms,
            last_seen_ms=device.last_seen_ms,
            bad_messages=device.bad_messages,
            metrics=format_metrics(device.metrics),
        )

    @classmethod
    def blank(cls) -> DeviceView:
        """The empty card the page's script copies for a device that appears later."""
        return cls("", "", "", "", "", (), HealthState.OFFLINE.value, "", 0, 0, 0, ())


@dataclass(frozen=True, slots=True)
class VenueView:
    """A venue's section: its agents and their devices."""

    key: str
    name: str
    kind: str
    agents: tuple[AgentView, ...]
    devices: tuple[DeviceView, ...]

    @classmethod
    def blank(cls) -> VenueView:
        """The empty section the page's script copies for a venue that appears later."""
        return cls("", "", "", (), ())


def format_metrics(metrics: Mapping[str, float]) -> tuple[tuple[str, str], ...]:
    """The first metrics by name, numbers shortened for a card."""
    return tuple((name, f"{metrics[name]:.6g}") for name in sorted(metrics)[:MAX_METRICS])


def venue_key(agent: AgentRecord) -> str:
    """Devices group by venue id; an agent without one is its own venue."""
    return agent.venue_id or f"agent:{agent.id}"


def venue_views(registry: Registry) -> list[VenueView]:
    """Every agent and device, grouped by venue, venues ordered by kind then name."""
    groups: dict[str, list[AgentRecord]] = {}
    for agent in registry.agents():
        groups.setdefault(venue_key(agent), []).append(agent)
    venues = []
    for key, agents in groups.items():
        first = agents[0]
        devices = tuple(DeviceView.of(d) for a in agents for d in registry.devices_of(a.id))
        venues.append(
            VenueView(
                key=key,
                name=first.venue_name or first.venue_id or first.id,
                kind=first.venue_kind,
                agents=tuple(AgentView(a.id, a.online, a.version, a.last_seen_ms) for a in agents),
                devices=devices,
            )
        )
    venues.sort(key=lambda v: (_kind_rank(v.kind), v.name, v.key))
    return venues


def _kind_rank(kind: str) -> int:
    return VENUE_ORDER.index(kind) if kind in VENUE_ORDER else len(VENUE_ORDER)


def state_counts(devices: Iterable[DeviceView]) -> dict[str, int]:
    """How many devices are in each state."""
    counts = {state.value: 0 for state in STATE_ORDER}
    for device in devices:
        counts[device.state] = counts.get(device.state, 0) + 1
    return counts


async def alerts_snapshot(request: web.Request) -> dict[str, Any] | None:
    """What ``GET /api/v1/alerts`` answers now, for the panel's first paint; None when the hub
    has no alert board (then the page has no panel and polls nothing)."""
    board = board_of(request)
    if board is None:
        return None
    return await alerts_body(board, history=ALERTS_HISTORY)


async def technician_page(request: web.Request) -> web.Response:
    """The device grid, under the alerts panel."""
    service = request.app[SERVICE_KEY]
    venues = venue_views(service.registry)
    renderer = request.app[RENDERER_KEY]
    return renderer.render(
        request,
        "technician.html",
        page="technician",
        title_key="tech.title",
        live_topics=LIVE_TOPICS,
        venues=venues,
        states=[s.value for s in STATE_ORDER],
        counts=state_counts(d for v in venues for d in v.devices),
        blank_venue=VenueView.blank(),
        blank_device=DeviceView.blank(),
        blank_agent=AgentView("", False, "", 0),
        reason_text=reason_text,
        reason_rules=REASON_RULES,
        venue_order=VENUE_ORDER,
        alerts=await alerts_snapshot(request),
        alerts_poll_ms=ALERTS_POLL_MS,
    )


ROUTES: Final[tuple[Route, ...]] = (Route("GET", "/technician", technician_page, _TECHNICIANS),)
