"""The bridge between the hall's kiosks and the hub: ``ticket_request`` in, ``send_ticket`` out;
``case_query`` in, ``send_case_info`` out (from :attr:`HallKiosks.case_lookup`, see
``hub/case_lookup.py``; without one every case is "not found", so the kiosk still gets an answer).

A listener on :class:`~hub.service.HubService` picks the kiosks' ``ticket_request`` events (see
``shared/protocols/kiosk-mqtt.md``; the kiosk driver forwards them as device events), issues the
ticket with :meth:`QueueService.issue` and answers the kiosk with its ``send_ticket`` command.
A repeated ``request_id`` gets the same ticket again (issue is idempotent). A request the queue
refuses (unknown service, numbers of the day used up) is answered with ``send_error`` and a
litigant-facing Chinese text. Failures are logged and counted in :attr:`HallKiosks.stats`; the
listener itself only schedules tasks (bounded concurrency, references kept) and never raises.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from hub.commands import CommandOutcome
from hub.queue_service import QueueError, QueueService, Ticket
from hub.registry import EventReceived, HubChange
from hub.service import HubService

log = logging.getLogger(__name__)

#: the text a kiosk shows when something unexpected went wrong on our side
GENERIC_ERROR_TEXT: Final = "取号暂时失败，请稍后重试或咨询导服台。"
#: how many requests are worked on at once; more wait for a slot
MAX_CONCURRENT: Final = 32
#: requests waiting for a slot beyond this are dropped (the kiosk repeats after 5 s)
MAX_BACKLOG: Final = 1000
#: the kiosk events this bridge answers
_REQUESTS: Final = frozenset({"ticket_request", "case_query"})


class HallKiosks:
    """Turns kiosk ticket requests into queue tickets; :meth:`start` / :meth:`stop` on the loop."""

    def __init__(
        self,
        hub: HubService,
        queue: QueueService,
        *,
        command_timeout_s: float = 5.0,
        max_concurrent: int = MAX_CONCURRENT,
    ) -> None:
        self.hub = hub
        self.queue = queue
        self.command_timeout_s = command_timeout_s
        self.stats: Counter[str] = Counter()
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        #: case number → ``send_case_info`` arguments (set once the hearings exist)
        self.case_lookup: Callable[[str], dict[str, Any]] | None = None

    def start(self) -> None:
        """Listen to the hub's events (idempotent)."""
        if self._unsubscribe is None:
            self._unsubscribe = self.hub.add_listener(self._on_change)

    async def stop(self) -> None:
        """Stop listening and let the requests in flight finish."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def in_flight(self) -> int:
        """Requests being worked on or waiting for a slot."""
        return len(self._tasks)

    def _on_change(self, change: HubChange) -> None:
        if not isinstance(change, EventReceived) or change.event.type not in _REQUESTS:
            return
        self.stats["requests" if change.event.type == "ticket_request" else "case_queries"] += 1
        if len(self._tasks) >= MAX_BACKLOG:
            self.stats["dropped_backlog"] += 1
            log.warning(
                "ticket request dropped, backlog full agent=%s device=%s",
                change.agent,
                change.device,
            )
            return
        task = asyncio.create_task(
            self._handle(change.agent, change.device, change.event.type, dict(change.event.data)),
            name=f"hall-ticket-{change.agent}-{change.device}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, agent: str, device: str, kind: str, data: dict[str, Any]) -> None:
        async with self._slots:
            try:
                if kind == "case_query":
                    await self._answer_case(agent, device, data)
                else:
                    await self._answer(agent, device, data)
            except Exception:
                self.stats["failures"] += 1
                log.exception("%s failed agent=%s device=%s", kind, agent, device)

    async def _answer_case(self, agent: str, device: str, data: dict[str, Any]) -> None:
        request_id, case_no = data.get("request_id"), data.get("case_no")
        if not isinstance(request_id, str) or not request_id or not isinstance(case_no, str):
            self.stats["bad_requests"] += 1
            log.warning("case query without request_id/case_no agent=%s device=%s", agent, device)
            return
        answer = self.case_lookup(case_no) if self.case_lookup else {"found": False}
        outcome = await self._send(
            agent, device, "send_case_info", {"request_id": request_id, **answer}
        )
        if outcome.ok:
            self.stats["case_infos_sent"] += 1
            log.info(
                "case info sent agent=%s device=%s request_id=%s found=%s",
                agent,
                device,
                request_id,
                answer["found"],
            )

    async def _answer(self, agent: str, device: str, data: dict[str, Any]) -> None:
        request_id = data.get("request_id")
        service = data.get("service")
        priority = data.get("priority", "normal")
        if not isinstance(request_id, str) or not request_id or not isinstance(service, str):
            self.stats["bad_requests"] += 1
            log.warning(
                "ticket request without request_id/service agent=%s device=%s", agent, device
            )
            return
        try:
            ticket = await self.queue.issue(
                service,
                priority if isinstance(priority, str) else "normal",
                request_id,
                f"kiosk:{agent}/{device}",
            )
        except QueueError as exc:
            self.stats[f"refused_{exc.code}"] += 1
            log.info(
                "ticket refused agent=%s device=%s request_id=%s code=%s",
                agent,
                device,
                request_id,
                exc.code,
            )
            await self._send(
                agent,
                device,
                "send_error",
                {"request_id": request_id, "code": exc.code, "text": exc.message},
            )
            return
        outcome = await self._send(agent, device, "send_ticket", ticket_args(ticket, request_id))
        if outcome.ok:
            self.stats["tickets_sent"] += 1
            log.info(
                "ticket sent agent=%s device=%s request_id=%s number=%s",
                agent,
                device,
                request_id,
                ticket.number,
            )

    async def _send(
        self, agent: str, device: str, name: str, args: dict[str, Any]
    ) -> CommandOutcome:
        outcome = await self.hub.call_command(agent, device, name, args, self.command_timeout_s)
        if not outcome.ok:
            self.stats["command_failures"] += 1
            log.warning(
                "kiosk command failed agent=%s device=%s command=%s error=%s",
                agent,
                device,
                name,
                outcome.error,
            )
        return outcome


def ticket_args(ticket: Ticket, request_id: str) -> dict[str, Any]:
    """The ``send_ticket`` arguments for ``ticket`` (the answer as given at issue)."""
    return {
        "request_id": request_id,
        "number": ticket.number,
        "service": ticket.service,
        "waiting_ahead": ticket.waiting_ahead,
        "estimated_wait_s": ticket.estimated_wait_s,
        "issued_at": ticket.issued_at,
    }
