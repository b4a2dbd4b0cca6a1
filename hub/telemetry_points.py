"""Telemetry points and the interfaces every telemetry sink and reader implements.

Data flow (issue 7)::

    MQTT telemetry ─► HubService ─► TelemetryPipeline ─► sinks: EmbeddedStore (SQLite, default)
    hub internals  ─┘  (registry      (hub/telemetry_     └──► InfluxSink (InfluxDB 2.x / 1.8 /
    device health  ─┘   listeners)     pipeline.py)             VictoriaMetrics) + durable spool

A :class:`Point` is one sample of one source at one time: ``measurement`` names what it is
(``device`` for a device's own metrics, ``device_health`` for the hub's view of it, ``hub`` for
the hub's internals), ``tags`` say whose it is (agent, device, venue, kind), ``fields`` carry the
numbers. Fields are numbers only: string states become tags or numeric codes
(:data:`HEALTH_CODES`), because VictoriaMetrics and some InfluxDB set-ups store non-numeric fields
as 0.

Sinks never block the caller and never raise from :meth:`TelemetrySink.write`: a point they cannot
keep is counted (``dropped``), logged, and the hub runs on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol

#: a device's health as a number (``device_health`` measurement, field ``state_code``)
HEALTH_CODES: Mapping[str, int] = {"offline": 0, "online": 1, "stale": 2, "fault": 3}

#: tag keys every device point carries, in this order
DEVICE_TAGS = ("agent", "device", "venue", "kind")

#: line templates :func:`to_lines` keeps at most: one per series (measurement, tags and field
#: names), a few per device; beyond it the cache starts afresh (memory stays bounded, ~3 MB)
LINE_TEMPLATES_MAX: Final = 4096


class Point(NamedTuple):
    """One sample: ``measurement,tags fields ts_ms``. Tags are sorted by key (line protocol
    wants that for fast ingest, and it makes equal points compare equal).

    A named tuple rather than a frozen dataclass: the hub builds one per telemetry message on
    its event loop, and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per
    field) cost a quarter of the loop at 12k msg/s (py-spy, bench telemetry).
    """

    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: Mapping[str, float]
    ts_ms: int

    @staticmethod
    def make(
        measurement: str, tags: Mapping[str, str], fields: Mapping[str, float], ts_ms: int
    ) -> Point:
        """A point with sorted tags, empty tag values left out (line protocol forbids them)."""
        return Point(measurement, sort_tags(tags), fields, ts_ms)

    def tag(self, key: str) -> str:
        """The value of tag ``key`` ('' when absent)."""
        for k, v in self.tags:
            if k == key:
                return v
        return ""

    def to_line(self) -> str:
        """InfluxDB line protocol, millisecond precision; non-finite fields are left out.

        Returns '' when no field is left (a line without fields is invalid).
        """
        fields = ",".join(
            f"{_escape_key(k)}={_number(v)}" for k, v in self.fields.items() if math.isfinite(v)
        )
        if not fields:
            return ""
        head = _escape_measurement(self.measurement)
        if self.tags:
            head += "," + ",".join(f"{_escape_key(k)}={_escape_key(v)}" for k, v in self.tags)
        return f"{head} {fields} {self.ts_ms}"


def sort_tags(tags: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Tags as :attr:`Point.tags` wants them: sorted by key, empty values left out."""
    return tuple(sorted((k, v) for k, v in tags.items() if v))


def to_lines(points: Sequence[Point]) -> str:
    """Points as line protocol, one per line (points without finite fields skipped).

    The same text as joining :meth:`Point.to_line`, at under half its cost: escaping the tags
    and field names is done once per series (:class:`LineTemplates`), so a point costs one
    ``%`` format of its values and time. This is the InfluxDB sink's hot path (py-spy, bench
    telemetry: per-point escaping was ~40 % of the sink process's ~17 µs CPU per point).
    """
    templates = _TEMPLATES
    lines: list[str] = []
    append = lines.append
    isfinite = math.isfinite
    for point in points:
        measurement, tags, fields, ts_ms = point
        try:
            template = templates.get(measurement, tags, fields)
            values = fields.values()
            # one finiteness test for all values: a sum is finite only if every value is (an
            # overflowing sum of finite values just takes the slow path, which is exact)
            if template and isfinite(sum(values)):
                append(template % (*map(float, values), ts_ms))
                continue
        except (TypeError, ValueError, OverflowError):
            pass  # not the usual shape (unhashable tags, odd values): to_line decides
        if line := point.to_line():
            append(line)
    return "\n".join(lines)


class LineTemplates:
    """Line protocol templates by series: ``measurement,tags k1=%r,…,kN=%r %s`` for each
    distinct ``(measurement, tags, field names in order)``, escaped as :meth:`Point.to_line`
    escapes them (with ``%`` doubled for the format). ``''`` for a point without fields.

    Bounded: at ``max_entries`` the cache starts afresh, so an unbounded stream of distinct
    series costs the escaping again but never memory. Safe to share between threads (the
    sink's sender and spooler): a lost race only escapes a series twice.
    """

    def __init__(self, max_entries: int = LINE_TEMPLATES_MAX) -> None:
        """``max_entries`` ≥ 1: templates kept at most."""
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._by_series: dict[tuple[object, ...], str] = {}

    def __len__(self) -> int:
        return len(self._by_series)

    def get(
        self, measurement: str, tags: tuple[tuple[str, str], ...], fields: Mapping[str, float]
    ) -> str:
        """The template for this series and these field names (built on first use)."""
        key = (measurement, tags, *fields)
        template = self._by_series.get(key)
        if template is None:
            template = _template(measurement, tags, fields)
            if len(self._by_series) >= self.max_entries:
                self._by_series.clear()
            self._by_series[key] = template
        return template


def _template(
    measurement: str, tags: tuple[tuple[str, str], ...], fields: Mapping[str, float]
) -> str:
    if not fields:
        return ""
    head = _escape_measurement(measurement)
    if tags:
        head += "," + ",".join(f"{_escape_key(k)}={_escape_key(v)}" for k, v in tags)
    names = ",".join(_escape_key(k).replace("%", "%%") + "=%r" for k in fields)
    return head.replace("%", "%%") + " " + names + " %s"


def _number(value: float) -> str:
    # floats for every field: InfluxDB refuses a field that changes type (int 1 then float 1.5)
    return repr(float(value))


def _escape_key(text: str) -> str:
    # line protocol has no escape for a newline (it ends the line): it becomes a visible \n
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text.replace("\\", "\\\\").replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def _escape_measurement(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", r"\,").replace(" ", r"\ ")


#: the shared template cache of :func:`to_lines`
_TEMPLATES = LineTemplates()


class TelemetrySink(Protocol):
    """Where points go (embedded SQLite store, InfluxDB). One instance per configured sink."""

    name: str

    async def start(self) -> None:
        """Open files / connections; replay anything spooled from an earlier run."""

    def write(self, points: Sequence[Point]) -> None:
        """Queue points; never blocks the loop, never raises (counts and logs what it drops)."""

    async def flush(self) -> None:
        """Write everything queued so far (or spool it durably when the server is away)."""

    async def stop(self) -> None:
        """Flush and close; nothing queued is lost (spooled at worst)."""

    def stats(self) -> Mapping[str, float]:
        """Counters for /metrics and the technician: written, queued, spooled, dropped, errors."""


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One value of a chart series (an average over ``step`` when downsampled)."""

    ts_ms: int
    value: float
    min: float
    max: float


class TelemetryReadError(RuntimeError):
    """A chart read that failed for a reason outside the caller's control (the InfluxDB server
    is down, refuses the token, lacks the database). The message says which and is safe to
    show a technician (no token). The telemetry API answers it with 503."""


class TelemetryReader(Protocol):
    """What the technician's charts read (the embedded store; InfluxDB when configured:
    :class:`hub.influx_reader.InfluxQLReader`). Both methods may raise
    :class:`TelemetryReadError`."""

    async def metric_names(self, agent: str, device: str) -> list[str]:
        """The field names stored for one device (``device`` measurement), sorted."""

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
        """``metric`` of one device between the two times, oldest first, at most
        ``max_points`` points (bucketed: average, min, max per bucket)."""
