"""The durable spool: order, bounds, restarts, torn and corrupt records, kill -9 of a writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections import deque
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.telemetry_spool import HEADER_SIZE, Spool


def _open(path: Path, **kwargs: int) -> Spool:
    spool = Spool(path, max_bytes=kwargs.pop("max_bytes", 1 << 20), **kwargs)
    spool.open()
    return spool


def _drain(spool: Spool, max_count: int = 1000) -> list[bytes]:
    out: list[bytes] = []
    while (chunk := spool.peek(max_count)) is not None:
        out.extend(chunk.payloads)
        spool.advance(chunk.end)
    return out


def _segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def test_records_come_back_in_order_and_only_once_advanced(tmp_path: Path) -> None:
    spool = _open(tmp_path / "s")
    for i in range(10):
        assert spool.append(f"rec-{i}".encode(), count=i + 1) is not None
    assert spool.pending_count == sum(range(1, 11))
    first = spool.peek(max_count=3)
    assert first is not None
    # a peek does not consume: the same records come again
    again = spool.peek(max_count=3)
    assert again == first
    assert first.payloads == (b"rec-0", b"rec-1")  # counts 1 + 2 fit in 3, 3 more would not
    spool.advance(first.end)
    assert spool.pending_count == sum(range(3, 11))
    assert _drain(spool) == [f"rec-{i}".encode() for i in range(2, 10)]
    assert spool.is_empty and spool.pending_count == 0 and spool.pending_bytes == 0
    # a drained spool keeps no segment files
    assert _segments(tmp_path / "s") == []
    spool.close()


def test_a_record_larger_than_max_count_still_comes_alone(tmp_path: Path) -> None:
    spool = _open(tmp_path / "s")
    spool.append(b"big", count=5000)
    spool.append(b"small", count=1)
    chunk = spool.peek(max_count=10)
    assert chunk is not None and chunk.payloads == (b"big",) and chunk.count == 5000
    spool.close()


def test_cursor_and_records_survive_reopen(tmp_path: Path) -> None:
    spool = _open(tmp_path / "s", segment_bytes=64)
    for i in range(20):
        spool.append(f"r{i:02d}".encode(), count=1)
    chunk = spool.peek(max_count=7)
    assert chunk is not None
    spool.advance(chunk.end)
    sent = len(chunk.payloads)
    spool.close()

    reopened = _open(tmp_path / "s", segment_bytes=64)
    assert reopened.pending_count == 20 - sent
    reopened.append(b"new", count=1)
    assert _drain(reopened) == [f"r{i:02d}".encode() for i in range(sent, 20)] + [b"new"]
    reopened.close()


def test_segments_roll_and_consumed_ones_are_deleted(tmp_path: Path) -> None:
    spool = _open(tmp_path / "s", segment_bytes=100)
    for i in range(30):
        spool.append(bytes([i]) * 20, count=1)
    assert len(_segments(tmp_path / "s")) >= 5
    chunk = spool.peek(max_count=1000)  # one segment per peek
    assert chunk is not None
    spool.advance(chunk.end)
    spool.peek(max_count=1000)  # moving past the consumed segment deletes it
    assert spool.disk_bytes < 30 * (20 + HEADER_SIZE)
    assert _drain(spool)[0] == bytes([len(chunk.payloads)]) * 20
    spool.close()


def test_full_spool_refuses_and_frees_space_after_replay(tmp_path: Path) -> None:
    record = 100
    spool = _open(tmp_path / "s", max_bytes=10 * (record + HEADER_SIZE), segment_bytes=300)
    stored = 0
    while spool.append(b"x" * record, count=1) is not None:
        stored += 1
    assert stored == 10
    assert spool.disk_bytes <= spool.max_bytes
    _drain(spool)
    assert spool.append(b"y" * record, count=1) is not None
    spool.close()


def test_torn_last_record_is_cut_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = _open(tmp_path / "s")
    for i in range(3):
        spool.append(f"record-{i}".encode() * 10, count=10)
    spool.close()
    seg = _segments(tmp_path / "s")[0]
    seg.write_bytes(seg.read_bytes()[:-7])  # the last write torn by a power cut

    reopened = _open(tmp_path / "s")
    assert reopened.torn_records == 1
    assert reopened.pending_count == 20
    assert "torn tail" in caplog.text
    reopened.append(b"after", count=1)
    assert _drain(reopened) == [b"record-0" * 10, b"record-1" * 10, b"after"]
    reopened.close()


def test_garbage_and_half_header_tails_are_cut(tmp_path: Path) -> None:
    for tail in (b"\x00" * 5, os.urandom(200), b"CHS1\xff\xff"):
        path = tmp_path / f"s{len(tail)}"
        spool = _open(path)
        spool.append(b"kept", count=1)
        spool.close()
        seg = _segments(path)[0]
        seg.write_bytes(seg.read_bytes() + tail)
        reopened = _open(path)
        assert reopened.torn_records == 1
        assert _drain(reopened) == [b"kept"]
        reopened.close()


def test_corrupt_middle_record_is_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    spool = _open(tmp_path / "s")
    for i in range(3):
        spool.append(f"payload-{i}".encode(), count=1)
    spool.close()
    seg = _segments(tmp_path / "s")[0]
    data = bytearray(seg.read_bytes())
    second = HEADER_SIZE + len(b"payload-0")
    data[second + HEADER_SIZE + 2] ^= 0xFF  # one flipped bit in the second payload
    seg.write_bytes(bytes(data))

    reopened = _open(tmp_path / "s")
    assert reopened.torn_records == 1
    assert reopened.pending_count == 2
    assert _drain(reopened) == [b"payload-0", b"payload-2"]
    reopened.close()


def test_unreadable_cursor_replays_everything(tmp_path: Path) -> None:
    spool = _open(tmp_path / "s")
    spool.append(b"a", count=1)
    spool.append(b"b", count=1)
    chunk = spool.peek(max_count=1)
    assert chunk is not None
    spool.advance(chunk.end)
    spool.close()
    (tmp_path / "s" / "cursor").write_text("garbage")
    reopened = _open(tmp_path / "s")
    # at-least-once: an unreadable cursor repeats records, it never loses one
    assert _drain(reopened) == [b"a", b"b"]
    reopened.close()


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from hub.telemetry_spool import Spool

    spool = Spool(Path(sys.argv[1]), max_bytes=1 << 30, segment_bytes=20000)
    spool.open()
    i = 0
    while True:
        spool.append(f"{i:08d}".encode() * 50, count=1)
        print(i, flush=True)
        i += 1
    """
)


@pytest.mark.slow
def test_kill_9_of_a_writer_loses_no_acknowledged_record(tmp_path: Path) -> None:
    path = tmp_path / "s"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    acked = -1
    try:
        for line in proc.stdout:
            acked = int(line)
            if acked >= 3000:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    spool = _open(path, max_bytes=1 << 30, segment_bytes=20000)
    got = [int(p[:8]) for p in _drain(spool)]
    spool.close()
    # every acknowledged record is there, in order, once; at most the ones written after the
    # last acknowledgement follow
    assert got[: acked + 1] == list(range(acked + 1))
    assert got == list(range(len(got)))


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(0, 300), st.integers(1, 50)),
            st.tuples(st.just("consume"), st.integers(1, 120), st.just(0)),
            st.tuples(st.just("reopen"), st.just(0), st.just(0)),
        ),
        max_size=40,
    )
)
def test_spool_behaves_like_a_bounded_fifo(ops: list[tuple[str, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s"
        limits = {"max_bytes": 3000, "segment_bytes": 500}
        spool = _open(path, **limits)
        model: deque[tuple[bytes, int]] = deque()
        serial = 0
        for op, a, b in ops:
            if op == "append":
                payload = serial.to_bytes(4, "big") * (a // 4 + 1)
                serial += 1
                if spool.append(payload, count=b) is not None:
                    model.append((payload, b))
                else:
                    assert spool.disk_bytes + len(payload) + HEADER_SIZE > spool.max_bytes
            elif op == "consume":
                chunk = spool.peek(max_count=a)
                if not model:
                    assert chunk is None
                    continue
                assert chunk is not None
                n = len(chunk.payloads)
                expected = [model[i] for i in range(n)]
                assert list(chunk.payloads) == [p for p, _ in expected]
                assert chunk.count == sum(c for _, c in expected)
                assert n == 1 or chunk.count <= a
                spool.advance(chunk.end)
                for _ in range(n):
                    model.popleft()
            else:
                spool.close()
                spool = _open(path, **limits)
            assert spool.pending_count == sum(c for _, c in model)
            assert spool.pending_bytes == sum(len(p) + HEADER_SIZE for p, _ in model)
        assert [(p, c) for p in _drain(spool) for c in [0]] == [(p, 0) for p, _ in model]
        spool.close()
