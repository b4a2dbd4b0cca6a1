"""Alerts: conditions a technician must see (a camera lost, a disk nearly full), raised and cleared.

An alert has a stable ``key`` (``camera-lost:court-1-cam-1``): raising an active key again only
updates its message, clearing it ends it. Every raise and clear is kept in ``alerts.db`` (the
history a technician reads the next morning) and announced to listeners (the console's live
channel).

States (issue 7; the rules of :mod:`hub.alert_rules` drive the first one)::

    pending ──(condition held for_s)──► firing ──(condition gone / clear)──► resolved
       └──────(condition gone before for_s: withdrawn, never an alarm)──────────┘

- **pending** lives in memory only (no row, ``id`` 0): it is visible in the API and on the
  technician's panel but is not an alarm — not logged as a warning, not published on MQTT;
- **firing** is a row in ``alerts.db``; :meth:`AlertBoard.raise_alert` (the recorder, retention,
  audio recorder and transcriber call it) goes straight here, as it always did;
- **resolved** sets ``cleared_ms``.

A firing alert can be **acknowledged** by a technician (:meth:`AlertBoard.acknowledge`): who and
when are stored in its row (they survive a restart) and written to the audit trail (action
``alert_ack``). An acknowledged alert stays firing until its condition is gone.

Listeners hear every change (pending, firing, message update, ack, resolve). With a ``publish``
callable the board also sends every change of a fired alert as JSON on ``courthub/v1/hub/alerts``
(QoS and retain are the caller's choice); a failing publish is counted and logged, never raised.

Older ``alerts.db`` files (without ``pending_ms``, ``acked_by``, ``acked_ms``) get the columns
added when the board opens.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol

from hub.db_thread import DbThread
from protocol.topics import TopicKind, build

log = logging.getLogger(__name__)

ALERTS_DB = "alerts.db"
#: the audit action of an acknowledgement
ACK_ACTION: Final = "alert_ack"
#: where fired alerts are published (when the board has a ``publish`` callable)
ALERTS_TOPIC: Final = build(TopicKind.HUB_ALERTS)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    severity TEXT NOT NULL,
    source TEXT NOT NULL,
    message TEXT NOT NULL,
    raised_ms INTEGER NOT NULL,
    cleared_ms INTEGER,
    pending_ms INTEGER,
    acked_by TEXT,
    acked_ms INTEGER
);
CREATE INDEX IF NOT EXISTS alerts_open ON alerts(key) WHERE cleared_ms IS NULL;
"""
#: columns added since the first schema: name -> declaration (added to older files on open)
_ADDED_COLUMNS: Final = (("pending_ms", "INTEGER"), ("acked_by", "TEXT"), ("acked_ms", "INTEGER"))
_COLUMNS: Final = (
    "id, key, severity, source, message, raised_ms, cleared_ms, pending_ms, acked_by, acked_ms"
)


class Severity(StrEnum):
    """How urgent an alert is."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertState(StrEnum):
    """Where an alert is in its life."""

    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class AlertError(ValueError):
    """An alert action that cannot be done (its message says why)."""


class UnknownAlert(AlertError):
    """No alert has that id."""


class AckRefused(AlertError):
    """The alert is resolved or already acknowledged."""


@dataclass(frozen=True)
class Alert:
    """One alert: pending (``id`` 0, ``raised_ms`` 0), firing, or resolved (``cleared_ms`` set)."""

    id: int
    key: str
    severity: Severity
    source: str
    message: str
    #: when it started firing (0 while pending)
    raised_ms: int
    cleared_ms: int | None = None
    state: AlertState = AlertState.FIRING
    #: when its condition began (rules with ``for_s``); None for alerts raised directly
    pending_ms: int | None = None
    acked_by: str | None = None
    acked_ms: int | None = None

    @property
    def fired_ms(self) -> int | None:
        """When it started firing; None while pending."""
        return self.raised_ms or None

    def to_json(self) -> dict[str, Any]:
        """The alert for the API, the live channel and MQTT."""
        return {
            "id": self.id,
            "key": self.key,
            "state": self.state.value,
            "severity": self.severity.value,
            "source": self.source,
            "message": self.message,
            "pending_ms": self.pending_ms,
            "fired_ms": self.fired_ms,
            "resolved_ms": self.cleared_ms,
            "acked_by": self.acked_by,
            "acked_ms": self.acked_ms,
            # the first API's names, kept for its callers
            "raised_ms": self.raised_ms,
            "cleared_ms": self.cleared_ms,
        }


AlertListener = Callable[[Alert], None]
#: ``publish(topic, payload)``: sends one MQTT message (e.g. the hub's link at QoS 1)
Publish = Callable[[str, bytes], object]


class AlertAudit(Protocol):
    """Where acknowledgements are recorded (:class:`hub.audit.AuditLog` is one)."""

    async def record(
        self,
        actor: str,
        action: str,
        *,
        target: str = "",
        detail: Mapping[str, Any] | None = None,
        source: str = "",
    ) -> object:
        """Append one audit entry."""


class AlertBoard:
    """Active alerts in memory, their history in SQLite (async API, one DB thread)."""

    def __init__(
        self,
        path: Path,
        clock: Callable[[], float] = time.time,
        *,
        audit: AlertAudit | None = None,
        publish: Publish | None = None,
    ) -> None:
        """Use :meth:`open`."""
        self.path = path
        self._clock = clock
        self.audit = audit
        self.publish = publish
        self._thread = DbThread("alerts-db")
        self._db: sqlite3.Connection | None = None
        self._active: dict[str, Alert] = {}
        self._pending: dict[str, Alert] = {}
        self._listeners: list[AlertListener] = []
        #: publishes that failed (broker away): counted, logged, never raised
        self.publish_failures = 0

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        audit: AlertAudit | None = None,
        publish: Publish | None = None,
    ) -> AlertBoard:
        """Open ``data_dir/alerts.db``; alerts still open from the last run stay active.

        ``audit`` records acknowledgements; ``publish`` sends fired alerts on
        :data:`ALERTS_TOPIC` (None: not published).
        """
        board = cls(data_dir / ALERTS_DB, clock, audit=audit, publish=publish)
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
        """Hear every change: pending, raise, update, ack, clear (called on the loop)."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def active(self) -> list[Alert]:
        """Firing alerts, newest first."""
        return sorted(self._active.values(), key=lambda a: a.raised_ms, reverse=True)

    def pending(self) -> list[Alert]:
        """Pending alerts (a rule's condition holds, not yet for long enough), newest first."""
        return sorted(self._pending.values(), key=lambda a: a.pending_ms or 0, reverse=True)

    def is_active(self, key: str) -> bool:
        """Whether ``key`` is firing now."""
        return key in self._active

    def is_pending(self, key: str) -> bool:
        """Whether ``key`` is pending now."""
        return key in self._pending

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def set_pending(
        self,
        key: str,
        message: str,
        *,
        source: str,
        severity: Severity = Severity.WARNING,
        since_ms: int | None = None,
    ) -> Alert:
        """Mark ``key`` pending since ``since_ms`` (default now); a firing ``key`` is returned
        unchanged. Not stored, not published: a pending alert is not an alarm yet."""
        firing = self._active.get(key)
        if firing is not None:
            return firing
        current = self._pending.get(key)
        if current is not None and current.message == message and current.severity == severity:
            return current
        since = current.pending_ms if current is not None else since_ms
        alert = Alert(
            0,
            key,
            severity,
            source,
            message,
            0,
            state=AlertState.PENDING,
            pending_ms=self._now_ms() if since is None else since,
        )
        self._pending[key] = alert
        log.info("alert pending key=%s severity=%s", key, severity.value)
        self._notify(alert)
        return alert

    async def raise_alert(
        self,
        key: str,
        message: str,
        *,
        source: str,
        severity: Severity = Severity.WARNING,
        since_ms: int | None = None,
    ) -> Alert:
        """Raise ``key`` (or update the message of the active one); a pending ``key`` fires.

        ``since_ms``: when its condition began, if not pending (kept as ``pending_ms``).
        """
        current = self._active.get(key)
        if current is not None:
            if current.message != message or current.severity != severity:
                current = replace(current, message=message, severity=severity)
                # kept in the row too: the history and a restart show what it last said
                await self._thread.run(self._update_blocking, current.id, severity.value, message)
                self._active[key] = current
                self._changed(current)
            return current
        now = self._now_ms()
        pending = self._pending.pop(key, None)
        pending_ms = pending.pending_ms if pending is not None else since_ms
        alert_id = await self._thread.run(
            self._insert_blocking, (key, severity.value, source, message, now, pending_ms)
        )
        alert = Alert(alert_id, key, severity, source, message, now, pending_ms=pending_ms)
        self._active[key] = alert
        log.warning("alert raised key=%s severity=%s message=%s", key, severity.value, message)
        self._changed(alert)
        return alert

    async def clear(self, key: str) -> Alert | None:
        """End ``key``: a firing alert is resolved, a pending one withdrawn (returned with state
        resolved and id 0); None when it is neither."""
        now = self._now_ms()
        alert = self._active.pop(key, None)
        if alert is None:
            pending = self._pending.pop(key, None)
            if pending is None:
                return None
            withdrawn = replace(pending, state=AlertState.RESOLVED, cleared_ms=now)
            log.info("alert withdrawn before firing key=%s", key)
            self._notify(withdrawn)
            return withdrawn
        await self._thread.run(self._clear_blocking, alert.id, now)
        cleared = replace(alert, cleared_ms=now, state=AlertState.RESOLVED)
        log.info("alert cleared key=%s after_s=%.1f", key, (now - alert.raised_ms) / 1000)
        self._changed(cleared)
        return cleared

    async def acknowledge(self, alert_id: int, user: str, *, source: str = "") -> Alert:
        """``user`` has seen the firing alert ``alert_id``: stored, audited, announced.

        Raises :class:`UnknownAlert` (no such alert) or :class:`AckRefused` (resolved, or
        already acknowledged — the message says by whom).
        """
        alert = next((a for a in self._active.values() if a.id == alert_id), None)
        if alert is None:
            stored = await self._thread.run(self._get_blocking, alert_id)
            if stored is None:
                raise UnknownAlert(f"no alert {alert_id}")
            raise AckRefused(f"alert {alert_id} is already resolved")
        if alert.acked_by is not None:
            raise AckRefused(f"alert {alert_id} was already acknowledged by {alert.acked_by}")
        now = self._now_ms()
        acked = replace(alert, acked_by=user, acked_ms=now)
        self._active[alert.key] = acked  # before any await: a second ack is refused at once
        await self._thread.run(self._ack_blocking, alert_id, user, now)
        if self.audit is not None:
            try:
                await self.audit.record(
                    user,
                    ACK_ACTION,
                    target=alert.key,
                    detail={
                        "id": alert_id,
                        "severity": alert.severity.value,
                        "message": alert.message,
                        "fired_ms": alert.raised_ms,
                    },
                    source=source,
                )
            except Exception:
                # the ack is stored; refusing it now would make the technician ack again
                log.exception("alert ack not audited id=%d key=%s", alert_id, alert.key)
        else:
            log.warning("alert ack without an audit trail id=%d key=%s", alert_id, alert.key)
        log.info("alert acknowledged id=%d key=%s by=%s", alert_id, alert.key, user)
        current = self._active.get(alert.key, acked)
        self._changed(current)
        return current

    async def history(self, *, limit: int = 200) -> list[Alert]:
        """The latest fired alerts, active and resolved, newest first."""
        return await self._thread.run(self._history_blocking, limit)

    def _changed(self, alert: Alert) -> None:
        """A fired alert changed: listeners, then MQTT."""
        self._notify(alert)
        if self.publish is not None:
            payload = json.dumps(
                {**alert.to_json(), "ts": self._now_ms()}, ensure_ascii=False
            ).encode()
            try:
                self.publish(ALERTS_TOPIC, payload)
            except Exception as exc:
                self.publish_failures += 1
                log.warning(
                    "alert not published key=%s state=%s failures=%d error=%s",
                    alert.key,
                    alert.state.value,
                    self.publish_failures,
                    exc,
                )

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
        _migrate(db, self.path)
        self._db = db
        rows = db.execute(f"SELECT {_COLUMNS} FROM alerts WHERE cleared_ms IS NULL").fetchall()
        return [_alert(row) for row in rows]

    def _close_blocking(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None, "alert board is closed"
        return self._db

    def _insert_blocking(self, row: tuple[str, str, str, str, int, int | None]) -> int:
        """``row``: key, severity, source, message, raised_ms, pending_ms."""
        cur = self._conn().execute(
            "INSERT INTO alerts (key, severity, source, message, raised_ms, pending_ms) "
            "VALUES (?,?,?,?,?,?)",
            row,
        )
        return int(cur.lastrowid or 0)

    def _update_blocking(self, alert_id: int, severity: str, message: str) -> None:
        self._conn().execute(
            "UPDATE alerts SET severity = ?, message = ? WHERE id = ?",
            (severity, message, alert_id),
        )

    def _clear_blocking(self, alert_id: int, at: int) -> None:
        self._conn().execute("UPDATE alerts SET cleared_ms = ? WHERE id = ?", (at, alert_id))

    def _ack_blocking(self, alert_id: int, user: str, at: int) -> None:
        self._conn().execute(
            "UPDATE alerts SET acked_by = ?, acked_ms = ? WHERE id = ?", (user, at, alert_id)
        )

    def _get_blocking(self, alert_id: int) -> Alert | None:
        row = (
            self._conn()
            .execute(f"SELECT {_COLUMNS} FROM alerts WHERE id = ?", (alert_id,))
            .fetchone()
        )
        return None if row is None else _alert(row)

    def _history_blocking(self, limit: int) -> list[Alert]:
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM alerts ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [_alert(row) for row in rows]


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Add the columns a file of an older courthub lacks (its rows keep NULL there)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(alerts)")}
    for name, decl in _ADDED_COLUMNS:
        if name not in present:
            db.execute(f"ALTER TABLE alerts ADD COLUMN {name} {decl}")
            log.info("alerts.db migrated path=%s added_column=%s", path, name)


def _alert(row: tuple[Any, ...]) -> Alert:
    cleared = row[6]
    return Alert(
        row[0],
        row[1],
        Severity(row[2]),
        row[3],
        row[4],
        row[5],
        cleared,
        AlertState.FIRING if cleared is None else AlertState.RESOLVED,
        row[7],
        row[8],
        row[9],
    )
