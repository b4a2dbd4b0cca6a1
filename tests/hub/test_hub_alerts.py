"""The alert board on a real alerts.db: raise, update, clear, history, listeners, restart; states
(pending / firing / resolved), audited acknowledgement, schema migration, MQTT payloads."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from hub.alerts import (
    ACK_ACTION,
    ALERTS_DB,
    AckRefused,
    Alert,
    AlertBoard,
    AlertState,
    Severity,
    UnknownAlert,
)
from hub.audit import AuditLog

T0 = 1_795_000_000.0  # 2026-11-18, UTC seconds


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def test_raise_update_clear_and_history(tmp_path: Path) -> None:
    clock = Clock()
    board = await AlertBoard.open(tmp_path, clock=clock)
    heard: list[Alert] = []
    board.add_listener(heard.append)
    try:
        key = "camera-lost:court-1-cam-1"
        first = await board.raise_alert(key, "摄像机离线 camera lost", source="recorder")
        clock.now += 5
        second = await board.raise_alert(
            key, "摄像机离线 15 s", source="recorder", severity=Severity.CRITICAL
        )
        assert second.id == first.id and second.raised_ms == first.raised_ms
        assert [a.key for a in board.active()] == [key] and board.is_active(key)
        assert board.active()[0].message == "摄像机离线 15 s"
        assert board.active()[0].severity is Severity.CRITICAL
        # the same message again is no news: listeners hear nothing
        await board.raise_alert(
            key, "摄像机离线 15 s", source="recorder", severity=Severity.CRITICAL
        )
        clock.now += 5
        cleared = await board.clear(key)
        assert cleared is not None and cleared.cleared_ms == int((T0 + 10) * 1000)
        assert not board.is_active(key) and board.active() == []
        assert await board.clear(key) is None  # clearing twice is harmless

        clock.now += 1
        await board.raise_alert(key, "again", source="recorder")
        history = await board.history()
        assert [(a.key, a.message, a.cleared_ms is None) for a in history] == [
            (key, "again", True),
            (key, "摄像机离线 15 s", False),  # the history keeps the last message it had
        ]
        assert history[1].severity is Severity.CRITICAL
        assert [(a.message, a.cleared_ms is None) for a in heard] == [
            ("摄像机离线 camera lost", True),
            ("摄像机离线 15 s", True),
            ("摄像机离线 15 s", False),
            ("again", True),
        ]
    finally:
        await board.close()
    await board.close()  # idempotent


async def test_an_uncleared_alert_is_still_active_after_a_restart(tmp_path: Path) -> None:
    board = await AlertBoard.open(tmp_path, clock=Clock())
    await board.raise_alert("disk-headroom", "old text", source="recorder")
    await board.raise_alert("disk-headroom", "disk low", source="recorder")
    await board.raise_alert("camera-lost:cam-2", "lost", source="recorder")
    await board.clear("camera-lost:cam-2")
    failing = board.add_listener(lambda a: 1 / 0)  # a broken listener breaks nothing
    await board.raise_alert("camera-lost:cam-3", "lost", source="recorder")
    failing()
    await board.close()
    assert (tmp_path / ALERTS_DB).is_file()

    again = await AlertBoard.open(tmp_path, clock=Clock())
    try:
        assert {a.key for a in again.active()} == {"disk-headroom", "camera-lost:cam-3"}
        disk = next(a for a in again.active() if a.key == "disk-headroom")
        assert disk.message == "disk low" and disk.source == "recorder"
        assert not again.is_active("camera-lost:cam-2")
        assert len(await again.history()) == 3
        cleared = await again.clear("disk-headroom")
        assert cleared is not None
        assert [a.key for a in again.active()] == ["camera-lost:cam-3"]
    finally:
        await again.close()


# states, acknowledgement, migration, MQTT (issue 7) ---------------------------------------------


class FakePublish:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, object]]] = []
        self.fail = False

    def __call__(self, topic: str, payload: bytes) -> None:
        if self.fail:
            raise ConnectionError("not connected to mqtt://127.0.0.1:1883")
        self.sent.append((topic, json.loads(payload)))


async def test_pending_is_shown_but_not_stored_nor_published(tmp_path: Path) -> None:
    clock, publish = Clock(), FakePublish()
    board = await AlertBoard.open(tmp_path, clock=clock, publish=publish)
    heard: list[Alert] = []
    board.add_listener(heard.append)
    try:
        key = "rule:disk:hub/disk_free_pct"
        pending = await board.set_pending(key, "磁盘空间不足 / disk low", source="alert-rules")
        assert pending.state is AlertState.PENDING and pending.id == 0
        assert pending.pending_ms == int(T0 * 1000) and pending.fired_ms is None
        assert board.is_pending(key) and not board.is_active(key) and board.active() == []
        assert [a.key for a in board.pending()] == [key]
        clock.now += 30
        # the same again is no news; it keeps when it began
        assert (await board.set_pending(key, "磁盘空间不足 / disk low", source="x")) == pending
        assert await board.history() == [] and publish.sent == []

        fired = await board.raise_alert(key, "磁盘空间不足 / disk low", source="alert-rules")
        assert fired.state is AlertState.FIRING and fired.id > 0
        assert fired.pending_ms == int(T0 * 1000) and fired.fired_ms == int((T0 + 30) * 1000)
        assert board.pending() == [] and board.is_active(key)
        # a firing key cannot go back to pending
        assert (await board.set_pending(key, "again", source="alert-rules")) == fired

        withdrawn = await board.set_pending("rule:x:y", "flap", source="alert-rules")
        gone = await board.clear("rule:x:y")
        assert gone is not None and gone.state is AlertState.RESOLVED and gone.id == 0
        assert not board.is_pending("rule:x:y") and withdrawn.id == 0
        assert [(a.key, a.state) for a in heard] == [
            (key, AlertState.PENDING),
            (key, AlertState.FIRING),
            ("rule:x:y", AlertState.PENDING),
            ("rule:x:y", AlertState.RESOLVED),
        ]
        assert [m["state"] for _, m in publish.sent] == ["firing"]  # pending never goes out
    finally:
        await board.close()


async def test_an_acknowledgement_is_audited_and_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    audit = await AuditLog.open(tmp_path, clock=clock)
    board = await AlertBoard.open(tmp_path, clock=clock, audit=audit)
    heard: list[Alert] = []
    board.add_listener(heard.append)
    try:
        alert = await board.raise_alert(
            "camera-lost:cam-1", "摄像机离线 / camera lost", source="recorder"
        )
        other = await board.raise_alert("disk-headroom", "low", source="recorder")
        clock.now += 12
        acked = await board.acknowledge(alert.id, "tech-wang", source="10.0.0.7")
        assert acked.acked_by == "tech-wang" and acked.acked_ms == int((T0 + 12) * 1000)
        assert acked.state is AlertState.FIRING and board.is_active(alert.key)  # still firing
        assert heard[-1] == acked

        (entry,) = await audit.entries(action=ACK_ACTION)
        assert (entry.actor, entry.target, entry.source) == (
            "tech-wang",
            "camera-lost:cam-1",
            "10.0.0.7",
        )
        assert entry.detail["id"] == alert.id and entry.detail["message"] == alert.message

        with pytest.raises(AckRefused, match="already acknowledged by tech-wang"):
            await board.acknowledge(alert.id, "tech-li")
        with pytest.raises(UnknownAlert):
            await board.acknowledge(9999, "tech-li")
        await board.clear(other.key)
        with pytest.raises(AckRefused, match="resolved"):
            await board.acknowledge(other.id, "tech-li")
        assert len(await audit.entries(action=ACK_ACTION)) == 1  # refusals are not audited
        # a new message keeps the acknowledgement
        updated = await board.raise_alert(alert.key, "摄像机离线 60 s", source="recorder")
        assert updated.acked_by == "tech-wang"
    finally:
        await board.close()

    again = await AlertBoard.open(tmp_path, clock=clock, audit=audit)
    try:
        (restored,) = again.active()
        assert restored.acked_by == "tech-wang" and restored.acked_ms == int((T0 + 12) * 1000)
        assert restored.message == "摄像机离线 60 s"
        history = {a.key: a for a in await again.history()}
        assert history["disk-headroom"].acked_by is None
        assert history["disk-headroom"].state is AlertState.RESOLVED
        cleared = await again.clear(alert.key)
        assert cleared is not None and cleared.acked_by == "tech-wang"
    finally:
        await again.close()
        await audit.close()


OLD_SCHEMA = """
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    severity TEXT NOT NULL,
    source TEXT NOT NULL,
    message TEXT NOT NULL,
    raised_ms INTEGER NOT NULL,
    cleared_ms INTEGER
);
CREATE INDEX alerts_open ON alerts(key) WHERE cleared_ms IS NULL;
"""


async def test_an_alerts_db_of_the_first_schema_is_migrated(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / ALERTS_DB)
    db.executescript(OLD_SCHEMA)
    db.executemany(
        "INSERT INTO alerts (key, severity, source, message, raised_ms, cleared_ms) "
        "VALUES (?,?,?,?,?,?)",
        [
            ("disk-headroom", "critical", "recorder", "disk low", 1000, None),
            ("camera-lost:cam-2", "warning", "recorder", "lost", 500, 900),
        ],
    )
    db.commit()
    db.close()

    board = await AlertBoard.open(tmp_path, clock=Clock())
    try:
        (old,) = board.active()
        assert (old.key, old.severity, old.state) == (
            "disk-headroom",
            Severity.CRITICAL,
            AlertState.FIRING,
        )
        assert old.pending_ms is None and old.acked_by is None
        acked = await board.acknowledge(old.id, "tech-wang")  # no audit trail given: still stored
        assert acked.acked_by == "tech-wang"
        history = await board.history()
        assert [(a.key, a.state, a.acked_by) for a in history] == [
            ("camera-lost:cam-2", AlertState.RESOLVED, None),  # newest row first
            ("disk-headroom", AlertState.FIRING, "tech-wang"),
        ]
    finally:
        await board.close()
    columns = {
        row[1] for row in sqlite3.connect(tmp_path / ALERTS_DB).execute("PRAGMA table_info(alerts)")
    }
    assert {"pending_ms", "acked_by", "acked_ms"} <= columns
    again = await AlertBoard.open(tmp_path, clock=Clock())  # a second open adds nothing
    try:
        assert again.active()[0].acked_by == "tech-wang"
    finally:
        await again.close()


async def test_fired_alerts_are_published_as_json_on_the_hub_alerts_topic(
    tmp_path: Path,
) -> None:
    clock, publish = Clock(), FakePublish()
    board = await AlertBoard.open(tmp_path, clock=clock, publish=publish)
    try:
        key = "rule:fps:court-1/cam-1"
        await board.set_pending(key, "帧率过低 / low frame rate", source="alert-rules")
        clock.now += 30
        fired = await board.raise_alert(
            key, "帧率过低 / low frame rate", source="alert-rules", severity=Severity.CRITICAL
        )
        clock.now += 5
        await board.acknowledge(fired.id, "tech-wang")
        clock.now += 5
        await board.clear(key)
        assert {topic for topic, _ in publish.sent} == {"courthub/v1/hub/alerts"}
        firing, acked, resolved = (m for _, m in publish.sent)
        t0 = int(T0 * 1000)
        assert firing == {
            "id": fired.id,
            "key": key,
            "state": "firing",
            "severity": "critical",
            "source": "alert-rules",
            "message": "帧率过低 / low frame rate",
            "pending_ms": t0,
            "fired_ms": t0 + 30_000,
            "resolved_ms": None,
            "acked_by": None,
            "acked_ms": None,
            "raised_ms": t0 + 30_000,
            "cleared_ms": None,
            "ts": t0 + 30_000,
        }
        assert (acked["state"], acked["acked_by"], acked["acked_ms"]) == (
            "firing",
            "tech-wang",
            t0 + 35_000,
        )
        assert (resolved["state"], resolved["resolved_ms"], resolved["acked_by"]) == (
            "resolved",
            t0 + 40_000,
            "tech-wang",
        )

        publish.fail = True  # the broker is away: counted and logged, the board goes on
        await board.raise_alert("disk-headroom", "low", source="recorder")
        assert board.is_active("disk-headroom") and board.publish_failures == 1
    finally:
        await board.close()
