"""JSON API of hearing transcripts: read, correct, annotate (judge, clerk; admin reads).

| route                                                  | roles                 |
|--------------------------------------------------------|-----------------------|
| ``GET  /api/v1/hearings/{id}/transcript``              | judge, clerk, admin   |
| ``GET  /api/v1/hearings/{id}/transcript/{fmt}``        | judge, clerk, admin   |
| ``POST /api/v1/hearings/{id}/notes``                   | judge, clerk          |
| ``POST /api/v1/transcript/segments/{segment}/revise``  | judge, clerk          |
| ``GET  /api/v1/transcription``                         | judge, clerk, admin, technician |

``GET …/transcript?after=N`` returns only segments with id > N (a page that missed live
messages catches up). A correction keeps the machine text (``revisions``); a sealed hearing is
read-only (409). Live partial and final segments — and each correction, as
``{"type": "revision", "hearing", "segment"}`` — go out on the console's WebSocket topic
``transcript`` (:mod:`dashboards.live`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiohttp import web

from dashboards.auth import PRINCIPAL_KEY, Role
from dashboards.live import LIVE_KEY, Topic
from dashboards.routes import Route
from dashboards.sessions import http_error, read_json_body
from hub.hearing_record import build_transcript
from hub.hearings import HearingService
from hub.live_transcriber import LiveTranscriber
from hub.transcript_store import TranscriptError, TranscriptStore
from transcription.exports import render


@dataclass(frozen=True)
class TranscriptContext:
    """What the transcript API serves from (set by the hub in the console's ``setup``)."""

    store: TranscriptStore
    hearings: HearingService
    transcriber: LiveTranscriber | None
    #: the court's zone, for the local times of the text and court layouts
    timezone: str = "Asia/Shanghai"


TRANSCRIPT_KEY: Final = web.AppKey("transcripts", TranscriptContext)

READERS: Final = frozenset({Role.JUDGE, Role.CLERK, Role.ADMIN})
WRITERS: Final = frozenset({Role.JUDGE, Role.CLERK})
WATCHERS: Final = frozenset({Role.JUDGE, Role.CLERK, Role.ADMIN, Role.TECHNICIAN})


def _ctx(request: web.Request) -> TranscriptContext:
    ctx = request.config_dict.get(TRANSCRIPT_KEY)
    if ctx is None:
        raise web.HTTPServiceUnavailable(
            text='{"error": "transcripts not available"}', content_type="application/json"
        )
    return ctx


def _hearing_id(request: web.Request, ctx: TranscriptContext) -> str:
    hearing_id = request.match_info["id"]
    if ctx.hearings.get(hearing_id) is None:
        raise http_error(404, f"no hearing {hearing_id}")
    return hearing_id


async def get_transcript(request: web.Request) -> web.Response:
    """Segments (current text, machine text, revisions, words) and notes of a hearing."""
    ctx = _ctx(request)
    hearing_id = _hearing_id(request, ctx)
    try:
        after = int(request.query.get("after", "0") or 0)
    except ValueError:
        raise http_error(400, "after must be a segment id") from None
    segments = await ctx.store.segments(hearing_id, after_id=after)
    notes = await ctx.store.notes(hearing_id)
    return web.json_response(
        {
            "hearing": hearing_id,
            "read_only": ctx.hearings.is_read_only(hearing_id),
            "segments": [s.to_json() for s in segments],
            "notes": [n.to_json() for n in notes],
        }
    )


#: export format → (media type, file suffix)
_EXPORTS: Final = {
    "srt": ("application/x-subrip", "srt"),
    "vtt": ("text/vtt", "vtt"),
    "txt": ("text/plain", "txt"),
    "json": ("application/json", "json"),
    "court": ("text/plain", "court.txt"),
}


async def export_transcript(request: web.Request) -> web.Response:
    """The transcript as SRT, WebVTT, text, JSON or the court layout (current texts)."""
    ctx = _ctx(request)
    hearing_id = _hearing_id(request, ctx)
    fmt = request.match_info["fmt"]
    if fmt not in _EXPORTS:
        raise http_error(404, f"unknown format {fmt!r}; one of {', '.join(_EXPORTS)}")
    hearing = ctx.hearings.get(hearing_id)
    assert hearing is not None
    transcript = await build_transcript(ctx.store, ctx.hearings, hearing)
    text = render(transcript, fmt, tz=ctx.timezone)
    media, suffix = _EXPORTS[fmt]
    return web.Response(
        text=text,
        content_type=media,
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{hearing_id}.{suffix}"'},
    )


async def add_note(request: web.Request) -> web.Response:
    """``{"ts_ms": <hearing time>, "text": "…"}`` → the note (201)."""
    ctx = _ctx(request)
    hearing_id = _hearing_id(request, ctx)
    if ctx.hearings.is_read_only(hearing_id):
        raise http_error(409, f"hearing {hearing_id} is sealed: its record is read-only")
    body = await read_json_body(request)
    ts_ms = body.get("ts_ms")
    if not isinstance(ts_ms, int) or isinstance(ts_ms, bool):
        raise http_error(400, "ts_ms must be UTC milliseconds")
    try:
        note = await ctx.store.add_note(
            hearing_id,
            ts_ms=ts_ms,
            author=request[PRINCIPAL_KEY].name,
            text=str(body.get("text", "")),
        )
    except TranscriptError as exc:
        raise http_error(400, str(exc)) from None
    return web.json_response(note.to_json(), status=201)


async def revise_segment(request: web.Request) -> web.Response:
    """``{"text": "…"}``: a clerk's correction, kept beside the machine text."""
    ctx = _ctx(request)
    try:
        segment_id = int(request.match_info["segment"])
    except ValueError:
        raise http_error(404, "no such segment") from None
    segment = await ctx.store.segment(segment_id)
    if segment is None:
        raise http_error(404, f"no transcript segment {segment_id}")
    if ctx.hearings.is_read_only(segment.hearing):
        raise http_error(409, f"hearing {segment.hearing} is sealed: its record is read-only")
    body = await read_json_body(request)
    try:
        revised = await ctx.store.revise(
            segment_id, str(body.get("text", "")), by=request[PRINCIPAL_KEY].name
        )
    except TranscriptError as exc:
        raise http_error(400, str(exc)) from None
    live = request.app.get(LIVE_KEY)
    if live is not None:  # other open pages show the correction at once
        message = {"type": "revision", "hearing": revised.hearing, "segment": revised.to_json()}
        live.publish(Topic.TRANSCRIPT, message)
    return web.json_response(revised.to_json())


async def transcription_status(request: web.Request) -> web.Response:
    """Whether live transcription runs (model loaded), its counters and per-seat RTF."""
    transcriber = _ctx(request).transcriber
    if transcriber is None:
        return web.json_response({"running": False, "error": "not configured"})
    return web.json_response(transcriber.stats())


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/api/v1/hearings/{id}/transcript", get_transcript, READERS),
    Route("GET", "/api/v1/hearings/{id}/transcript/{fmt}", export_transcript, READERS),
    Route("POST", "/api/v1/hearings/{id}/notes", add_note, WRITERS),
    Route("POST", "/api/v1/transcript/segments/{segment}/revise", revise_segment, WRITERS),
    Route("GET", "/api/v1/transcription", transcription_status, WATCHERS),
)
