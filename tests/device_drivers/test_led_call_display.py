"""LedCallDisplayDriver against SimulatedLedBus over a real pty, and the frame codec."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_drivers.base import CommandError, DriverConfigError, UnknownCommand
from device_drivers.catalog import create
from device_drivers.led_call_display import (
    BusRegistry,
    Frame,
    FrameParser,
    LedCallDisplayDriver,
    decode_text,
    encode_frame,
    encode_text,
)
from protocol.errors import BadMessage
from protocol.messages import DeviceStatus
from simulators.led_display import SimulatedLedBus, SimulatedPanel

ONLINE, OFFLINE, FAULT = DeviceStatus.ONLINE, DeviceStatus.OFFLINE, DeviceStatus.FAULT
CALL = "请 A023 号到 3 号窗口"


# --- codec -------------------------------------------------------------------------------
def test_frame_round_trip_with_chinese_text() -> None:
    payload = b"\x00\x00" + encode_text(CALL)
    frame = encode_frame(3, 0x01, payload)
    assert frame[:6] == b"\xaa\x55\x03\x01" + len(payload).to_bytes(2, "big")
    assert frame[-1] == 0x0D
    parser = FrameParser()
    # byte by byte, after some noise
    got = [f for byte in b"\x01\x02" + frame for f in parser.feed(bytes((byte,)))]
    assert got == [Frame(3, 0x01, payload)]
    assert decode_text(got[0].payload[2:]) == CALL
    assert encode_text(CALL) == CALL.encode("gb2312")
    assert parser.bad_count == 2  # one skipped byte per feed


def test_gbk_fallback_and_unencodable() -> None:
    with pytest.raises(UnicodeEncodeError):
        "喆".encode("gb2312")
    assert encode_text("王喆") == "王喆".encode("gbk")
    assert decode_text(encode_text("王喆")) == "王喆"
    with pytest.raises(CommandError, match="U\\+1F600"):
        encode_text("请 😀")
    with pytest.raises(BadMessage):
        decode_text(b"\xff\xff")


def test_parser_drops_bad_end_oversize_and_bad_checksum() -> None:
    good = encode_frame(1, 0x10)
    bad_end = good[:-1] + b"\x0a"
    bad_sum = bytearray(good)
    bad_sum[-2] ^= 1
    oversized = b"\xaa\x55\x01\x01\x02\x01"
    parser = FrameParser()
    assert parser.feed(bad_end + bytes(bad_sum) + oversized + good) == [Frame(1, 0x10)]
    reasons = [(p.reason.value, p.detail.split(" ")[0]) for p in parser.take_problems()]
    assert ("bad_header", "end") in reasons
    assert ("bad_header", "bad") in reasons
    assert ("oversized", "length") in reasons


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frames = [
        encode_frame(
            draw(st.integers(0, 255)),
            draw(st.integers(0, 255)),
            draw(st.binary(max_size=40)),
        )
        for _ in range(draw(st.integers(1, 4)))
    ]
    data = bytearray(b"".join(frames))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "drop", "insert"]))
        if action == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif action == "drop" and len(data) > 1:
            del data[pos]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(st.binary(max_size=2000), mutated_frames()),
    st.lists(st.integers(1, 64), min_size=1, max_size=20),
)
def test_fuzz_frame_parser(data: bytes, chunk_sizes: list[int]) -> None:
    parser = FrameParser()
    pos = i = 0
    frames: list[Frame] = []
    while pos < len(data):
        size = chunk_sizes[i % len(chunk_sizes)]
        frames += parser.feed(data[pos : pos + size])
        pos, i = pos + size, i + 1
    for frame in frames:
        assert len(frame.payload) <= 512
        assert encode_frame(frame.address, frame.command, frame.payload) in data
    assert all(isinstance(p, BadMessage) for p in parser.problems)
    assert len(parser._buffer) <= 520  # at most one frame is held back


# --- against the simulator ---------------------------------------------------------------
@pytest.fixture
async def led_bus() -> AsyncIterator[SimulatedLedBus]:
    sim = SimulatedLedBus([SimulatedPanel(1), SimulatedPanel(2, lines=1, line_width=8)])
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
def led_driver(
    led_bus: SimulatedLedBus, sink: Any, run_driver: Any
) -> Callable[..., LedCallDisplayDriver]:
    buses = BusRegistry()

    def start(address: int = 1, the_sink: Any = None, **options: Any) -> LedCallDisplayDriver:
        opts: dict[str, Any] = {
            "port": led_bus.path,
            "address": address,
            "reply_timeout_s": 0.2,
            "retries": 1,
            "poll_interval_s": 0.1,
            "reopen_min_s": 0.05,
            "reopen_max_s": 0.2,
        }
        opts.update(options)
        driver = LedCallDisplayDriver(f"led-{address}", opts, buses=buses)
        run_driver(driver, the_sink if the_sink is not None else sink)
        return driver

    return start


def test_catalog_and_options() -> None:
    driver = create("led_call_display", "led-1", {"port": "/dev/ttyUSB0", "address": 7})
    assert isinstance(driver, LedCallDisplayDriver)
    assert set(driver.description.capabilities) == {
        "show_text",
        "clear",
        "brightness",
        "chime",
        "test",
        "status",
    }
    for bad in ({"port": "/dev/x", "address": 0}, {"port": "/dev/x", "address": 255}, {}):
        with pytest.raises(DriverConfigError):
            create("led_call_display", "led-1", bad)


async def test_commands_show_exact_text(
    led_driver: Callable[..., LedCallDisplayDriver], led_bus: SimulatedLedBus, sink: Any
) -> None:
    driver = led_driver()
    await sink.wait_state(ONLINE)
    panel = led_bus.panels[1]
    assert await driver.execute("show_text", {"line": 0, "text": CALL, "effect": "scroll"}) == {
        "ok": True
    }
    await driver.execute("show_text", {"line": 1, "text": "王喆", "effect": "flash"})
    assert panel.text == [CALL, "王喆"]
    assert panel.raw == [CALL.encode("gb2312"), "王喆".encode("gbk")]
    assert panel.effects == ["scroll", "flash"]
    await driver.execute("clear", {"line": 1})
    assert panel.text == [CALL, ""]
    await driver.execute("clear", {"line": "all"})
    assert panel.text == ["", ""]
    await driver.execute("brightness", {"level": 15})
    assert panel.brightness == 15
    await driver.execute("chime", {"count": 2})
    assert panel.chimes == 2
    assert await driver.execute("test", {}) == {"ok": True, "lines": 2}
    assert panel.text == ["测试" + "■" * 14] * 2
    assert len(panel.raw[0]) == 32
    status = await driver.execute("status", {})
    assert status == {"temperature_c": 35, "brightness": 15, "led_fault": 0, "power_fault": 0}
    assert sink.bad == []


async def test_argument_errors_never_reach_the_wire(
    led_driver: Callable[..., LedCallDisplayDriver], led_bus: SimulatedLedBus, sink: Any
) -> None:
    driver = led_driver()
    await sink.wait_state(ONLINE)
    before = len(led_bus.received)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("show_text", {"line": 0, "text": "x" * 33}, "33 bytes"),
        ("show_text", {"line": 0, "text": "请" * 17}, "34 bytes"),
        ("show_text", {"line": 0, "text": "号😀"}, "cannot show"),
        ("show_text", {"line": 2, "text": "x"}, "line must be"),
        ("show_text", {"line": 0, "text": "x", "effect": "spin"}, "effect"),
        ("brightness", {"level": 16}, "level"),
        ("chime", {"count": 0}, "count"),
        ("clear", {"line": "some"}, "line"),
    ]
    for name, args, message in cases:
        with pytest.raises(CommandError, match=message):
            await driver.execute(name, args)
    with pytest.raises(UnknownCommand):
        await driver.execute("dance", {})
    assert len(led_bus.received) - before <= 2  # only status polls went out meanwhile
    assert all(f.command == 0x10 for f in led_bus.received[before:])


async def test_ack_statuses_become_clear_errors(
    led_driver: Callable[..., LedCallDisplayDriver], led_bus: SimulatedLedBus, sink: Any
) -> None:
    # the driver believes in 2 lines of 32 bytes; panel 2 has 1 line of 8
    driver = led_driver(address=2)
    await sink.wait_state(ONLINE)
    with pytest.raises(CommandError, match="too long for the display's line"):
        await driver.execute("show_text", {"line": 0, "text": CALL})
    with pytest.raises(CommandError, match="rejected an argument"):
        await driver.execute("show_text", {"line": 1, "text": "A023"})
    await driver.execute("show_text", {"line": 0, "text": "A023"})
    assert led_bus.panels[2].text == ["A023"]


async def test_two_panels_share_one_bus_and_broadcast(
    led_driver: Callable[..., LedCallDisplayDriver], led_bus: SimulatedLedBus, sink: Any
) -> None:
    sink2 = type(sink)()  # a second RecordingSink
    one = led_driver(address=1)
    two = led_driver(address=2, the_sink=sink2, line_width=8, lines=1)
    await sink.wait_state(ONLINE)
    await sink2.wait_state(ONLINE)
    await asyncio.gather(
        *(one.execute("show_text", {"line": i % 2, "text": f"A{i:03d}"}) for i in range(6)),
        *(two.execute("show_text", {"line": 0, "text": f"B{i:03d}"}) for i in range(6)),
        one.execute("chime", {"count": 1}),
    )
    assert led_bus.panels[1].text == ["A004", "A005"]
    assert led_bus.panels[2].text == ["B005"]
    assert led_bus.panels[1].chimes == 1 and led_bus.panels[2].chimes == 0
    assert await one.execute("show_text", {"line": 0, "text": "全体", "broadcast": True}) == {
        "ok": True,
        "broadcast": True,
    }
    # no reply to a broadcast: wait until the panels have read it
    panels = led_bus.panels
    await sink.wait(lambda: panels[1].text[0] == panels[2].text[0] == "全体", "broadcast text")
    await two.execute("chime", {"count": 3, "broadcast": True})
    await sink.wait(lambda: [p.chimes for p in panels.values()] == [4, 3], "broadcast chime")
    assert sink.bad == sink2.bad == []


async def test_status_polling_telemetry_and_faults(
    led_driver: Callable[..., LedCallDisplayDriver], led_bus: SimulatedLedBus, sink: Any
) -> None:
    led_driver()
    await sink.wait_state(ONLINE)
    await sink.wait(lambda: len(sink.telemetry_log) >= 2, "two status polls")
    assert sink.telemetry_log[0] == {
        "temperature_c": 35.0,
        "brightness": 8.0,
        "led_fault": 0.0,
        "power_fault": 0.0,
    }
    led_bus.panels[1].temperature_c = 61
    led_bus.set_fault(1, led=True)
    await sink.wait_state(FAULT, "LED fault")
    led_bus.set_fault(1, power=True)
    await sink.wait_state(FAULT, "LED fault, power fault")
    assert sink.metric("power_fault") == 1.0 and sink.metric("temperature_c") == 61.0
    led_bus.set_fault(1, led=False, power=False)
    await sink.wait_state(ONLINE)


async def test_silence_makes_it_offline_then_back(
    led_driver: Callable[..., LedCallDisplayDriver], led_bus: SimulatedLedBus, sink: Any
) -> None:
    driver = led_driver()
    await sink.wait_state(ONLINE)
    led_bus.silence(True)
    await sink.wait(lambda: sink.state[0] == OFFLINE and "no reply" in sink.state[1], "offline")
    with pytest.raises(CommandError, match="no reply from the display at address 1"):
        await driver.execute("chime", {"count": 1})
    led_bus.silence(False)
    await sink.wait_state(ONLINE)
    await driver.execute("chime", {"count": 1})


async def test_unplug_offline_replug_online(
    led_driver: Callable[..., LedCallDisplayDriver], led_bus: SimulatedLedBus, sink: Any
) -> None:
    driver = led_driver()
    await sink.wait_state(ONLINE)
    for _ in range(2):
        led_bus.unplug()
        await sink.wait(lambda: sink.state[0] == OFFLINE and "serial port" in sink.state[1], "off")
        with pytest.raises(CommandError, match="not available"):
            await driver.execute("show_text", {"line": 0, "text": CALL})
        await asyncio.sleep(0)  # let a reopen attempt fail against the missing path
        led_bus.replug()
        await sink.wait_state(ONLINE)
        await driver.execute("show_text", {"line": 0, "text": CALL})
        assert led_bus.panels[1].text[0] == CALL
        led_bus.panels[1].text[0] = ""


async def test_garbage_and_bad_checksums_are_counted(
    led_driver: Callable[..., LedCallDisplayDriver], led_bus: SimulatedLedBus, sink: Any
) -> None:
    driver = led_driver()
    await sink.wait_state(ONLINE)
    led_bus.garbage(40)
    await sink.wait(lambda: any(r == "bad_magic" for r, _ in sink.bad), "garbage reported")
    led_bus.bad_checksums(True)
    await sink.wait(lambda: any("checksum" in d for _, d in sink.bad), "checksums reported")
    await sink.wait_state(OFFLINE)
    led_bus.bad_checksums(False)
    await sink.wait_state(ONLINE)
    await driver.execute("brightness", {"level": 3})
    assert led_bus.panels[1].brightness == 3
