"""Every ticket the hall queue issues, printed on the hall's ticket printer.

Listens to :class:`hub.queue_service.QueueService`; on ``issued`` it sends the
``escpos_printer`` driver's ``print_ticket`` command through the hub to the printer configured
as ``[queue] ticket_printer = "hall-1/printer-1"``. A printer that is out of paper, open,
offline or slow costs a counted failure and a log line, never the ticket itself: the queue does
not wait for the printer. A repeated request (same ``request_id``) returns the ticket issued
before without an ``issued`` change, so it is never printed twice.
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

#: tickets queued for the printer at most; beyond that they are dropped (and counted)
MAX_PENDING: Final = 200


def ticket_id(ticket: Ticket) -> str:
    """A stable, ASCII id of a ticket for its QR code: the day and the number."""
    return f"{ticket.day}-{ticket.number}"


class HallPrinter:
    """Prints each issued ticket on the configured ticket printer."""

    def __init__(
        self,
        hub: HubService,
        queue: QueueService,
        config: QueueConfig,
        *,
        court_name: str,
        timezone: str,
        command_timeout_s: float = 5.0,
    ) -> None:
        self._hub = hub
        self._queue = queue
        self._target = config.ticket_printer
        self._names = {s.code: s.name or s.code for s in config.services}
        self._court_name = court_name
        self._timezone = timezone
        self._timeout = command_timeout_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self.stats: Counter[str] = Counter()

    def start(self) -> None:
        """Listen to the queue (nothing to do without a configured printer)."""
        if self._target and self._unsubscribe is None:
            self._unsubscribe = self._queue.add_listener(self._on_change)

    async def stop(self) -> None:
        """Stop listening and wait for print jobs in flight."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_change(self, change: QueueChange) -> None:
        if change.action != "issued" or change.ticket is None:
            return
        if len(self._tasks) >= MAX_PENDING:
            self.stats["dropped"] += 1
            log.warning("printer backlog full: ticket %s not printed", change.ticket.number)
            return
        task = asyncio.create_task(self._print(change.ticket))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _args(self, ticket: Ticket) -> dict[str, object]:
        return {
            "number": ticket.number,
            "service_name": self._names.get(ticket.service, ticket.service),
            "waiting_ahead": ticket.waiting_ahead,
            "estimated_wait_s": ticket.estimated_wait_s,
            "issued_at": ticket.issued_at,
            "ticket_id": ticket_id(ticket),
            "court_name": self._court_name,
            "timezone": self._timezone,
        }

    async def _print(self, ticket: Ticket) -> None:
        agent, _, device = self._target.partition("/")
        try:
            outcome = await self._hub.call_command(
                agent, device, "print_ticket", self._args(ticket), self._timeout
            )
        except Exception:  # a printer problem must never reach the queue
            log.exception("print failed printer=%s ticket=%s", self._target, ticket.number)
            self.stats["failures"] += 1
            return
        if not outcome.ok:
            self.stats["failures"] += 1
            log.warning(
                "printer refused printer=%s ticket=%s error=%s",
                self._target,
                ticket.number,
                outcome.error,
            )
            return
        self.stats["printed"] += 1
