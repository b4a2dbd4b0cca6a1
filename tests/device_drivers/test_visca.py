"""VISCA codec (exact bytes of the published commands, round trips, the packet splitter) and
ViscaPtzDriver against the pty simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_drivers.base import CommandError, DriverConfigError, UnknownCommand
from device_drivers.catalog import create
from device_drivers.visca import (
    AbsolutePosition,
    Ack,
    AddressSet,
    AddressSetReply,
    Completion,
    ErrorReply,
    Home,
    IfClear,
    IfClearReply,
    PacketParser,
    PanDir,
    PanTiltDrive,
    PanTiltInquiry,
    PresetRecall,
    PresetReset,
    PresetSet,
    PtzPosition,
    TiltDir,
    ViscaPtzDriver,
    Zoom,
    ZoomDir,
    ZoomInquiry,
    camera_header,
    decode_command,
    decode_reply,
    encode_command,
    encode_reply,
    pan_tilt_reply,
    parse_pan_tilt,
    parse_zoom,
    reply_header,
    zoom_reply,
)
from protocol.errors import BadMessage
from protocol.messages import DeviceStatus
from simulators.visca_camera import SimulatedViscaCamera

ONLINE, OFFLINE, FAULT = DeviceStatus.ONLINE, DeviceStatus.OFFLINE, DeviceStatus.FAULT


# --- codec -------------------------------------------------------------------------------
def test_published_command_bytes() -> None:
    h = bytes.fromhex
    assert camera_header(1) == 0x81 and camera_header(7) == 0x87
    assert reply_header(1) == 0x90 and reply_header(7) == 0xF0
    assert encode_command(PresetRecall(1, 4)) == h("81 01 04 3F 02 04 FF")
    assert encode_command(PresetSet(2, 0x10)) == h("82 01 04 3F 01 10 FF")
    assert encode_command(PresetReset(1, 0)) == h("81 01 04 3F 00 00 FF")
    drive = PanTiltDrive(1, 0x18, 0x17, PanDir.LEFT, TiltDir.UP)
    assert encode_command(drive) == h("81 01 06 01 18 17 01 01 FF")
    stop = PanTiltDrive(1, 1, 1, PanDir.STOP, TiltDir.STOP)
    assert encode_command(stop) == h("81 01 06 01 01 01 03 03 FF")
    assert encode_command(Home(3)) == h("83 01 06 04 FF")
    assert encode_command(Zoom(1, ZoomDir.STOP)) == h("81 01 04 07 00 FF")
    assert encode_command(Zoom(1, ZoomDir.TELE, 7)) == h("81 01 04 07 27 FF")
    assert encode_command(Zoom(1, ZoomDir.WIDE, 0)) == h("81 01 04 07 30 FF")
    absolute = AbsolutePosition(1, 0x18, 0x14, -1, 0x04B0)
    assert encode_command(absolute) == h("81 01 06 02 18 14 0F 0F 0F 0F 00 04 0B 00 FF")
    assert encode_command(PanTiltInquiry(1)) == h("81 09 06 12 FF")
    assert encode_command(ZoomInquiry(1)) == h("81 09 04 47 FF")
    assert encode_command(AddressSet()) == h("88 30 01 FF")
    assert encode_command(IfClear()) == h("88 01 00 01 FF")


def test_published_reply_bytes() -> None:
    h = bytes.fromhex
    assert decode_reply(h("90 41 FF")) == Ack(1, 1)
    assert decode_reply(h("90 52 FF")) == Completion(1, 2)
    assert decode_reply(h("A0 51 FF")) == Completion(2, 1)
    names = {
        "90 60 02 FF": "syntax error",
        "90 60 03 FF": "command buffer full",
        "90 61 04 FF": "command canceled",
        "90 62 05 FF": "no socket",
        "90 61 41 FF": "command not executable",
    }
    for packet, name in names.items():
        reply = decode_reply(h(packet))
        assert isinstance(reply, ErrorReply) and reply.name == name
    assert decode_reply(h("88 30 02 FF")) == AddressSetReply(2)
    assert decode_reply(h("88 01 00 01 FF")) == IfClearReply()
    pan_tilt = decode_reply(h("90 50 0F 0F 0E 0C 00 01 02 03 FF"))
    assert isinstance(pan_tilt, Completion)
    assert parse_pan_tilt(pan_tilt.data) == (-0x14, 0x0123)
    zoom = decode_reply(h("90 50 04 00 00 00 FF"))
    assert isinstance(zoom, Completion) and parse_zoom(zoom.data) == 0x4000
    assert encode_reply(Completion(1, 0, pan_tilt_reply(-0x14, 0x0123))) == h(
        "90 50 0F 0F 0E 0C 00 01 02 03 FF"
    )
    assert encode_reply(Completion(1, 0, zoom_reply(0x4000))) == h("90 50 04 00 00 00 FF")


@pytest.mark.parametrize(
    "packet",
    ["81 01 04 3F 03 01 FF", "81 01 06 01 00 01 03 03 FF", "81 01 06 01 19 01 03 03 FF",
     "81 01 06 01 01 01 04 03 FF", "81 01 04 07 40 FF", "81 01 06 02 01 01 10 00 00 00 00 00 00 00 FF",
     "89 01 06 04 FF", "81 01 06 04", "88 30 09 FF", "81 77 FF"],
)  # fmt: skip
def test_bad_commands_raise_bad_message(packet: str) -> None:
    with pytest.raises(BadMessage):
        decode_command(bytes.fromhex(packet))


@pytest.mark.parametrize("packet", ["81 41 FF", "90 70 FF", "95 41 FF", "90 41 00 FF", "88 31 FF"])
def test_bad_replies_raise_bad_message(packet: str) -> None:
    with pytest.raises(BadMessage):
        decode_reply(bytes.fromhex(packet))


addresses = st.integers(1, 7)
presets = st.integers(0, 0x7F)
pan_speeds = st.integers(1, 0x18)
tilt_speeds = st.integers(1, 0x17)
positions = st.integers(-0x8000, 0x7FFF)
commands = st.one_of(
    st.builds(PresetRecall, addresses, presets),
    st.builds(PresetSet, addresses, presets),
    st.builds(PresetReset, addresses, presets),
    st.builds(
        PanTiltDrive, addresses, pan_speeds, tilt_speeds, st.sampled_from(PanDir), st.sampled_from(TiltDir)
    ),
    st.builds(Home, addresses),
    st.builds(Zoom, addresses, st.just(ZoomDir.STOP), st.just(0)),
    st.builds(Zoom, addresses, st.sampled_from([ZoomDir.TELE, ZoomDir.WIDE]), st.integers(0, 7)),
    st.builds(AbsolutePosition, addresses, pan_speeds, tilt_speeds, positions, positions),
    st.builds(PanTiltInquiry, addresses),
    st.builds(ZoomInquiry, addresses),
    st.builds(AddressSet, addresses),
    st.just(IfClear()),
)  # fmt: skip
sockets = st.integers(0, 2)
replies = st.one_of(
    st.builds(Ack, addresses, st.integers(1, 2)),
    st.builds(Completion, addresses, sockets),
    st.builds(Completion, addresses, st.just(0), st.binary(max_size=13).map(lambda b: bytes(x & 0x7F for x in b))),
    st.builds(ErrorReply, addresses, sockets, st.sampled_from([2, 3, 4, 5, 0x41])),
    st.builds(AddressSetReply, st.integers(1, 8)),
    st.just(IfClearReply()),
)  # fmt: skip


@given(commands)
def test_commands_round_trip(command: Any) -> None:
    packet = encode_command(command)
    assert 3 <= len(packet) <= 16 and packet[-1] == 0xFF and 0xFF not in packet[:-1]
    assert all(b < 0x80 for b in packet[1:-1])
    assert decode_command(packet) == command


@given(replies)
def test_replies_round_trip(reply: Any) -> None:
    assert decode_reply(encode_reply(reply)) == reply


@given(positions, positions, st.integers(0, 0xFFFF))
def test_positions_round_trip(pan: int, tilt: int, zoom: int) -> None:
    assert parse_pan_tilt(pan_tilt_reply(pan, tilt)) == (pan, tilt)
    assert parse_zoom(zoom_reply(zoom)) == zoom


@given(st.lists(replies, max_size=8), st.lists(st.binary(max_size=20), min_size=9, max_size=9))
def test_parser_resyncs_after_garbage(good: list[Any], junk: list[bytes]) -> None:
    """Garbage without header or terminator bytes between packets never loses a packet."""
    clean = [bytes(b & 0x7F for b in j) for j in junk]
    stream = clean[0] + b"".join(encode_reply(r) + clean[i + 1] for i, r in enumerate(good))
    parser = PacketParser()
    packets = []
    for i in range(0, len(stream), 3):  # in small pieces, as a serial line delivers them
        packets += parser.feed(stream[i : i + 3])
    assert [decode_reply(p) for p in packets] == good
    assert parser.garbage_bytes == sum(len(c) for c in clean[: len(good) + 1])


@given(st.binary(max_size=200))
def test_parser_never_fails_on_noise(noise: bytes) -> None:
    parser = PacketParser()
    packets = parser.feed(noise) + parser.feed(encode_reply(Ack(1, 1)))
    assert packets[-1] == bytes.fromhex("90 41 FF")
    for packet in packets:
        assert packet[-1] == 0xFF and len(packet) <= 16


def test_parser_drops_interrupted_and_overlong_packets() -> None:
    parser = PacketParser()
    stream = (
        bytes.fromhex("90 50 01 02")
        + bytes.fromhex("90 41 FF")
        + bytes([0x90] + [0x01] * 20 + [0xFF])
        + bytes.fromhex("90 51 FF")
    )
    assert parser.feed(stream) == [bytes.fromhex("90 41 FF"), bytes.fromhex("90 51 FF")]
    assert parser.bad_count >= 2 and len(parser.take_problems()) == parser.bad_count


# --- the driver --------------------------------------------------------------------------
JUDGE = PtzPosition(-1200, 300, 0x1000)
WITNESS = PtzPosition(1500, -100, 0x3000)


@pytest.fixture
async def camera() -> AsyncIterator[SimulatedViscaCamera]:
    sim = SimulatedViscaCamera(presets={1: JUDGE, 4: WITNESS})
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
def start_driver(
    camera: SimulatedViscaCamera, sink: Any, run_driver: Any
) -> Callable[..., ViscaPtzDriver]:
    def start(**options: Any) -> ViscaPtzDriver:
        opts: dict[str, Any] = {
            "port": camera.path,
            "poll_interval_s": 0.1,
            "reply_timeout_s": 0.2,
            "completion_timeout_s": 2.0,
            "reopen_min_s": 0.05,
            "reopen_max_s": 0.2,
        }
        opts.update(options)
        driver = ViscaPtzDriver("ptz-1", opts)
        run_driver(driver, sink)
        return driver

    return start


def test_catalog_and_options() -> None:
    driver = create("visca_ptz", "p1", {"port": "/dev/ttyUSB0"})
    assert isinstance(driver, ViscaPtzDriver)
    assert driver.description.kind == "ptz"
    assert driver.options.baudrate == 9600 and driver.options.address == 1
    assert driver.options.presets == {
        "judge": 1,
        "plaintiff": 2,
        "defendant": 3,
        "witness": 4,
        "evidence": 5,
    }
    assert set(driver.description.capabilities) == {
        "recall_preset",
        "set_preset",
        "pan_tilt",
        "zoom",
        "home",
        "stop",
        "position",
    }
    for bad in (
        {},
        {"port": "/dev/x", "address": 8},
        {"port": "/dev/x", "address": 0},
        {"port": "/dev/x", "presets": {"judge": 200}},
        {"port": "/dev/x", "x": 1},
    ):
        with pytest.raises(DriverConfigError):
            create("visca_ptz", "p1", bad)


async def test_recall_and_set_presets_move_the_head(
    start_driver: Callable[..., ViscaPtzDriver], camera: SimulatedViscaCamera, sink: Any
) -> None:
    driver = start_driver()
    await sink.wait_state(ONLINE)
    assert await driver.execute("recall_preset", {"seat": "witness"}) == {"ok": True, "preset": 4}
    assert camera.position == WITNESS  # the command resolved after the completion
    assert await driver.execute("position", {}) == {"pan": 1500, "tilt": -100, "zoom": 0x3000}
    await driver.execute("recall_preset", {"preset": 1})
    assert camera.position == JUDGE
    await sink.wait(lambda: sink.metric("last_preset") == 1.0, "last preset telemetry")
    await sink.wait(lambda: sink.metric("pan") == -1200.0, "position telemetry")
    # store the judge's view as the evidence seat, go home, come back to it
    await driver.execute("set_preset", {"seat": "evidence"})
    assert camera.presets[5] == JUDGE
    await driver.execute("home", {})
    assert (camera.position.pan, camera.position.tilt) == (0, 0)
    await driver.execute("recall_preset", {"seat": "evidence"})
    assert camera.position == JUDGE
    await sink.wait(lambda: sink.metric("commands_ok") == 6.0, "commands counted")
    assert sink.metric("commands_failed") == 0.0 and sink.bad == []


async def test_drive_and_zoom_then_stop(
    start_driver: Callable[..., ViscaPtzDriver], camera: SimulatedViscaCamera, sink: Any
) -> None:
    driver = start_driver()
    await sink.wait_state(ONLINE)
    await driver.execute("pan_tilt", {"direction": "upright", "pan_speed": 0x18, "tilt_speed": 5})
    await driver.execute("zoom", {"direction": "tele", "speed": 7})
    await sink.wait(
        lambda: camera.position.pan > 0 and camera.position.tilt > 0 and camera.position.zoom > 0,
        "the head moving up, right and zooming in",
    )
    await driver.execute("stop", {})
    stopped = camera.position
    result = await driver.execute("position", {})
    assert result == {"pan": stopped.pan, "tilt": stopped.tilt, "zoom": stopped.zoom}
    await driver.execute("pan_tilt", {"direction": "left"})
    await sink.wait(lambda: camera.position.pan < stopped.pan, "the head panning left")
    await driver.execute("pan_tilt", {"direction": "stop"})
    await driver.execute("zoom", {"direction": "wide"})
    await sink.wait(lambda: camera.position.zoom < stopped.zoom, "zooming out")
    await driver.execute("zoom", {"direction": "stop"})
    kinds = [
        type(c).__name__ for c in camera.received if not isinstance(c, PanTiltInquiry | ZoomInquiry)
    ]
    assert kinds == ["PanTiltDrive", "Zoom", "PanTiltDrive", "Zoom", "PanTiltDrive", "PanTiltDrive", "Zoom", "Zoom"]  # fmt: skip


async def test_argument_errors_never_reach_the_camera(
    start_driver: Callable[..., ViscaPtzDriver], camera: SimulatedViscaCamera, sink: Any
) -> None:
    driver = start_driver()
    await sink.wait_state(ONLINE)
    before = len(camera.received)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("recall_preset", {}, "either seat or preset"),
        ("recall_preset", {"seat": "judge", "preset": 1}, "either seat or preset"),
        ("recall_preset", {"seat": "gallery"}, "no preset for seat 'gallery'"),
        ("recall_preset", {"preset": 128}, "preset must be"),
        ("set_preset", {"preset": True}, "preset must be"),
        ("pan_tilt", {"direction": "north"}, "direction must be"),
        ("pan_tilt", {"direction": "up", "pan_speed": 0x19}, "pan_speed"),
        ("pan_tilt", {"direction": "up", "tilt_speed": 0}, "tilt_speed"),
        ("zoom", {"direction": "in"}, "tele, wide or stop"),
        ("zoom", {"direction": "tele", "speed": 8}, "speed"),
    ]
    for name, args, message in cases:
        with pytest.raises(CommandError, match=message):
            await driver.execute(name, args)
    with pytest.raises(UnknownCommand):
        await driver.execute("focus", {})
    sent = [c for c in camera.received[before:] if not isinstance(c, PanTiltInquiry | ZoomInquiry)]
    assert sent == []


async def test_error_replies_become_command_errors(
    start_driver: Callable[..., ViscaPtzDriver], camera: SimulatedViscaCamera, sink: Any
) -> None:
    driver = start_driver()
    await sink.wait_state(ONLINE)
    with pytest.raises(CommandError, match="VISCA error: command not executable"):
        await driver.execute("recall_preset", {"seat": "plaintiff"})  # never stored
    for code, name in ((0x02, "syntax error"), (0x05, "no socket"), (0x04, "command canceled")):
        camera.fail_next(code)
        with pytest.raises(CommandError, match=f"VISCA error: {name}"):
            await driver.execute("home", {})
    await sink.wait(lambda: sink.metric("commands_failed") == 4.0, "failures counted")
    assert sink.state == (ONLINE, "")  # the camera answered: it is fine
    await driver.execute("recall_preset", {"seat": "witness"})
    assert camera.position == WITNESS


async def test_both_sockets_busy_is_buffer_full(
    camera: SimulatedViscaCamera, start_driver: Callable[..., ViscaPtzDriver], sink: Any
) -> None:
    camera.max_move_s = 2.0  # long moves, so that two of them hold both sockets
    driver = start_driver()
    await sink.wait_state(ONLINE)
    first = asyncio.create_task(driver.execute("recall_preset", {"seat": "judge"}))
    second = asyncio.create_task(driver.execute("recall_preset", {"seat": "witness"}))
    await sink.wait(lambda: camera.busy_sockets == [1, 2], "both sockets busy")
    with pytest.raises(CommandError, match="VISCA error: command buffer full"):
        await driver.execute("home", {})
    assert await first == {"ok": True, "preset": 1}
    assert await second == {"ok": True, "preset": 4}
    assert camera.position == WITNESS and camera.busy_sockets == []


async def test_mute_times_out_faults_and_recovers(
    start_driver: Callable[..., ViscaPtzDriver], camera: SimulatedViscaCamera, sink: Any
) -> None:
    driver = start_driver()
    await sink.wait_state(ONLINE)
    camera.mute(True)
    with pytest.raises(CommandError, match="no reply"):
        await driver.execute("recall_preset", {"seat": "witness"})
    await sink.wait(lambda: sink.state[0] == FAULT, "fault after repeated timeouts")
    assert "no reply from the camera" in sink.state[1]
    await sink.wait(lambda: (sink.metric("reply_timeouts") or 0) >= 2, "timeouts counted")
    assert sink.metric("online") == 0.0
    camera.mute(False)
    await sink.wait_state(ONLINE)
    await driver.execute("recall_preset", {"seat": "witness"})
    assert camera.position == WITNESS
    await sink.wait(lambda: sink.metric("online") == 1.0, "online telemetry")


async def test_garbage_is_counted_and_harmless(
    start_driver: Callable[..., ViscaPtzDriver], camera: SimulatedViscaCamera, sink: Any
) -> None:
    driver = start_driver()
    await sink.wait_state(ONLINE)
    camera.garbage(25)
    await sink.wait(lambda: sink.metric("garbage_bytes") == 25.0, "garbage bytes in telemetry")
    assert sink.bad and all(reason == "bad_magic" for reason, _ in sink.bad)
    assert sum(int(detail.split()[0]) for _, detail in sink.bad) == 25
    await driver.execute("recall_preset", {"seat": "judge"})
    assert camera.position == JUDGE and sink.state == (ONLINE, "")


async def test_unplug_offline_replug_online(
    start_driver: Callable[..., ViscaPtzDriver], camera: SimulatedViscaCamera, sink: Any
) -> None:
    driver = start_driver()
    await sink.wait_state(ONLINE)
    for target, seat in ((WITNESS, "witness"), (JUDGE, "judge")):
        camera.unplug()
        await sink.wait(
            lambda: sink.state[0] == OFFLINE and "serial port" in sink.state[1], "offline"
        )
        with pytest.raises(CommandError, match="not available"):
            await driver.execute("recall_preset", {"seat": seat})
        camera.replug()
        await sink.wait_state(ONLINE)
        await driver.execute("recall_preset", {"seat": seat})
        assert camera.position == target


async def test_unplug_during_a_move_fails_it(
    camera: SimulatedViscaCamera, start_driver: Callable[..., ViscaPtzDriver], sink: Any
) -> None:
    camera.max_move_s = 5.0
    driver = start_driver()
    await sink.wait_state(ONLINE)
    move = asyncio.create_task(driver.execute("recall_preset", {"seat": "witness"}))
    await sink.wait(lambda: camera.busy_sockets == [1], "move in progress")
    camera.unplug()
    with pytest.raises(CommandError, match="not available"):
        await move
    camera.replug()
    await sink.wait_state(ONLINE)
