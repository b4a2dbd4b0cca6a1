"""The hall queue: lifecycle, rules, numbering, estimates, idempotency, restarts, concurrency."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import pytest

from hub.queue_service import (
    CounterSpec,
    QueueChange,
    QueueConfig,
    QueueError,
    QueueService,
    queue_config_from_dict,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")


class Clock:
    """A fake UTC-ms clock."""

    def __init__(self, local: datetime) -> None:
        self.ms = int(local.replace(tzinfo=SHANGHAI).timestamp() * 1000)

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 11, 23, 9, 0))


@pytest.fixture
async def queue(tmp_path: Path, clock: Clock) -> AsyncIterator[QueueService]:
    q = await QueueService.open(tmp_path / "hub", QueueConfig(), clock=clock)
    yield q
    await q.close()


async def test_lifecycle_with_every_transition_timestamped(
    queue: QueueService, clock: Clock
) -> None:
    changes: list[QueueChange] = []
    queue.add_listener(changes.append)
    t = await queue.issue("filing", "normal", "r1", "kiosk:hall-1/k1")
    assert (t.number, t.state, t.waiting_ahead, t.estimated_wait_s) == ("A001", "waiting", 0, 0)
    clock.advance(120)
    called = await queue.call_next("1")
    assert called is not None and called.id == t.id and called.state == "called"
    assert called.wait_ms == 120_000
    clock.advance(10)
    assert (await queue.start_serving("1")).state == "serving"
    clock.advance(300)
    done = await queue.done("1")
    assert done.state == "done" and done.service_ms == 300_000
    steps = await queue.transitions(t.id)
    assert [(s.from_state, s.to_state) for s in steps] == [
        (None, "issued"),
        ("issued", "waiting"),
        ("waiting", "called"),
        ("called", "serving"),
        ("serving", "done"),
    ]
    assert [s.ts - steps[0].ts for s in steps] == [0, 0, 120_000, 130_000, 430_000]
    assert [c.action for c in changes] == ["issued", "called", "serving", "done"]
    assert await queue.call_next("1") is None


async def test_bad_operations_raise_queue_errors_with_a_message(queue: QueueService) -> None:
    with pytest.raises(QueueError) as err:
        await queue.done("1")
    assert err.value.code == "no_ticket" and "没有" in err.value.message
    with pytest.raises(QueueError, match="没有9号窗口"):
        await queue.call_next("9")
    with pytest.raises(QueueError) as unknown:
        await queue.issue("divorce")
    assert unknown.value.code == "unknown_service"
    await queue.issue("filing")
    await queue.call_next("1")
    with pytest.raises(QueueError) as busy:
        await queue.call_next("1")
    assert busy.value.code == "counter_busy"
    await queue.start_serving("1")
    with pytest.raises(QueueError, match="办理中"):
        await queue.no_show("1")
    with pytest.raises(QueueError, match="先办结"):
        await queue.close_counter("1")


async def test_recall_limit_then_no_show(queue: QueueService) -> None:
    t = await queue.issue("consult")
    assert t.number == "B001"
    await queue.call_next("2")
    for n in (1, 2, 3):
        assert (await queue.recall("2")).recalls == n
    with pytest.raises(QueueError) as err:
        await queue.recall("2")
    assert err.value.code == "recall_limit"
    gone = await queue.no_show("2")
    assert gone.state == "no_show" and gone.counter == "2"
    steps = [(s.to_state, s.note) for s in await queue.transitions(t.id)]
    assert steps[-4:] == [
        ("called", "recall 1"),
        ("called", "recall 2"),
        ("called", "recall 3"),
        ("no_show", ""),
    ]


async def test_transfer_keeps_the_number_and_goes_to_the_front(queue: QueueService) -> None:
    a1 = await queue.issue("filing")
    await queue.issue("payment")  # C001 waits for payment
    await queue.call_next("1")
    moved = await queue.transfer("1", to_service="payment")
    assert (moved.number, moved.service, moved.state) == ("A001", "payment", "waiting")
    nxt = await queue.call_next("4")
    assert nxt is not None and nxt.id == a1.id, "a transferred ticket goes ahead of C001"
    # to a counter: only that counter calls it, before its own queue
    await queue.issue("consult")  # B001
    moved = await queue.transfer("4", to_counter="3")
    assert moved.target_counter == "3"
    assert await queue.call_next("2") is not None  # counter 2 gets B001, not the transfer
    again = await queue.call_next("3")
    assert again is not None and again.number == "A001" and again.counter == "3"
    with pytest.raises(QueueError):
        await queue.transfer("3")


async def test_transfer_to_back_when_configured(tmp_path: Path, clock: Clock) -> None:
    q = await QueueService.open(tmp_path, QueueConfig(transfer_to_back=True), clock=clock)
    try:
        await q.issue("filing")
        await q.issue("filing")
        await q.call_next("1")
        await q.transfer("1", to_service="filing")
        nxt = await q.call_next("2")
        assert nxt is not None and nxt.number == "A002", "a transfer to the back waits behind A002"
    finally:
        await q.close()


async def test_hold_and_resume(queue: QueueService) -> None:
    await queue.issue("filing")
    await queue.issue("filing")
    await queue.call_next("1")
    held = await queue.hold("1")
    assert held.state == "held" and held.counter is None
    assert (await queue.snapshot()).held == 1
    b = await queue.call_next("1")
    assert b is not None and b.number == "A002", "the counter is free after a hold"
    await queue.done("1")
    with pytest.raises(QueueError, match="未挂起"):
        await queue.resume("A002")
    resumed = await queue.resume("a001")
    assert resumed.state == "waiting"
    again = await queue.call_next("1")
    assert again is not None and again.number == "A001" and again.recalls == 0


async def test_priority_goes_first_but_at_most_every_other_call(queue: QueueService) -> None:
    for _ in range(3):
        await queue.issue("filing", "normal")
    for p in ("elderly", "disabled", "elderly"):
        await queue.issue("filing", p)
    order = []
    for _ in range(6):
        t = await queue.call_next("1")
        assert t is not None
        order.append((t.number, t.priority))
        await queue.done("1")
    assert order == [
        ("A004", "elderly"),
        ("A001", "normal"),
        ("A005", "disabled"),
        ("A002", "normal"),
        ("A006", "elderly"),
        ("A003", "normal"),
    ]


async def test_priority_tickets_in_a_row_when_no_normal_waits(queue: QueueService) -> None:
    await queue.issue("filing", "elderly")
    await queue.issue("filing", "disabled")
    first = await queue.call_next("1")
    await queue.done("1")
    second = await queue.call_next("1")
    assert first is not None and second is not None
    assert (first.number, second.number) == ("A001", "A002")


async def test_numbering_restarts_at_local_midnight(queue: QueueService, clock: Clock) -> None:
    clock.ms = Clock(datetime(2026, 11, 23, 23, 59, 30)).ms
    late = [await queue.issue("filing") for _ in range(2)]
    assert [t.number for t in late] == ["A001", "A002"]
    assert (await queue.issue("payment")).number == "C001"
    clock.advance(60)  # 00:00:30 in Shanghai, still 16:00 UTC of the day before
    assert datetime.fromtimestamp(clock.ms / 1000, SHANGHAI).day == 24
    early = await queue.issue("filing")
    assert early.number == "A001" and early.day == "2026-11-24"
    snap = await queue.snapshot()
    assert snap.waiting["filing"] == 1, "yesterday's tickets are not today's queue"
    called = await queue.call_next("1")
    assert called is not None and called.id == early.id


async def test_estimated_wait_default_then_rolling_average(
    queue: QueueService, clock: Clock
) -> None:
    await queue.close_counter("2")  # filing: counter 1 only
    first = await queue.issue("filing")
    assert first.estimated_wait_s == 0
    second = await queue.issue("filing")
    assert (second.waiting_ahead, second.estimated_wait_s) == (1, 60), "60 s before any data"
    await queue.open_counter("2")
    third = await queue.issue("filing")
    assert (third.waiting_ahead, third.estimated_wait_s) == (2, 60), "2 × 60 s ÷ 2 counters"
    for service_s in (100, 200):
        await queue.call_next("1")
        await queue.start_serving("1")
        clock.advance(service_s)
        await queue.done("1")
    snap = await queue.snapshot()
    assert snap.waiting["filing"] == 1
    assert snap.estimated_wait_s["filing"] == 75, "1 × 150 s ÷ 2 counters"
    assert snap.estimated_wait_s["payment"] == 0
    clock.advance(16 * 60)  # both services are older than 15 minutes
    assert (await queue.snapshot()).estimated_wait_s["filing"] == 30


async def test_issue_is_idempotent_by_request_id(queue: QueueService, tmp_path: Path) -> None:
    first = await queue.issue("filing", "normal", "req-1", "kiosk")
    await queue.issue("filing")
    again = await queue.issue("filing", "normal", "req-1", "kiosk")
    assert again == first
    same = await asyncio.gather(*(queue.issue("consult", "normal", "req-2") for _ in range(20)))
    assert {t.id for t in same} == {same[0].id}
    db = sqlite3.connect(tmp_path / "hub" / "queue.db")
    try:
        assert db.execute("SELECT COUNT(*) FROM tickets").fetchone()[0] == 3
        with pytest.raises(sqlite3.IntegrityError):
            db.execute(
                "INSERT INTO tickets (day, prefix, seq, number, service, priority, state,"
                " queue_key, request_id, source, issued_at, waiting_ahead, estimated_wait_s)"
                " VALUES ('d', 'Z', 1, 'Z001', 'filing', 'normal', 'waiting', 0, 'req-1', '',"
                " 0, 0, 0)"
            )
    finally:
        db.close()


async def test_restart_mid_queue_keeps_every_ticket_and_state(tmp_path: Path, clock: Clock) -> None:
    q = await QueueService.open(tmp_path, QueueConfig(), clock=clock)
    for i in range(4):
        await q.issue("filing", "normal", f"r{i}")
    await q.call_next("1")
    await q.recall("1")
    await q.call_next("2")
    await q.start_serving("2")
    await q.close_counter("3")
    before = await q.snapshot()
    await q.close()

    q = await QueueService.open(tmp_path, QueueConfig(), clock=clock)
    try:
        assert await q.snapshot() == before
        current = await q.current("1")
        assert current is not None and current.number == "A001" and current.recalls == 1
        assert (await q.issue("filing", "normal", "r3")).number == "A004"
        assert (await q.issue("filing")).number == "A005"
        assert (await q.done("2")).number == "A002"
        nxt = await q.call_next("2")
        assert nxt is not None and nxt.number == "A003"
        with pytest.raises(QueueError, match="未开放"):
            await q.call_next("3")
    finally:
        await q.close()


async def test_two_counters_never_call_the_same_ticket(queue: QueueService) -> None:
    called: list[int] = []
    for _ in range(40):
        await asyncio.gather(*(queue.issue("filing") for _ in range(3)))
        results = await asyncio.gather(queue.call_next("1"), queue.call_next("2"))
        ids = [t.id for t in results if t is not None]
        assert len(ids) == 2 and ids[0] != ids[1]
        called.extend(ids)
        await asyncio.gather(queue.done("1"), queue.done("2"))
    assert len(called) == len(set(called)) == 80
    snap = await queue.snapshot()
    assert snap.waiting["filing"] == 40


async def test_snapshot_shows_numbers_and_windows_only(queue: QueueService, clock: Clock) -> None:
    await queue.issue("filing")
    await queue.issue("consult")
    await queue.call_next("1")
    clock.advance(5)
    await queue.call_next("3")
    snap = await queue.snapshot()
    assert [(c.number, c.counter) for c in snap.now_calling] == [("B001", "3"), ("A001", "1")]
    assert {c.id: c.current for c in snap.counters} == {
        "1": "A001",
        "2": None,
        "3": "B001",
        "4": None,
    }
    encoded = msgspec.json.encode(snap).decode()
    assert "kiosk" not in encoded and "request" not in encoded


def test_config_is_validated() -> None:
    config = queue_config_from_dict({"timezone": "Asia/Shanghai", "max_recalls": 2})
    assert config.max_recalls == 2 and config.services[1].prefix == "B"
    with pytest.raises(msgspec.ValidationError, match="time zone"):
        queue_config_from_dict({"timezone": "Mars/Olympus"})
    with pytest.raises(ValueError, match="unknown services"):
        QueueConfig(counters=(CounterSpec(id="1", services=("nothing",)),))
    with pytest.raises(msgspec.ValidationError, match="unknown services"):
        queue_config_from_dict({"counters": [{"id": "1", "services": ["nothing"]}]})


async def test_consultation_is_an_alias_of_consult(queue: QueueService) -> None:
    t = await queue.issue("consultation")
    assert (t.service, t.number) == ("consult", "B001")
