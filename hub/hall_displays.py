"""Every call of the hall queue on the LED panel above its window (and the hall board), with a chime.

Listens to :class:`hub.queue_service.QueueService`; on ``called`` and ``recall`` it sends the
``led_call_display`` driver's ``show_text`` (flashing) and ``chime`` commands through the hub to
the panels configured for the counter (``[[queue.counters]] display = "hall-1/led-1"``) and to
the hall board's panels (``[queue] board_displays``). A panel that is offline or slow costs a
counted failure and a log line, never the call itself: the queue does not wait for displays.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Final

from hub.queue_service import QueueChange, QueueConfig, QueueService, Ticket
from hub.service import HubService

log = logging.getLogger(__name__)

#: queue actions a litigant must see on the panels
ANNOUNCED: Final = frozenset({"called", "recall"})
#: calls queued for the panels at most; beyond that the oldest are the first to be useless
MAX_PENDING: Final = 200


def call_text(ticket: Ticket, counter: str) -> str:
    """What a panel shows for a call: number and window only (never a name)."""
    return f"请{ticket.number}号到{counter}号窗口"


class HallDisplays:
    """Sends each call to its window's LED panel and the hall board's panels."""

    def __init__(
        self,
        hub: HubService,
        queue: QueueService,
        config: QueueConfig,
        *,
        command_timeout_s: float = 2.0,
    ) -> None:
        self._hub = hub
        self._queue = queue
        self._displays = {c.id: c.display for c in config.counters if c.display}
        self._board = tuple(config.board_displays)
        self._timeout = command_timeout_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self.stats: Counter[str] = Counter()

    def start(self) -> None:
        """Listen to the queue."""
        self._unsubscribe = self._queue.add_listener(self._on_change)

    async def stop(self) -> None:
        """Stop listening and wait for announcements in flight."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_change(self, change: QueueChange) -> None:
        if change.action not in ANNOUNCED or change.ticket is None or change.counter is None:
            return
        targets = [t for t in (self._displays.get(change.counter), *self._board) if t]
        if not targets:
            return
        if len(self._tasks) >= MAX_PENDING:
            self.stats["dropped"] += 1
            log.warning("display backlog full: call %s not shown", change.ticket.number)
            return
        text = call_text(change.ticket, change.counter)
        for target in targets:
            task = asyncio.create_task(self._announce(target, text))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _announce(self, target: str, text: str) -> None:
        agent, _, device = target.partition("/")
        shown = await self._command(
            agent, device, "show_text", {"line": 0, "text": text, "effect": "flash"}
        )
        if shown:
            await self._command(agent, device, "chime", {"count": 1})
            self.stats["shown"] += 1

    async def _command(self, agent: str, device: str, name: str, args: dict[str, object]) -> bool:
        try:
            outcome = await self._hub.call_command(agent, device, name, dict(args), self._timeout)
        except Exception:  # a display problem must never reach the queue
            log.exception("display command failed display=%s/%s command=%s", agent, device, name)
            self.stats["failures"] += 1
            return False
        if not outcome.ok:
            self.stats["failures"] += 1
            log.warning(
                "display refused display=%s/%s command=%s error=%s",
                agent,
                device,
                name,
                outcome.error,
            )
        return outcome.ok
