"""The technician's telemetry API: a device's stored metrics as chart series, and its health as a
state timeline.

| route                                                   | roles             |
|---------------------------------------------------------|-------------------|
| ``GET /api/v1/telemetry/{agent}/{device}/metrics``      | admin, technician |
| ``GET /api/v1/telemetry/{agent}/{device}/series``       | admin, technician |
| ``GET /api/v1/telemetry/{agent}/{device}/states``       | admin, technician |
| ``GET /api/v1/telemetry/venue/{venue}/metrics``         | admin, technician |
| ``GET /api/v1/telemetry/venue/{venue}/series``          | admin, technician |

``series`` takes ``metric=`` (a field name the device has stored) and ``range=`` (``15m``, ``6h``
or ``7d``, default ``15m``) and answers at most :data:`MAX_POINTS` points ``{ts, avg, min, max}``,
oldest first (the reader buckets them). ``states`` answers the device's health over the range as
segments ``{state, reason, start_ms, end_ms}`` built from :meth:`HubService.device_transitions`
(``unknown`` where the hub has no record). The venue routes answer one series per device of the
venue (venue id as the technician page groups devices; ``agent:<id>`` for an agent without one).

A bad ``range`` or ``metric`` is a 400 that says what is allowed, an unknown device or venue a
404, and without a telemetry store (:data:`TELEMETRY_KEY` unset) the series routes answer 503;
so do they when the store fails a read (:class:`~hub.telemetry_points.TelemetryReadError`: the
InfluxDB server is down, say), with what failed in ``error``.
The points come from a :class:`hub.telemetry_points.TelemetryReader` (the embedded SQLite store,
or InfluxDB when configured); :func:`install_telemetry` puts it on the app.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from aiohttp import web

from dashboards.api import SERVICE_KEY
from dashboards.auth import Role
from dashboards.pages_technician import venue_key
from dashboards.routes import Route
from dashboards.sessions import http_error
from hub.registry import DeviceRecord, Registry, StateLogEntry
from hub.service import HubService
from hub.telemetry_points import SeriesPoint, TelemetryReader, TelemetryReadError
from protocol.messages import now_ms

log = logging.getLogger(__name__)

TELEMETRY_ROLES: Final = frozenset({Role.ADMIN, Role.TECHNICIAN})
#: the chart ranges a technician picks from, and their length
RANGES: Final[Mapping[str, int]] = MappingProxyType(
    {"15m": 15 * 60_000, "6h": 6 * 3_600_000, "7d": 7 * 86_400_000}
)
DEFAULT_RANGE: Final = "15m"
#: points per series at most (a chart 1000 px wide shows no more)
MAX_POINTS: Final = 500
#: how far before a range the state log is read to know the state the range starts in
STATE_LOOKBACK_MS: Final = 7 * 86_400_000
#: transitions read per timeline at most (a device flapping every minute for two weeks)
MAX_TRANSITIONS: Final = 20_000
#: a field name as drivers report them (``temperature_c``, ``disk.free_pct``)
METRIC_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")
#: the state where the hub has no record (before the first transition it kept)
UNKNOWN: Final = "unknown"


class _Reader:
    """Holder of the reader on the app (an app key needs a concrete type)."""

    __slots__ = ("reader",)

    def __init__(self, reader: TelemetryReader) -> None:
        self.reader = reader


TELEMETRY_KEY: Final = web.AppKey("telemetry_reader", _Reader)


def install_telemetry(app: web.Application, reader: TelemetryReader) -> None:
    """Serve ``reader``'s points on ``app`` (call in the console's ``setup``)."""
    app[TELEMETRY_KEY] = _Reader(reader)


def telemetry_reader(request: web.Request) -> TelemetryReader | None:
    """The app's telemetry reader, None when the hub keeps no telemetry."""
    holder = request.config_dict.get(TELEMETRY_KEY)
    return holder.reader if holder is not None else None


# parameters -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A chart range ending now."""

    name: str
    start_ms: int
    end_ms: int

    @classmethod
    def parse(cls, value: str | None, end_ms: int) -> TimeRange:
        """``15m`` / ``6h`` / ``7d`` (default ``15m``) ending at ``end_ms``; ValueError otherwise."""
        name = value or DEFAULT_RANGE
        length = RANGES.get(name)
        if length is None:
            raise ValueError(f"bad range {name!r}: use one of {', '.join(RANGES)}")
        return cls(name, end_ms - length, end_ms)


def parse_metric(value: str | None) -> str:
    """A metric name from the query; ValueError when missing or malformed."""
    if not value:
        raise ValueError("missing metric: add ?metric=<name> (GET .../metrics lists them)")
    if not METRIC_NAME.fullmatch(value):
        raise ValueError(f"bad metric name {value[:64]!r}: letters, digits and _ . : - only")
    return value


def _time_range(request: web.Request) -> TimeRange:
    try:
        return TimeRange.parse(request.query.get("range"), now_ms())
    except ValueError as exc:
        raise http_error(400, str(exc)) from None


def _metric(request: web.Request) -> str:
    try:
        return parse_metric(request.query.get("metric"))
    except ValueError as exc:
        raise http_error(400, str(exc)) from None


def _reader(request: web.Request) -> TelemetryReader:
    reader = telemetry_reader(request)
    if reader is None:
        raise web.HTTPServiceUnavailable(
            text=json.dumps({"error": "the hub keeps no telemetry (no telemetry store)"}),
            content_type="application/json",
        )
    return reader


def _answers_503_when_reads_fail(
    handler: Callable[[web.Request], Awaitable[web.Response]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``handler``, answering a failed telemetry read with 503 and what failed."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except TelemetryReadError as exc:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": f"telemetry store unavailable: {exc}"}),
                content_type="application/json",
            ) from None

    return wrapped


def _device(request: web.Request) -> DeviceRecord:
    agent, device = request.match_info["agent"], request.match_info["device"]
    record = request.app[SERVICE_KEY].registry.device(agent, device)
    if record is None:
        raise http_error(404, f"no device {agent}/{device}")
    return record


# venues -----------------------------------------------------------------------------------------


def venue_devices(registry: Registry, venue: str) -> list[DeviceRecord]:
    """The devices of ``venue`` (as the technician page groups them), by agent then id."""
    return [
        device
        for agent in sorted(registry.agents(), key=lambda a: a.id)
        if venue_key(agent) == venue
        for device in registry.devices_of(agent.id)
    ]


def venue_name(registry: Registry, venue: str) -> str | None:
    """The display name of ``venue``; None when no agent is in it."""
    for agent in registry.agents():
        if venue_key(agent) == venue:
            return agent.venue_name or agent.venue_id or agent.id
    return None


def _venue(request: web.Request) -> tuple[str, list[DeviceRecord]]:
    venue = request.match_info["venue"]
    registry = request.app[SERVICE_KEY].registry
    if venue_name(registry, venue) is None:
        raise http_error(404, f"no venue {venue}")
    return venue, venue_devices(registry, venue)


async def venue_metric_names(reader: TelemetryReader, devices: Sequence[DeviceRecord]) -> list[str]:
    """Every metric any of ``devices`` has stored, sorted."""
    names = await asyncio.gather(*(reader.metric_names(d.agent, d.id) for d in devices))
    return sorted({name for some in names for name in some})


# state timeline ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateSegment:
    """One stretch of a device's health."""

    state: str
    reason: str
    start_ms: int
    end_ms: int

    def to_json(self) -> dict[str, Any]:
        """The segment for the API."""
        return {
            "state": self.state,
            "reason": self.reason,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
        }


def state_segments(
    transitions: Sequence[StateLogEntry],
    *,
    start_ms: int,
    end_ms: int,
    current: DeviceRecord | None = None,
) -> list[StateSegment]:
    """The device's health between ``start_ms`` and ``end_ms`` as back-to-back segments.

    ``transitions`` are oldest first and may begin before ``start_ms`` (the last one before it
    gives the state the range starts in). Without any, the registry's ``current`` state covers
    the range from its ``state_since_ms``. What no record covers is ``unknown``; consecutive
    transitions to the same state (a new reason) merge into one segment with the first reason.
    """
    if end_ms <= start_ms:
        return []
    before = [t for t in transitions if t.ts < start_ms]
    inside = [t for t in transitions if start_ms <= t.ts < end_ms]
    changes: list[tuple[int, str, str]] = []
    if before:
        changes.append((start_ms, before[-1].state.value, before[-1].reason))
    elif not inside and current is not None and current.state_since_ms < end_ms:
        since = max(start_ms, current.state_since_ms)
        changes.append((since, current.state.value, current.state_reason))
    changes.extend((t.ts, t.state.value, t.reason) for t in inside)
    if not changes or changes[0][0] > start_ms:
        changes.insert(0, (start_ms, UNKNOWN, ""))
    segments: list[StateSegment] = []
    for i, (ts, state, reason) in enumerate(changes):
        end = changes[i + 1][0] if i + 1 < len(changes) else end_ms
        if segments and segments[-1].state == state:
            last = segments[-1]
            segments[-1] = StateSegment(last.state, last.reason, last.start_ms, end)
        elif end > ts:
            segments.append(StateSegment(state, reason, ts, end))
        elif segments:  # a transition at the very same ms as the next: keep time contiguous
            continue
    return segments


async def device_timeline(
    service: HubService, device: DeviceRecord, span: TimeRange
) -> tuple[list[StateSegment], bool]:
    """The segments of ``device`` over ``span`` and whether the log was cut at the limit."""
    transitions = await service.device_transitions(
        device.agent,
        device.id,
        since_ms=span.start_ms - STATE_LOOKBACK_MS,
        limit=MAX_TRANSITIONS,
    )
    truncated = len(transitions) >= MAX_TRANSITIONS
    if truncated:
        log.warning(
            "state log cut agent=%s device=%s limit=%d", device.agent, device.id, MAX_TRANSITIONS
        )
    return state_segments(
        transitions, start_ms=span.start_ms, end_ms=span.end_ms, current=device
    ), truncated


# handlers ---------------------------------------------------------------------------------------


def points_json(points: Sequence[SeriesPoint]) -> list[dict[str, float | int]]:
    """Series points for the API: ``{ts, avg, min, max}``."""
    return [{"ts": p.ts_ms, "avg": p.value, "min": p.min, "max": p.max} for p in points]


def _json(body: Mapping[str, Any]) -> web.Response:
    return web.json_response(body, headers={"Cache-Control": "no-store"})


@_answers_503_when_reads_fail
async def device_metrics(request: web.Request) -> web.Response:
    """``GET /api/v1/telemetry/{agent}/{device}/metrics``: the metric names stored."""
    device = _device(request)
    names = await _reader(request).metric_names(device.agent, device.id)
    return _json({"agent": device.agent, "device": device.id, "metrics": names})


@_answers_503_when_reads_fail
async def device_series(request: web.Request) -> web.Response:
    """``GET /api/v1/telemetry/{agent}/{device}/series?metric=&range=``: one chart's points."""
    device = _device(request)
    metric = _metric(request)
    span = _time_range(request)
    reader = _reader(request)
    names = await reader.metric_names(device.agent, device.id)
    if metric not in names:
        known = ", ".join(names[:20]) or "none yet"
        raise http_error(400, f"unknown metric {metric!r} for {device.agent}/{device.id}: {known}")
    points = await reader.series(
        device.agent,
        device.id,
        metric,
        start_ms=span.start_ms,
        end_ms=span.end_ms,
        max_points=MAX_POINTS,
    )
    return _json(
        {
            "agent": device.agent,
            "device": device.id,
            "metric": metric,
            "range": span.name,
            "start_ms": span.start_ms,
            "end_ms": span.end_ms,
            "points": points_json(points),
        }
    )


async def device_states(request: web.Request) -> web.Response:
    """``GET /api/v1/telemetry/{agent}/{device}/states?range=``: the state timeline."""
    device = _device(request)
    span = _time_range(request)
    segments, truncated = await device_timeline(request.app[SERVICE_KEY], device, span)
    return _json(
        {
            "agent": device.agent,
            "device": device.id,
            "range": span.name,
            "start_ms": span.start_ms,
            "end_ms": span.end_ms,
            "state": device.state.value,
            "reason": device.state_reason,
            "since_ms": device.state_since_ms,
            "segments": [s.to_json() for s in segments],
            "truncated": truncated,
        }
    )


@_answers_503_when_reads_fail
async def venue_metrics(request: web.Request) -> web.Response:
    """``GET /api/v1/telemetry/venue/{venue}/metrics``: every metric a device of it stored."""
    venue, devices = _venue(request)
    names = await venue_metric_names(_reader(request), devices)
    return _json({"venue": venue, "metrics": names})


@_answers_503_when_reads_fail
async def venue_series(request: web.Request) -> web.Response:
    """``GET /api/v1/telemetry/venue/{venue}/series?metric=&range=``: one series per device of
    the venue that stored ``metric`` (an empty list when none did)."""
    venue, devices = _venue(request)
    metric = _metric(request)
    span = _time_range(request)
    reader = _reader(request)

    async def one(device: DeviceRecord) -> dict[str, Any] | None:
        if metric not in await reader.metric_names(device.agent, device.id):
            return None
        points = await reader.series(
            device.agent,
            device.id,
            metric,
            start_ms=span.start_ms,
            end_ms=span.end_ms,
            max_points=MAX_POINTS,
        )
        return {"agent": device.agent, "device": device.id, "points": points_json(points)}

    found = await asyncio.gather(*(one(d) for d in devices))
    return _json(
        {
            "venue": venue,
            "metric": metric,
            "range": span.name,
            "start_ms": span.start_ms,
            "end_ms": span.end_ms,
            "series": [s for s in found if s is not None],
        }
    )


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/api/v1/telemetry/venue/{venue}/metrics", venue_metrics, TELEMETRY_ROLES),
    Route("GET", "/api/v1/telemetry/venue/{venue}/series", venue_series, TELEMETRY_ROLES),
    Route("GET", "/api/v1/telemetry/{agent}/{device}/metrics", device_metrics, TELEMETRY_ROLES),
    Route("GET", "/api/v1/telemetry/{agent}/{device}/series", device_series, TELEMETRY_ROLES),
    Route("GET", "/api/v1/telemetry/{agent}/{device}/states", device_states, TELEMETRY_ROLES),
)
