"""JSON API of the recorded venues: hearings (open, close, legal hold, seal, export), the segment
and gap index, the recorder's camera health, evidence verification (the alert board's API is :mod:`dashboards.alerts_api`).

| route                                            | roles                              |
|--------------------------------------------------|------------------------------------|
| ``GET  /api/v1/hearings``                        | judge, clerk, admin, technician    |
| ``POST /api/v1/hearings``                        | judge, clerk, admin                |
| ``POST /api/v1/hearings/{id}/start``             | judge, clerk, admin                |
| ``POST /api/v1/hearings/{id}/recess``            | judge, clerk, admin                |
| ``POST /api/v1/hearings/{id}/resume``            | judge, clerk, admin                |
| ``GET  /api/v1/hearings/{id}/events``            | judge, clerk, admin, technician    |
| ``POST /api/v1/hearings/{id}/close``             | judge, clerk, admin                |
| ``POST /api/v1/hearings/{id}/hold``              | judge, admin                       |
| ``POST /api/v1/hearings/{id}/seal``              | judge, clerk, admin                |
| ``GET  /api/v1/hearings/{id}/export``            | judge, clerk, admin                |
| ``GET  /api/v1/recordings/segments``             | judge, clerk, admin, technician    |
| ``GET  /api/v1/recordings/segments/{id}/media``  | judge, clerk, admin                |
| ``GET  /api/v1/recordings/gaps``                 | judge, clerk, admin, technician    |
| ``GET  /api/v1/recordings/status``               | admin, technician, commander       |
| ``POST /api/v1/recordings/verify``               | judge, admin, technician           |

A refused hearing action answers **409** ``{"error": …}``. Open/close/hold/seal/export are in
the audit trail (written by :class:`hub.hearings.HearingService`).

A segment's ``media`` is its file for playback (:mod:`hub.segment_media`), always with HTTP
ranges (the player seeks): a seat's WAV as is; H.264 ``.ts``/``.mkv`` remuxed and MJPEG ``.avi``
transcoded on demand to an MP4 in a small cache beside the index (``playback-cache``) by an ffmpeg
that dies with the hub and stops when the client goes away. Playback is logged, not audited
(watching is not an export: nothing leaves as a file the court must track).
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web

from dashboards.auth import PRINCIPAL_KEY, Role
from dashboards.routes import Route
from dashboards.sessions import http_error, read_json_body
from hub.alerts import AlertBoard
from hub.evidence import EvidenceError, verify_recordings
from hub.hearings import HearingError, HearingService
from hub.recorder import Recorder
from hub.recording_index import RecordingIndex
from hub.segment_media import MediaError, UnplayableMedia, converted, plan_media, segment_by_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordingsContext:
    """What the recordings API serves from (set by the hub in the console's ``setup``)."""

    index: RecordingIndex
    hearings: HearingService
    recorder: Recorder | None
    #: no longer read here: the alerts API has its own context (``dashboards.alerts_api``)
    alerts: AlertBoard | None
    db_path: Path


RECORDINGS_KEY: Final = web.AppKey("recordings", RecordingsContext)

HEARING_READERS: Final = frozenset({Role.JUDGE, Role.CLERK, Role.ADMIN, Role.TECHNICIAN})
HEARING_WRITERS: Final = frozenset({Role.JUDGE, Role.CLERK, Role.ADMIN})
HOLDERS: Final = frozenset({Role.JUDGE, Role.ADMIN})
VERIFIERS: Final = frozenset({Role.JUDGE, Role.ADMIN, Role.TECHNICIAN})
WATCHERS: Final = frozenset({Role.ADMIN, Role.TECHNICIAN, Role.COMMANDER})


def _ctx(request: web.Request) -> RecordingsContext:
    ctx = request.config_dict.get(RECORDINGS_KEY)
    if ctx is None:
        raise web.HTTPServiceUnavailable(
            text='{"error": "recorder not running"}', content_type="application/json"
        )
    return ctx


def _user(request: web.Request) -> str:
    return str(request[PRINCIPAL_KEY].name)


def _int_arg(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise http_error(400, f"{name} must be an integer (UTC milliseconds)") from None


async def list_hearings(request: web.Request) -> web.Response:
    """Every hearing, newest first."""
    return web.json_response({"hearings": [h.to_json() for h in _ctx(request).hearings.all()]})


async def open_hearing(request: web.Request) -> web.Response:
    """``{"title", "case_no", "venues": [...], "schedule": false, "scheduled_ms": null}`` → the
    new hearing (201): opened at once, or only put on the calendar when ``schedule`` is true."""
    body = await read_json_body(request)
    venues = body.get("venues")
    if not isinstance(venues, list) or not all(isinstance(v, str) for v in venues):
        raise http_error(400, "venues must be a list of venue ids")
    at = body.get("scheduled_ms")
    if at is not None and (not isinstance(at, int) or isinstance(at, bool)):
        raise http_error(400, "scheduled_ms must be UTC milliseconds")
    hearings = _ctx(request).hearings
    title, case_no = str(body.get("title", "")), str(body.get("case_no", ""))
    by = _user(request)
    try:
        if body.get("schedule") is True:
            hearing = await hearings.schedule_hearing(
                title=title, case_no=case_no, venues=venues, by=by, at_ms=at
            )
        else:
            hearing = await hearings.open_hearing(
                title=title, case_no=case_no, venues=venues, by=by
            )
    except HearingError as exc:
        raise http_error(409, str(exc)) from None
    return web.json_response(hearing.to_json(), status=201)


async def start_hearing(request: web.Request) -> web.Response:
    """Open a scheduled hearing."""
    return await _hearing_action(request, "start")


async def recess_hearing(request: web.Request) -> web.Response:
    """``{"reason": "recess"|"non_public_evidence"|"mediation"}``: a logged break."""
    return await _hearing_action(request, "recess")


async def resume_hearing(request: web.Request) -> web.Response:
    """End a break."""
    return await _hearing_action(request, "resume")


async def hearing_events(request: web.Request) -> web.Response:
    """The hearing record's transitions (time, state, user, reason)."""
    try:
        events = await _ctx(request).hearings.events(request.match_info["id"])
    except HearingError as exc:
        raise http_error(404, str(exc)) from None
    return web.json_response({"events": [e.to_json() for e in events]})


async def close_hearing(request: web.Request) -> web.Response:
    """End a hearing."""
    return await _hearing_action(request, "close")


async def hold_hearing(request: web.Request) -> web.Response:
    """``{"held": true|false}``: legal hold on the hearing's segments."""
    return await _hearing_action(request, "hold")


async def seal_hearing(request: web.Request) -> web.Response:
    """Write the closed hearing's manifest (once)."""
    return await _hearing_action(request, "seal")


async def _hearing_action(request: web.Request, action: str) -> web.Response:
    hearings = _ctx(request).hearings
    hearing_id = request.match_info["id"]
    by = _user(request)
    try:
        if action == "close":
            hearing = await hearings.close_hearing(hearing_id, by=by)
        elif action == "start":
            hearing = await hearings.start_hearing(hearing_id, by=by)
        elif action == "recess":
            body = await read_json_body(request)
            hearing = await hearings.recess(hearing_id, reason=str(body.get("reason", "")), by=by)
        elif action == "resume":
            hearing = await hearings.resume(hearing_id, by=by)
        elif action == "hold":
            body = await read_json_body(request)
            held = body.get("held", True)
            if not isinstance(held, bool):
                raise http_error(400, "held must be true or false")
            hearing = await hearings.set_hold(hearing_id, held, by=by)
        else:
            hearing = await hearings.seal(hearing_id, by=by)
    except HearingError as exc:
        raise http_error(409, str(exc)) from None
    except FileExistsError as exc:
        raise http_error(409, str(exc)) from None
    return web.json_response(hearing.to_json())


async def export_hearing(request: web.Request) -> web.StreamResponse:
    """The sealed hearing's bundle as a zip download."""
    hearings = _ctx(request).hearings
    hearing_id = request.match_info["id"]
    folder = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="courthub-export-"))
    out = folder / f"{hearing_id}.zip"
    try:
        await hearings.export(hearing_id, out, by=_user(request))
    except (HearingError, EvidenceError) as exc:
        # not sealed, or a file changed since sealing: a refusal the user must read, not a 500
        await asyncio.to_thread(_remove_tree, folder)
        raise http_error(409, str(exc)) from None
    except BaseException:
        await asyncio.to_thread(_remove_tree, folder)
        raise
    response = web.FileResponse(
        out, headers={"Content-Disposition": f'attachment; filename="{out.name}"'}
    )
    # the temporary bundle goes once sent (it is rebuilt from the sealed record on demand)
    asyncio.get_running_loop().call_later(600, _remove_tree, folder)
    return response


def _remove_tree(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


async def list_segments(request: web.Request) -> web.Response:
    """Segments by ``camera``, ``session``, ``from``/``to`` (UTC ms), oldest first."""
    segments = await _ctx(request).index.segments(
        camera=request.query.get("camera") or None,
        session_id=request.query.get("session") or None,
        from_ms=_int_arg(request, "from"),
        to_ms=_int_arg(request, "to"),
        include_deleted=request.query.get("deleted") == "1",
    )
    return web.json_response({"segments": [s.to_json() for s in segments[-1000:]]})


async def segment_media(request: web.Request) -> web.StreamResponse:
    """The segment's file for a ``<audio>``/``<video>`` element (see the module docstring)."""
    ctx = _ctx(request)
    try:
        segment_id = int(request.match_info["id"])
    except ValueError:
        raise http_error(404, "no such segment") from None
    segment = await asyncio.to_thread(segment_by_id, ctx.db_path, segment_id)
    if segment is None:
        raise http_error(404, f"no segment {segment_id}")
    camera = ctx.recorder.camera_config(segment.camera) if ctx.recorder else None
    roles = {role.value for role in request[PRINCIPAL_KEY].roles}
    if camera is not None and not roles & camera.allowed_live_roles():
        # a camera's recordings are for the roles that may watch it (interrogation rooms)
        raise http_error(403, f"camera {camera.id} is not for your role")
    try:
        plan = await asyncio.to_thread(plan_media, ctx.index.storage_root, segment)
    except MediaError as exc:
        if isinstance(exc, UnplayableMedia):
            raise _unplayable(str(exc)) from None
        raise http_error(404, str(exc)) from None
    log.info(
        "playback segment=%s camera=%s session=%s by=%s range=%s",
        segment.id,
        segment.camera,
        segment.session_id,
        _user(request),
        request.headers.get("Range", "-"),
    )
    path = plan.path
    if plan.codec is not None:
        transport = request.transport

        def client_gone() -> bool:
            return transport is None or transport.is_closing()

        try:
            path = await converted(
                plan, ctx.db_path.parent / PLAYBACK_CACHE, client_gone=client_gone
            )
        except UnplayableMedia as exc:
            raise _unplayable(str(exc)) from None
        except MediaError as exc:
            raise http_error(404, str(exc)) from None
    return web.FileResponse(
        path, headers={"Content-Type": plan.content_type, "Cache-Control": "no-store"}
    )


#: the folder (next to the index database) of segments converted to MP4 for playback
PLAYBACK_CACHE: Final = "playback-cache"


def _unplayable(message: str) -> web.HTTPException:
    """415 ``{"error": message}``: the file is there but no browser could play it."""
    return web.HTTPUnsupportedMediaType(
        text=json.dumps({"error": message}, ensure_ascii=False), content_type="application/json"
    )


async def list_gaps(request: web.Request) -> web.Response:
    """Gaps (camera lost, from, to, reason)."""
    gaps = await _ctx(request).index.gaps(
        camera=request.query.get("camera") or None, since_ms=_int_arg(request, "since")
    )
    return web.json_response(
        {
            "gaps": [
                {
                    "id": g.id,
                    "camera": g.camera,
                    "venue": g.venue,
                    "from_ms": g.from_ms,
                    "to_ms": g.to_ms,
                    "reason": g.reason,
                }
                for g in gaps
            ]
        }
    )


async def recorder_status(request: web.Request) -> web.Response:
    """Each camera's state and health figures."""
    recorder = _ctx(request).recorder
    return web.json_response({"cameras": recorder.status() if recorder else []})


async def verify(request: web.Request) -> web.Response:
    """Re-hash the recordings (``camera`` or ``session`` narrows it) and report what changed."""
    ctx = _ctx(request)
    camera = request.query.get("camera") or None
    session = request.query.get("session") or None
    report = await asyncio.to_thread(
        lambda: verify_recordings(
            ctx.db_path, ctx.index.storage_root, camera=camera, session_id=session
        )
    )
    log.info("verify by=%s ok=%s camera=%s session=%s", _user(request), report.ok, camera, session)
    return web.json_response(report.to_json())


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/api/v1/hearings", list_hearings, HEARING_READERS),
    Route("POST", "/api/v1/hearings", open_hearing, HEARING_WRITERS),
    Route("POST", "/api/v1/hearings/{id}/start", start_hearing, HEARING_WRITERS),
    Route("POST", "/api/v1/hearings/{id}/recess", recess_hearing, HEARING_WRITERS),
    Route("POST", "/api/v1/hearings/{id}/resume", resume_hearing, HEARING_WRITERS),
    Route("GET", "/api/v1/hearings/{id}/events", hearing_events, HEARING_READERS),
    Route("POST", "/api/v1/hearings/{id}/close", close_hearing, HEARING_WRITERS),
    Route("POST", "/api/v1/hearings/{id}/hold", hold_hearing, HOLDERS),
    Route("POST", "/api/v1/hearings/{id}/seal", seal_hearing, HEARING_WRITERS),
    Route("GET", "/api/v1/hearings/{id}/export", export_hearing, HEARING_WRITERS),
    Route("GET", "/api/v1/recordings/segments", list_segments, HEARING_READERS),
    Route("GET", "/api/v1/recordings/segments/{id}/media", segment_media, HEARING_WRITERS),
    Route("GET", "/api/v1/recordings/gaps", list_gaps, HEARING_READERS),
    Route("GET", "/api/v1/recordings/status", recorder_status, WATCHERS),
    Route("POST", "/api/v1/recordings/verify", verify, VERIFIERS),
)
