"""How late the hub's event loop runs what is due: the wait every request, message and timer sees.

A task sleeps ``interval_s`` again and again and records how much later than asked it woke. That
lateness is the time the loop spent on something else (a long callback, a blocking call by
mistake, the interpreter lock held by another thread) or the process waiting for a CPU. The
technicians get the p99 and the worst of the last minute and a count of stalls; a stall over
``log_stall_s`` is logged when it happens. The benchmark (bench/telemetry.py) compares it with
the API latency seen from outside: a slow API with a prompt loop is the machine, not the hub.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

#: lateness over this counts as a stall (a web page would feel it)
STALL_S: Final = 0.25


class LoopMonitor:
    """Samples the running loop's lateness; :meth:`run` is the task, :meth:`stats` the numbers."""

    def __init__(
        self,
        *,
        interval_s: float = 0.05,
        window_s: float = 60.0,
        log_stall_s: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.interval_s = interval_s
        self.log_stall_s = log_stall_s
        self._clock = clock
        self._lags: deque[float] = deque(maxlen=max(1, round(window_s / interval_s)))
        self.stalls = 0
        self.worst_s = 0.0

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            asked = self._clock() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.record(self._clock() - asked)

    def record(self, lag_s: float) -> None:
        """One sample: the loop woke ``lag_s`` late."""
        lag_s = max(0.0, lag_s)
        self._lags.append(lag_s)
        self.worst_s = max(self.worst_s, lag_s)
        if lag_s >= STALL_S:
            self.stalls += 1
        if lag_s >= self.log_stall_s:
            log.warning(
                "event loop stalled %.2f s (something held it: see the loop_lag metrics)", lag_s
            )

    def stats(self) -> dict[str, float]:
        """``loop_lag_p50_ms``/``p99``/``max`` over the window, ``loop_stalls`` since start."""
        lags = sorted(self._lags)
        if not lags:
            return {
                "loop_lag_p50_ms": 0.0,
                "loop_lag_p99_ms": 0.0,
                "loop_lag_max_ms": 0.0,
                "loop_stalls": float(self.stalls),
            }
        return {
            "loop_lag_p50_ms": round(lags[len(lags) // 2] * 1000, 2),
            "loop_lag_p99_ms": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1000, 2),
            "loop_lag_max_ms": round(lags[-1] * 1000, 2),
            "loop_stalls": float(self.stalls),
        }
