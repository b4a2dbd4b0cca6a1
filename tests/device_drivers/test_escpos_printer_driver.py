"""EscposPrinterDriver against SimulatedPrinter over a real pty."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from device_drivers.base import CommandError, DriverConfigError, UnknownCommand
from device_drivers.catalog import create
from device_drivers.escpos_printer import TEST_PAGE_LINES, EscposPrinterDriver
from device_drivers.serial_link import SerialLink
from protocol.messages import DeviceStatus
from simulators.escpos_printer import PrintedTicket, SimulatedPrinter

ONLINE, OFFLINE, FAULT = DeviceStatus.ONLINE, DeviceStatus.OFFLINE, DeviceStatus.FAULT
ISSUED = int(datetime(2026, 11, 23, 1, 30, tzinfo=UTC).timestamp() * 1000)
ARGS: dict[str, Any] = {
    "number": "A023",
    "service_name": "立案",
    "waiting_ahead": 3,
    "estimated_wait_s": 600,
    "issued_at": ISSUED,
    "ticket_id": "T20261123-A023",
    "court_name": "诉讼服务中心",
}


@pytest.fixture
async def printer() -> AsyncIterator[SimulatedPrinter]:
    sim = SimulatedPrinter()
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
def start_driver(
    printer: SimulatedPrinter, sink: Any, run_driver: Any
) -> Callable[..., EscposPrinterDriver]:
    def start(**options: Any) -> EscposPrinterDriver:
        opts: dict[str, Any] = {
            "port": printer.path,
            "status_interval_s": 0.1,
            "reply_timeout_s": 0.2,
            "reopen_min_s": 0.05,
            "reopen_max_s": 0.2,
        }
        opts.update(options)
        driver = EscposPrinterDriver("printer-1", opts)
        run_driver(driver, sink)
        return driver

    return start


def test_catalog_and_options() -> None:
    driver = create("escpos_printer", "p1", {"port": "/dev/ttyUSB0"})
    assert isinstance(driver, EscposPrinterDriver)
    assert driver.options.baudrate == 9600
    assert driver.options.status_interval_s == 10 and driver.options.reply_timeout_s == 0.5
    assert set(driver.description.capabilities) == {
        "print_ticket",
        "print_lines",
        "test_page",
        "status",
    }
    for bad in ({}, {"port": ""}, {"port": "/dev/x", "baudrate": 0}, {"port": "/dev/x", "x": 1}):
        with pytest.raises(DriverConfigError):
            create("escpos_printer", "p1", bad)


async def test_print_ticket_reads_back_exactly(
    start_driver: Callable[..., EscposPrinterDriver], printer: SimulatedPrinter, sink: Any
) -> None:
    driver = start_driver()
    await sink.wait_state(ONLINE)
    result = await driver.execute("print_ticket", ARGS)
    assert result["ok"] is True
    await sink.wait(lambda: printer.tickets, "ticket printed")
    assert printer.tickets == [
        PrintedTicket(
            lines=[
                "诉讼服务中心",
                "立案",
                "A023",
                "前面还有 3 人",
                "预计等待约 10 分钟",
                "取号时间 2026-11-23 09:30",
                "",
                "T20261123-A023",
            ],
            bold=["诉讼服务中心", "A023"],
            double=["A023"],
            qr=["T20261123-A023"],
            cut=True,
        )
    ]
    await driver.execute("print_lines", {"lines": ["诉讼服务中心 A023 立案 前面还有 3 人", "x"]})
    await driver.execute("test_page", {})
    await sink.wait(lambda: len(printer.tickets) == 3, "two more jobs")
    assert printer.tickets[1].lines == ["诉讼服务中心 A023 立案 前面还有 3 人", "x"]
    assert printer.tickets[2].lines[1:4] == list(TEST_PAGE_LINES)
    assert printer.tickets[2].qr == ["courthub-test"]
    assert await driver.execute("status", {}) == {
        "paper_out": 0,
        "paper_low": 0,
        "cover_open": 0,
        "online": 1,
    }
    assert sink.bad == [] and printer.bad_input == 0


async def test_argument_errors_never_reach_the_printer(
    start_driver: Callable[..., EscposPrinterDriver], printer: SimulatedPrinter, sink: Any
) -> None:
    driver = start_driver()
    await sink.wait_state(ONLINE)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("print_ticket", {**ARGS, "number": ""}, "number"),
        ("print_ticket", {**ARGS, "waiting_ahead": -1}, "waiting_ahead"),
        ("print_ticket", {**ARGS, "waiting_ahead": True}, "waiting_ahead"),
        ("print_ticket", {**ARGS, "issued_at": 1.5}, "whole numbers"),
        ("print_ticket", {**ARGS, "ticket_id": "票"}, "ASCII"),
        ("print_ticket", {**ARGS, "timezone": "Mars/Base"}, "timezone"),
        ("print_ticket", {**ARGS, "service_name": "立\x1b@案"}, "control character"),
        ("print_lines", {"lines": []}, "non-empty list"),
        ("print_lines", {"lines": ["a\nb"]}, "control character"),
    ]
    for name, args, message in cases:
        with pytest.raises(CommandError, match=message):
            await driver.execute(name, args)
    with pytest.raises(UnknownCommand):
        await driver.execute("dance", {})
    assert printer.tickets == [] and printer.bad_input == 0


async def test_paper_out_refuses_then_refill(
    start_driver: Callable[..., EscposPrinterDriver], printer: SimulatedPrinter, sink: Any
) -> None:
    driver = start_driver()
    await sink.wait_state(ONLINE)
    printer.paper_low(True)
    await sink.wait(lambda: sink.metric("paper_low") == 1.0, "paper low telemetry")
    assert sink.events_of("paper_low") == [{}]
    assert sink.state == (ONLINE, "")
    printer.paper_out(True)
    await sink.wait_state(FAULT, "缺纸 (paper out)")
    assert sink.metric("paper_out") == 1.0
    with pytest.raises(CommandError, match="缺纸"):
        await driver.execute("print_ticket", ARGS)
    printer.paper_out(False)
    printer.paper_low(False)
    await sink.wait_state(ONLINE)
    assert sink.metric("paper_out") == 0.0 and sink.metric("paper_low") == 0.0
    await driver.execute("print_ticket", ARGS)
    await sink.wait(lambda: len(printer.tickets) == 1, "ticket after refill")


async def test_cover_open_refuses(
    start_driver: Callable[..., EscposPrinterDriver], printer: SimulatedPrinter, sink: Any
) -> None:
    driver = start_driver()
    await sink.wait_state(ONLINE)
    printer.cover_open(True)
    with pytest.raises(CommandError, match="cover open"):
        await driver.execute("print_ticket", ARGS)
    assert sink.state == (FAULT, "cover open") and sink.metric("cover_open") == 1.0
    printer.cover_open(False)
    await sink.wait_state(ONLINE)
    await driver.execute("test_page", {})
    await sink.wait(lambda: len(printer.tickets) == 1, "test page")


async def test_silence_offline_then_back(
    start_driver: Callable[..., EscposPrinterDriver], printer: SimulatedPrinter, sink: Any
) -> None:
    driver = start_driver()
    await sink.wait_state(ONLINE)
    printer.silence(True)
    await sink.wait_state(OFFLINE, "no status reply")
    assert sink.metric("online") == 0.0
    with pytest.raises(CommandError, match="does not answer"):
        await driver.execute("print_ticket", ARGS)
    assert printer.tickets == []
    printer.silence(False)
    await sink.wait_state(ONLINE)
    assert sink.metric("online") == 1.0


async def test_unplug_offline_replug_online(
    start_driver: Callable[..., EscposPrinterDriver], printer: SimulatedPrinter, sink: Any
) -> None:
    driver = start_driver()
    await sink.wait_state(ONLINE)
    for printed in (1, 2):
        printer.unplug()
        await sink.wait(
            lambda: sink.state[0] == OFFLINE and "serial port" in sink.state[1], "offline"
        )
        with pytest.raises(CommandError, match="not available"):
            await driver.execute("print_ticket", ARGS)
        await asyncio.sleep(0)
        printer.replug()
        await sink.wait_state(ONLINE)
        await driver.execute("print_ticket", ARGS)
        await sink.wait(lambda n=printed: len(printer.tickets) >= n, "ticket after replug")
        assert len(printer.tickets) == printed
    assert printer.bad_input == 0


async def test_garbage_is_counted(
    start_driver: Callable[..., EscposPrinterDriver], printer: SimulatedPrinter, sink: Any
) -> None:
    driver = start_driver()
    await sink.wait_state(ONLINE)
    printer.garbage(20)
    await sink.wait(
        lambda: sum(int(detail.split()[0]) for _, detail in sink.bad) == 20, "garbage reported"
    )
    assert all(r == "schema" and "unexpected bytes" in d for r, d in sink.bad)
    await sink.wait_state(ONLINE)
    await driver.execute("print_ticket", ARGS)
    await sink.wait(lambda: len(printer.tickets) == 1, "ticket after garbage")


async def test_simulator_status_bytes_and_bad_input(printer: SimulatedPrinter) -> None:
    link = SerialLink(printer.path, reopen_min_s=0.05, reopen_max_s=0.1)
    await link.open()
    assert await link.wait_open(2.0)
    try:

        async def ask(n: int) -> bytes:
            await link.write(bytes((0x10, 0x04, n)))
            return await link.read(1, 1.0)

        assert [await ask(n) for n in (1, 2, 4)] == [b"\x12"] * 3
        printer.paper_out(True)
        printer.cover_open(True)
        assert [await ask(n) for n in (1, 2, 4)] == [b"\x1a", b"\x36", b"\x7e"]
        printer.paper_out(False)
        printer.cover_open(False)
        printer.paper_low(True)
        assert [await ask(n) for n in (1, 2, 4)] == [b"\x12", b"\x12", b"\x1e"]
        await link.write(b"\x07\x07")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while printer.bad_input == 0 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert printer.bad_input == 1
        assert await ask(1) == b"\x12"
    finally:
        await link.close()
