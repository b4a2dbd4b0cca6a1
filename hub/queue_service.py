"""The litigation hall's queue: tickets, counters (windows), calls — persisted in ``queue.db``.

Everything lives in SQLite (WAL) in the hub's data dir and every operation is one transaction on
the queue's own :class:`~hub.db_thread.DbThread`: a restart loses nothing (reopen and continue),
and two counters can never call the same ticket (the select and the update of ``call_next`` run
in one ``BEGIN IMMEDIATE`` transaction on the single writer thread; a partial unique index also
allows at most one active ticket per counter).

Numbers: a letter prefix per service and a daily sequence, ``A001`` …, restarting at local
midnight in the court's time zone. Only today's tickets are called or shown; tickets of an
earlier day stay in the database as they were (the hall was closed).

Lifecycle: ``waiting`` → ``called`` (recalled up to ``max_recalls`` times) → ``serving`` →
``done``; from ``called``: ``no_show``; from ``called``/``serving``: ``held`` (parked; the counter
is free again) and transfer (back to ``waiting``). Every transition is stored with its UTC ms
timestamp in ``transitions``; ``wait_ms`` (issue → first call) and ``service_ms`` (start of
service, or the call when serving was never started → done) are kept on the ticket.

Rules:

* **Priority** (elderly, disabled): a counter takes the oldest priority ticket of its services
  before normal ones, but never more than ``priority_in_a_row`` (default 1) priority tickets in a
  row while a normal ticket waits — with the default, at most every other call is a priority
  one, so normal tickets are never starved.
* **Transfer** keeps the ticket's number and puts it at the **front** of the target queue (the
  litigant has waited once already; ``transfer_to_back`` in the config puts it at the back). A
  transfer to a counter is only called by that counter, before anything else it serves.
* **Hold/resume**: a held ticket stays bound to the counter that parked it; resume puts it back
  at the front of that counter's queue (it is that counter's next call), with its recalls reset.
* **Estimated wait** = position × average service time of the service's tickets done in the
  last 15 minutes (``default_service_s``, 60 s, before there is any) ÷ open counters serving the
  service (at least 1).
* **Issue** is idempotent by ``request_id`` (unique index): the same request gets the same
  ticket, with the same answer (position and estimate as at issue), never a second one.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from hub.db_thread import DbThread
from protocol.messages import now_ms

log = logging.getLogger(__name__)

DB_FILE: Final = "queue.db"
SCHEMA_VERSION: Final = 1
T = TypeVar("T")

Priority = Literal["normal", "elderly", "disabled"]
PRIORITIES: Final = ("normal", "elderly", "disabled")
#: ticket states; ``called`` and ``serving`` are "active" (bound to a counter)
STATES: Final = ("waiting", "called", "serving", "done", "no_show", "held")
ACTIVE: Final = ("called", "serving")


class ServiceSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One service of the hall: its code (as the kiosks send it), letter prefix, display name."""

    code: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{1,2}$")]
    name: str = ""
    #: other codes that mean this service (e.g. ``consultation`` for ``consult``)
    aliases: tuple[str, ...] = ()


class CounterSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One counter (window) and the services it serves; ``open`` is its state on first start."""

    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,16}$")]
    services: tuple[str, ...]
    open: bool = True
    #: the LED call display above this window, as ``agent/device`` ("" = none)
    display: str = ""


def _default_services() -> tuple[ServiceSpec, ...]:
    return (
        ServiceSpec(code="filing", prefix="A", name="立案"),
        ServiceSpec(code="consult", prefix="B", name="诉讼咨询", aliases=("consultation",)),
        ServiceSpec(code="payment", prefix="C", name="缴费"),
        ServiceSpec(code="materials", prefix="D", name="材料收转"),
    )


def _default_counters() -> tuple[CounterSpec, ...]:
    return (
        CounterSpec(id="1", services=("filing",)),
        CounterSpec(id="2", services=("filing", "consult")),
        CounterSpec(id="3", services=("consult", "payment")),
        CounterSpec(id="4", services=("payment", "materials")),
    )


class QueueConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[queue]`` of the hub config; every default works for one hall."""

    timezone: str = "Asia/Shanghai"
    services: tuple[ServiceSpec, ...] = msgspec.field(default_factory=_default_services)
    counters: tuple[CounterSpec, ...] = msgspec.field(default_factory=_default_counters)
    max_recalls: Annotated[int, msgspec.Meta(ge=0, le=20)] = 3
    priority_in_a_row: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    transfer_to_back: bool = False
    default_service_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    average_window_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0
    #: how many called tickets the "now calling" list of the snapshot shows
    now_calling: Annotated[int, msgspec.Meta(ge=1, le=100)] = 8
    #: LED panels of the hall board that show every call, as ``agent/device``
    board_displays: tuple[str, ...] = ()
    #: the ticket printer that prints each issued ticket, as ``agent/device`` ("" = none)
    ticket_printer: str = ""

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"queue.timezone: unknown time zone {self.timezone!r}") from None
        codes: set[str] = set()
        prefixes: set[str] = set()
        for s in self.services:
            for code in (s.code, *s.aliases):
                if code in codes:
                    raise ValueError(f"queue.services: service code {code!r} appears twice")
                codes.add(code)
            if s.prefix in prefixes:
                raise ValueError(f"queue.services: prefix {s.prefix!r} appears twice")
            prefixes.add(s.prefix)
        main = {s.code for s in self.services}
        seen: set[str] = set()
        for c in self.counters:
            if c.id in seen:
                raise ValueError(f"queue.counters: counter {c.id!r} appears twice")
            seen.add(c.id)
            unknown = sorted(set(c.services) - main)
            if unknown or not c.services:
                raise ValueError(
                    f"queue.counters: counter {c.id!r} serves unknown services {unknown}"
                )


def queue_config_from_dict(data: dict[str, Any]) -> QueueConfig:
    """Validate a ``[queue]`` table."""
    return msgspec.convert(data, QueueConfig)


class QueueError(Exception):
    """A queue operation that cannot be done; ``message`` is shown to the clerk or litigant."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Ticket:
    """A ticket as stored, plus the answer given at issue (``waiting_ahead``, estimate)."""

    id: int
    number: str
    service: str
    priority: str
    state: str
    counter: str | None
    target_counter: str | None
    day: str
    request_id: str | None
    source: str
    issued_at: int
    called_at: int | None
    serving_at: int | None
    done_at: int | None
    recalls: int
    wait_ms: int | None
    service_ms: int | None
    waiting_ahead: int
    estimated_wait_s: int


@dataclass(frozen=True, slots=True)
class Transition:
    """One stored state change of a ticket."""

    ticket_id: int
    ts: int
    from_state: str | None
    to_state: str
    counter: str | None
    note: str


@dataclass(frozen=True, slots=True)
class Calling:
    """A line of the hall board's "now calling" list: number and window only."""

    number: str
    counter: str
    service: str
    state: str
    called_at: int
    recalls: int


@dataclass(frozen=True, slots=True)
class CounterView:
    """A counter on the board: open or closed, its services, the number it is serving."""

    id: str
    open: bool
    services: tuple[str, ...]
    current: str | None


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """What the hall board shows (numbers and windows, never names)."""

    ts: int
    day: str
    now_calling: list[Calling]
    waiting: dict[str, int]
    estimated_wait_s: dict[str, int]
    counters: list[CounterView]
    held: int = 0


@dataclass(frozen=True, slots=True)
class QueueChange:
    """A live change for listeners: what happened, to which ticket, at which counter."""

    action: str
    ticket: Ticket | None
    counter: str | None = None


QueueListener = Callable[[QueueChange], None]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS tickets (
    id INTEGER PRIMARY KEY,
    day TEXT NOT NULL,
    prefix TEXT NOT NULL,
    seq INTEGER NOT NULL,
    number TEXT NOT NULL,
    service TEXT NOT NULL,
    priority TEXT NOT NULL,
    state TEXT NOT NULL,
    counter TEXT,
    target_counter TEXT,
    queue_key INTEGER NOT NULL,
    request_id TEXT,
    source TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    called_at INTEGER,
    serving_at INTEGER,
    done_at INTEGER,
    recalls INTEGER NOT NULL DEFAULT 0,
    wait_ms INTEGER,
    service_ms INTEGER,
    waiting_ahead INTEGER NOT NULL,
    estimated_wait_s INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS tickets_by_request ON tickets (request_id)
    WHERE request_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS tickets_by_number ON tickets (day, prefix, seq);
CREATE UNIQUE INDEX IF NOT EXISTS tickets_active_counter ON tickets (counter)
    WHERE state IN ('called', 'serving');
CREATE INDEX IF NOT EXISTS tickets_waiting ON tickets (day, state, service, queue_key);
CREATE INDEX IF NOT EXISTS tickets_done ON tickets (service, done_at);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY,
    ticket_id INTEGER NOT NULL REFERENCES tickets (id),
    ts INTEGER NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    counter TEXT,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS transitions_by_ticket ON transitions (ticket_id, id);
CREATE TABLE IF NOT EXISTS counters (
    id TEXT PRIMARY KEY,
    open INTEGER NOT NULL,
    priority_streak INTEGER NOT NULL DEFAULT 0,
    changed_at INTEGER NOT NULL
);
"""

_COLUMNS: Final = (
    "id, number, service, priority, state, counter, target_counter, day, request_id, source,"
    " issued_at, called_at, serving_at, done_at, recalls, wait_ms, service_ms, waiting_ahead,"
    " estimated_wait_s"
)


class QueueService:
    """The hall queue; create with :meth:`open`, end with :meth:`close` (see the module doc)."""

    def __init__(
        self, data_dir: Path, config: QueueConfig, *, clock: Callable[[], int] = now_ms
    ) -> None:
        self.path = data_dir / DB_FILE
        self.config = config
        self.clock = clock
        self.tz = ZoneInfo(config.timezone)
        self._thread = DbThread("hub-queue")
        self._db: sqlite3.Connection | None = None
        self._listeners: list[QueueListener] = []
        self._services = {s.code: s for s in config.services}
        self._aliases = {a: s.code for s in config.services for a in (s.code, *s.aliases)}
        self._counters = {c.id: c for c in config.counters}

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        config: QueueConfig | None = None,
        *,
        clock: Callable[[], int] = now_ms,
    ) -> QueueService:
        """Open (and create) ``data_dir/queue.db`` and return the running service."""
        service = cls(data_dir, config or QueueConfig(), clock=clock)
        service._thread.start()
        try:
            await service._thread.run(service._open_blocking)
        except BaseException:
            service._thread.stop(wait=False)
            raise
        log.info("queue open path=%s", service.path)
        return service

    async def close(self) -> None:
        """Close the database and stop the thread (idempotent)."""
        if not self._thread.running:
            return
        await self._thread.run(self._close_blocking)
        self._thread.stop()

    # listeners ---------------------------------------------------------------------------------
    def add_listener(self, listener: QueueListener) -> Callable[[], None]:
        """Call ``listener(change)`` on the loop after every change; returns an unsubscribe."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def _notify(self, action: str, ticket: Ticket | None, counter: str | None = None) -> None:
        change = QueueChange(action, ticket, counter)
        for listener in tuple(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("queue listener failed action=%s", action)

    # public API --------------------------------------------------------------------------------
    def service_code(self, service: str) -> str:
        """The configured code of ``service`` (aliases resolved); ``QueueError`` when unknown."""
        code = self._aliases.get(service)
        if code is None:
            raise QueueError("unknown_service", f"暂不提供“{service}”业务的取号，请咨询导服台。")
        return code

    async def issue(
        self,
        service: str,
        priority: str = "normal",
        request_id: str | None = None,
        source: str = "",
    ) -> Ticket:
        """Issue a ticket; the same ``request_id`` returns the ticket issued for it before."""
        code = self.service_code(service)
        if priority not in PRIORITIES:
            raise QueueError("bad_priority", f"未知的优先类别“{priority}”。")
        ticket, new = await self._run(self._issue_blocking, code, priority, request_id, source)
        if new:
            self._notify("issued", ticket)
        return ticket

    async def call_next(self, counter: str) -> Ticket | None:
        """Call the next ticket to ``counter`` (None when nobody waits for it)."""
        ticket = await self._run(self._call_next_blocking, self._counter(counter).id)
        if ticket is not None:
            self._notify("called", ticket, counter)
        return ticket

    async def recall(self, counter: str) -> Ticket:
        """Call the counter's called ticket again (at most ``max_recalls`` times)."""
        return await self._act(counter, "recall", self._recall_blocking)

    async def start_serving(self, counter: str) -> Ticket:
        """The called litigant arrived: ``called`` → ``serving``."""
        return await self._act(counter, "serving", self._serve_blocking)

    async def done(self, counter: str) -> Ticket:
        """The counter finished its ticket (from ``called`` or ``serving``)."""
        return await self._act(counter, "done", self._done_blocking)

    async def no_show(self, counter: str) -> Ticket:
        """The called litigant did not come: ``called`` → ``no_show``."""
        return await self._act(counter, "no_show", self._no_show_blocking)

    async def hold(self, counter: str) -> Ticket:
        """Park the counter's ticket (``held``); the counter is free for the next one."""
        return await self._act(counter, "held", self._hold_blocking)

    async def transfer(
        self, counter: str, *, to_service: str | None = None, to_counter: str | None = None
    ) -> Ticket:
        """Send the counter's ticket, with its number, to another service or counter."""
        if (to_service is None) == (to_counter is None):
            raise QueueError("bad_transfer", "请选择要转往的业务或窗口（二选一）。")
        code = self.service_code(to_service) if to_service is not None else None
        target = self._counter(to_counter).id if to_counter is not None else None
        self._counter(counter)

        def blocking() -> Ticket:
            return self._transfer_blocking(counter, code, target)

        return await self._act(counter, "transferred", lambda _c: blocking())

    async def resume(self, number: str) -> Ticket:
        """Put a held ticket of today (by number, e.g. ``A007``) back at the front of its queue."""
        ticket = await self._run(self._resume_blocking, number.strip().upper())
        self._notify("resumed", ticket, ticket.target_counter)
        return ticket

    async def open_counter(self, counter: str) -> None:
        """Open a counter: it calls tickets and counts for the estimates."""
        await self._run(self._set_open_blocking, self._counter(counter).id, True)
        self._notify("counter_opened", None, counter)

    async def close_counter(self, counter: str) -> None:
        """Close a counter (it must not have an active ticket)."""
        await self._run(self._set_open_blocking, self._counter(counter).id, False)
        self._notify("counter_closed", None, counter)

    async def snapshot(self) -> QueueSnapshot:
        """What the hall board shows now."""
        return await self._run(self._snapshot_blocking)

    async def ticket(self, ticket_id: int) -> Ticket | None:
        """One ticket by id."""
        return await self._run(self._ticket_blocking, ticket_id)

    async def current(self, counter: str) -> Ticket | None:
        """The counter's active (called or serving) ticket."""
        return await self._run(self._active_blocking, self._counter(counter).id)

    async def transitions(self, ticket_id: int) -> list[Transition]:
        """A ticket's stored transitions, oldest first."""
        return await self._run(self._transitions_blocking, ticket_id)

    # helpers on the loop -----------------------------------------------------------------------
    def _counter(self, counter: str) -> CounterSpec:
        spec = self._counters.get(counter)
        if spec is None:
            raise QueueError("unknown_counter", f"没有{counter}号窗口。")
        return spec

    async def _act(self, counter: str, action: str, fn: Callable[[str], Ticket]) -> Ticket:
        self._counter(counter)
        ticket = await self._run(fn, counter)
        self._notify(action, ticket, counter)
        return ticket

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await self._thread.run(fn, *args)
        except RuntimeError as exc:
            if not self._thread.running:
                raise QueueError("closed", "排队服务未启动。") from exc
            raise

    # blocking side (queue thread only) ------------------------------------------------------------
    def _open_blocking(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: schema version {version}, expected {SCHEMA_VERSION}"
                )
            now = self.clock()
            db.executemany(
                "INSERT OR IGNORE INTO counters (id, open, changed_at) VALUES (?, ?, ?)",
                [(c.id, int(c.open), now) for c in self.config.counters],
            )
        except BaseException:
            db.close()
            raise
        self._db = db

    def _close_blocking(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise QueueError("closed", "排队服务未启动。")
        return self._db

    def _today(self, ts: int) -> str:
        return datetime.fromtimestamp(ts / 1000, self.tz).date().isoformat()

    def _get(self, db: sqlite3.Connection, ticket_id: int) -> Ticket:
        row = db.execute(f"SELECT {_COLUMNS} FROM tickets WHERE id = ?", (ticket_id,)).fetchone()
        assert row is not None
        return Ticket(*row)

    def _ticket_blocking(self, ticket_id: int) -> Ticket | None:
        row = (
            self._conn()
            .execute(f"SELECT {_COLUMNS} FROM tickets WHERE id = ?", (ticket_id,))
            .fetchone()
        )
        return Ticket(*row) if row is not None else None

    def _active_blocking(self, counter: str) -> Ticket | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {_COLUMNS} FROM tickets WHERE counter = ? AND state IN ('called', 'serving')",
                (counter,),
            )
            .fetchone()
        )
        return Ticket(*row) if row is not None else None

    def _log(
        self,
        db: sqlite3.Connection,
        ticket_id: int,
        ts: int,
        from_state: str | None,
        to_state: str,
        *,
        counter: str | None,
        note: str = "",
    ) -> None:
        db.execute(
            "INSERT INTO transitions (ticket_id, ts, from_state, to_state, counter, note)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (ticket_id, ts, from_state, to_state, counter, note),
        )

    def _average_service_s(self, db: sqlite3.Connection, service: str, now: int) -> float:
        since = now - int(self.config.average_window_s * 1000)
        avg = db.execute(
            "SELECT AVG(service_ms) FROM tickets"
            " WHERE service = ? AND state = 'done' AND done_at >= ? AND service_ms IS NOT NULL",
            (service, since),
        ).fetchone()[0]
        return self.config.default_service_s if avg is None else float(avg) / 1000

    def _open_counters_for(self, db: sqlite3.Connection, service: str) -> int:
        open_ids = {r[0] for r in db.execute("SELECT id FROM counters WHERE open = 1")}
        return sum(1 for c in self.config.counters if c.id in open_ids and service in c.services)

    def _estimate_s(self, db: sqlite3.Connection, service: str, position: int, now: int) -> int:
        counters = max(1, self._open_counters_for(db, service))
        return round(position * self._average_service_s(db, service, now) / counters)

    def _issue_blocking(
        self, service: str, priority: str, request_id: str | None, source: str
    ) -> tuple[Ticket, bool]:
        db = self._conn()
        with _transaction(db):
            if request_id is not None:
                row = db.execute(
                    "SELECT id FROM tickets WHERE request_id = ?", (request_id,)
                ).fetchone()
                if row is not None:
                    return self._get(db, row[0]), False
            now = self.clock()
            day = self._today(now)
            prefix = self._services[service].prefix
            seq = (
                db.execute(
                    "SELECT COALESCE(MAX(seq), 0) FROM tickets WHERE day = ? AND prefix = ?",
                    (day, prefix),
                ).fetchone()[0]
                + 1
            )
            if seq > 999:
                raise QueueError("sold_out", "今日该业务号已发完，请明日再来或咨询导服台。")
            ahead = self._waiting_ahead(db, day, service, priority)
            ewt = self._estimate_s(db, service, ahead, now)
            key = db.execute("SELECT COALESCE(MAX(queue_key), 0) + 1 FROM tickets").fetchone()[0]
            cur = db.execute(
                "INSERT INTO tickets (day, prefix, seq, number, service, priority, state,"
                " queue_key, request_id, source, issued_at, waiting_ahead, estimated_wait_s)"
                " VALUES (?, ?, ?, ?, ?, ?, 'waiting', ?, ?, ?, ?, ?, ?)",
                (
                    day,
                    prefix,
                    seq,
                    f"{prefix}{seq:03d}",
                    service,
                    priority,
                    key,
                    request_id,
                    source,
                    now,
                    ahead,
                    ewt,
                ),
            )
            assert cur.lastrowid is not None
            self._log(db, cur.lastrowid, now, None, "issued", counter=None, note=source)
            self._log(db, cur.lastrowid, now, "issued", "waiting", counter=None)
            return self._get(db, cur.lastrowid), True

    def _waiting_ahead(self, db: sqlite3.Connection, day: str, service: str, priority: str) -> int:
        """Tickets of ``service`` a new ticket waits behind (priority: only priority ones)."""
        sql = "SELECT COUNT(*) FROM tickets WHERE day = ? AND state = 'waiting' AND service = ?"
        if priority != "normal":
            sql += " AND priority != 'normal'"
        return int(db.execute(sql, (day, service)).fetchone()[0])

    def _require_open(self, db: sqlite3.Connection, counter: str) -> int:
        row = db.execute(
            "SELECT open, priority_streak FROM counters WHERE id = ?", (counter,)
        ).fetchone()
        if row is None or not row[0]:
            raise QueueError("counter_closed", f"{counter}号窗口未开放，请先开窗。")
        return int(row[1])

    def _call_next_blocking(self, counter: str) -> Ticket | None:
        db = self._conn()
        with _transaction(db):
            streak = self._require_open(db, counter)
            if self._active_row(db, counter) is not None:
                raise QueueError(
                    "counter_busy", "本窗口还有未办结的号，请先办结、过号、挂起或转移。"
                )
            now = self.clock()
            day = self._today(now)
            services = self._counters[counter].services
            marks = ", ".join("?" * len(services))
            base = (
                f"SELECT id, priority FROM tickets WHERE day = ? AND state = 'waiting'"
                f" AND target_counter IS NULL AND service IN ({marks})"
            )
            targeted = db.execute(
                "SELECT id, priority FROM tickets WHERE day = ? AND state = 'waiting'"
                " AND target_counter = ? ORDER BY queue_key LIMIT 1",
                (day, counter),
            ).fetchone()
            pick = targeted
            if pick is None:
                prio = db.execute(
                    base + " AND priority != 'normal' ORDER BY queue_key LIMIT 1", (day, *services)
                ).fetchone()
                normal = db.execute(
                    base + " AND priority = 'normal' ORDER BY queue_key LIMIT 1", (day, *services)
                ).fetchone()
                if prio is not None and (normal is None or streak < self.config.priority_in_a_row):
                    pick = prio
                else:
                    pick = normal
            if pick is None:
                return None
            ticket_id, priority = pick
            new_streak = streak + 1 if priority != "normal" else 0
            db.execute(
                "UPDATE counters SET priority_streak = ? WHERE id = ?", (new_streak, counter)
            )
            cur = db.execute(
                "UPDATE tickets SET state = 'called', counter = ?, target_counter = NULL,"
                " called_at = ?, recalls = 0, wait_ms = COALESCE(wait_ms, ? - issued_at)"
                " WHERE id = ? AND state = 'waiting'",
                (counter, now, now, ticket_id),
            )
            if cur.rowcount != 1:  # cannot happen on the single writer; never call twice
                raise QueueError("conflict", "该号已被其他窗口呼叫，请重试。")
            self._log(db, ticket_id, now, "waiting", "called", counter=counter)
            return self._get(db, ticket_id)

    def _active_row(self, db: sqlite3.Connection, counter: str) -> tuple[int, str, int] | None:
        row = db.execute(
            "SELECT id, state, recalls FROM tickets"
            " WHERE counter = ? AND state IN ('called', 'serving')",
            (counter,),
        ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]), int(row[2]))

    def _need_active(
        self, db: sqlite3.Connection, counter: str, allowed: tuple[str, ...], what: str
    ) -> tuple[int, str, int]:
        row = self._active_row(db, counter)
        if row is None:
            raise QueueError("no_ticket", f"本窗口当前没有已呼叫的号，无法{what}。")
        if row[1] not in allowed:
            names = {"called": "已呼叫", "serving": "办理中"}
            raise QueueError(
                "bad_state", f"当前号处于“{names.get(row[1], row[1])}”状态，无法{what}。"
            )
        return row

    def _recall_blocking(self, counter: str) -> Ticket:
        db = self._conn()
        with _transaction(db):
            ticket_id, _state, recalls = self._need_active(db, counter, ("called",), "重呼")
            if recalls >= self.config.max_recalls:
                raise QueueError("recall_limit", f"已重呼{recalls}次，请标记过号（未到）或挂起。")
            now = self.clock()
            db.execute("UPDATE tickets SET recalls = recalls + 1 WHERE id = ?", (ticket_id,))
            self._log(
                db,
                ticket_id,
                now,
                "called",
                "called",
                counter=counter,
                note=f"recall {recalls + 1}",
            )
            return self._get(db, ticket_id)

    def _serve_blocking(self, counter: str) -> Ticket:
        db = self._conn()
        with _transaction(db):
            ticket_id, _s, _r = self._need_active(db, counter, ("called",), "开始办理")
            now = self.clock()
            db.execute(
                "UPDATE tickets SET state = 'serving', serving_at = ? WHERE id = ?",
                (now, ticket_id),
            )
            self._log(db, ticket_id, now, "called", "serving", counter=counter)
            return self._get(db, ticket_id)

    def _done_blocking(self, counter: str) -> Ticket:
        db = self._conn()
        with _transaction(db):
            ticket_id, state, _r = self._need_active(db, counter, ACTIVE, "办结")
            now = self.clock()
            db.execute(
                "UPDATE tickets SET state = 'done', done_at = ?,"
                " service_ms = ? - COALESCE(serving_at, called_at) WHERE id = ?",
                (now, now, ticket_id),
            )
            self._log(db, ticket_id, now, state, "done", counter=counter)
            return self._get(db, ticket_id)

    def _no_show_blocking(self, counter: str) -> Ticket:
        db = self._conn()
        with _transaction(db):
            ticket_id, _s, _r = self._need_active(db, counter, ("called",), "标记过号")
            now = self.clock()
            db.execute(
                "UPDATE tickets SET state = 'no_show', done_at = ? WHERE id = ?", (now, ticket_id)
            )
            self._log(db, ticket_id, now, "called", "no_show", counter=counter)
            return self._get(db, ticket_id)

    def _hold_blocking(self, counter: str) -> Ticket:
        db = self._conn()
        with _transaction(db):
            ticket_id, state, _r = self._need_active(db, counter, ACTIVE, "挂起")
            now = self.clock()
            db.execute(
                "UPDATE tickets SET state = 'held', target_counter = counter, counter = NULL"
                " WHERE id = ?",
                (ticket_id,),
            )
            self._log(db, ticket_id, now, state, "held", counter=counter)
            return self._get(db, ticket_id)

    def _requeue_key(self, db: sqlite3.Connection, day: str, front: bool) -> int:
        agg = "MIN(queue_key) - 1" if front else "MAX(queue_key) + 1"
        row = db.execute(
            f"SELECT {agg} FROM tickets WHERE day = ? AND state = 'waiting'", (day,)
        ).fetchone()
        if row[0] is not None:
            return int(row[0])
        return int(db.execute("SELECT COALESCE(MAX(queue_key), 0) + 1 FROM tickets").fetchone()[0])

    def _transfer_blocking(
        self, counter: str, to_service: str | None, to_counter: str | None
    ) -> Ticket:
        db = self._conn()
        with _transaction(db):
            ticket_id, state, _r = self._need_active(db, counter, ACTIVE, "转移")
            if to_counter == counter:
                raise QueueError("bad_transfer", "不能转到本窗口。")
            now = self.clock()
            key = self._requeue_key(db, self._today(now), not self.config.transfer_to_back)
            if to_service is not None:
                db.execute(
                    "UPDATE tickets SET state = 'waiting', service = ?, counter = NULL,"
                    " target_counter = NULL, queue_key = ?, recalls = 0 WHERE id = ?",
                    (to_service, key, ticket_id),
                )
                note = f"to service {to_service}"
            else:
                db.execute(
                    "UPDATE tickets SET state = 'waiting', counter = NULL, target_counter = ?,"
                    " queue_key = ?, recalls = 0 WHERE id = ?",
                    (to_counter, key, ticket_id),
                )
                note = f"to counter {to_counter}"
            self._log(db, ticket_id, now, state, "waiting", counter=counter, note=note)
            return self._get(db, ticket_id)

    def _resume_blocking(self, number: str) -> Ticket:
        db = self._conn()
        with _transaction(db):
            now = self.clock()
            day = self._today(now)
            row = db.execute(
                "SELECT id, state FROM tickets WHERE day = ? AND number = ?", (day, number)
            ).fetchone()
            if row is None:
                raise QueueError("no_such_ticket", f"今天没有{number}号。")
            if row[1] != "held":
                raise QueueError("bad_state", f"{number}号未挂起，无法恢复。")
            key = self._requeue_key(db, day, front=True)
            db.execute(
                "UPDATE tickets SET state = 'waiting', queue_key = ?, recalls = 0 WHERE id = ?",
                (key, row[0]),
            )
            self._log(db, row[0], now, "held", "waiting", counter=None, note="resumed")
            return self._get(db, row[0])

    def _set_open_blocking(self, counter: str, is_open: bool) -> None:
        db = self._conn()
        with _transaction(db):
            if not is_open and self._active_row(db, counter) is not None:
                raise QueueError("counter_busy", "本窗口还有未办结的号，请先办结后再关窗。")
            db.execute(
                "UPDATE counters SET open = ?, changed_at = ?, priority_streak = 0 WHERE id = ?",
                (int(is_open), self.clock(), counter),
            )

    def _snapshot_blocking(self) -> QueueSnapshot:
        db = self._conn()
        with _transaction(db):
            now = self.clock()
            day = self._today(now)
            calling = [
                Calling(*row)
                for row in db.execute(
                    "SELECT number, counter, service, state, called_at, recalls FROM tickets"
                    " WHERE day = ? AND state IN ('called', 'serving')"
                    " ORDER BY called_at DESC, id DESC LIMIT ?",
                    (day, self.config.now_calling),
                )
            ]
            waiting = {s.code: 0 for s in self.config.services}
            for service, count in db.execute(
                "SELECT service, COUNT(*) FROM tickets WHERE day = ? AND state = 'waiting'"
                " GROUP BY service",
                (day,),
            ):
                waiting[service] = int(count)
            ewt = {s: self._estimate_s(db, s, n, now) for s, n in waiting.items()}
            open_ids = {r[0]: bool(r[1]) for r in db.execute("SELECT id, open FROM counters")}
            current = dict(
                db.execute(
                    "SELECT counter, number FROM tickets WHERE state IN ('called', 'serving')"
                ).fetchall()
            )
            held = db.execute(
                "SELECT COUNT(*) FROM tickets WHERE day = ? AND state = 'held'", (day,)
            ).fetchone()[0]
            counters = [
                CounterView(c.id, open_ids.get(c.id, False), c.services, current.get(c.id))
                for c in self.config.counters
            ]
            return QueueSnapshot(now, day, calling, waiting, ewt, counters, int(held))

    def _transitions_blocking(self, ticket_id: int) -> list[Transition]:
        rows = self._conn().execute(
            "SELECT ticket_id, ts, from_state, to_state, counter, note FROM transitions"
            " WHERE ticket_id = ? ORDER BY id",
            (ticket_id,),
        )
        return [Transition(*row) for row in rows]


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error) for an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
