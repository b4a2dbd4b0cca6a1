"""The hub's state on disk: SQLite (WAL) in the data dir, written behind the registry.

SQLite never runs on the event loop: one dedicated thread owns the connection and every call is
handed to it. :class:`StoreFlusher` wakes about once a second, takes copies of the rows the
registry and the seq tracker marked dirty (on the loop, cheap), and writes them in one
transaction on that thread, so a burst of telemetry costs one row write per device per second.
The registry is loaded back at start.

Tables: ``agents``, ``devices``, ``seq_state`` (per-agent JSON of :mod:`hub.seq_tracker`) and
``device_state_log`` (every health transition, for charts; pruned by age).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from hub.db_thread import DbThread
from hub.registry import (
    AgentRecord,
    DeviceRecord,
    DirtyRows,
    HealthState,
    Registry,
    StateLogEntry,
)
from hub.seq_tracker import SeqTracker
from protocol.messages import DeviceStatus, now_ms

log = logging.getLogger(__name__)

DB_FILE: Final = "hub.sqlite3"
#: Held (flock) while a hub uses the data dir: two hubs on one dir would fight over the broker
#: session (same client id) and overwrite each other's registry rows.
LOCK_FILE: Final = "hub.lock"
SCHEMA_VERSION: Final = 1
T = TypeVar("T")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY,
    venue_id TEXT NOT NULL,
    venue_kind TEXT NOT NULL,
    venue_name TEXT NOT NULL,
    bdseq INTEGER NOT NULL,
    online INTEGER NOT NULL,
    last_birth_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    version TEXT NOT NULL,
    last_death_bdseq INTEGER
);
CREATE TABLE IF NOT EXISTS devices (
    agent_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    firmware TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    heartbeat_s REAL NOT NULL,
    reported_state TEXT NOT NULL,
    reported_reason TEXT NOT NULL,
    reported_ts INTEGER NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT NOT NULL,
    state_since_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    metrics_ts INTEGER NOT NULL,
    bad_messages INTEGER NOT NULL,
    PRIMARY KEY (agent_id, device_id)
);
CREATE TABLE IF NOT EXISTS seq_state (
    agent_id TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS device_state_log (
    id INTEGER PRIMARY KEY,
    agent_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS device_state_log_by_device ON device_state_log (agent_id, device_id, ts);
CREATE INDEX IF NOT EXISTS device_state_log_by_ts ON device_state_log (ts);
"""


@dataclass(slots=True)
class StoredState:
    """Everything :meth:`HubStore.load` returns."""

    agents: list[AgentRecord]
    devices: list[DeviceRecord]
    seq_states: dict[str, dict[str, Any]]


@dataclass(slots=True)
class FlushBatch:
    """One write-behind transaction."""

    rows: DirtyRows
    seq_states: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.rows) or bool(self.seq_states)


class StoreLocked(RuntimeError):
    """Another hub process is using this data dir."""


class HubStore:
    """The SQLite database of the hub, driven from a single dedicated thread."""

    def __init__(self, data_dir: Path, *, state_log_retention_days: float = 90) -> None:
        self.path = data_dir / DB_FILE
        self.state_log_retention_days = state_log_retention_days
        self._thread = DbThread("hub-store")
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None

    async def open(self) -> None:
        """Create the thread, open (and create) the database."""
        self._thread.start()
        try:
            await self._run(self._open_blocking)
        except BaseException:
            self._thread.stop(wait=False)
            raise
        log.info("hub store open path=%s", self.path)

    async def load(self) -> StoredState:
        """Read the registry and seq tracking back."""
        return await self._run(self._load_blocking)

    async def write(self, batch: FlushBatch) -> None:
        """Write one batch in one transaction."""
        if batch:
            await self._run(self._write_blocking, batch)

    async def state_log(
        self, agent: str, device: str, *, since_ms: int = 0, limit: int = 1000
    ) -> list[StateLogEntry]:
        """A device's health transitions since ``since_ms``, oldest first."""
        return await self._run(self._state_log_blocking, agent, device, since_ms, limit)

    async def close(self) -> None:
        """Close the database and stop the thread."""
        if not self._thread.running:
            return
        await self._run(self._close_blocking)
        self._thread.stop()

    # blocking side (store thread only) -----------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._thread.run(fn, *args)

    def _open_blocking(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._db = self._connect()
        except BaseException:
            self._release_lock()
            raise

    def _take_lock(self) -> None:
        lock_path = self.path.parent / LOCK_FILE
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(
                f"another hub is running with data dir {self.path.parent} ({lock_path} is locked)"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            db.close()
            raise RuntimeError(f"{self.path}: schema version {version}, expected {SCHEMA_VERSION}")
        cutoff = now_ms() - int(self.state_log_retention_days * 86_400_000)
        db.execute("DELETE FROM device_state_log WHERE ts < ?", (cutoff,))
        return db

    def _close_blocking(self) -> None:
        db, self._db = self._db, None
        try:
            if db is not None:
                db.close()
        finally:
            self._release_lock()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("hub store is not open")
        return self._db

    def _load_blocking(self) -> StoredState:
        db = self._conn()
        agents = [_agent_from_row(r) for r in db.execute("SELECT * FROM agents ORDER BY agent_id")]
        devices = [
            _device_from_row(r)
            for r in db.execute("SELECT * FROM devices ORDER BY agent_id, device_id")
        ]
        seq_states = {
            agent: json.loads(state)
            for agent, state in db.execute("SELECT agent_id, state FROM seq_state")
        }
        return StoredState(agents, devices, seq_states)

    def _write_blocking(self, batch: FlushBatch) -> None:
        db = self._conn()
        rows = batch.rows
        with _transaction(db):
            db.executemany(
                f"INSERT OR REPLACE INTO agents VALUES ({', '.join('?' * 10)})",
                [_agent_to_row(a) for a in rows.agents],
            )
            db.executemany(
                "DELETE FROM devices WHERE agent_id = ? AND device_id = ?", rows.removed_devices
            )
            db.executemany(
                f"INSERT OR REPLACE INTO devices VALUES ({', '.join('?' * 17)})",
                [_device_to_row(d) for d in rows.devices],
            )
            db.executemany(
                "INSERT INTO device_state_log (agent_id, device_id, ts, state, reason)"
                " VALUES (?, ?, ?, ?, ?)",
                [(e.agent, e.device, e.ts, e.state.value, e.reason) for e in rows.state_log],
            )
            db.executemany(
                "INSERT OR REPLACE INTO seq_state VALUES (?, ?)",
                [(a, json.dumps(s, separators=(",", ":"))) for a, s in batch.seq_states.items()],
            )

    def _state_log_blocking(
        self, agent: str, device: str, since_ms: int, limit: int
    ) -> list[StateLogEntry]:
        rows = self._conn().execute(
            "SELECT agent_id, device_id, ts, state, reason FROM device_state_log"
            " WHERE agent_id = ? AND device_id = ? AND ts >= ? ORDER BY id LIMIT ?",
            (agent, device, since_ms, limit),
        )
        return [StateLogEntry(a, d, ts, HealthState(s), r) for a, d, ts, s, r in rows]


class _transaction:
    """``BEGIN`` … ``COMMIT`` (``ROLLBACK`` on error) for an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


class StoreFlusher:
    """Writes dirty registry rows and seq state to the store about once per ``interval_s``."""

    def __init__(
        self, store: HubStore, registry: Registry, seq: SeqTracker, *, interval_s: float = 1.0
    ) -> None:
        self._store = store
        self._registry = registry
        self._seq = seq
        self.interval_s = interval_s
        self._lock = asyncio.Lock()
        self._retry: FlushBatch | None = None
        self.flushes = 0
        self.failures = 0

    async def run(self) -> None:
        """Flush forever (cancel to stop; call :meth:`flush` once more after that)."""
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()

    async def flush(self) -> None:
        """Write what changed since the last flush; a failed batch is retried with the next one."""
        async with self._lock:
            batch = FlushBatch(self._registry.take_dirty(), self._seq.take_dirty())
            if self._retry is not None:
                batch = _merge(self._retry, batch)
                self._retry = None
            if not batch:
                return
            try:
                await self._store.write(batch)
            except Exception:
                self.failures += 1
                self._retry = batch
                log.exception("hub store write failed; will retry path=%s", self._store.path)
                return
            self.flushes += 1


def _merge(older: FlushBatch, newer: FlushBatch) -> FlushBatch:
    """One batch equivalent to writing ``older`` then ``newer``."""
    agents = {a.id: a for a in older.rows.agents} | {a.id: a for a in newer.rows.agents}
    devices = {d.key: d for d in older.rows.devices}
    removed = set(older.rows.removed_devices)
    for key in newer.rows.removed_devices:
        devices.pop(key, None)
        removed.add(key)
    for device in newer.rows.devices:
        devices[device.key] = device
        removed.discard(device.key)
    rows = DirtyRows(
        list(agents.values()),
        list(devices.values()),
        sorted(removed),
        older.rows.state_log + newer.rows.state_log,
    )
    return FlushBatch(rows, older.seq_states | newer.seq_states)


# row mapping ---------------------------------------------------------------------------------


def _agent_to_row(a: AgentRecord) -> tuple[Any, ...]:
    return (
        a.id,
        a.venue_id,
        a.venue_kind,
        a.venue_name,
        a.bdseq,
        int(a.online),
        a.last_birth_ms,
        a.last_seen_ms,
        a.version,
        a.last_death_bdseq,
    )


def _agent_from_row(r: tuple[Any, ...]) -> AgentRecord:
    return AgentRecord(
        id=r[0],
        venue_id=r[1],
        venue_kind=r[2],
        venue_name=r[3],
        bdseq=r[4],
        online=bool(r[5]),
        last_birth_ms=r[6],
        last_seen_ms=r[7],
        version=r[8],
        last_death_bdseq=r[9],
    )


def _device_to_row(d: DeviceRecord) -> tuple[Any, ...]:
    return (
        d.agent,
        d.id,
        d.kind,
        d.model,
        d.firmware,
        json.dumps(list(d.capabilities)),
        d.heartbeat_s,
        d.reported_state.value,
        d.reported_reason,
        d.reported_ts,
        d.state.value,
        d.state_reason,
        d.state_since_ms,
        d.last_seen_ms,
        json.dumps(d.metrics, separators=(",", ":")),
        d.metrics_ts,
        d.bad_messages,
    )


def _device_from_row(r: tuple[Any, ...]) -> DeviceRecord:
    return DeviceRecord(
        agent=r[0],
        id=r[1],
        kind=r[2],
        model=r[3],
        firmware=r[4],
        capabilities=tuple(json.loads(r[5])),
        heartbeat_s=r[6],
        reported_state=DeviceStatus(r[7]),
        reported_reason=r[8],
        reported_ts=r[9],
        state=HealthState(r[10]),
        state_reason=r[11],
        state_since_ms=r[12],
        last_seen_ms=r[13],
        metrics={k: float(v) for k, v in json.loads(r[14]).items()},
        metrics_ts=r[15],
        bad_messages=r[16],
    )
