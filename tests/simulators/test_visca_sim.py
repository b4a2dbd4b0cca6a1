"""SimulatedViscaCamera over a real pty, spoken to through SerialLink: the bytes a head answers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from device_drivers.serial_link import SerialLink
from device_drivers.visca import PacketParser, PtzPosition
from simulators.visca_camera import SimulatedViscaCamera

h = bytes.fromhex


def exists(path: str) -> bool:
    """Whether the port path exists (a symlink to the current pty slave)."""
    return os.path.exists(path)


WITNESS = PtzPosition(0x05DC, -0x0064, 0x3000)


@pytest.fixture
async def camera() -> AsyncIterator[SimulatedViscaCamera]:
    sim = SimulatedViscaCamera(presets={4: WITNESS})
    path = await sim.start()
    assert path == sim.path and exists(path)
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
async def link(camera: SimulatedViscaCamera) -> AsyncIterator[SerialLink]:
    port = SerialLink(camera.path, reopen_min_s=0.05, reopen_max_s=0.1)
    await port.open()
    assert await port.wait_open(2.0)
    try:
        yield port
    finally:
        await port.close()


async def ask(link: SerialLink, packet: bytes, count: int, timeout: float = 2.0) -> list[bytes]:
    """Send ``packet``; the first ``count`` reply packets (fewer if ``timeout`` passes)."""
    await link.write(packet)
    parser = PacketParser()
    packets: list[bytes] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(packets) < count and (remaining := deadline - loop.time()) > 0:
        packets += parser.feed(await link.read(4096, remaining))
    return packets


async def test_inquiries_and_a_preset_move(camera: SimulatedViscaCamera, link: SerialLink) -> None:
    assert await ask(link, h("81 09 06 12 FF"), 1) == [h("90 50 00 00 00 00 00 00 00 00 FF")]
    assert await ask(link, h("81 01 04 3F 02 04 FF"), 2) == [h("90 41 FF"), h("90 51 FF")]
    assert camera.position == WITNESS
    assert await ask(link, h("81 09 06 12 FF"), 1) == [h("90 50 00 05 0D 0C 0F 0F 09 0C FF")]
    assert await ask(link, h("81 09 04 47 FF"), 1) == [h("90 50 03 00 00 00 FF")]
    # store it as preset 9, reset 4: recalling 4 is then not executable
    assert await ask(link, h("81 01 04 3F 01 09 FF"), 2) == [h("90 41 FF"), h("90 51 FF")]
    assert await ask(link, h("81 01 04 3F 00 04 FF"), 2) == [h("90 41 FF"), h("90 51 FF")]
    assert camera.presets == {9: WITNESS}
    assert await ask(link, h("81 01 04 3F 02 04 FF"), 1) == [h("90 60 41 FF")]
    assert await ask(link, h("81 01 06 04 FF"), 2) == [h("90 41 FF"), h("90 51 FF")]
    assert (camera.position.pan, camera.position.tilt) == (0, 0)


async def test_two_sockets_then_buffer_full_and_if_clear(
    camera: SimulatedViscaCamera, link: SerialLink
) -> None:
    camera.max_move_s = 5.0
    far = h("81 01 06 02 18 17 00 08 00 00 00 04 00 00 FF")  # absolute: pan 0x800, tilt 0x400
    assert await ask(link, far, 1) == [h("90 41 FF")]
    assert await ask(link, h("81 01 04 3F 02 04 FF"), 1) == [h("90 42 FF")]
    assert camera.busy_sockets == [1, 2]
    assert await ask(link, h("81 01 06 04 FF"), 1) == [h("90 60 03 FF")]
    replies = await ask(link, h("88 01 00 01 FF"), 3)
    assert sorted(replies[:2]) == [h("90 61 04 FF"), h("90 62 04 FF")]
    assert replies[2] == h("88 01 00 01 FF")
    assert camera.busy_sockets == []


async def test_drive_moves_until_stop(camera: SimulatedViscaCamera, link: SerialLink) -> None:
    assert await ask(link, h("81 01 06 01 18 17 02 01 FF"), 2) == [h("90 41 FF"), h("90 51 FF")]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while min(camera.position.pan, camera.position.tilt) <= 0 and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert camera.position.pan > 0 and camera.position.tilt > 0
    await ask(link, h("81 01 06 01 18 17 03 03 FF"), 2)
    stopped = camera.position
    await asyncio.sleep(0.05)
    assert camera.position == stopped


async def test_errors_address_set_and_faults(
    camera: SimulatedViscaCamera, link: SerialLink
) -> None:
    assert await ask(link, h("81 01 7E 7E FF"), 1) == [h("90 60 02 FF")]
    assert await ask(link, h("82 01 06 04 FF"), 1, timeout=0.2) == []  # camera 2 is not here
    assert camera.bad_commands == 1
    camera.fail_next(0x05)
    assert await ask(link, h("81 01 06 04 FF"), 1) == [h("90 61 05 FF")]
    camera.mute(True)
    assert await ask(link, h("81 09 06 12 FF"), 1, timeout=0.2) == []
    camera.mute(False)
    await link.write(h("01 02 03"))
    assert await ask(link, h("88 30 01 FF"), 1) == [h("88 30 02 FF")]
    assert camera.garbage_bytes == 3
    camera.garbage(10)
    assert len(await link.read(4096, 1.0)) == 10
    camera.unplug()
    assert not exists(camera.path)
    camera.replug()
    assert exists(camera.path)
