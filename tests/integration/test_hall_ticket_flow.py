"""A litigant's ticket through the whole hall: kiosk request → hub queue → the hall's thermal
printer prints it (ESC/POS bytes on a pty, decoded back) → a clerk calls it → the LED panel above
the window shows the call with a chime → served and done. A repeated request prints nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from device_drivers.kiosk_messages import TicketRequest, encode_up
from edge_agents.config import agent_config_from_dict
from edge_agents.runtime import EdgeAgent
from hub.broker import MosquittoBroker
from hub.config import hub_config_from_dict
from hub.hall_displays import HallDisplays
from hub.hall_kiosks import HallKiosks
from hub.hall_printer import HallPrinter
from hub.queue_service import QueueService, queue_config_from_dict
from hub.registry import EventReceived, HealthState
from hub.service import HubService
from protocol.messages import Event, now_ms
from simulators.escpos_printer import SimulatedPrinter
from simulators.kiosk import KioskProfile, SimulatedKiosk
from simulators.led_display import SimulatedLedBus, SimulatedPanel

QUIET = KioskProfile(
    arrivals_per_min={"filing": 0.0, "consult": 0.0, "payment": 0.0, "materials": 0.0},
    case_queries_per_min=0.0,
    status_interval_s=0.2,
    answer_timeout_s=60.0,  # no automatic repeats: the test repeats on purpose
    jam_probability=0.0,
)
COURT = "某某市人民法院"
ZONE = "Asia/Shanghai"


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Wait for ``condition`` with a timeout (never a bare sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def panels() -> AsyncIterator[SimulatedLedBus]:
    bus = SimulatedLedBus([SimulatedPanel(address=1)])
    await bus.start()
    yield bus
    await bus.stop()


@pytest.fixture
async def printer() -> AsyncIterator[SimulatedPrinter]:
    device = SimulatedPrinter()
    await device.start()
    yield device
    await device.stop()


async def test_a_ticket_is_printed_called_on_the_led_and_served(
    broker: MosquittoBroker,
    panels: SimulatedLedBus,
    printer: SimulatedPrinter,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "hub"
    hub = HubService(
        hub_config_from_dict({"hub": {"data_dir": str(data_dir)}}), broker.url, "hub", "pw-hub"
    )
    queue_config = queue_config_from_dict(
        {
            "counters": [{"id": "1", "services": ["filing"], "display": "hall-1/led-1"}],
            "ticket_printer": "hall-1/printer-1",
        }
    )
    queue = await QueueService.open(data_dir, queue_config)
    agent = EdgeAgent(
        agent_config_from_dict(
            {
                "agent": {"id": "hall-1", "data_dir": str(tmp_path / "agent"), "heartbeat_s": 1.0},
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
                    },
                    {
                        "id": "led-1",
                        "driver": "led_call_display",
                        "options": {"port": panels.path, "address": 1, "poll_interval_s": 1.0},
                    },
                    {
                        "id": "printer-1",
                        "driver": "escpos_printer",
                        "options": {"port": printer.path, "status_interval_s": 1.0},
                    },
                ],
            }
        )
    )
    kiosks = HallKiosks(hub, queue)
    displays = HallDisplays(hub, queue, queue_config)
    hall_printer = HallPrinter(hub, queue, queue_config, court_name=COURT, timezone=ZONE)
    kiosk = SimulatedKiosk(
        broker.url, kiosk_id="k1", username="kiosk-k1", password="pw-kiosk-k1", profile=QUIET
    )
    await hub.start()
    kiosks.start()
    displays.start()
    hall_printer.start()
    try:
        assert await hub.wait_connected(10)
        await agent.start()
        await kiosk.start()
        assert await kiosk.wait_connected(10)
        await until(
            lambda: all(
                (d := hub.registry.device("hall-1", name)) is not None
                and d.state is HealthState.ONLINE
                for name in ("kiosk-1", "led-1", "printer-1")
            ),
            "kiosk, LED panel and printer online in the hub",
        )

        # the litigant asks the kiosk for a filing ticket and gets A001
        rid = kiosk.request_ticket("filing")
        await until(lambda: kiosk.tickets.get(rid), "the kiosk to receive its ticket")
        got = kiosk.tickets[rid][0]
        assert (got.number, got.service, got.waiting_ahead) == ("A001", "filing", 0)

        # the hall printer prints it: court, service name, number, wait, time, QR, id
        await until(lambda: printer.tickets, "the printed ticket")
        issued = await queue.ticket(1)
        assert issued is not None and issued.number == "A001"
        local = datetime.fromtimestamp(issued.issued_at / 1000, UTC).astimezone(ZoneInfo(ZONE))
        ticket_id = f"{issued.day}-A001"
        minutes = max(1, -(-issued.estimated_wait_s // 60))
        printed = printer.tickets[0]
        assert printed.lines == [
            COURT,
            "立案",
            "A001",
            "前面还有 0 人",
            f"预计等待约 {minutes} 分钟",
            f"取号时间 {local:%Y-%m-%d %H:%M}",
            "",
            ticket_id,
        ]
        assert printed.double == ["A001"] and printed.qr == [ticket_id] and printed.cut
        assert COURT in printed.bold and "A001" in printed.bold
        await until(lambda: hall_printer.stats["printed"] == 1, "the print command's result")

        # the clerk at window 1 calls it: the panel above the window shows it, with a chime
        called = await queue.call_next("1")
        assert called is not None and called.number == "A001"
        window = panels.panels[1]
        await until(
            lambda: window.text[0] == "请A001号到1号窗口" and window.chimes == 1,
            "the call on the window's LED panel",
        )
        assert window.effects[0] == "flash"
        await queue.start_serving("1")
        await queue.done("1")
        states = [(t.from_state, t.to_state) for t in await queue.transitions(issued.id)]
        assert [to for _, to in states] == ["issued", "waiting", "called", "serving", "done"]

        # the kiosk repeats its request: the same ticket comes back, nothing is printed again
        original = next(
            m for m in kiosk.sent if isinstance(m, TicketRequest) and m.request_id == rid
        )
        assert kiosk.publish_raw(encode_up(original))
        await until(lambda: len(kiosk.tickets[rid]) == 2, "the answer to the repeat")
        assert kiosk.tickets[rid][1].number == "A001"
        # ...and the hub sees the request again (e.g. the driver restarted and forgot it)
        event = Event(
            ts=now_ms(),
            seq=0,
            type="ticket_request",
            data={"request_id": rid, "service": "filing", "priority": "normal"},
        )
        hub.registry.notify(EventReceived("hall-1", "kiosk-1", event))
        await until(lambda: len(kiosk.tickets[rid]) == 3, "the answer to the hub-side repeat")
        assert {t.number for t in kiosk.tickets[rid]} == {"A001"}
        assert await queue.ticket(2) is None, "one ticket, never a second one"
        # the next litigant's ticket is the printer's second: the repeats printed nothing
        rid2 = kiosk.request_ticket("filing")
        await until(
            lambda: len(printer.tickets) == 2 and kiosk.tickets.get(rid2),
            "the next litigant's ticket, on the kiosk and on paper",
        )
        assert kiosk.tickets[rid2][0].number == "A002"
        assert [t.lines[2] for t in printer.tickets] == ["A001", "A002"]
        await until(lambda: hall_printer.stats["printed"] == 2, "the second print's result")
        assert hall_printer.stats["failures"] == 0 and displays.stats["failures"] == 0
    finally:
        await kiosk.stop()
        await hall_printer.stop()
        await displays.stop()
        await kiosks.stop()
        await agent.stop()
        await hub.stop()
        await queue.close()
