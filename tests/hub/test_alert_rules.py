"""Alert rules on a real alerts.db with a fake clock: every kind goes pending → firing after
``for_s``, a condition that flaps back before ``for_s`` never fires, and a gone condition
resolves. Plus the ``[alerts]`` config, filters, the registry snapshot and restart adoption."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import msgspec
import pytest

from hub.alert_rules import (
    DEFAULT_RULES,
    AlertRule,
    AlertRuleEngine,
    AlertRuleRunner,
    AlertsSection,
    DeviceSnapshot,
    RuleKind,
    Snapshot,
    build_snapshot,
    disk_metrics,
    hub_alert_metrics,
)
from hub.alerts import Alert, AlertBoard, AlertState, Severity
from hub.health import HealthMonitor
from hub.registry import Registry
from protocol.messages import Birth, DeviceInfo, Venue, VenueKind

T0 = 1_795_000_000.0  # 2026-11-18, UTC seconds
T0_MS = int(T0 * 1000)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    @property
    def ms(self) -> int:
        return int(self.now * 1000)


@dataclass
class Rig:
    clock: Clock
    board: AlertBoard
    heard: list[Alert]

    def engine(self, *rules: AlertRule) -> AlertRuleEngine:
        return AlertRuleEngine(rules, self.board, self.clock)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = Clock()
    board = await AlertBoard.open(tmp_path, clock=clock)
    heard: list[Alert] = []
    board.add_listener(heard.append)
    try:
        yield Rig(clock, board, heard)
    finally:
        await board.close()


def dev(
    *,
    agent: str = "court-1",
    device: str = "cam-1",
    venue: str = "court-3",
    kind: str = "camera",
    state: str = "online",
    since_ms: int = T0_MS - 3_600_000,
    last_seen_ms: int | None = None,
    **metrics: float,
) -> DeviceSnapshot:
    return DeviceSnapshot(
        agent=agent,
        device=device,
        venue=venue,
        kind=kind,
        state=state,
        state_since_ms=since_ms,
        last_seen_ms=T0_MS if last_seen_ms is None else last_seen_ms,
        metrics=metrics,
    )


def snap(*devices: DeviceSnapshot, hearing: tuple[str, ...] = (), **hub: float) -> Snapshot:
    return Snapshot(devices, hub, frozenset(hearing))


@dataclass(frozen=True)
class Case:
    """A rule, a snapshot where its condition holds (given when the episode began, ms), one where
    it does not, the alert key and a word of its message."""

    rule: AlertRule
    bad: Callable[[int], Snapshot]
    good: Snapshot
    key: str
    words: str


MIC = {"kind": "microphone", "device": "mic-1"}
CASES = {
    "device_offline": Case(
        AlertRule(name="offline", kind=RuleKind.DEVICE_OFFLINE, for_s=60),
        lambda start: snap(dev(state="offline", since_ms=start)),
        snap(dev()),
        "rule:offline:court-1/cam-1",
        "device offline",
    ),
    "heartbeat_age": Case(
        AlertRule(name="heartbeat", kind=RuleKind.HEARTBEAT_AGE, threshold=30, for_s=20),
        # silent since 30 s before the episode: the condition holds from ``start`` on
        lambda start: snap(dev(state="stale", last_seen_ms=start - 30_000)),
        snap(dev(last_seen_ms=T0_MS + 10_000_000)),
        "rule:heartbeat:court-1/cam-1",
        "no heartbeat",
    ),
    "fps_low": Case(
        AlertRule(name="fps", kind=RuleKind.FPS_LOW, threshold=50, for_s=30),
        lambda start: snap(dev(expected_fps=25, received_fps=10)),
        snap(dev(expected_fps=25, received_fps=24.5)),
        "rule:fps:court-1/cam-1",
        "10 of 25 fps",
    ),
    "mic_silent": Case(
        AlertRule(name="silent", kind=RuleKind.MIC_SILENT, threshold=-60, for_s=120),
        lambda start: snap(
            dev(**MIC, level_dbfs_judge=-90, level_dbfs_clerk=-30), hearing=("court-3",)
        ),
        snap(dev(**MIC, level_dbfs_judge=-35, level_dbfs_clerk=-30), hearing=("court-3",)),
        "rule:silent:court-1/mic-1/judge",
        "seat judge -90 dBFS",
    ),
    "clipping": Case(
        AlertRule(name="clip", kind=RuleKind.CLIPPING, threshold=100, for_s=10),
        lambda start: snap(dev(**MIC, clipped_judge=800, clipped_clerk=3)),
        snap(dev(**MIC, clipped_judge=0, clipped_clerk=3)),
        "rule:clip:court-1/mic-1/judge",
        "clipping",
    ),
    "paper_low": Case(
        AlertRule(name="paper", kind=RuleKind.PAPER_LOW, threshold=10, for_s=5),
        lambda start: snap(dev(agent="hall-1", device="kiosk-1", kind="kiosk", paper_pct=4)),
        snap(dev(agent="hall-1", device="kiosk-1", kind="kiosk", paper_pct=80)),
        "rule:paper:hall-1/kiosk-1",
        "paper low: hall-1/kiosk-1 4 %",
    ),
    "disk_headroom": Case(
        AlertRule(name="disk", kind=RuleKind.DISK_HEADROOM, threshold=10, for_s=60),
        lambda start: snap(disk_free_pct=4.5, disk_free_mb=900),
        snap(disk_free_pct=40, disk_free_mb=9000),
        "rule:disk:hub/disk_free_pct",
        "disk space low",
    ),
    "metric_above": Case(
        AlertRule(
            name="hot", kind=RuleKind.METRIC_ABOVE, metric="cpu_temp_c", threshold=80, for_s=30
        ),
        lambda start: snap(dev(agent="hall-1", device="kiosk-1", kind="kiosk", cpu_temp_c=91)),
        snap(dev(agent="hall-1", device="kiosk-1", kind="kiosk", cpu_temp_c=60)),
        "rule:hot:hall-1/kiosk-1/cpu_temp_c",
        "cpu_temp_c = 91",
    ),
    "metric_below": Case(
        AlertRule(
            name="queue",
            kind=RuleKind.METRIC_BELOW,
            scope="hub",
            metric="broker_*",
            threshold=1,
            for_s=15,
        ),
        lambda start: snap(broker_connected=0),
        snap(broker_connected=1),
        "rule:queue:hub/broker_connected",
        "broker_connected = 0",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
async def test_pending_then_firing_after_for_s_then_resolved(rig: Rig, name: str) -> None:
    case = CASES[name]
    engine = rig.engine(case.rule)
    for_ms = int(case.rule.for_s * 1000)
    start = rig.clock.ms
    await engine.evaluate(case.bad(start))
    assert rig.board.is_pending(case.key) and not rig.board.is_active(case.key)
    assert [a.key for a in rig.board.pending()] == [case.key]  # one subject only
    pending = rig.board.pending()[0]
    assert pending.state is AlertState.PENDING and pending.pending_ms == start
    assert case.words in pending.message

    rig.clock.now += case.rule.for_s - 1
    await engine.evaluate(case.bad(start))
    assert rig.board.is_pending(case.key) and not rig.board.is_active(case.key)
    assert await rig.board.history() == []  # pending is not stored: not an alarm yet

    rig.clock.now += 1
    await engine.evaluate(case.bad(start))
    assert rig.board.is_active(case.key) and not rig.board.is_pending(case.key)
    firing = rig.board.active()[0]
    assert firing.state is AlertState.FIRING and firing.source == "alert-rules"
    assert firing.pending_ms == start and firing.fired_ms == start + for_ms
    assert case.words in firing.message

    rig.clock.now += 30
    await engine.evaluate(case.bad(start))  # still holding: nothing new
    assert len(await rig.board.history()) == 1

    rig.clock.now += 5
    await engine.evaluate(case.good)
    assert not rig.board.is_active(case.key) and not rig.board.is_pending(case.key)
    (resolved,) = await rig.board.history()
    assert resolved.state is AlertState.RESOLVED
    assert resolved.cleared_ms == start + for_ms + 35_000
    assert [a.state for a in rig.heard] == [
        AlertState.PENDING,
        AlertState.FIRING,
        AlertState.RESOLVED,
    ]


@pytest.mark.parametrize("name", sorted(CASES))
async def test_a_condition_that_flaps_back_before_for_s_never_fires(rig: Rig, name: str) -> None:
    case = CASES[name]
    engine = rig.engine(case.rule)
    half = case.rule.for_s / 2
    for _ in range(4):  # bad for half of for_s, then fine, again and again
        start = rig.clock.ms
        await engine.evaluate(case.bad(start))
        assert rig.board.is_pending(case.key)
        rig.clock.now += half
        await engine.evaluate(case.bad(start))
        assert rig.board.is_pending(case.key)
        rig.clock.now += 1
        await engine.evaluate(case.good)
        assert not rig.board.is_pending(case.key)
        rig.clock.now += half
    assert not rig.board.is_active(case.key)
    assert await rig.board.history() == []
    assert {a.state for a in rig.heard} == {AlertState.PENDING, AlertState.RESOLVED}
    assert all(a.id == 0 for a in rig.heard)  # withdrawn pending alerts never had a row


async def test_for_s_zero_fires_at_once(rig: Rig) -> None:
    engine = rig.engine(AlertRule(name="paper", kind=RuleKind.PAPER_LOW))
    printer = dev(agent="hall-1", device="printer-1", kind="ticket_printer", paper_out=1)
    await engine.evaluate(snap(printer))
    (alert,) = rig.board.active()
    assert alert.message == "缺纸 / paper out: hall-1/printer-1"
    assert [a.state for a in rig.heard] == [AlertState.FIRING]  # no pending step
    await engine.evaluate(snap(replace(printer, metrics={"paper_low": 1})))
    assert rig.board.active()[0].message == alert.message  # a firing alert keeps its text
    await engine.evaluate(snap(replace(printer, metrics={"paper_low": 0, "paper_out": 0})))
    assert rig.board.active() == []


async def test_an_offline_device_counts_from_its_state_change(rig: Rig) -> None:
    """After a hub restart a device offline for an hour fires at the first pass."""
    engine = rig.engine(AlertRule(name="offline", kind=RuleKind.DEVICE_OFFLINE, for_s=60))
    hour_ago = rig.clock.ms - 3_600_000
    await engine.evaluate(snap(dev(state="offline", since_ms=hour_ago)))
    (alert,) = rig.board.active()
    assert alert.pending_ms == hour_ago and alert.fired_ms == rig.clock.ms


async def test_mic_silence_counts_only_during_an_open_hearing(rig: Rig) -> None:
    engine = rig.engine(AlertRule(name="silent", kind=RuleKind.MIC_SILENT, for_s=10))
    mic = dev(**MIC, level_dbfs_judge=-100)
    await engine.evaluate(snap(mic))  # no hearing: a quiet courtroom is normal
    assert rig.board.pending() == [] and rig.board.active() == []
    await engine.evaluate(snap(mic, hearing=("court-3",)))
    rig.clock.now += 10
    await engine.evaluate(snap(mic, hearing=("court-3",)))
    assert rig.board.is_active("rule:silent:court-1/mic-1/judge")
    rig.clock.now += 60
    await engine.evaluate(snap(mic, hearing=("other-venue",)))  # the hearing closed
    assert rig.board.active() == []


async def test_metric_rules_skip_devices_without_fresh_numbers(rig: Rig) -> None:
    engine = rig.engine(AlertRule(name="fps", kind=RuleKind.FPS_LOW))
    for state in ("offline", "stale"):
        await engine.evaluate(snap(dev(state=state, expected_fps=25, received_fps=0)))
        assert rig.board.active() == []
    await engine.evaluate(snap(dev(state="fault", expected_fps=25, received_fps=0)))
    assert [a.key for a in rig.board.active()] == ["rule:fps:court-1/cam-1"]


async def test_glob_filters_pick_the_devices(rig: Rig) -> None:
    rule = AlertRule(
        name="temp",
        kind=RuleKind.METRIC_ABOVE,
        metric="*_temp_c",
        threshold=70,
        agent="hall-*",
        device="kiosk-?",
        device_kind="kiosk",
        venue="hall",
    )
    engine = rig.engine(rule)
    devices = [
        dev(agent="hall-1", device="kiosk-1", kind="kiosk", venue="hall", cpu_temp_c=90),
        dev(agent="hall-2", device="kiosk-2", kind="kiosk", venue="hall", board_temp_c=75),
        dev(agent="hall-1", device="kiosk-10", kind="kiosk", venue="hall", cpu_temp_c=90),
        dev(agent="hall-1", device="kiosk-3", kind="printer", venue="hall", cpu_temp_c=90),
        dev(agent="court-1", device="kiosk-4", kind="kiosk", venue="hall", cpu_temp_c=90),
        dev(agent="hall-1", device="kiosk-5", kind="kiosk", venue="annex", cpu_temp_c=90),
        dev(agent="hall-1", device="kiosk-6", kind="kiosk", venue="hall", cpu_temp_c=50),
    ]
    await engine.evaluate(snap(*devices))
    assert sorted(a.key for a in rig.board.active()) == [
        "rule:temp:hall-1/kiosk-1/cpu_temp_c",
        "rule:temp:hall-2/kiosk-2/board_temp_c",
    ]


async def test_only_during_hearing_limits_any_device_rule(rig: Rig) -> None:
    rule = AlertRule(name="clip", kind=RuleKind.CLIPPING, only_during_hearing=True)
    engine = rig.engine(rule)
    mic = dev(**MIC, clipped_judge=5000)
    await engine.evaluate(snap(mic))
    assert rig.board.active() == []
    await engine.evaluate(snap(mic, hearing=("court-3",)))
    assert [a.key for a in rig.board.active()] == ["rule:clip:court-1/mic-1/judge"]


async def test_a_spool_that_keeps_growing_fires_and_resolves_when_it_drains(rig: Rig) -> None:
    rule = AlertRule(name="spool", kind=RuleKind.SPOOL_GROWING, for_s=60)
    engine = rig.engine(rule)
    key = "rule:spool:hub/telemetry_influxdb_spool_bytes"

    async def at(value: float) -> None:
        await engine.evaluate(snap(telemetry_influxdb_spool_bytes=value, disk_free_pct=50))
        rig.clock.now += 20

    await at(0)
    await at(0)
    assert rig.board.pending() == []  # an empty, steady spool
    start = rig.clock.ms
    await at(1000)  # the server went away: rising
    assert rig.board.is_pending(key)
    await at(1000)  # flat between flushes, still within the window
    await at(5000)
    assert rig.board.is_pending(key)
    await at(9000)  # 60 s after the first rise
    (alert,) = rig.board.active()
    assert alert.key == key and alert.pending_ms == start and "0 → 9000" in alert.message
    await at(9000)
    assert rig.board.is_active(key)
    await at(200)  # the server is back: the spool drains
    assert rig.board.active() == []

    # a spool that rose once and then stays put for a whole window is not "growing"
    await at(300)
    assert rig.board.is_pending(key)
    for _ in range(4):
        await at(300)
    assert not rig.board.is_pending(key) and not rig.board.is_active(key)
    assert len(await rig.board.history()) == 1


async def test_firing_rule_alerts_of_the_last_run_resolve_when_their_cause_is_gone(
    tmp_path: Path,
) -> None:
    clock = Clock()
    rule = AlertRule(name="disk", kind=RuleKind.DISK_HEADROOM, for_s=0)
    board = await AlertBoard.open(tmp_path, clock=clock)
    await AlertRuleEngine([rule], board, clock).evaluate(snap(disk_free_pct=2))
    await board.raise_alert("camera-lost:cam-1", "lost", source="recorder")
    await board.close()

    board = await AlertBoard.open(tmp_path, clock=clock)
    try:
        assert board.is_active("rule:disk:hub/disk_free_pct")
        engine = AlertRuleEngine([rule], board, clock)  # same rule: holds → stays, not doubled
        await engine.evaluate(snap(disk_free_pct=3))
        assert len(await board.history()) == 2
        engine = AlertRuleEngine([], board, clock)  # rule removed from the config
        await engine.evaluate(snap(disk_free_pct=3))
        assert [a.key for a in board.active()] == ["camera-lost:cam-1"]  # others untouched
    finally:
        await board.close()


async def test_a_broken_rule_does_not_silence_the_others(rig: Rig) -> None:
    class Broken(Mapping[str, float]):
        def __getitem__(self, key: str) -> float:
            raise RuntimeError("boom")

        def __iter__(self) -> Iterator[str]:
            return iter(["disk_free_pct"])

        def __len__(self) -> int:
            return 1

    engine = rig.engine(
        AlertRule(name="disk", kind=RuleKind.DISK_HEADROOM),
        AlertRule(name="fps", kind=RuleKind.FPS_LOW),
    )
    await engine.evaluate(Snapshot((dev(expected_fps=25, received_fps=1),), Broken()))
    assert [a.key for a in rig.board.active()] == ["rule:fps:court-1/cam-1"]
    assert engine.rule_errors == 1


# config ---------------------------------------------------------------------------------------


def test_defaults_apply_when_the_section_or_its_rules_are_absent() -> None:
    section = msgspec.convert({}, AlertsSection)
    assert section.effective_rules() == DEFAULT_RULES
    assert section.evaluate_interval_s == 5.0 and section.publish_mqtt is False
    assert {r.kind for r in DEFAULT_RULES} == set(RuleKind) - {
        RuleKind.METRIC_ABOVE,
        RuleKind.METRIC_BELOW,
    }
    assert len({r.name for r in DEFAULT_RULES}) == len(DEFAULT_RULES)
    assert msgspec.convert({"rules": []}, AlertsSection).effective_rules() == ()


def test_rules_from_toml_with_their_defaults() -> None:
    import tomllib

    data = tomllib.loads(
        """
        evaluate_interval_s = 2
        publish_mqtt = true
        [[rules]]
        name = "court-mic-silent"
        kind = "mic_silent"
        severity = "critical"
        for_s = 90
        venue = "court-*"
        [[rules]]
        name = "kiosk-hot"
        kind = "metric_above"
        metric = "cpu_temp_c"
        threshold = 85
        device_kind = "kiosk"
        """
    )
    section = msgspec.convert(data, AlertsSection)
    silent, hot = section.effective_rules()
    assert (
        silent.severity is Severity.CRITICAL and silent.limit == -60 and silent.venue == "court-*"
    )
    assert hot.limit == 85 and hot.metric_pattern == "cpu_temp_c" and not hot.hub_scope
    assert hot.to_json()["threshold"] == 85 and silent.to_json()["kind"] == "mic_silent"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"rules": [{"name": "a", "kind": "metric_above", "metric": "x"}]}, "needs a threshold"),
        ({"rules": [{"name": "a", "kind": "metric_below", "threshold": 1}]}, "needs a metric"),
        (
            {"rules": [{"name": "a", "kind": "paper_low"}, {"name": "a", "kind": "clipping"}]},
            "duplicate rule name",
        ),
        ({"rules": [{"name": "Bad Name", "kind": "paper_low"}]}, "rules[0].name"),
        ({"rules": [{"name": "a", "kind": "smoke"}]}, "rules[0].kind"),
        ({"rules": [{"name": "a", "kind": "paper_low", "for_s": -1}]}, "rules[0].for_s"),
        ({"rules": [{"name": "a", "kind": "paper_low", "colour": "red"}]}, "colour"),
        ({"evaluate_interval_s": 0}, "evaluate_interval_s"),
    ],
)
def test_bad_rules_are_refused_with_a_clear_error(data: dict[str, object], words: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=words.replace("[", r"\[")):
        msgspec.convert(data, AlertsSection)


# from the registry ------------------------------------------------------------------------------


async def test_the_runner_reads_the_registry_hub_metrics_and_open_hearings(
    rig: Rig, tmp_path: Path
) -> None:
    registry = Registry()
    health = HealthMonitor(registry, clock_ms=lambda: rig.clock.ms)
    health.on_birth(
        "court-1",
        Birth(
            ts=rig.clock.ms,
            bdseq=1,
            seq=0,
            venue=Venue(id="court-3", kind=VenueKind.TECH_COURTROOM, name="第三法庭"),
            devices=[
                DeviceInfo(id="mic-1", kind="microphone"),
                DeviceInfo(id="cam-1", kind="camera"),
            ],
            agent_version="0.1.0",
        ),
        retained=False,
    )
    mic = registry.device("court-1", "mic-1")
    assert mic is not None
    mic.metrics = {"level_dbfs_judge": -110.0, "level_dbfs_clerk": -20.0}

    snapshot = build_snapshot(registry, hub_metrics={"disk_free_pct": 1}, hearing_venues=["x"])
    assert {(d.agent, d.device, d.venue, d.kind, d.state) for d in snapshot.devices} == {
        ("court-1", "mic-1", "court-3", "microphone", "online"),
        ("court-1", "cam-1", "court-3", "camera", "online"),
    }
    mic.metrics["level_dbfs_judge"] = 0.0
    assert snapshot.devices[1].metrics["level_dbfs_judge"] == -110.0  # a copy

    mic.metrics["level_dbfs_judge"] = -110.0
    hearings: set[str] = {"court-3"}

    async def hub_metrics() -> Mapping[str, float]:
        return {"disk_free_pct": 3.0}

    engine = rig.engine(
        AlertRule(name="silent", kind=RuleKind.MIC_SILENT),
        AlertRule(name="disk", kind=RuleKind.DISK_HEADROOM),
    )
    runner = AlertRuleRunner(
        engine, registry, hub_metrics=hub_metrics, hearing_venues=lambda: hearings
    )
    await runner.run_once()
    assert sorted(a.key for a in rig.board.active()) == [
        "rule:disk:hub/disk_free_pct",
        "rule:silent:court-1/mic-1/judge",
    ]
    hearings.clear()
    await runner.run_once()
    assert [a.key for a in rig.board.active()] == ["rule:disk:hub/disk_free_pct"]

    disk = disk_metrics(tmp_path)
    assert disk["disk_free_mb"] > 0 and 0 < disk["disk_free_pct"] <= 100
    assert await hub_alert_metrics(tmp_path)() == pytest.approx(disk, rel=0.05)
