"""SimulatedLedBus over a real pty, spoken to through SerialLink: the protocol's exact replies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from device_drivers.led_call_display import Frame, FrameParser, encode_frame
from device_drivers.serial_link import SerialLink, SerialLinkClosed
from simulators.led_display import SimulatedLedBus, SimulatedPanel


@pytest.fixture
async def bus() -> AsyncIterator[SimulatedLedBus]:
    sim = SimulatedLedBus([SimulatedPanel(1), SimulatedPanel(2, lines=1, line_width=8)])
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
async def link(bus: SimulatedLedBus) -> AsyncIterator[SerialLink]:
    port = SerialLink(bus.path, reopen_min_s=0.05, reopen_max_s=0.1)
    await port.open()
    assert await port.wait_open(2.0)
    try:
        yield port
    finally:
        await port.close()


async def ask(link: SerialLink, frame: bytes, timeout: float = 0.5) -> list[Frame]:
    """Send ``frame``; the frames received until ``timeout`` or the first reply."""
    await link.write(frame)
    parser = FrameParser()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (remaining := deadline - loop.time()) > 0:
        frames = parser.feed(await link.read(4096, remaining))
        if frames:
            return frames
    return []


async def test_status_reply_bytes(bus: SimulatedLedBus, link: SerialLink) -> None:
    bus.panels[1].temperature_c = -5
    bus.set_fault(1, power=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    (reply,) = await ask(link, encode_frame(1, 0x10))
    assert loop.time() - started < 0.1  # within 100 ms
    assert reply == Frame(1, 0x90, bytes((0xFB, 8, 0x02)))
    assert encode_frame(1, 0x90, bytes((0xFB, 8, 0x02))) == bytes.fromhex("aa5501900003fb0802") + (
        bytes((1 ^ 0x90 ^ 0 ^ 3 ^ 0xFB ^ 8 ^ 2, 0x0D))
    )


async def test_acks_and_recorded_text(bus: SimulatedLedBus, link: SerialLink) -> None:
    text = "请 A023 号到 3 号窗口".encode("gb2312")
    assert await ask(link, encode_frame(1, 0x01, b"\x00\x01" + text)) == [Frame(1, 0x81, b"\x00")]
    assert bus.panels[1].text == ["请 A023 号到 3 号窗口", ""]
    assert bus.panels[1].effects[0] == "scroll"
    assert bus.panels[1].raw[0] == text
    assert await ask(link, encode_frame(1, 0x04, b"\x03")) == [Frame(1, 0x84, b"\x00")]
    assert bus.panels[1].chimes == 3
    # 2 unknown command, 3 too long, 4 bad argument
    assert await ask(link, encode_frame(1, 0x05)) == [Frame(1, 0x85, b"\x02")]
    assert await ask(link, encode_frame(2, 0x01, b"\x00\x00" + b"x" * 9)) == [
        Frame(2, 0x81, b"\x03")
    ]
    assert await ask(link, encode_frame(2, 0x01, b"\x01\x00ab")) == [Frame(2, 0x81, b"\x04")]
    assert await ask(link, encode_frame(1, 0x03, b"\x10")) == [Frame(1, 0x83, b"\x04")]
    assert await ask(link, encode_frame(1, 0x02, b"\xff")) == [Frame(1, 0x82, b"\x00")]
    assert bus.panels[1].text == ["", ""]


async def test_bad_checksum_broadcast_and_unknown_address(
    bus: SimulatedLedBus, link: SerialLink
) -> None:
    frame = bytearray(encode_frame(1, 0x03, b"\x05"))
    frame[-2] ^= 0x55
    assert await ask(link, bytes(frame)) == [Frame(1, 0x83, b"\x01")]
    assert bus.panels[1].brightness == 8  # not applied
    assert await ask(link, encode_frame(0xFF, 0x03, b"\x05"), timeout=0.2) == []
    assert [p.brightness for p in bus.panels.values()] == [5, 5]
    assert await ask(link, encode_frame(9, 0x10), timeout=0.2) == []
    # garbage before a frame is skipped; the frame is still answered
    assert await ask(link, b"\x00\x13junk\xaa" + encode_frame(2, 0x10)) == [
        Frame(2, 0x90, bytes((35, 5, 0)))
    ]
    assert bus.bad_frames == 2


async def test_fault_switches(bus: SimulatedLedBus, link: SerialLink) -> None:
    bus.silence(True)
    assert await ask(link, encode_frame(1, 0x10), timeout=0.2) == []
    bus.silence(False)
    bus.bad_checksums(True)
    parser = FrameParser()
    await link.write(encode_frame(1, 0x10))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0
    while not parser.problems and loop.time() < deadline:
        assert parser.feed(await link.read(4096, 0.1)) == []
    assert "checksum" in parser.problems[0].detail
    bus.bad_checksums(False)
    bus.slow(0.3)
    started = loop.time()
    assert await ask(link, encode_frame(1, 0x10), timeout=1.0)
    assert loop.time() - started >= 0.25
    bus.slow(0)
    link.reset_input()
    bus.garbage(10)
    assert await link.read(100, 1.0)


async def test_unplug_and_replug_reopen_the_link(bus: SimulatedLedBus) -> None:
    states: list[tuple[bool, str]] = []
    link = SerialLink(
        bus.path, reopen_min_s=0.05, reopen_max_s=0.1, on_state=lambda o, r: states.append((o, r))
    )
    await link.open()
    try:
        assert await link.wait_open(2.0)
        bus.unplug()
        with pytest.raises(SerialLinkClosed):
            for _ in range(50):
                await link.read(10, 0.05)
        assert not link.is_open
        bus.replug()
        assert await link.wait_open(2.0)
        assert await ask(link, encode_frame(1, 0x10))
        assert [s for s, _ in states] == [True, False, True]
    finally:
        await link.close()
    with pytest.raises(SerialLinkClosed):
        await link.write(b"x")


async def test_a_wake_up_with_nothing_to_read_is_not_an_unplug(bus: SimulatedLedBus) -> None:
    """pyserial's timeout=0 makes the tty answer b"" when there is nothing to read; that is not
    an end of file (found by the chaos suite: LED panels flapped offline hundreds of times)."""
    states: list[tuple[bool, str]] = []
    link = SerialLink(
        bus.path, reopen_min_s=0.05, reopen_max_s=0.1, on_state=lambda o, r: states.append((o, r))
    )
    await link.open()
    try:
        assert await link.wait_open(2.0)
        for _ in range(3):
            link._on_readable()  # what the loop calls on a wake-up; the pty holds no data
        assert link.is_open
        assert await ask(link, encode_frame(1, 0x10))
        assert states == [(True, "open")]
    finally:
        await link.close()
