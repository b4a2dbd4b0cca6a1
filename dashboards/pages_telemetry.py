"""The technician's telemetry pages: charts of a device's (or a venue's) stored metrics, its state
timeline and its alerts.

| route                                          | roles             |
|------------------------------------------------|-------------------|
| ``GET /technician/telemetry/{agent}/{device}`` | admin, technician |
| ``GET /technician/venue/{venue}``              | admin, technician |
| ``GET /static/vendor/chart.js/chart.min.js``   | admin, technician |

A device page draws one chart per metric (average line in a min–max band) over 15 min, 6 h or
7 d, a bar of online / stale / offline / fault stretches under it, and the alerts whose key or
source names the device; a venue page draws one line per device of the venue on each chart and a
state bar per device. ``static/telemetry.js`` reads :mod:`dashboards.telemetry_api` and
``GET /api/v1/alerts``, and refreshes every :data:`REFRESH_MS` on the 15 min range.

The charts are Chart.js 3.9.1 (MIT; Debian's ``libjs-chart.js``), vendored in
``dashboards/vendor/chartjs/`` with its licence and served by this module: the console's static
folder is flat and its files must not even name an outside address, which the library's banner
does. Nothing is loaded from outside the hub.

Wiring (the hub's ``console_app``): add ``*telemetry_api.ROUTES, *pages_telemetry.ROUTES`` to
``extra_routes`` and call :func:`install_telemetry_pages` in ``setup`` with the telemetry reader.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from dashboards.api import SERVICE_KEY
from dashboards.pages import RENDERER_KEY, add_security_headers
from dashboards.pages_technician import REASON_RULES, alerts_snapshot, reason_text
from dashboards.routes import Route
from dashboards.sessions import http_error
from dashboards.telemetry_api import (
    DEFAULT_RANGE,
    MAX_POINTS,
    RANGES,
    TELEMETRY_ROLES,
    install_telemetry,
    telemetry_reader,
    venue_devices,
    venue_metric_names,
    venue_name,
)
from hub.registry import DeviceRecord
from hub.telemetry_points import TelemetryReader, TelemetryReadError

log = logging.getLogger(__name__)

#: the vendored chart library (see the module docstring for why it is not under ``static/``)
CHART_JS: Final = Path(__file__).resolve().with_name("vendor") / "chartjs" / "chart.min.js"
CHART_JS_URL: Final = "/static/vendor/chart.js/chart.min.js"
#: how often the 15 min range redraws (longer ranges change too slowly to bother)
REFRESH_MS = 10_000
#: per range: redraw interval in ms (0: never)
REFRESH_BY_RANGE: Final = {"15m": REFRESH_MS, "6h": 60_000, "7d": 0}
#: alerts embedded for the first paint
ALERTS_URL: Final = "/api/v1/alerts"


def install_telemetry_pages(app: web.Application, reader: TelemetryReader) -> None:
    """Serve the telemetry pages and API on ``app`` from ``reader`` (call in ``setup``)."""
    install_telemetry(app, reader)


async def _names(read: Awaitable[list[str]]) -> list[str]:
    """The metric names ``read`` gives; none when the store fails (InfluxDB down): the page
    still shows the state timeline and alerts, which come from the hub itself."""
    try:
        return await read
    except TelemetryReadError as exc:
        log.warning("telemetry page without charts error=%s", exc)
        return []


def _device_json(device: DeviceRecord) -> dict[str, Any]:
    return {"agent": device.agent, "device": device.id, "kind": device.kind}


async def _page_config(
    request: web.Request, devices: list[DeviceRecord], metrics: list[str], mode: str
) -> dict[str, Any]:
    alerts = await alerts_snapshot(request)
    return {
        "mode": mode,
        "devices": [_device_json(d) for d in devices],
        "metrics": metrics,
        "ranges": list(RANGES),
        "range": DEFAULT_RANGE,
        "refresh_ms": {name: REFRESH_BY_RANGE.get(name, 0) for name in RANGES},
        "max_points": MAX_POINTS,
        "alerts_url": ALERTS_URL if alerts is not None else "",
        "alerts": alerts,
        "store": telemetry_reader(request) is not None,
        "reason_rules": REASON_RULES,
    }


async def device_page(request: web.Request) -> web.Response:
    """``GET /technician/telemetry/{agent}/{device}``: one device's charts."""
    service = request.app[SERVICE_KEY]
    agent_id, device_id = request.match_info["agent"], request.match_info["device"]
    device = service.registry.device(agent_id, device_id)
    if device is None:
        raise http_error(404, f"no device {agent_id}/{device_id}")
    agent = service.registry.agent(agent_id)
    reader = telemetry_reader(request)
    metrics = await _names(reader.metric_names(agent_id, device_id)) if reader is not None else []
    config = await _page_config(request, [device], metrics, "device")
    config["base"] = f"/api/v1/telemetry/{agent_id}/{device_id}"
    return request.app[RENDERER_KEY].render(
        request,
        "telemetry.html",
        page="telemetry",
        title_key="telemetry.title",
        heading=f"{device.id}",
        subtitle=" · ".join(
            x for x in (device.kind, device.model, agent.venue_name if agent else "", agent_id) if x
        ),
        device=device,
        devices=[device],
        reason_text=reason_text,
        config=config,
    )


async def venue_page(request: web.Request) -> web.Response:
    """``GET /technician/venue/{venue}``: every device of a venue on shared charts."""
    registry = request.app[SERVICE_KEY].registry
    venue = request.match_info["venue"]
    name = venue_name(registry, venue)
    if name is None:
        raise http_error(404, f"no venue {venue}")
    devices = venue_devices(registry, venue)
    reader = telemetry_reader(request)
    metrics = await _names(venue_metric_names(reader, devices)) if reader is not None else []
    config = await _page_config(request, devices, metrics, "venue")
    config["base"] = f"/api/v1/telemetry/venue/{venue}"
    config["venue"] = venue
    return request.app[RENDERER_KEY].render(
        request,
        "telemetry.html",
        page="telemetry",
        title_key="telemetry.venue_title",
        heading=name,
        subtitle=venue,
        device=None,
        devices=devices,
        reason_text=reason_text,
        config=config,
    )


async def chart_js(request: web.Request) -> web.StreamResponse:
    """The vendored Chart.js (revalidated on each load, like the console's other assets)."""
    if not CHART_JS.is_file():
        log.error("vendored chart library missing path=%s", CHART_JS)
        raise web.HTTPNotFound()
    response = web.FileResponse(
        CHART_JS,
        headers={"Content-Type": "text/javascript; charset=utf-8", "Cache-Control": "no-cache"},
    )
    add_security_headers(response)
    return response


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/technician/telemetry/{agent}/{device}", device_page, TELEMETRY_ROLES),
    Route("GET", "/technician/venue/{venue}", venue_page, TELEMETRY_ROLES),
    Route("GET", CHART_JS_URL, chart_js, TELEMETRY_ROLES),
)
