"""KioskMqttDriver against a real Mosquitto and the simulated kiosk."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from device_drivers.base import CommandError, DriverConfigError, UnknownCommand
from device_drivers.catalog import create
from device_drivers.kiosk_messages import OFFLINE_WILL, TicketRequest, encode_up
from device_drivers.kiosk_mqtt import KioskMqttDriver
from hub.broker import MosquittoBroker, free_port
from protocol.messages import DeviceStatus
from simulators.kiosk import KioskProfile, SimulatedKiosk

ONLINE, OFFLINE, FAULT = DeviceStatus.ONLINE, DeviceStatus.OFFLINE, DeviceStatus.FAULT
ID_HASH = "9f2c" * 16

StartKiosk = Callable[..., Awaitable[SimulatedKiosk]]


def ticket_args(request_id: str, number: str = "A023", **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "request_id": request_id,
        "number": number,
        "service": "filing",
        "waiting_ahead": 4,
        "estimated_wait_s": 600,
        "issued_at": 1_795_000_000_000,
    }
    args.update(overrides)
    return args


@pytest.fixture
async def driver(
    kiosk_options: Callable[..., dict[str, Any]], sink: Any, run_driver: Any
) -> KioskMqttDriver:
    """A running driver for kiosk k1, subscribed before any kiosk talks."""
    drv = KioskMqttDriver("kiosk-1", kiosk_options())
    run_driver(drv, sink)
    await sink.wait_state(OFFLINE, "waiting for kiosk")
    return drv


@pytest.fixture
async def kiosk(driver: KioskMqttDriver, start_kiosk: StartKiosk, sink: Any) -> SimulatedKiosk:
    """The simulated kiosk k1, online at the driver."""
    k = await start_kiosk()
    await sink.wait_state(ONLINE)
    return k


async def test_hello_describes_and_goes_online(
    driver: KioskMqttDriver, start_kiosk: StartKiosk, sink: Any
) -> None:
    await start_kiosk()
    await sink.wait(lambda: sink.descriptions, "describe")
    desc = sink.descriptions[-1]
    assert (desc.kind, desc.model, desc.firmware, desc.heartbeat_s) == (
        "kiosk",
        "CH-K300",
        "3.2.1",
        10.0,
    )
    assert set(desc.capabilities) == {
        "send_ticket",
        "send_case_info",
        "print",
        "show_message",
        "send_error",
    }
    assert driver.description == desc
    await sink.wait_state(ONLINE)
    assert sink.events_of("hello") == [{"services": ["filing", "consult", "payment", "materials"]}]


async def test_status_telemetry_faults_and_clear(kiosk: SimulatedKiosk, sink: Any) -> None:
    await sink.wait(lambda: sink.metric("paper_pct") is not None, "status telemetry")
    metrics = next(m for m in sink.telemetry_log if "paper_pct" in m)
    assert metrics["paper_pct"] == 100.0
    assert metrics["printer_code"] == 0
    assert metrics["card_reader_ok"] == 1
    assert 30 < metrics["cpu_temp_c"] < 95
    assert metrics["uptime_s"] >= 0

    kiosk.jam_printer(clear_after_s=60)
    await sink.wait_state(FAULT, "printer jam")
    assert sink.metric("printer_code") == 1
    kiosk.clear_jam()
    await sink.wait_state(ONLINE)

    kiosk.card_reader_fault()
    await sink.wait_state(FAULT, "card reader fault")
    assert sink.metric("card_reader_ok") == 0
    kiosk.run_out_of_paper()
    await sink.wait_state(FAULT, "paper out, card reader fault")
    kiosk.card_reader_fault(broken=False)
    kiosk.refill()
    await sink.wait_state(ONLINE)


async def test_paper_low_fires_once_per_crossing(kiosk: SimulatedKiosk, sink: Any) -> None:
    kiosk.refill(12.0)
    await sink.wait(lambda: sink.metric("paper_pct") == 12.0, "paper 12 %")
    kiosk.refill(8.0)
    await sink.wait(lambda: sink.events_of("paper_low"), "paper_low")
    count = len(sink.telemetry_log)
    await sink.wait(lambda: len(sink.telemetry_log) >= count + 3, "more status reports")
    assert sink.events_of("paper_low") == [{"paper_pct": 8.0}]
    kiosk.refill(100.0)  # a new roll re-arms the warning
    await sink.wait(lambda: sink.metric("paper_pct") == 100.0, "refilled")
    kiosk.refill(5.0)
    await sink.wait(lambda: len(sink.events_of("paper_low")) == 2, "second paper_low")


async def test_ticket_request_event_and_send_ticket(
    driver: KioskMqttDriver, kiosk: SimulatedKiosk, sink: Any
) -> None:
    rid = kiosk.request_ticket("filing", "elderly", id_hash=ID_HASH)
    await sink.wait(lambda: sink.events_of("ticket_request"), "ticket_request event")
    assert sink.events_of("ticket_request") == [
        {"request_id": rid, "service": "filing", "priority": "elderly", "id_hash": ID_HASH}
    ]

    result = await driver.execute("send_ticket", ticket_args(rid))
    assert result == {"sent": "send_ticket", "kiosk_online": True, "request_id": rid}
    await sink.wait(lambda: kiosk.tickets.get(rid), "ticket at the kiosk")
    (ticket,) = kiosk.tickets[rid]
    assert (ticket.number, ticket.waiting_ahead, ticket.estimated_wait_s) == ("A023", 4, 600)
    # the kiosk prints it and says so
    await sink.wait(lambda: sink.events_of("print_done"), "print_done")
    assert sink.events_of("print_done") == [{"request_id": rid, "ok": True}]
    assert kiosk.paper_pct < 100.0


async def test_repeat_after_ticket_gets_the_same_ticket_and_no_second_event(
    driver: KioskMqttDriver, kiosk: SimulatedKiosk, sink: Any
) -> None:
    rid = kiosk.request_ticket("payment")
    await sink.wait(lambda: sink.events_of("ticket_request"), "ticket_request event")
    await driver.execute("send_ticket", ticket_args(rid, "C007", service="payment"))
    await sink.wait(lambda: kiosk.tickets.get(rid), "ticket at the kiosk")

    # the kiosk did not see the answer in time and repeats the very same request
    repeat = TicketRequest(request_id=rid, service="payment", priority="normal")
    assert kiosk.publish_raw(encode_up(repeat))
    await sink.wait(lambda: len(kiosk.tickets[rid]) == 2, "re-sent ticket")
    first, second = kiosk.tickets[rid]
    assert first == second and second.number == "C007"
    assert len(sink.events_of("ticket_request")) == 1
    await sink.wait(lambda: sink.metric("repeat_requests") == 1, "repeat counted")
    assert sink.metric("answers_resent") == 1
    assert driver.repeat_requests == 1
    assert kiosk.stats["duplicate_answers"] == 1  # the firmware ignores it: printed once


async def test_second_different_ticket_for_a_request_is_refused(
    driver: KioskMqttDriver, kiosk: SimulatedKiosk, sink: Any
) -> None:
    rid = kiosk.request_ticket("filing")
    await sink.wait(lambda: sink.events_of("ticket_request"), "ticket_request event")
    await driver.execute("send_ticket", ticket_args(rid, "A001"))
    await driver.execute("send_ticket", ticket_args(rid, "A001"))  # same ticket: idempotent
    with pytest.raises(CommandError, match="already got ticket A001"):
        await driver.execute("send_ticket", ticket_args(rid, "A002"))
    await sink.wait(lambda: len(kiosk.tickets.get(rid, [])) == 2, "both copies")
    assert {t.number for t in kiosk.tickets[rid]} == {"A001"}


async def test_unanswered_repeat_is_forwarded_flagged(
    kiosk_options: Callable[..., dict[str, Any]],
    sink: Any,
    run_driver: Any,
    start_kiosk: StartKiosk,
    quiet_profile: KioskProfile,
) -> None:
    drv = KioskMqttDriver("kiosk-1", kiosk_options())
    run_driver(drv, sink)
    await sink.wait_state(OFFLINE, "waiting for kiosk")
    kiosk = await start_kiosk(dataclasses.replace(quiet_profile, answer_timeout_s=0.3))
    rid = kiosk.request_ticket("consult")
    await sink.wait(lambda: len(sink.events_of("ticket_request")) >= 2, "forwarded repeat")
    first, second = sink.events_of("ticket_request")[:2]
    assert first == {"request_id": rid, "service": "consult", "priority": "normal"}
    assert second == {**first, "repeat": True}
    # once answered, further repeats are answered at the edge
    await drv.execute("send_ticket", ticket_args(rid, "B001", service="consult"))
    await sink.wait(lambda: rid not in kiosk.pending, "kiosk got its ticket")
    forwarded = len(sink.events_of("ticket_request"))
    assert kiosk.publish_raw(
        encode_up(TicketRequest(request_id=rid, service="consult", priority="normal"))
    )
    await sink.wait(lambda: len(kiosk.tickets[rid]) == 2, "re-sent ticket")
    assert len(sink.events_of("ticket_request")) == forwarded


async def test_case_query_id_card_and_other_commands(
    driver: KioskMqttDriver, kiosk: SimulatedKiosk, sink: Any
) -> None:
    rid = kiosk.query_case("(2026)京0105民初12345号")
    await sink.wait(lambda: sink.events_of("case_query"), "case_query event")
    assert sink.events_of("case_query") == [
        {"request_id": rid, "case_no": "(2026)京0105民初12345号"}
    ]
    await driver.execute(
        "send_case_info",
        {
            "request_id": rid,
            "found": True,
            "status": "审理中",
            "next_hearing": "2026-12-01 09:30",
            "judge": "王法官",
            "courtroom": "第三法庭",
        },
    )
    await sink.wait(lambda: rid not in kiosk.pending, "case info at the kiosk")

    card = kiosk.read_id_card()
    assert card is not None
    await sink.wait(lambda: sink.events_of("id_card"), "id_card event")
    assert sink.events_of("id_card") == [{"id_hash": card.id_hash, "name_masked": card.name_masked}]
    assert "*" in card.name_masked

    await driver.execute("show_message", {"text": "请到3号窗口", "seconds": 10})
    await driver.execute("print", {"request_id": "p-1", "lines": ["缴费通知", "金额: 50 元"]})
    await sink.wait(
        lambda: any(e["request_id"] == "p-1" for e in sink.events_of("print_done")), "print"
    )
    rid2 = kiosk.request_ticket("materials")
    await sink.wait(lambda: len(sink.events_of("ticket_request")) == 1, "ticket_request")
    await driver.execute(
        "send_error", {"request_id": rid2, "code": "closed", "text": "今日材料窗口已停止取号"}
    )
    await sink.wait(lambda: kiosk.stats["messages_shown"] == 1, "message shown")
    await sink.wait(lambda: rid2 not in kiosk.pending, "error answered the request")
    assert kiosk.stats["ErrorReply"] == 1 and kiosk.stats["print_jobs"] == 1


async def test_bad_command_arguments(driver: KioskMqttDriver) -> None:
    with pytest.raises(UnknownCommand):
        await driver.execute("self_destruct", {})
    bad: list[tuple[str, dict[str, Any], str]] = [
        ("send_ticket", {"request_id": "r1"}, "missing required field"),
        ("send_ticket", ticket_args("r1", waiting_ahead="4"), "waiting_ahead"),
        ("send_ticket", ticket_args("r1", waiting_ahead=-1), "waiting_ahead"),
        ("send_ticket", ticket_args("r1", nmber="A1"), "unknown argument"),
        ("send_ticket", ticket_args("r1", service="Filing Desk"), "service"),
        ("send_case_info", {"request_id": "r1", "found": True}, "status"),
        ("send_case_info", {"request_id": "r1", "found": False, "judge": "x"}, "not found"),
        ("print", {"request_id": "r1", "lines": []}, "lines"),
        ("print", {"request_id": "r1", "lines": "one line"}, "lines"),
        ("show_message", {"text": "hi", "seconds": 0}, "seconds"),
        ("show_message", {"text": "", "seconds": 5}, "text"),
        ("send_error", {"request_id": "r1", "code": "x"}, "text"),
    ]
    for name, args, fragment in bad:
        with pytest.raises(CommandError, match=fragment):
            await driver.execute(name, args)


async def test_kiosk_drop_fires_will_then_reconnect_brings_it_back(
    kiosk: SimulatedKiosk, sink: Any
) -> None:
    hellos = len(sink.events_of("hello"))
    await kiosk.drop()
    await sink.wait_state(OFFLINE, "kiosk offline")
    assert await kiosk.reconnect()
    await sink.wait_state(ONLINE)
    await sink.wait(lambda: len(sink.events_of("hello")) == hellos + 1, "second hello")


async def test_silent_kiosk_goes_offline_and_returns(
    kiosk_options: Callable[..., dict[str, Any]],
    sink: Any,
    run_driver: Any,
    start_kiosk: StartKiosk,
    quiet_profile: KioskProfile,
) -> None:
    run_driver(KioskMqttDriver("kiosk-1", kiosk_options(offline_after_s=0.4)), sink)
    await sink.wait_state(OFFLINE, "waiting for kiosk")
    kiosk = await start_kiosk(dataclasses.replace(quiet_profile, status_interval_s=3600))
    await sink.wait_state(ONLINE)
    await sink.wait_state(OFFLINE, "no message from kiosk for 0.4 s")
    kiosk.send_status()
    await sink.wait_state(ONLINE)


async def test_garbage_is_counted_and_the_driver_keeps_working(
    kiosk: SimulatedKiosk, sink: Any
) -> None:
    kinds = ["not_json", "not_object", "unknown_type", "wrong_schema", "oversized"]
    for kind in kinds:
        kiosk.send_garbage(kind)  # type: ignore[arg-type]
    await sink.wait(lambda: len(sink.bad) == len(kinds), "five bad inputs")
    assert [reason for reason, _ in sink.bad] == [
        "malformed_json",
        "schema",
        "schema",
        "schema",
        "oversized",
    ]
    # a raw ID number in id_hash is refused, never forwarded
    kiosk.publish_raw(
        '{"type":"id_card","id_hash":"11010519900101123X","name_masked":"张*"}'.encode()
    )
    await sink.wait(lambda: len(sink.bad) == len(kinds) + 1, "raw id refused")
    assert "raw ID number" in sink.bad[-1][1]
    assert sink.events_of("id_card") == []
    rid = kiosk.request_ticket("filing")
    await sink.wait(lambda: sink.events_of("ticket_request"), "still working")
    assert sink.events_of("ticket_request")[0]["request_id"] == rid
    assert sink.state == (ONLINE, "")


async def test_retained_leftovers_are_ignored(
    kiosk_options: Callable[..., dict[str, Any]],
    sink: Any,
    run_driver: Any,
    start_kiosk: StartKiosk,
) -> None:
    kiosk = await start_kiosk()
    # some firmwares retain their will: a stale "offline" waits for every new subscriber
    assert kiosk.publish_raw(OFFLINE_WILL, retain=True)
    run_driver(KioskMqttDriver("kiosk-1", kiosk_options()), sink)
    await sink.wait(lambda: sink.metric("paper_pct") is not None, "live status")
    await sink.wait_state(ONLINE)
    assert sink.descriptions == [] and sink.events_of("hello") == []
    assert ("offline", "kiosk offline") not in [(s.value, r) for s, r in sink.states]


async def test_broker_outage_offline_then_recovers(
    broker: MosquittoBroker, kiosk: SimulatedKiosk, driver: KioskMqttDriver, sink: Any
) -> None:
    broker.stop()
    await sink.wait_state(OFFLINE, "kiosk broker unreachable")
    with pytest.raises(CommandError, match="unreachable"):
        await driver.execute("show_message", {"text": "hi", "seconds": 5})
    broker.start()
    # both MQTT clients reconnect by themselves; the kiosk's hello brings it back
    await sink.wait_state(ONLINE, timeout=10.0)
    await driver.execute("show_message", {"text": "hi", "seconds": 5})


async def test_unreachable_broker_reports_offline(sink: Any, run_driver: Any) -> None:
    port = free_port()
    drv = KioskMqttDriver(
        "kiosk-1",
        {"broker_url": f"mqtt://127.0.0.1:{port}", "kiosk_id": "k1", "offline_after_s": 0.2},
    )
    run_driver(drv, sink)
    await sink.wait_state(OFFLINE, "kiosk broker unreachable")
    with pytest.raises(CommandError, match="unreachable"):
        await drv.execute("send_error", {"request_id": "r", "code": "c", "text": "t"})


async def test_execute_before_run_is_a_command_error() -> None:
    drv = KioskMqttDriver("kiosk-1", {"broker_url": "mqtt://127.0.0.1:1", "kiosk_id": "k1"})
    with pytest.raises(CommandError, match="not running"):
        await drv.execute("show_message", {"text": "hi", "seconds": 5})


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"broker_url": "http://x", "kiosk_id": "k1"}, "mqtt://"),
        ({"broker_url": "mqtt://h", "kiosk_id": "K 1"}, "kiosk_id"),
        ({"broker_url": "mqtt://h", "kiosk_id": "k1", "offline_after_s": 0}, "offline_after_s"),
        ({"broker_url": "mqtt://h", "kiosk_id": "k1", "colour": "red"}, "colour"),
        ({"kiosk_id": "k1"}, "broker_url"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(DriverConfigError, match=fragment):
        KioskMqttDriver("kiosk-1", options)


def test_catalog_creates_the_driver() -> None:
    drv = create("kiosk_mqtt", "kiosk-1", {"broker_url": "mqtt://u:p@h:1884", "kiosk_id": "k2"})
    assert isinstance(drv, KioskMqttDriver)
    assert drv.description.kind == "kiosk"
    assert drv.description.extra["kiosk_id"] == "k2"


def test_options_repr_hides_secrets() -> None:
    drv = KioskMqttDriver(
        "kiosk-1", {"broker_url": "mqtt://u:s3cret@h:1884", "kiosk_id": "k1", "password": "pw-x"}
    )
    shown = repr(drv.options)
    assert "s3cret" not in shown and "pw-x" not in shown and "kiosk_id='k1'" in shown
