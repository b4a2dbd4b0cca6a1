"""The alert board on a real alerts.db: raise, update, clear, history, listeners, restart."""

from __future__ import annotations

from pathlib import Path

from hub.alerts import ALERTS_DB, Alert, AlertBoard, Severity

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
