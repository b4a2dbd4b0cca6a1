"""The hearing console: the judge's and clerk's page of a recorded courtroom or interrogation room.

| route           | roles               |
|-----------------|---------------------|
| ``GET /hearing`` | judge, clerk, admin |

The page picks a venue (remembered in the browser), shows its hearing with a state banner that
cannot be missed (red pulsing "录制中 REC" while open, amber during a recess, grey otherwise, a
lock once sealed), the lifecycle controls (start, recess with its reason, resume, close, seal —
close and seal ask for confirmation — and the sealed bundle's download), the live transcript by
seat with clerk corrections, timestamped notes, the venue's live camera tiles and the hearing's
events; once closed, playback of its recordings synced to the transcript (click a line to go
there, the line being heard is highlighted). ``static/hearing.js`` does the work against the
existing APIs: :mod:`dashboards.recordings_api` (hearings, segments and their media),
:mod:`dashboards.transcript_api` (transcript, notes, revisions) and the ``transcript`` topic of
the live socket (:mod:`dashboards.live`).

What the page needs from the server is rendered into it as JSON: the venues a hearing may be held
in (the registry's courtrooms and interrogation rooms, the cameras' venues, the hearings'
venues), the cameras the caller may watch, and what the caller may do — read from the access
table, so the page never offers a button the policy would refuse.

Wiring (the hub's ``console_app``): add :data:`ROUTES` to ``extra_routes`` and
:data:`HEARING_NAV` to the nav.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from dashboards.api import POLICY_KEY, SERVICE_KEY
from dashboards.auth import PRINCIPAL_KEY, Principal, Role
from dashboards.live import Topic
from dashboards.pages import RENDERER_KEY, NavItem
from dashboards.pages_video import LIVE_VIDEO_KEY, visible_cameras
from dashboards.recordings_api import RECORDINGS_KEY
from dashboards.routes import Route
from dashboards.transcript_api import TRANSCRIPT_KEY
from hub.hearings import RECESS_REASONS

#: who may open the page (technicians read hearings through the API, not this console)
HEARING_ROLES: Final = frozenset({Role.JUDGE, Role.CLERK, Role.ADMIN})
#: the page's entry in the top bar and on the home page
HEARING_NAV: Final = NavItem("/hearing", "nav.hearing", "tile.hearing", "i-emblem")
#: venue kinds hearings are held in
HEARING_VENUE_KINDS: Final = ("tech_courtroom", "interrogation_room")


@dataclass(frozen=True, slots=True)
class VenueChoice:
    """One venue of the page's picker."""

    id: str
    name: str
    kind: str

    def to_json(self) -> dict[str, str]:
        """For the page's JSON."""
        return {"id": self.id, "name": self.name, "kind": self.kind}


def hearing_venues(request: web.Request) -> list[VenueChoice]:
    """Courtrooms and interrogation rooms known to the hub, courtrooms first, by id.

    From the registry (agents' venues), the cameras (all of them: a venue's name is not secret
    even when its pictures are) and the hearings already held; the first name found wins.
    """
    found: dict[str, VenueChoice] = {}

    def add(venue_id: str, name: str, kind: str) -> None:
        if not venue_id:
            return
        known = found.get(venue_id)
        if known is None:
            found[venue_id] = VenueChoice(venue_id, name or venue_id, kind)
            return
        better_name = name if known.name == venue_id and name else known.name
        found[venue_id] = VenueChoice(venue_id, better_name, known.kind or kind)

    service = request.app.get(SERVICE_KEY)
    if service is not None:
        for agent in service.registry.agents():
            if agent.venue_kind in HEARING_VENUE_KINDS:
                add(agent.venue_id, agent.venue_name, agent.venue_kind)
    live = request.config_dict.get(LIVE_VIDEO_KEY)
    if live is not None:
        for view in live.cameras():
            if view.venue_kind in HEARING_VENUE_KINDS:
                add(view.venue, "", view.venue_kind)
    recordings = request.config_dict.get(RECORDINGS_KEY)
    if recordings is not None:
        for hearing in recordings.hearings.all():
            for venue in hearing.venues:
                add(venue, "", "")

    def rank(v: VenueChoice) -> tuple[int, str]:
        kind = HEARING_VENUE_KINDS.index(v.kind) if v.kind in HEARING_VENUE_KINDS else 9
        return kind, v.id

    return sorted(found.values(), key=rank)


def _may(request: web.Request, principal: Principal, method: str, path: str) -> bool:
    """Whether the access table lets ``principal`` call ``method path``."""
    rule = request.app[POLICY_KEY].rule_for(method, path)
    return rule is not None and bool(principal.roles & rule.roles)


def page_data(request: web.Request) -> dict[str, Any]:
    """What ``hearing.js`` starts from: venues, cameras, permissions, recess reasons."""
    principal: Principal = request[PRINCIPAL_KEY]
    live = request.config_dict.get(LIVE_VIDEO_KEY)
    recordings = request.config_dict.get(RECORDINGS_KEY)
    cameras: list[dict[str, Any]] = []
    if live is not None and _may(request, principal, "GET", "/video/{camera}/live.mjpg"):
        cameras = [
            {"id": c["id"], "name": c["name"], "venue": c["venue"], "live_url": c["live_url"]}
            for c in visible_cameras(live, principal)
            if c["venue_kind"] in HEARING_VENUE_KINDS
        ]
    return {
        "venues": [v.to_json() for v in hearing_venues(request)],
        "cameras": cameras,
        "reasons": list(RECESS_REASONS),
        "recordings": recordings is not None,
        "transcripts": request.config_dict.get(TRANSCRIPT_KEY) is not None,
        "can_control": _may(request, principal, "POST", "/api/v1/hearings/{id}/close"),
        "can_annotate": _may(request, principal, "POST", "/api/v1/hearings/{id}/notes"),
        "can_revise": _may(
            request, principal, "POST", "/api/v1/transcript/segments/{segment}/revise"
        ),
        "can_export": _may(request, principal, "GET", "/api/v1/hearings/{id}/export"),
        "can_play": recordings is not None
        and _may(request, principal, "GET", "/api/v1/recordings/segments/{id}/media"),
    }


async def hearing_page(request: web.Request) -> web.Response:
    """The hearing console."""
    data = page_data(request)
    return request.app[RENDERER_KEY].render(
        request,
        "hearing.html",
        page="hearing",
        title_key="hearing.title",
        live_topics=[Topic.TRANSCRIPT.value] if data["transcripts"] else [],
        hearing_data=data,
    )


ROUTES: Final[tuple[Route, ...]] = (Route("GET", "/hearing", hearing_page, HEARING_ROLES),)
