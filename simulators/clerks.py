"""Simulated counter staff: at each window, call the next ticket, serve it a while, finish.

They use the hub's queue service directly, as the counter page's buttons do, so the demo's
tickets move, the LED panels light up and the hall board changes without anyone clicking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter

from hub.queue_service import QueueError, QueueService

log = logging.getLogger(__name__)


class SimulatedClerks:
    """One clerk per counter; a few litigants do not come when called (no-show after recalls)."""

    def __init__(
        self,
        queue: QueueService,
        counters: list[str],
        *,
        seed: int = 7,
        serve_s: tuple[float, float] = (3.0, 8.0),
        idle_s: float = 1.0,
        no_show_share: float = 0.05,
    ) -> None:
        self._queue = queue
        self._counters = counters
        self._rng = random.Random(seed)
        self._serve_s = serve_s
        self._idle_s = idle_s
        self._no_show_share = no_show_share
        self._tasks: list[asyncio.Task[None]] = []
        self.stats: Counter[str] = Counter()

    def start(self) -> None:
        """Send every clerk to work."""
        self._tasks = [
            asyncio.create_task(self._work(counter), name=f"clerk-{counter}")
            for counter in self._counters
        ]

    async def stop(self) -> None:
        """Everyone goes home (a ticket being served stays as it is)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _work(self, counter: str) -> None:
        while True:
            try:
                await self._serve_next(counter)
            except QueueError as exc:  # e.g. the counter was closed: try again later
                self.stats[f"refused_{exc.code}"] += 1
                await asyncio.sleep(self._idle_s)

    async def _serve_next(self, counter: str) -> None:
        ticket = await self._queue.call_next(counter)
        if ticket is None:
            await asyncio.sleep(self._idle_s)
            return
        self.stats["called"] += 1
        await asyncio.sleep(1.0)  # the litigant walks to the window
        if self._rng.random() < self._no_show_share:
            await self._queue.recall(counter)
            self.stats["recalled"] += 1
            await asyncio.sleep(2.0)
            await self._queue.no_show(counter)
            self.stats["no_show"] += 1
            return
        await self._queue.start_serving(counter)
        await asyncio.sleep(self._rng.uniform(*self._serve_s))
        await self._queue.done(counter)
        self.stats["done"] += 1
