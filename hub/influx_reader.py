"""The technician's charts read from InfluxDB over InfluxQL (``[telemetry] charts = "influxdb"``).

:class:`InfluxQLReader` is a :class:`~hub.telemetry_points.TelemetryReader` that sends InfluxQL to
``/query`` (HTTP GET, ``db``, ``rp``, ``q``, ``epoch=ms``). InfluxQL rather than Flux because it
is what every server the sink may write to answers: InfluxDB 1.x (Debian ships 1.6.7, the version
the tests run), 1.8+, and 2.x through its v1 compatibility API, which needs a DBRP mapping from
the database name (``database``, default the bucket) to the bucket and takes ``Authorization:
Token …``. VictoriaMetrics accepts the sink's writes but answers no InfluxQL: with it, keep the
charts on the embedded store.

The points are the sink's (:mod:`hub.influx_sink`): measurement ``device``, tags agent, device,
venue, kind, one field per metric, floats. Reads match the embedded store
(:class:`hub.embedded_tsdb.EmbeddedStore`): all series of one agent/device merged (a device that
moved venue keeps its history), ``[start_ms, end_ms]`` inclusive, raw points when there are no
more than ``max_points``, else buckets of ``ceil((end - start + 1) / max_points)`` ms starting
at ``start_ms`` with mean, min and max. Unlike the embedded store there is no switch to 1-minute
rollups for long or old ranges: InfluxDB keeps raw points as long as its retention policy, and
aggregates them itself.

Names and values in a query are quoted, never pasted: identifiers in double quotes, tag values in
single quotes, each with its quote and backslash escaped (:func:`quote_ident`,
:func:`quote_string`), so a hostile metric or agent name is only ever a name.

A failed read (server down or timing out, 401/403, unknown database, an InfluxQL error) raises
:class:`~hub.telemetry_points.TelemetryReadError` with a message for the technician (never the
token) and is counted (:meth:`InfluxQLReader.stats`); the telemetry API answers it with 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp

from hub.telemetry_config import InfluxSection
from hub.telemetry_points import SeriesPoint, TelemetryReadError

log = logging.getLogger(__name__)

MEASUREMENT: Final = "device"
#: how far back :meth:`InfluxQLReader.metric_names` looks for a device's fields: the longest
#: chart range (``7d`` in dashboards/telemetry_api.py); a field with no point in it draws nothing
NAMES_LOOKBACK_MS: Final = 7 * 86_400_000


def quote_ident(name: str) -> str:
    """An InfluxQL identifier (measurement, field, tag key) in double quotes."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """An InfluxQL string literal (a tag value) in single quotes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxQLReader:
    """Chart reader over InfluxQL; see the module doc. Call :meth:`close` when done.

    ``clock`` (seconds, like :func:`time.time`) sets "now" for the metric-name look-back.
    """

    def __init__(
        self,
        section: InfluxSection,
        *,
        clock: Callable[[], float] = time.time,
        names_lookback_ms: int = NAMES_LOOKBACK_MS,
    ) -> None:
        """Nothing is opened until the first read."""
        if not section.effective_query_url:
            raise ValueError("InfluxQLReader needs [telemetry.influxdb] url or query_url")
        self.section = section
        self.query_url = section.effective_query_url.rstrip("/") + "/query"
        self.database = section.effective_database
        self._clock = clock
        self._names_lookback_ms = names_lookback_ms
        self._session: aiohttp.ClientSession | None = None
        # None: not read yet (or to be re-read after a 401/403)
        self._token: str | None = None
        self._reads = 0
        self._failed_reads = 0
        self._last_error = ""

    async def close(self) -> None:
        """Close the HTTP session (reads after this open a new one)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def stats(self) -> Mapping[str, float]:
        """Counters: ``reads`` (queries sent), ``failed_reads``."""
        return {"reads": self._reads, "failed_reads": self._failed_reads}

    # TelemetryReader ----------------------------------------------------------------------------
    async def metric_names(self, agent: str, device: str) -> list[str]:
        """The fields the device has a point of in the last :data:`NAMES_LOOKBACK_MS`, sorted.

        One query, ``SELECT last(*)``: its columns are every field of the measurement
        (``last_<field>``) and a field the device never wrote comes back null, so the non-null
        columns are exactly the device's fields. ``SHOW FIELD KEYS`` cannot be filtered by tag
        (it lists every device's fields), and one query per field would cost N round trips on
        every chart load. The time bound keeps the scan to the newest shards.
        """
        since = int(self._clock() * 1000) - self._names_lookback_ms
        q = (
            f"SELECT last(*) FROM {quote_ident(MEASUREMENT)} WHERE {_device_filter(agent, device)}"
            f" AND time >= {since}ms"
        )
        names = []
        for series in await self._query(q):
            columns = series.get("columns") or []
            for row in series.get("values") or []:
                for column, value in zip(columns, row, strict=False):
                    if column.startswith("last_") and value is not None:
                        names.append(column.removeprefix("last_"))
        return sorted(set(names))

    async def series(
        self,
        agent: str,
        device: str,
        metric: str,
        *,
        start_ms: int,
        end_ms: int,
        max_points: int = 500,
    ) -> list[SeriesPoint]:
        """``metric`` of one device in ``[start_ms, end_ms]``, oldest first, at most
        ``max_points`` points: the raw points when there are no more, else
        ``GROUP BY time(step, offset)`` buckets aligned on ``start_ms`` (``ts_ms`` = bucket
        start; mean, min, max)."""
        _check_window(start_ms, end_ms, max_points)
        if end_ms < start_ms:
            return []
        field = quote_ident(metric)
        where = f"{_device_filter(agent, device)} AND time >= {start_ms}ms AND time <= {end_ms}ms"
        source = quote_ident(MEASUREMENT)
        # one more row than fits tells whether to bucket (as the embedded store decides)
        raw = await self._query(
            f"SELECT {field} FROM {source} WHERE {where} ORDER BY time ASC LIMIT {max_points + 1}"
        )
        rows = [(int(ts), float(v)) for ts, v in _values(raw) if v is not None]
        if len(rows) <= max_points:
            return [SeriesPoint(ts, v, v, v) for ts, v in rows]
        step = -(-(end_ms - start_ms + 1) // max_points)
        buckets = await self._query(
            f"SELECT mean({field}), min({field}), max({field}) FROM {source} WHERE {where}"
            f" GROUP BY time({step}ms, {start_ms % step}ms) fill(none)"
        )
        return [
            SeriesPoint(int(ts), float(avg), float(lo), float(hi))
            for ts, avg, lo, hi in _values(buckets)
            if avg is not None and lo is not None and hi is not None
        ]

    # HTTP ---------------------------------------------------------------------------------------
    async def _query(self, q: str) -> list[dict[str, Any]]:
        """The series of one InfluxQL statement's result; TelemetryReadError when it fails."""
        self._reads += 1
        try:
            series = await self._send(q)
        except TelemetryReadError as exc:
            self._failed_reads += 1
            message = str(exc)
            if message != self._last_error:  # once per distinct error, not per chart
                log.warning("influxdb chart read failed url=%s error=%s", self.query_url, message)
            self._last_error = message
            raise
        if self._last_error:
            log.info("influxdb chart reads recovered url=%s", self.query_url)
            self._last_error = ""
        return series

    async def _send(self, q: str) -> list[dict[str, Any]]:
        params = {"db": self.database, "q": q, "epoch": "ms"}
        if self.section.retention_policy:
            params["rp"] = self.section.retention_policy
        headers = {"Accept": "application/json"}
        token = await self._read_token()
        if token:
            headers["Authorization"] = f"Token {token}"
        where = f"InfluxDB at {self.query_url}"
        try:
            async with self._client().get(self.query_url, params=params, headers=headers) as r:
                if r.status in (401, 403):
                    self._token = None  # re-read: the token file may have been fixed
                    raise TelemetryReadError(f"{where} refused the token ({r.status})")
                text = await r.text()
                if r.status != 200:
                    raise TelemetryReadError(f"{where} answered {r.status}: {_error_of(text)}")
                body = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            raise TelemetryReadError(f"{where} is unreachable: {reason}") from None
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list) or not results:
            raise TelemetryReadError(f"{where} sent an answer without results")
        result = results[0]
        if "error" in result:
            raise TelemetryReadError(f"{where}: {result['error']}")
        series = result.get("series") or []
        return [s for s in series if isinstance(s, dict)]

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.section.timeout_s)
            )
        return self._session

    async def _read_token(self) -> str:
        if not self.section.token_file:
            return ""
        if self._token is None:
            try:
                self._token = await asyncio.to_thread(_read_text, Path(self.section.token_file))
            except OSError as exc:
                raise TelemetryReadError(
                    f"InfluxDB token_file {self.section.token_file} unreadable: "
                    f"{exc.strerror or exc}"
                ) from None
        return self._token


def _device_filter(agent: str, device: str) -> str:
    return f"{quote_ident('agent')} = {quote_string(agent)} AND " + (
        f"{quote_ident('device')} = {quote_string(device)}"
    )


def _check_window(start_ms: int, end_ms: int, max_points: int) -> None:
    # the same checks as the embedded store's chart queries
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, not {max_points}")
    if not (isinstance(start_ms, int) and isinstance(end_ms, int)):
        raise ValueError("start_ms and end_ms must be integer UTC milliseconds")


def _values(series: list[dict[str, Any]]) -> list[list[Any]]:
    """The rows of every series, oldest first (one series: no GROUP BY tag)."""
    rows: list[list[Any]] = []
    for s in series:
        rows.extend(row for row in s.get("values") or [] if isinstance(row, list))
    rows.sort(key=lambda row: row[0])
    return rows


def _error_of(text: str) -> str:
    """The ``error`` of an InfluxDB error body (short), else the start of the text."""
    try:
        body = json.loads(text)
    except ValueError:
        return text[:200]
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])[:200]
    return text[:200]


def _read_text(path: Path) -> str:
    return path.read_text().strip()
