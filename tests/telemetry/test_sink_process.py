"""A telemetry sink in its own process (hub/sink_process.py), with the real child and a real
telemetry.db: points arrive and are counted; a hub killed with ``kill -9`` loses none of the
points it had handed over (the child drains the pipe, stores them and exits, and the next hub's
child waits for it); a child that dies is restarted and what it may have taken is counted."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

from hub.embedded_tsdb import TELEMETRY_DB, EmbeddedStore
from hub.sink_process import SinkProcess
from hub.telemetry_config import EmbeddedSection
from hub.telemetry_points import Point

T0_MS = 1_795_000_000_000
SECTION = EmbeddedSection(flush_interval_s=0.2, raw_retention_h=24 * 365 * 10)


def points(first: int, n: int, device: str = "cam-1") -> list[Point]:
    """``n`` one-field points of one device, a millisecond apart from ``T0_MS + first``."""
    tags = (("agent", "hall-a"), ("device", device), ("kind", "camera"), ("venue", "hall"))
    return [Point("device", tags, {"fps": float(i % 25)}, T0_MS + first + i) for i in range(n)]


def stored(data_dir: Path) -> int:
    db = sqlite3.connect(f"{(data_dir / TELEMETRY_DB).as_uri()}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM raw").fetchone()[0])
    finally:
        db.close()


async def until(
    check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 30
) -> None:
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(what)  # pragma: no cover - the timeout raises first


async def test_points_reach_the_store_and_the_charts_read_them(tmp_path: Path) -> None:
    sink = SinkProcess("embedded", SECTION, tmp_path)
    await sink.start()
    reader = await EmbeddedStore.open(SECTION, tmp_path, read_only=True)
    try:
        for i in range(0, 20_000, 1000):
            sink.write(points(i, 1000))
        await sink.flush()
        assert stored(tmp_path) == 20_000
        stats = sink.stats()
        assert stats["written"] == 20_000 and stats["dropped"] == 0 and stats["process_up"] == 1
        assert await reader.metric_names("hall-a", "cam-1") == ["fps"]
        series = await reader.series(
            "hall-a", "cam-1", "fps", start_ms=T0_MS, end_ms=T0_MS + 19_999, max_points=20
        )
        assert len(series) == 20 and series[0].min == 0 and series[0].max == 24
    finally:
        await reader.stop()
        await sink.stop()
    assert sink.stats()["process_up"] == 0
    assert not _children_of(os.getpid()), "the child outlived stop()"


# the hub's side in a process of its own, so the test can kill it like a crashing hub
PARENT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from hub.sink_process import SinkProcess
    from hub.telemetry_config import EmbeddedSection
    from tests.telemetry.test_sink_process import SECTION, points

    async def main():
        sink = SinkProcess("embedded", SECTION, Path(sys.argv[1]))
        await sink.start()
        n = int(sys.argv[2])
        for i in range(0, n, 5000):
            sink.write(points(i, 5000))
        while sink._pending or sink._child.sent < n:  # everything handed to the pipe
            await asyncio.sleep(0.01)
        await sink._child.stdin.drain()
        print(sink._child.proc.pid, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_a_hub_killed_mid_stream_loses_nothing_it_handed_over(tmp_path: Path) -> None:
    handed = 150_000
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PARENT,
        str(tmp_path),
        str(handed),
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert parent.stdout is not None
    async with asyncio.timeout(60):
        child_pid = int(await parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    await parent.wait()
    # the old child is still storing what the pipe held; the next hub's child starts meanwhile
    # and must wait for it rather than write beside it
    sink = SinkProcess("embedded", SECTION, tmp_path)
    await sink.start()
    try:
        await until(lambda: not _alive(child_pid), "the old child ended on its own")
        sink.write(points(handed, 1000))
        await sink.flush()
        assert stored(tmp_path) == handed + 1000
        assert sink.stats()["errors"] == 0
    finally:
        await sink.stop()


async def test_a_dead_child_is_restarted_and_its_losses_counted(tmp_path: Path) -> None:
    sink = SinkProcess("embedded", SECTION, tmp_path)
    await sink.start()
    try:
        sink.write(points(0, 1000))
        await sink.flush()
        assert sink._child is not None
        first = sink._child.proc.pid
        os.kill(first, signal.SIGKILL)
        await until(lambda: sink.stats()["restarts"] == 1, "the child restarted")
        assert sink._child is not None and sink._child.proc.pid != first
        sink.write(points(1000, 1000))
        await sink.flush()
        # the 1,000 points flushed before the kill were stored; nothing was in flight
        assert stored(tmp_path) == 2000
        assert sink.stats()["lost_at_most"] == 0
    finally:
        await sink.stop()


async def test_points_wait_bounded_while_there_is_no_child(tmp_path: Path) -> None:
    sink = SinkProcess("embedded", SECTION, tmp_path, max_queue=5000)
    await sink.start()
    try:
        assert sink._child is not None
        sink._child.proc.send_signal(signal.SIGSTOP)  # a child that stopped reading
        try:
            for i in range(0, 400_000, 5000):
                sink.write(points(i, 5000))
                await asyncio.sleep(0)
            await until(lambda: sink.stats()["dropped"] > 0, "points dropped at the bound")
            assert sink.stats()["queued"] >= 5000
        finally:
            sink._child.proc.send_signal(signal.SIGCONT)
        await sink.flush()
        stats = sink.stats()
        assert stats["written"] + stats["dropped"] == 400_000
        assert stored(tmp_path) == stats["written"]
    finally:
        await sink.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid and stat[0] != "Z":
                out.append(int(entry.name))
    return out
