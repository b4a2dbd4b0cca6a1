"""The durable outbox on its own (no broker)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edge_agents.outbox import Outbox, OutboxClosed


def payload(seq: int) -> bytes:
    return f'{{"seq":{seq}}}'.encode()


async def test_seq_is_monotonic_persisted_and_never_reused(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path, 100)
    seqs = [await box.append("t", payload, live=True) for _ in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    assert await box.ack(seqs) == 5  # outbox now empty
    assert box.pending() == 0
    await box.close()

    again = await Outbox.open(tmp_path, 100)
    assert again.next_seq == 5  # survives an empty outbox (meta counter)
    assert await again.append("t", payload, live=True) == 5
    await again.close()


async def test_rows_peek_in_order_and_ack_deletes(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path, 100)
    for i in range(6):
        await box.append(f"topic/{i}", payload, live=i % 2 == 0)
    rows = await box.peek(4)
    assert [r.seq for r in rows] == [0, 1, 2, 3]
    assert rows[1].topic == "topic/1" and rows[1].payload == payload(1)
    assert [r.live for r in rows] == [True, False, True, False]
    assert [r.seq for r in await box.peek(10, after=3)] == [4, 5]
    assert await box.ack([0, 2, 99]) == 2  # unknown seqs are ignored
    assert [r.seq for r in await box.peek(10)] == [1, 3, 4, 5]
    assert box.pending() == 4
    assert await box.demote_live() == 1  # only seq 4 was still live
    assert not any(r.live for r in await box.peek(10))
    await box.close()


async def test_bounded_outbox_drops_oldest_and_persists_the_count(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path, 3)
    for _ in range(10):
        await box.append("t", payload, live=False)
    assert box.pending() == 3
    assert box.dropped == 7
    assert [r.seq for r in await box.peek(10)] == [7, 8, 9]
    await box.close()

    again = await Outbox.open(tmp_path, 3)
    assert (again.dropped, again.pending(), again.next_seq) == (7, 3, 10)
    await again.close()


async def test_bdseq_is_persisted(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path, 10)
    assert await box.bump_bdseq() == 1
    assert await box.bump_bdseq() == 2
    await box.close()
    again = await Outbox.open(tmp_path, 10)
    assert again.bdseq == 2
    assert again.bump_bdseq_blocking() == 3  # from a non-loop thread in real use
    await again.close()


async def test_all_sqlite_work_runs_on_one_worker_thread(tmp_path: Path) -> None:
    threads: set[int] = set()

    def build(seq: int) -> bytes:
        threads.add(threading.get_ident())
        return payload(seq)

    box = await Outbox.open(tmp_path, 10)
    for _ in range(5):
        await box.append("t", build, live=True)
    futures = [box.append_nowait("t", build, live=True) for _ in range(5)]
    assert [f.result(5) for f in futures] == [5, 6, 7, 8, 9]  # FIFO with the async calls
    assert len(threads) == 1
    assert threading.get_ident() not in threads
    await box.close()


async def test_a_failing_payload_builder_consumes_no_seq(tmp_path: Path) -> None:
    def broken(seq: int) -> bytes:
        raise ValueError("cannot encode")

    box = await Outbox.open(tmp_path, 10)
    with pytest.raises(ValueError):
        await box.append("t", broken, live=True)
    assert await box.append("t", payload, live=True) == 0
    await box.close()


async def test_closed_outbox_refuses_work(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path, 10)
    await box.close()
    with pytest.raises(OutboxClosed):
        await box.append("t", payload, live=True)
    await box.close()  # idempotent


async def test_uses_wal(tmp_path: Path) -> None:
    import sqlite3

    box = await Outbox.open(tmp_path, 10)
    await box.append("t", payload, live=True)
    await box.close()
    with sqlite3.connect(box.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
