"""The hub's loop monitor (hub/loop_monitor.py): a loop held by a blocking call shows as a stall."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from hub.loop_monitor import LoopMonitor


async def test_a_blocked_loop_is_a_stall_with_its_length(caplog: pytest.LogCaptureFixture) -> None:
    monitor = LoopMonitor(interval_s=0.01, log_stall_s=0.3)
    task = asyncio.create_task(monitor.run())
    try:
        async with asyncio.timeout(10):
            while len(monitor._lags) < 5:  # running and sampling
                await asyncio.sleep(0.01)
        before = monitor.stats()["loop_stalls"]  # a loaded machine may have stalled already
        with caplog.at_level(logging.WARNING, logger="hub.loop_monitor"):
            # a blocking call on the loop: the bug the monitor is there to show
            time.sleep(0.4)  # noqa: ASYNC251
            async with asyncio.timeout(10):
                while monitor.stats()["loop_stalls"] <= before:
                    await asyncio.sleep(0.01)
        stats = monitor.stats()
        assert stats["loop_lag_max_ms"] >= 380
        assert "event loop stalled" in caplog.text
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_percentiles_cover_the_window_only() -> None:
    monitor = LoopMonitor(interval_s=0.05, window_s=1.0)  # 20 samples
    monitor.record(2.0)
    for _ in range(20):
        monitor.record(0.001)
    stats = monitor.stats()
    assert stats["loop_lag_max_ms"] == 1.0  # the old stall has left the window...
    assert stats["loop_stalls"] == 1  # ...but is still counted
    assert monitor.worst_s == 2.0
