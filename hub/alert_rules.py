"""Alert rules (issue 7): conditions on device health and telemetry, pending → firing → resolved.

Configured in hub.toml (``[alerts]``, :class:`AlertsSection`)::

    [alerts]
    evaluate_interval_s = 5
    publish_mqtt = true             # fired alerts also on courthub/v1/hub/alerts

    [[alerts.rules]]
    name = "court-mic-silent"       # [a-z0-9][a-z0-9_-]*, unique; part of the alert key
    kind = "mic_silent"
    severity = "warning"            # info | warning | critical
    for_s = 120                     # the condition must hold this long before it fires
    threshold = -55                 # dBFS
    venue = "court-*"               # globs: agent, device, device_kind, venue (default "*")

When ``rules`` is not given at all, :data:`DEFAULT_RULES` apply; ``rules = []`` means no rules.

Rule kinds (``threshold`` default in brackets; device rules match ``agent``/``device``/
``device_kind``/``venue`` globs; metric rules skip devices that are offline or stale, whose
numbers are old):

| kind | subject | condition |
|---|---|---|
| ``device_offline`` | device | the hub's verdict is ``offline`` (``for_s`` counts from the state change) |
| ``heartbeat_age`` | device | not offline, and last seen ``threshold`` s ago or longer [120] |
| ``fps_low`` | camera | ``received_fps`` below ``threshold`` % of ``expected_fps`` [50] |
| ``mic_silent`` | seat | ``level_dbfs_<seat>`` below ``threshold`` dBFS [-60] while the venue has an open (recording) hearing |
| ``clipping`` | seat | ``clipped_<seat>`` (full-scale samples per level interval) above ``threshold`` [100] |
| ``paper_low`` | device | kiosk ``paper_pct`` below ``threshold`` % [10], or printer ``paper_low``/``paper_out`` = 1 |
| ``disk_headroom`` | hub metric | hub metric ``metric`` [``disk_free_pct``] below ``threshold`` [10] |
| ``spool_growing`` | hub metric | each hub metric matching ``metric`` [``*spool_bytes``] has not shrunk since it started rising and rose within the last ``for_s`` |
| ``metric_above`` / ``metric_below`` | device metric (``scope = "device"``) or hub metric (``scope = "hub"``) | every metric matching the ``metric`` glob above / below ``threshold`` (both required) |

``only_during_hearing = true`` limits any device rule to venues with an open hearing
(``mic_silent`` always is).

Hub metrics are whatever the hub's ``hub_metrics`` source returns (:func:`disk_metrics` gives
``disk_free_mb`` and ``disk_free_pct``; telemetry sinks are expected as
``telemetry_<sink>_<stat>``, e.g. ``telemetry_influxdb_spool_bytes``).

The engine (:class:`AlertRuleEngine`) is pure apart from the :class:`~hub.alerts.AlertBoard` it
drives and the clock it is given: :meth:`AlertRuleEngine.evaluate` takes a plain
:class:`Snapshot` (built by :func:`build_snapshot` from the registry), so tests drive it with a
fake clock and hand-made snapshots. Per (rule, subject): the condition becomes true → *pending*
on the board; true for ``for_s`` → *firing*; false → *resolved* (a pending one is withdrawn and
never was an alarm). Alert keys are ``rule:<rule name>:<subject>``; firing rule alerts restored
by the board after a restart are adopted and resolved if their condition is gone.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

import msgspec

from hub.alerts import AlertBoard, Severity
from hub.registry import HealthState, Registry

log = logging.getLogger(__name__)

#: every alert a rule raises has a key starting with this
KEY_PREFIX: Final = "rule:"
#: the alerts' ``source``
SOURCE: Final = "alert-rules"
_RULE_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_LEVEL_PREFIX: Final = "level_dbfs_"
_CLIPPED_PREFIX: Final = "clipped_"
#: device states whose metrics are not fresh (metric rules skip them)
_NO_FRESH_DATA: Final = frozenset({HealthState.OFFLINE.value, HealthState.STALE.value})


class RuleKind(StrEnum):
    """What a rule watches (see the module docstring's table)."""

    DEVICE_OFFLINE = "device_offline"
    HEARTBEAT_AGE = "heartbeat_age"
    FPS_LOW = "fps_low"
    MIC_SILENT = "mic_silent"
    CLIPPING = "clipping"
    PAPER_LOW = "paper_low"
    DISK_HEADROOM = "disk_headroom"
    SPOOL_GROWING = "spool_growing"
    METRIC_ABOVE = "metric_above"
    METRIC_BELOW = "metric_below"


#: the threshold of a rule that gives none (metric_above/below must give one)
DEFAULT_THRESHOLDS: Final[Mapping[RuleKind, float]] = MappingProxyType(
    {
        RuleKind.DEVICE_OFFLINE: 0.0,
        RuleKind.HEARTBEAT_AGE: 120.0,
        RuleKind.FPS_LOW: 50.0,
        RuleKind.MIC_SILENT: -60.0,
        RuleKind.CLIPPING: 100.0,
        RuleKind.PAPER_LOW: 10.0,
        RuleKind.DISK_HEADROOM: 10.0,
        RuleKind.SPOOL_GROWING: 0.0,
    }
)
#: the metric (name or glob) of a rule that gives none
DEFAULT_METRICS: Final[Mapping[RuleKind, str]] = MappingProxyType(
    {RuleKind.DISK_HEADROOM: "disk_free_pct", RuleKind.SPOOL_GROWING: "*spool_bytes"}
)
_HUB_KINDS: Final = frozenset({RuleKind.DISK_HEADROOM, RuleKind.SPOOL_GROWING})


class AlertRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[[alerts.rules]]``: one rule."""

    name: Annotated[str, msgspec.Meta(pattern=_RULE_NAME)]
    kind: RuleKind
    severity: Severity = Severity.WARNING
    #: the condition must hold this long before the alert fires (0: at once)
    for_s: Annotated[float, msgspec.Meta(ge=0, le=7 * 86400)] = 0.0
    #: meaning per kind; None = the kind's default (:data:`DEFAULT_THRESHOLDS`)
    threshold: float | None = None
    #: metric name or glob (metric_above/below, disk_headroom, spool_growing)
    metric: str = ""
    #: metric_above/below: device metrics or the hub's own
    scope: Literal["device", "hub"] = "device"
    agent: str = "*"
    device: str = "*"
    device_kind: str = "*"
    venue: str = "*"
    #: only while the device's venue has an open hearing (mic_silent always)
    only_during_hearing: bool = False

    def __post_init__(self) -> None:
        if self.kind in (RuleKind.METRIC_ABOVE, RuleKind.METRIC_BELOW):
            if self.threshold is None:
                raise ValueError(f"rule {self.name}: {self.kind.value} needs a threshold")
            if not self.metric:
                raise ValueError(f"rule {self.name}: {self.kind.value} needs a metric")

    @property
    def limit(self) -> float:
        """The threshold in effect."""
        return self.threshold if self.threshold is not None else DEFAULT_THRESHOLDS[self.kind]

    @property
    def metric_pattern(self) -> str:
        """The metric glob in effect ('' for kinds that read fixed metrics)."""
        return self.metric or DEFAULT_METRICS.get(self.kind, "")

    @property
    def hub_scope(self) -> bool:
        """Whether the rule reads hub metrics rather than devices."""
        return self.kind in _HUB_KINDS or (
            self.kind in (RuleKind.METRIC_ABOVE, RuleKind.METRIC_BELOW) and self.scope == "hub"
        )

    def to_json(self) -> dict[str, Any]:
        """The rule for the API, with its effective threshold and metric."""
        body: dict[str, Any] = msgspec.to_builtins(self)
        body["threshold"] = self.limit
        body["metric"] = self.metric_pattern
        return body


#: what a court gets without an ``[alerts]`` section (or with one that gives no ``rules``)
DEFAULT_RULES: Final[tuple[AlertRule, ...]] = (
    AlertRule(
        name="device-offline", kind=RuleKind.DEVICE_OFFLINE, severity=Severity.CRITICAL, for_s=60
    ),
    AlertRule(name="heartbeat-age", kind=RuleKind.HEARTBEAT_AGE, threshold=120),
    AlertRule(
        name="camera-fps-low",
        kind=RuleKind.FPS_LOW,
        threshold=50,
        for_s=30,
        device_kind="camera",
    ),
    AlertRule(name="mic-silent", kind=RuleKind.MIC_SILENT, threshold=-60, for_s=120),
    AlertRule(name="mic-clipping", kind=RuleKind.CLIPPING, threshold=100, for_s=10),
    AlertRule(name="paper-low", kind=RuleKind.PAPER_LOW, threshold=10),
    AlertRule(
        name="disk-headroom",
        kind=RuleKind.DISK_HEADROOM,
        severity=Severity.CRITICAL,
        metric="disk_free_pct",
        threshold=10,
        for_s=60,
    ),
    AlertRule(
        name="telemetry-spool-growing",
        kind=RuleKind.SPOOL_GROWING,
        metric="*spool_bytes",
        for_s=300,
    ),
)


class AlertsSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[alerts]``: how often rules are evaluated, MQTT publishing, and the rules."""

    evaluate_interval_s: Annotated[float, msgspec.Meta(ge=0.5, le=3600)] = 5.0
    #: fired alerts also go out on ``courthub/v1/hub/alerts``
    publish_mqtt: bool = False
    #: None (not given): :data:`DEFAULT_RULES`
    rules: tuple[AlertRule, ...] | None = None

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for rule in self.rules or ():
            if rule.name in seen:
                raise ValueError(f"duplicate rule name {rule.name!r}")
            seen.add(rule.name)

    def effective_rules(self) -> tuple[AlertRule, ...]:
        """The rules in force: the configured ones, or the defaults when none were given."""
        return DEFAULT_RULES if self.rules is None else self.rules


# snapshots -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """One device as the rules see it."""

    agent: str
    device: str
    venue: str
    kind: str
    #: the hub's verdict (:class:`hub.registry.HealthState` value)
    state: str
    state_since_ms: int
    last_seen_ms: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the rules read at one evaluation."""

    devices: tuple[DeviceSnapshot, ...] = ()
    hub_metrics: Mapping[str, float] = field(default_factory=dict)
    #: venues with an open (recording) hearing
    hearing_venues: frozenset[str] = frozenset()


def build_snapshot(
    registry: Registry, *, hub_metrics: Mapping[str, float], hearing_venues: Iterable[str]
) -> Snapshot:
    """The rules' view of ``registry`` now (copies: safe to keep across awaits). Loop only."""
    devices = []
    for record in registry.devices():
        agent = registry.agent(record.agent)
        devices.append(
            DeviceSnapshot(
                agent=record.agent,
                device=record.id,
                venue=agent.venue_id if agent is not None else "",
                kind=record.kind,
                state=record.state.value,
                state_since_ms=record.state_since_ms,
                last_seen_ms=record.last_seen_ms,
                metrics=dict(record.metrics),
                reason=record.state_reason,
            )
        )
    return Snapshot(tuple(devices), dict(hub_metrics), frozenset(hearing_venues))


def disk_metrics(path: Path) -> dict[str, float]:
    """``disk_free_mb`` and ``disk_free_pct`` of the disk holding ``path`` (blocking: a thread)."""
    usage = shutil.disk_usage(path)
    return {
        "disk_free_mb": round(usage.free / 1_048_576, 1),
        "disk_free_pct": round(100.0 * usage.free / usage.total, 2) if usage.total else 0.0,
    }


# the engine ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Condition:
    """A rule's condition holding for one subject now."""

    message: str
    #: when it began, if the data says (an offline device's state change); else first seen
    since_ms: int | None = None


@dataclass(slots=True)
class _Track:
    since_ms: int
    fired: bool


@dataclass(slots=True)
class _Rise:
    """A hub metric's current run for ``spool_growing``: not shrunk since ``start_value``."""

    start_value: float
    last_value: float
    #: when it first rose above ``start_value`` (None: not yet)
    first_rise_ms: int | None = None
    last_rise_ms: int = 0


class AlertRuleEngine:
    """Evaluates rules against snapshots and drives the board's pending/firing/resolved states."""

    def __init__(
        self,
        rules: Iterable[AlertRule],
        board: AlertBoard,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = tuple(rules)
        self.board = board
        self._clock = clock
        self._tracks: dict[str, _Track] = {}
        self._rises: dict[tuple[str, str], _Rise] = {}
        self._adopted = False
        self.evaluations = 0
        self.rule_errors = 0

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def evaluate(self, snapshot: Snapshot) -> None:
        """One pass: every rule against ``snapshot``; the board follows."""
        now = self._now_ms()
        if not self._adopted:
            self._adopt()
        holding: dict[str, tuple[AlertRule, Condition]] = {}
        for rule in self.rules:
            try:
                conditions = self.conditions(rule, snapshot, now)
            except Exception:  # one broken rule must not silence the others
                self.rule_errors += 1
                log.exception("alert rule failed rule=%s", rule.name)
                continue
            for subject, condition in conditions.items():
                holding[f"{KEY_PREFIX}{rule.name}:{subject}"] = (rule, condition)
        for key, (rule, condition) in holding.items():
            await self._holds(key, rule, condition, now)
        for key in [k for k in self._tracks if k not in holding]:
            del self._tracks[key]
            await self.board.clear(key)
        self.evaluations += 1

    def _adopt(self) -> None:
        """Firing rule alerts from the last run: tracked, so they resolve when the cause is gone."""
        self._adopted = True
        for alert in self.board.active():
            if alert.key.startswith(KEY_PREFIX):
                self._tracks[alert.key] = _Track(alert.pending_ms or alert.raised_ms, True)

    async def _holds(self, key: str, rule: AlertRule, condition: Condition, now: int) -> None:
        track = self._tracks.get(key)
        new = track is None
        if track is None:
            since = min(condition.since_ms if condition.since_ms is not None else now, now)
            track = self._tracks[key] = _Track(since, False)
        if track.fired:
            return  # its message is what it said when it fired (no update churn every pass)
        if now - track.since_ms >= rule.for_s * 1000:
            await self.board.raise_alert(
                key,
                condition.message,
                source=SOURCE,
                severity=rule.severity,
                since_ms=track.since_ms,
            )
            track.fired = True
        elif new:  # pending keeps its first message until it fires or goes
            await self.board.set_pending(
                key,
                condition.message,
                source=SOURCE,
                severity=rule.severity,
                since_ms=track.since_ms,
            )

    # conditions --------------------------------------------------------------------------------
    def conditions(self, rule: AlertRule, snapshot: Snapshot, now: int) -> dict[str, Condition]:
        """Subjects for which ``rule``'s condition holds now (subject → condition)."""
        if rule.hub_scope:
            return self._hub_conditions(rule, snapshot.hub_metrics, now)
        found: dict[str, Condition] = {}
        for device in snapshot.devices:
            if not _matches(rule, device):
                continue
            hearing = device.venue in snapshot.hearing_venues
            if (rule.only_during_hearing or rule.kind is RuleKind.MIC_SILENT) and not hearing:
                continue
            found.update(_device_conditions(rule, device, now))
        return found

    def _hub_conditions(
        self, rule: AlertRule, metrics: Mapping[str, float], now: int
    ) -> dict[str, Condition]:
        found: dict[str, Condition] = {}
        pattern, limit = rule.metric_pattern, rule.limit
        for name in sorted(metrics):
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            value = metrics[name]
            subject = f"hub/{name}"
            if rule.kind is RuleKind.SPOOL_GROWING:
                rise = self._rise(rule, name, value, now)
                if rise is not None:
                    found[subject] = Condition(
                        f"遥测缓存持续增长 / telemetry spool growing: {name} "
                        f"{rise.start_value:g} → {value:g}",
                        rise.first_rise_ms,
                    )
            elif rule.kind is RuleKind.DISK_HEADROOM and value < limit:
                found[subject] = Condition(
                    f"磁盘空间不足 / disk space low: {name} = {value:g} (< {limit:g})"
                )
            elif rule.kind is RuleKind.METRIC_ABOVE and value > limit:
                found[subject] = Condition(_metric_text("hub", name, value, ">", limit))
            elif rule.kind is RuleKind.METRIC_BELOW and value < limit:
                found[subject] = Condition(_metric_text("hub", name, value, "<", limit))
        return found

    def _rise(self, rule: AlertRule, name: str, value: float, now: int) -> _Rise | None:
        """The metric's rising run if it is growing now (not shrunk, rose within ``for_s``)."""
        key = (rule.name, name)
        rise = self._rises.get(key)
        window_ms = max(rule.for_s, 1.0) * 1000
        if rise is None or value < rise.last_value:
            self._rises[key] = _Rise(value, value)  # first sample, or draining: a new baseline
            return None
        if value > rise.last_value:
            rise.last_value, rise.last_rise_ms = value, now
            if rise.first_rise_ms is None:
                rise.first_rise_ms = now
        elif rise.first_rise_ms is not None and now - rise.last_rise_ms >= window_ms:
            self._rises[key] = _Rise(value, value)  # flat for a whole window: not growing
            return None
        return rise if rise.first_rise_ms is not None else None


def _matches(rule: AlertRule, device: DeviceSnapshot) -> bool:
    return (
        fnmatch.fnmatchcase(device.agent, rule.agent)
        and fnmatch.fnmatchcase(device.device, rule.device)
        and fnmatch.fnmatchcase(device.kind, rule.device_kind)
        and fnmatch.fnmatchcase(device.venue, rule.venue)
    )


def _device_conditions(rule: AlertRule, d: DeviceSnapshot, now: int) -> dict[str, Condition]:
    """The conditions of one device rule on one device (pure)."""
    subject = f"{d.agent}/{d.device}"
    limit = rule.limit
    kind = rule.kind
    if kind is RuleKind.DEVICE_OFFLINE:
        if d.state != HealthState.OFFLINE.value:
            return {}
        why = f" ({d.reason})" if d.reason else ""
        return {subject: Condition(f"设备离线 / device offline: {subject}{why}", d.state_since_ms)}
    if kind is RuleKind.HEARTBEAT_AGE:
        age_s = (now - d.last_seen_ms) / 1000
        if d.state == HealthState.OFFLINE.value or not d.last_seen_ms or age_s < limit:
            return {}
        text = f"设备心跳超时 / no heartbeat: {subject} silent for {limit:g} s or more"
        return {subject: Condition(text, d.last_seen_ms + int(limit * 1000))}
    if d.state in _NO_FRESH_DATA:
        return {}  # metrics of a silent device are old news; the two rules above cover it
    m = d.metrics
    if kind is RuleKind.FPS_LOW:
        expected, received = m.get("expected_fps", 0.0), m.get("received_fps")
        if expected <= 0 or received is None or received >= expected * limit / 100:
            return {}
        text = f"帧率过低 / low frame rate: {subject} {received:g} of {expected:g} fps"
        return {subject: Condition(text)}
    if kind is RuleKind.MIC_SILENT:
        return {
            f"{subject}/{seat}": Condition(
                f"庭审中麦克风无声 / microphone silent during the hearing: "
                f"{subject} seat {seat} {value:g} dBFS"
            )
            for seat, value in _per_seat(m, _LEVEL_PREFIX)
            if value < limit
        }
    if kind is RuleKind.CLIPPING:
        return {
            f"{subject}/{seat}": Condition(
                f"麦克风削波 / microphone clipping: {subject} seat {seat} {value:g} samples"
            )
            for seat, value in _per_seat(m, _CLIPPED_PREFIX)
            if value > limit
        }
    if kind is RuleKind.PAPER_LOW:
        return _paper(subject, m, limit)
    if kind in (RuleKind.METRIC_ABOVE, RuleKind.METRIC_BELOW):
        above = kind is RuleKind.METRIC_ABOVE
        return {
            f"{subject}/{name}": Condition(
                _metric_text(subject, name, value, ">" if above else "<", limit)
            )
            for name, value in sorted(m.items())
            if fnmatch.fnmatchcase(name, rule.metric_pattern)
            and (value > limit if above else value < limit)
        }
    return {}


def _per_seat(metrics: Mapping[str, float], prefix: str) -> list[tuple[str, float]]:
    return [
        (name[len(prefix) :], value)
        for name, value in sorted(metrics.items())
        if name.startswith(prefix) and len(name) > len(prefix)
    ]


def _paper(subject: str, m: Mapping[str, float], limit: float) -> dict[str, Condition]:
    if m.get("paper_out", 0.0) >= 1:
        return {subject: Condition(f"缺纸 / paper out: {subject}")}
    if m.get("paper_low", 0.0) >= 1:
        return {subject: Condition(f"纸张将尽 / paper low: {subject}")}
    pct = m.get("paper_pct")
    if pct is not None and pct < limit:
        return {subject: Condition(f"纸张将尽 / paper low: {subject} {pct:g} %")}
    return {}


def _metric_text(subject: str, name: str, value: float, op: str, limit: float) -> str:
    word = "超过上限 / above limit" if op == ">" else "低于下限 / below limit"
    return f"指标{word}: {subject} {name} = {value:g} ({op} {limit:g})"


# running it ----------------------------------------------------------------------------------

#: the hub's own numbers (disk, telemetry sinks…), fetched once per evaluation
HubMetricsSource = Callable[[], Awaitable[Mapping[str, float]]]
#: venues with an open (recording) hearing now
HearingVenues = Callable[[], Iterable[str]]


class AlertRuleRunner:
    """Evaluates the engine every ``interval_s`` on the loop until cancelled."""

    def __init__(
        self,
        engine: AlertRuleEngine,
        registry: Registry,
        *,
        interval_s: float = 5.0,
        hub_metrics: HubMetricsSource | None = None,
        hearing_venues: HearingVenues | None = None,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.interval_s = interval_s
        self._hub_metrics = hub_metrics
        self._hearing_venues = hearing_venues
        self.failures = 0

    def set_hearing_venues(self, source: HearingVenues | None) -> None:
        """Where open hearings are (the hearing service starts after the rules do)."""
        self._hearing_venues = source

    async def run_once(self) -> None:
        """Gather a snapshot and evaluate it once."""
        metrics: Mapping[str, float] = {}
        if self._hub_metrics is not None:
            try:
                metrics = await self._hub_metrics()
            except Exception:
                # device rules still run; hub rules see no metric (and resolve: logged here)
                log.exception("hub metrics for the alert rules failed")
        venues = self._hearing_venues() if self._hearing_venues is not None else ()
        snapshot = build_snapshot(self.registry, hub_metrics=metrics, hearing_venues=venues)
        await self.engine.evaluate(snapshot)

    async def run(self) -> None:
        """Evaluate forever (a failing pass is logged and counted; the next one runs)."""
        log.info(
            "alert rules running rules=%d interval_s=%g", len(self.engine.rules), self.interval_s
        )
        while True:
            try:
                await self.run_once()
            except Exception:
                self.failures += 1
                log.exception("alert rule pass failed failures=%d", self.failures)
            await asyncio.sleep(self.interval_s)


def hub_alert_metrics(path: Path) -> HubMetricsSource:
    """A :data:`HubMetricsSource` with the free space of the disk holding ``path``."""

    async def fetch() -> Mapping[str, float]:
        return await asyncio.to_thread(disk_metrics, path)

    return fetch
