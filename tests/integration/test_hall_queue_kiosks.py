"""Hall queue end to end: a simulated kiosk on a real Mosquitto, the hall agent with its
``kiosk_mqtt`` driver, the hub, the queue and the bridge — the litigant gets an A001 ticket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from device_drivers.kiosk_messages import CaseInfo, ErrorReply, Ticket, TicketRequest, encode_up
from edge_agents.config import agent_config_from_dict
from edge_agents.runtime import EdgeAgent
from hub.broker import MosquittoBroker
from hub.case_lookup import CaseDirectory
from hub.config import hub_config_from_dict
from hub.hall_kiosks import HallKiosks
from hub.hearings import Hearing
from hub.queue_service import QueueService
from hub.registry import EventReceived, HealthState
from hub.service import HubService
from protocol.messages import Event, now_ms
from simulators.kiosk import KioskProfile, SimulatedKiosk

QUIET = KioskProfile(
    arrivals_per_min={"filing": 0.0, "consult": 0.0, "payment": 0.0, "materials": 0.0},
    case_queries_per_min=0.0,
    status_interval_s=0.2,
    answer_timeout_s=60.0,  # no automatic repeats: the test repeats on purpose
    jam_probability=0.0,
)


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Wait for ``condition`` with a timeout (never a bare sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def hall_venue(broker: MosquittoBroker, data_dir: Path) -> dict[str, Any]:
    return {
        "agent": {"id": "hall-1", "data_dir": str(data_dir), "heartbeat_s": 1.0},
        "venue": {"id": "hall", "kind": "litigation_hall", "name": "诉讼服务大厅"},
        "broker": {"url": str(broker.url), "password": "pw-hall-1"},
        "devices": [
            {
                "id": "kiosk-1",
                "driver": "kiosk_mqtt",
                "options": {
                    "broker_url": f"mqtt://{broker.url.host}:{broker.url.port}",
                    "username": "hall-1",
                    "password": "pw-hall-1",
                    "kiosk_id": "k1",
                },
            }
        ],
    }


@pytest.fixture
async def hall(
    broker: MosquittoBroker, tmp_path: Path
) -> AsyncIterator[tuple[HubService, QueueService, HallKiosks, SimulatedKiosk]]:
    data_dir = tmp_path / "hub"
    hub = HubService(
        hub_config_from_dict({"hub": {"data_dir": str(data_dir)}}), broker.url, "hub", "pw-hub"
    )
    await hub.start()
    queue = await QueueService.open(data_dir)
    bridge = HallKiosks(hub, queue)
    bridge.start()
    agent = EdgeAgent(agent_config_from_dict(hall_venue(broker, tmp_path / "agent")))
    kiosk = SimulatedKiosk(
        broker.url, kiosk_id="k1", username="kiosk-k1", password="pw-kiosk-k1", profile=QUIET
    )
    try:
        assert await hub.wait_connected(10)
        await agent.start()
        await kiosk.start()
        assert await kiosk.wait_connected(10)

        def kiosk_online() -> bool:
            device = hub.registry.device("hall-1", "kiosk-1")
            return device is not None and device.state is HealthState.ONLINE

        await until(kiosk_online, "kiosk k1 online in the hub")
        yield hub, queue, bridge, kiosk
    finally:
        await kiosk.stop()
        await agent.stop()
        await bridge.stop()
        await queue.close()
        await hub.stop()


def tickets(kiosk: SimulatedKiosk, rid: str) -> list[Ticket]:
    return kiosk.tickets.get(rid, [])


async def test_kiosk_gets_a_ticket_and_the_same_one_when_it_repeats(
    hall: tuple[HubService, QueueService, HallKiosks, SimulatedKiosk],
) -> None:
    hub, queue, bridge, kiosk = hall
    rid = kiosk.request_ticket("filing")
    await until(lambda: tickets(kiosk, rid), "the kiosk to receive its ticket")
    first = tickets(kiosk, rid)[0]
    assert (first.number, first.service, first.waiting_ahead) == ("A001", "filing", 0)
    assert abs(first.issued_at - now_ms()) < 60_000
    assert kiosk.stats["tickets"] == 1

    # the kiosk repeats the request (same request_id): the same ticket comes back
    original = next(m for m in kiosk.sent if isinstance(m, TicketRequest) and m.request_id == rid)
    assert kiosk.publish_raw(encode_up(original))
    await until(lambda: len(tickets(kiosk, rid)) == 2, "the answer to the repeat")
    # the hub sees the request again (e.g. the driver restarted and forgot its answers)
    event = Event(ts=now_ms(), seq=0, type="ticket_request", data=original_data(original))
    hub.registry.notify(EventReceived("hall-1", "kiosk-1", event))
    await until(lambda: len(tickets(kiosk, rid)) == 3, "the answer to the hub-side repeat")
    assert {t.number for t in tickets(kiosk, rid)} == {"A001"}
    snap = await queue.snapshot()
    assert snap.waiting["filing"] == 1, "one ticket, never a second one"

    # the next litigant, priority: B-series numbering per service, waiting counts
    rid2 = kiosk.request_ticket("consult", "elderly")
    await until(lambda: tickets(kiosk, rid2), "the second ticket")
    assert tickets(kiosk, rid2)[0].number == "B001"
    # the command's result reaches the hub just after the kiosk got the ticket
    await until(lambda: bridge.stats["tickets_sent"] == 3, "the bridge to count three answers")
    assert bridge.stats["failures"] == 0 and bridge.stats["command_failures"] == 0


async def test_unknown_service_gets_a_chinese_error(
    hall: tuple[HubService, QueueService, HallKiosks, SimulatedKiosk],
) -> None:
    _hub, queue, bridge, kiosk = hall
    rid = kiosk.request_ticket("divorce")

    def error() -> ErrorReply | None:
        return next(
            (m for m in kiosk.received if isinstance(m, ErrorReply) and m.request_id == rid), None
        )

    await until(error, "the error reply")
    reply = error()
    assert reply is not None and reply.code == "unknown_service" and "导服台" in reply.text
    assert bridge.stats["refused_unknown_service"] == 1
    assert sum((await queue.snapshot()).waiting.values()) == 0
    # the bridge keeps working after a refusal
    ok = kiosk.request_ticket("payment")
    await until(lambda: tickets(kiosk, ok), "a ticket after the refusal")
    assert tickets(kiosk, ok)[0].number == "C001"


def original_data(msg: TicketRequest) -> dict[str, Any]:
    return {"request_id": msg.request_id, "service": msg.service, "priority": msg.priority}


async def test_a_case_query_is_answered_from_the_hearings(
    hall: tuple[HubService, QueueService, HallKiosks, SimulatedKiosk],
) -> None:
    """The chaos suite found kiosks' case look-ups never answered: the litigant gave up after
    three repeats. Now the hub answers from the hearings it knows (hub/case_lookup.py)."""
    _hub, _queue, bridge, kiosk = hall
    known = Hearing(
        id="h1",
        title="张某诉李某",
        case_no="(2026)京0105民初12345号",
        venues=("court-1",),
        opened_ms=0,
        opened_by="clerk",
        state="scheduled",
        scheduled_ms=now_ms() + 86_400_000,
    )
    directory = CaseDirectory(
        lambda: [known], {"court-1": "第一法庭"}.get, "Asia/Shanghai", time.time
    )
    bridge.case_lookup = directory.lookup

    def answer(rid: str) -> CaseInfo | None:
        return next(
            (m for m in kiosk.received if isinstance(m, CaseInfo) and m.request_id == rid), None
        )

    # typed on the kiosk with full-width brackets
    rid = kiosk.query_case("（2026）京0105民初12345号")
    await until(lambda: answer(rid), "the case answer")
    info = answer(rid)
    assert info is not None and info.found and info.courtroom == "第一法庭"
    assert info.status is not None and "已排期" in info.status and info.next_hearing
    missing = kiosk.query_case("(2025)京0105民初1号")
    await until(lambda: answer(missing), "the not-found answer")
    assert answer(missing) == CaseInfo(request_id=missing, found=False)
    # the command's result reaches the hub just after the kiosk got the answer
    await until(lambda: bridge.stats["case_infos_sent"] == 2, "the bridge to count both")
