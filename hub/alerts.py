"""Alerts: conditions a technician must see (a camera lost, a disk nearly full), raised and cleared.

An alert has a stable ``key`` (``camera-lost:court-1-cam-1``): raising an active key again only
updates its message, clearing it ends it. Every raise and clear is kept in ``alerts.db`` (the
history a technician reads the next morning) and announced to listeners (the console's live
channel). Rules that raise alerts from telemetry thresholds build on this board.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from hub.db_thread import DbThread

log = logging.getLogger(__name__)

ALERTS_DB = "alerts.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    severity TEXT NOT NULL,
    source TEXT NOT NULL,
    message TEXT NOT NULL,
    raised_ms INTEGER NOT NULL,
    cleared_ms INTEGER
);
CREATE INDEX IF NOT EXISTS alerts_open ON alerts(key) WHERE cleared_ms IS NULL;
"""


class Severity(StrEnum):
    """How urgent an alert is."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True)
class Alert:
    """One alert, active while ``cleared_ms`` is None."""

    id: int
    key: str
    severity: Severity
    source: str
    message: str
    raised_ms: int
    cleared_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The alert for the API."""
        return {
            "id": self.id,
            "key": self.key,
            "severity": self.severity.value,
            "source": self.source,
            "message": self.message,
            "raised_ms": self.raised_ms,
            "cleared_ms": self.cleared_ms,
        }


AlertListener = Callable[[Alert], None]


class AlertBoard:
    """Active alerts in memory, their history in SQLite (async API, one DB thread)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        """Use :meth:`open`."""
        self.path = path
        self._clock = clock
        self._thread = DbThread("alerts-db")
        self._db: sqlite3.Connection | None = None
        self._active: dict[str, Alert] = {}
        self._listeners: list[AlertListener] = []

    @classmethod
    async def open(cls, data_dir: Path, *, clock: Callable[[], float] = time.time) -> AlertBoard:
        """Open ``data_dir/alerts.db``; alerts still open from the last run stay active."""
        board = cls(data_dir / ALERTS_DB, clock)
        board._thread.start()
        for alert in await board._thread.run(board._open_blocking):
            board._active[alert.key] = alert
        return board

    async def close(self) -> None:
        """Close the database (idempotent)."""
        if self._thread.running:
            await self._thread.run(self._close_blocking)
            self._thread.stop()

    def add_listener(self, fn: AlertListener) -> Callable[[], None]:
        """Hear every raise, update and clear (called on the loop)."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def active(self) -> list[Alert]:
        """Active alerts, newest first."""
        return sorted(self._active.values(), key=lambda a: a.raised_ms, reverse=True)

    def is_active(self, key: str) -> bool:
        """Whether ``key`` is raised now."""
        return key in self._active

    async def raise_alert(
        self, key: str, message: str, *, source: str, severity: Severity = Severity.WARNING
    ) -> Alert:
        """Raise ``key`` (or update the message of the active one)."""
        current = self._active.get(key)
        if current is not None:
            if current.message != message or current.severity != severity:
                current = replace(current, message=message, severity=severity)
                # kept in the row too: the history and a restart show what it last said
                await self._thread.run(self._update_blocking, current.id, severity.value, message)
                self._active[key] = current
                self._notify(current)
            return current
        now = int(self._clock() * 1000)
        alert_id = await self._thread.run(
            self._insert_blocking, key, severity.value, source, message, now
        )
        alert = Alert(alert_id, key, severity, source, message, now)
        self._active[key] = alert
        log.warning("alert raised key=%s severity=%s message=%s", key, severity.value, message)
        self._notify(alert)
        return alert

    async def clear(self, key: str) -> Alert | None:
        """End the active alert ``key`` (None when it is not active)."""
        alert = self._active.pop(key, None)
        if alert is None:
            return None
        now = int(self._clock() * 1000)
        await self._thread.run(self._clear_blocking, alert.id, now)
        cleared = replace(alert, cleared_ms=now)
        log.info("alert cleared key=%s after_s=%.1f", key, (now - alert.raised_ms) / 1000)
        self._notify(cleared)
        return cleared

    async def history(self, *, limit: int = 200) -> list[Alert]:
        """The latest alerts, active and cleared, newest first."""
        return await self._thread.run(self._history_blocking, limit)

    def _notify(self, alert: Alert) -> None:
        for fn in list(self._listeners):
            try:
                fn(alert)
            except Exception:
                log.exception("alert listener failed key=%s", alert.key)

    # blocking, on the DB thread -----------------------------------------------------------------
    def _open_blocking(self) -> list[Alert]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        self._db = db
        rows = db.execute(
            "SELECT id, key, severity, source, message, raised_ms, cleared_ms FROM alerts "
            "WHERE cleared_ms IS NULL"
        ).fetchall()
        return [_alert(row) for row in rows]

    def _close_blocking(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None, "alert board is closed"
        return self._db

    def _insert_blocking(self, key: str, severity: str, source: str, message: str, at: int) -> int:
        cur = self._conn().execute(
            "INSERT INTO alerts (key, severity, source, message, raised_ms) VALUES (?,?,?,?,?)",
            (key, severity, source, message, at),
        )
        return int(cur.lastrowid or 0)

    def _update_blocking(self, alert_id: int, severity: str, message: str) -> None:
        self._conn().execute(
            "UPDATE alerts SET severity = ?, message = ? WHERE id = ?",
            (severity, message, alert_id),
        )

    def _clear_blocking(self, alert_id: int, at: int) -> None:
        self._conn().execute("UPDATE alerts SET cleared_ms = ? WHERE id = ?", (at, alert_id))

    def _history_blocking(self, limit: int) -> list[Alert]:
        rows = self._conn().execute(
            "SELECT id, key, severity, source, message, raised_ms, cleared_ms FROM alerts "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [_alert(row) for row in rows]


def _alert(row: tuple[Any, ...]) -> Alert:
    return Alert(row[0], row[1], Severity(row[2]), row[3], row[4], row[5], row[6])
