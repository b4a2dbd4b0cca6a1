"""Sony VISCA PTZ heads over a serial line (RS-232/RS-422): the codec and the driver.

Packets are ``header | message | FF``. The header of a command to camera ``x`` (1..7) is
``0x80 | x``; camera ``x`` replies with ``(x + 8) << 4`` (``0x90`` from camera 1); broadcasts
use ``0x88``. A packet holds at most 16 bytes; only the terminator is ``FF`` and, besides the
header, data bytes have bit 7 clear. Commands used (bytes as sent, ``8x`` the header)::

    preset recall        8x 01 04 3F 02 pp FF
    preset set           8x 01 04 3F 01 pp FF
    preset reset         8x 01 04 3F 00 pp FF
    pan/tilt drive       8x 01 06 01 VV WW 0p 0t FF   VV 01-18, WW 01-17; p/t 1 up/left,
                                                       2 down/right, 3 stop
    home                 8x 01 06 04 FF
    zoom                 8x 01 04 07 00 FF stop, 2p tele, 3p wide (p 0-7)
    absolute position    8x 01 06 02 VV WW 0Y 0Y 0Y 0Y 0Z 0Z 0Z 0Z FF   (pan, tilt: signed
                                                       16-bit, one nibble a byte)
    pan/tilt inquiry     8x 09 06 12 FF  ->  y0 50 0w 0w 0w 0w 0z 0z 0z 0z FF
    zoom inquiry         8x 09 04 47 FF  ->  y0 50 0p 0q 0r 0s FF
    address set          88 30 01 FF     ->  88 30 0n FF   (n = cameras on the chain + 1)
    IF_Clear             88 01 00 01 FF  ->  88 01 00 01 FF

Replies: ACK ``y0 4z FF`` (the command got socket ``z``, 1 or 2), completion ``y0 5z FF``
(inquiries answer with a completion on socket 0 carrying data), errors ``y0 6z ee FF`` with
``ee`` one of :data:`ERRORS`.

:class:`PacketParser` splits a byte stream at ``FF``; bytes that cannot start or continue a
packet are skipped, counted and reported as :class:`~protocol.errors.BadMessage` (it resyncs at
the next header byte). :func:`encode_command` / :func:`decode_command` and
:func:`encode_reply` / :func:`decode_reply` round-trip the typed messages below.

The driver :class:`ViscaPtzDriver` (``driver = "visca_ptz"``, kind ``ptz``) talks to one camera
(``address``) on its own port. Commands: ``recall_preset`` / ``set_preset`` {seat | preset},
``pan_tilt`` {direction, pan_speed?, tilt_speed?}, ``zoom`` {direction, speed?}, ``home``,
``stop``, ``position``. A command resolves when its completion arrives and fails with the VISCA
error's name (``command buffer full``, ...) or ``no reply`` on a timeout. The position is polled
every ``poll_interval_s`` and reported as telemetry with the command counters; the device is
``fault`` after ``fault_after_timeouts`` replies in a row did not come, ``offline`` while the
port is gone, ``online`` again at the next reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Final

import msgspec

from device_drivers.base import CommandError, DeviceDescription, UnknownCommand
from device_drivers.serial_device import ProblemLog, SerialDeviceDriver, SerialPortOptions
from device_drivers.serial_link import SerialLink, SerialLinkClosed
from protocol.errors import BadMessage, BadReason
from protocol.messages import DeviceStatus

log = logging.getLogger(__name__)

TERMINATOR: Final = 0xFF
BROADCAST_HEADER: Final = 0x88
MAX_PACKET: Final = 16
MAX_PRESET: Final = 0x7F
PAN_SPEED_MAX: Final = 0x18
TILT_SPEED_MAX: Final = 0x17
ZOOM_SPEED_MAX: Final = 7

#: VISCA error codes -> the names used in CommandError messages and counters
ERRORS: Final[Mapping[int, str]] = {
    0x02: "syntax error",
    0x03: "command buffer full",
    0x04: "command canceled",
    0x05: "no socket",
    0x41: "command not executable",
}
SYNTAX_ERROR: Final = 0x02
BUFFER_FULL: Final = 0x03
COMMAND_CANCELED: Final = 0x04
NO_SOCKET: Final = 0x05
NOT_EXECUTABLE: Final = 0x41


def camera_header(address: int) -> int:
    """The header byte of a command to camera ``address`` (1..7)."""
    _check_address(address)
    return 0x80 | address


def reply_header(address: int) -> int:
    """The header byte of a reply from camera ``address`` (1..7): ``0x90`` for camera 1."""
    _check_address(address)
    return (address + 8) << 4


def _check_address(address: int) -> None:
    if not 1 <= address <= 7:
        raise ValueError(f"VISCA camera address must be 1..7, not {address}")


def _check(value: int, what: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be {low}..{high}, not {value!r}")


def nibbles(value: int, count: int = 4) -> bytes:
    """``value`` (unsigned, ``4 * count`` bits) as ``count`` bytes of one nibble each, MSB first."""
    return bytes((value >> (4 * (count - 1 - i))) & 0x0F for i in range(count))


def from_nibbles(data: bytes) -> int:
    """The unsigned value of nibble bytes (each must be 0x00..0x0F)."""
    value = 0
    for byte in data:
        if byte > 0x0F:
            raise BadMessage(BadReason.SCHEMA, f"nibble byte 0x{byte:02x} > 0x0f")
        value = (value << 4) | byte
    return value


def _signed16(value: int) -> int:
    return value - 0x10000 if value >= 0x8000 else value


# --- typed commands ----------------------------------------------------------------------
class PanDir(enum.IntEnum):
    LEFT = 1
    RIGHT = 2
    STOP = 3


class TiltDir(enum.IntEnum):
    UP = 1
    DOWN = 2
    STOP = 3


class ZoomDir(enum.Enum):
    STOP = "stop"
    TELE = "tele"
    WIDE = "wide"


@dataclass(frozen=True)
class PresetRecall:
    address: int
    preset: int


@dataclass(frozen=True)
class PresetSet:
    address: int
    preset: int


@dataclass(frozen=True)
class PresetReset:
    address: int
    preset: int


@dataclass(frozen=True)
class PanTiltDrive:
    address: int
    pan_speed: int
    tilt_speed: int
    pan: PanDir
    tilt: TiltDir


@dataclass(frozen=True)
class Home:
    address: int


@dataclass(frozen=True)
class Zoom:
    address: int
    direction: ZoomDir
    speed: int = 0  # 0..7; always 0 for STOP


@dataclass(frozen=True)
class AbsolutePosition:
    address: int
    pan_speed: int
    tilt_speed: int
    pan: int  # signed 16-bit
    tilt: int  # signed 16-bit


@dataclass(frozen=True)
class PanTiltInquiry:
    address: int


@dataclass(frozen=True)
class ZoomInquiry:
    address: int


@dataclass(frozen=True)
class AddressSet:
    """Broadcast; ``first`` is the address given to the first camera on the chain."""

    first: int = 1


@dataclass(frozen=True)
class IfClear:
    """Broadcast: every camera cancels what it is doing and empties its buffers."""


ViscaCommand = (
    PresetRecall
    | PresetSet
    | PresetReset
    | PanTiltDrive
    | Home
    | Zoom
    | AbsolutePosition
    | PanTiltInquiry
    | ZoomInquiry
    | AddressSet
    | IfClear
)

_PRESET_ACTIONS: Final = {PresetReset: 0x00, PresetSet: 0x01, PresetRecall: 0x02}
_PRESET_CLASSES: Final[Mapping[int, type[PresetRecall | PresetSet | PresetReset]]] = {
    0x00: PresetReset,
    0x01: PresetSet,
    0x02: PresetRecall,
}


def encode_command(command: ViscaCommand) -> bytes:
    """The packet of ``command``; ValueError for out-of-range fields (a programming error)."""
    if isinstance(command, AddressSet):
        _check(command.first, "address", 1, 7)
        return bytes((BROADCAST_HEADER, 0x30, command.first, TERMINATOR))
    if isinstance(command, IfClear):
        return bytes((BROADCAST_HEADER, 0x01, 0x00, 0x01, TERMINATOR))
    head = camera_header(command.address)
    if isinstance(command, PresetRecall | PresetSet | PresetReset):
        _check(command.preset, "preset", 0, MAX_PRESET)
        action = _PRESET_ACTIONS[type(command)]
        body = bytes((0x01, 0x04, 0x3F, action, command.preset))
    elif isinstance(command, PanTiltDrive):
        _check(command.pan_speed, "pan speed", 1, PAN_SPEED_MAX)
        _check(command.tilt_speed, "tilt speed", 1, TILT_SPEED_MAX)
        body = bytes(
            (0x01, 0x06, 0x01, command.pan_speed, command.tilt_speed, command.pan, command.tilt)
        )
    elif isinstance(command, Home):
        body = bytes((0x01, 0x06, 0x04))
    elif isinstance(command, Zoom):
        if command.direction is ZoomDir.STOP:
            _check(command.speed, "zoom speed", 0, 0)
            code = 0x00
        else:
            _check(command.speed, "zoom speed", 0, ZOOM_SPEED_MAX)
            code = (0x20 if command.direction is ZoomDir.TELE else 0x30) | command.speed
        body = bytes((0x01, 0x04, 0x07, code))
    elif isinstance(command, AbsolutePosition):
        _check(command.pan_speed, "pan speed", 1, PAN_SPEED_MAX)
        _check(command.tilt_speed, "tilt speed", 1, TILT_SPEED_MAX)
        _check(command.pan, "pan position", -0x8000, 0x7FFF)
        _check(command.tilt, "tilt position", -0x8000, 0x7FFF)
        body = (
            bytes((0x01, 0x06, 0x02, command.pan_speed, command.tilt_speed))
            + nibbles(command.pan & 0xFFFF)
            + nibbles(command.tilt & 0xFFFF)
        )
    elif isinstance(command, PanTiltInquiry):
        body = bytes((0x09, 0x06, 0x12))
    else:  # ZoomInquiry
        body = bytes((0x09, 0x04, 0x47))
    return bytes((head,)) + body + bytes((TERMINATOR,))


def decode_command(packet: bytes) -> ViscaCommand:
    """A command packet (header .. FF) back to its typed form; raises BadMessage."""
    if len(packet) < 3 or packet[-1] != TERMINATOR:
        raise BadMessage(BadReason.BAD_LENGTH, f"not a VISCA packet: {packet.hex(' ')}")
    head, body = packet[0], packet[1:-1]
    if head == BROADCAST_HEADER:
        if len(body) == 2 and body[0] == 0x30 and 1 <= body[1] <= 7:
            return AddressSet(body[1])
        if body == b"\x01\x00\x01":
            return IfClear()
        raise BadMessage(BadReason.SCHEMA, f"unknown broadcast {packet.hex(' ')}")
    if not 0x81 <= head <= 0x87:
        raise BadMessage(BadReason.BAD_HEADER, f"not a command header: 0x{head:02x}")
    address = head & 0x07
    try:
        return _decode_body(address, body)
    except (ValueError, KeyError):
        raise BadMessage(BadReason.SCHEMA, f"unknown command {packet.hex(' ')}") from None


def _decode_body(address: int, body: bytes) -> ViscaCommand:
    """Raises ValueError/KeyError (turned into BadMessage by the caller)."""
    if len(body) == 5 and body[:3] == b"\x01\x04\x3f" and body[4] <= MAX_PRESET:
        preset_class: type[PresetRecall | PresetSet | PresetReset] = _PRESET_CLASSES[body[3]]
        return preset_class(address, body[4])
    if len(body) == 7 and body[:3] == b"\x01\x06\x01":
        pan_speed, tilt_speed = body[3], body[4]
        _check(pan_speed, "pan speed", 1, PAN_SPEED_MAX)
        _check(tilt_speed, "tilt speed", 1, TILT_SPEED_MAX)
        return PanTiltDrive(address, pan_speed, tilt_speed, PanDir(body[5]), TiltDir(body[6]))
    if body == b"\x01\x06\x04":
        return Home(address)
    if len(body) == 4 and body[:3] == b"\x01\x04\x07":
        code = body[3]
        if code == 0x00:
            return Zoom(address, ZoomDir.STOP)
        kind = {0x20: ZoomDir.TELE, 0x30: ZoomDir.WIDE}[code & 0xF0]
        _check(code & 0x0F, "zoom speed", 0, ZOOM_SPEED_MAX)
        return Zoom(address, kind, code & 0x0F)
    if len(body) == 13 and body[:3] == b"\x01\x06\x02":
        pan_speed, tilt_speed = body[3], body[4]
        _check(pan_speed, "pan speed", 1, PAN_SPEED_MAX)
        _check(tilt_speed, "tilt speed", 1, TILT_SPEED_MAX)
        pan = _signed16(_nibbles_or_value_error(body[5:9]))
        tilt = _signed16(_nibbles_or_value_error(body[9:13]))
        return AbsolutePosition(address, pan_speed, tilt_speed, pan, tilt)
    if body == b"\x09\x06\x12":
        return PanTiltInquiry(address)
    if body == b"\x09\x04\x47":
        return ZoomInquiry(address)
    raise ValueError("unknown command")


def _nibbles_or_value_error(data: bytes) -> int:
    try:
        return from_nibbles(data)
    except BadMessage as exc:
        raise ValueError(exc.detail) from None


# --- typed replies -----------------------------------------------------------------------
@dataclass(frozen=True)
class Ack:
    address: int
    socket: int


@dataclass(frozen=True)
class Completion:
    """``y0 5z [data] FF``; inquiries answer on socket 0 with their data."""

    address: int
    socket: int
    data: bytes = b""


@dataclass(frozen=True)
class ErrorReply:
    address: int
    socket: int
    code: int

    @property
    def name(self) -> str:
        return ERRORS.get(self.code, f"error 0x{self.code:02x}")


@dataclass(frozen=True)
class AddressSetReply:
    """``88 30 0n FF``: ``next`` is one more than the last camera's address."""

    next: int


@dataclass(frozen=True)
class IfClearReply:
    """The broadcast IF_Clear, echoed back by the chain."""


ViscaReply = Ack | Completion | ErrorReply | AddressSetReply | IfClearReply


def encode_reply(reply: ViscaReply) -> bytes:
    """The packet of ``reply``; ValueError for out-of-range fields."""
    if isinstance(reply, AddressSetReply):
        _check(reply.next, "next address", 1, 8)
        return bytes((BROADCAST_HEADER, 0x30, reply.next, TERMINATOR))
    if isinstance(reply, IfClearReply):
        return bytes((BROADCAST_HEADER, 0x01, 0x00, 0x01, TERMINATOR))
    head = reply_header(reply.address)
    _check(reply.socket, "socket", 0, 0x0F)
    if isinstance(reply, Ack):
        return bytes((head, 0x40 | reply.socket, TERMINATOR))
    if isinstance(reply, Completion):
        if len(reply.data) > MAX_PACKET - 3 or any(b & 0x80 for b in reply.data):
            raise ValueError(f"completion data {reply.data.hex()} is not VISCA data")
        return bytes((head, 0x50 | reply.socket)) + reply.data + bytes((TERMINATOR,))
    _check(reply.code, "error code", 0, 0x7F)
    return bytes((head, 0x60 | reply.socket, reply.code, TERMINATOR))


def decode_reply(packet: bytes) -> ViscaReply:
    """A reply packet (header .. FF) back to its typed form; raises BadMessage."""
    if len(packet) < 3 or packet[-1] != TERMINATOR:
        raise BadMessage(BadReason.BAD_LENGTH, f"not a VISCA packet: {packet.hex(' ')}")
    head, body = packet[0], packet[1:-1]
    if head == BROADCAST_HEADER:
        if len(body) == 2 and body[0] == 0x30 and 1 <= body[1] <= 8:
            return AddressSetReply(body[1])
        if body == b"\x01\x00\x01":
            return IfClearReply()
        raise BadMessage(BadReason.SCHEMA, f"unknown broadcast reply {packet.hex(' ')}")
    if head & 0x0F or not 0x90 <= head <= 0xF0:
        raise BadMessage(BadReason.BAD_HEADER, f"not a reply header: 0x{head:02x}")
    address = (head >> 4) - 8
    kind, socket = body[0] & 0xF0, body[0] & 0x0F
    if kind == 0x40 and len(body) == 1:
        return Ack(address, socket)
    if kind == 0x50:
        return Completion(address, socket, bytes(body[1:]))
    if kind == 0x60 and len(body) == 2:
        return ErrorReply(address, socket, body[1])
    raise BadMessage(BadReason.SCHEMA, f"unknown reply {packet.hex(' ')}")


@dataclass(frozen=True)
class PtzPosition:
    """Pan and tilt (signed 16-bit) and zoom (0..0x4000 on most heads), in camera units."""

    pan: int
    tilt: int
    zoom: int


def pan_tilt_reply(pan: int, tilt: int) -> bytes:
    """The data of the pan/tilt inquiry's completion (``0w 0w 0w 0w 0z 0z 0z 0z``)."""
    return nibbles(pan & 0xFFFF) + nibbles(tilt & 0xFFFF)


def zoom_reply(zoom: int) -> bytes:
    """The data of the zoom inquiry's completion (``0p 0q 0r 0s``)."""
    return nibbles(zoom & 0xFFFF)


def parse_pan_tilt(data: bytes) -> tuple[int, int]:
    """(pan, tilt) from the pan/tilt inquiry's completion data; raises BadMessage."""
    if len(data) != 8:
        raise BadMessage(BadReason.BAD_LENGTH, f"pan/tilt position of {len(data)} bytes, not 8")
    return _signed16(from_nibbles(data[:4])), _signed16(from_nibbles(data[4:]))


def parse_zoom(data: bytes) -> int:
    """The zoom position from the zoom inquiry's completion data; raises BadMessage."""
    if len(data) != 4:
        raise BadMessage(BadReason.BAD_LENGTH, f"zoom position of {len(data)} bytes, not 4")
    return from_nibbles(data)


class PacketParser(ProblemLog[BadMessage]):
    """Incremental splitter: :meth:`feed` bytes, get whole packets (header .. ``FF``).

    A packet starts at a header byte (bit 7 set, not ``FF``). Bytes before a header are skipped;
    a packet interrupted by another header byte, or longer than 16 bytes, is dropped. Each skip
    is a :class:`BadMessage` in :attr:`problems` (drain with :meth:`take_problems`); skipped
    bytes are counted in :attr:`garbage_bytes`. At most one packet's bytes are kept between calls.
    """

    def __init__(self) -> None:
        super().__init__()
        self._packet = bytearray()
        self.garbage_bytes = 0

    def reset(self) -> None:
        self._packet.clear()

    def _skip(self, data: bytes | bytearray, why: str) -> None:
        self.garbage_bytes += len(data)
        self._problem(
            BadMessage(BadReason.BAD_MAGIC, f"{len(data)} bytes skipped ({why}): {data[:16].hex()}")
        )

    def feed(self, data: bytes) -> list[bytes]:
        packets: list[bytes] = []
        packet = self._packet
        junk = bytearray()
        for byte in data:
            if not packet:
                if byte & 0x80 and byte != TERMINATOR:
                    if junk:
                        self._skip(junk, "no header")
                        junk = bytearray()
                    packet.append(byte)
                else:
                    junk.append(byte)
                continue
            if byte == TERMINATOR:
                packet.append(byte)
                packets.append(bytes(packet))
                packet.clear()
            elif byte & 0x80:
                self._skip(packet, "interrupted by a header")
                packet.clear()
                packet.append(byte)
            elif len(packet) >= MAX_PACKET - 1:
                packet.append(byte)
                self._skip(packet, f"longer than {MAX_PACKET} bytes")
                packet.clear()
            else:
                packet.append(byte)
        if junk:
            self._skip(junk, "no header")
        return packets


# --- the driver --------------------------------------------------------------------------
CAPABILITIES: Final = (
    "recall_preset",
    "set_preset",
    "pan_tilt",
    "zoom",
    "home",
    "stop",
    "position",
)
DEFAULT_PRESETS: Final = {"judge": 1, "plaintiff": 2, "defendant": 3, "witness": 4, "evidence": 5}
DIRECTIONS: Final[Mapping[str, tuple[PanDir, TiltDir]]] = {
    "up": (PanDir.STOP, TiltDir.UP),
    "down": (PanDir.STOP, TiltDir.DOWN),
    "left": (PanDir.LEFT, TiltDir.STOP),
    "right": (PanDir.RIGHT, TiltDir.STOP),
    "upleft": (PanDir.LEFT, TiltDir.UP),
    "upright": (PanDir.RIGHT, TiltDir.UP),
    "downleft": (PanDir.LEFT, TiltDir.DOWN),
    "downright": (PanDir.RIGHT, TiltDir.DOWN),
    "stop": (PanDir.STOP, TiltDir.STOP),
}


class ViscaPtzOptions(SerialPortOptions, frozen=True, kw_only=True):
    """``[[devices]]`` options of a ``visca_ptz`` device (and the serial port's).

    ``reply_timeout_s`` is how long to wait for the ACK (or an inquiry's answer).
    """

    address: Annotated[int, msgspec.Meta(ge=1, le=7)] = 1
    #: seat name -> preset number
    presets: dict[str, Annotated[int, msgspec.Meta(ge=0, le=MAX_PRESET)]] = msgspec.field(
        default_factory=lambda: dict(DEFAULT_PRESETS)
    )
    #: how long a movement may take before its completion is given up on
    completion_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0
    #: missed replies in a row that make the device ``fault``
    fault_after_timeouts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2
    pan_speed: Annotated[int, msgspec.Meta(ge=1, le=PAN_SPEED_MAX)] = 0x0C
    tilt_speed: Annotated[int, msgspec.Meta(ge=1, le=TILT_SPEED_MAX)] = 0x0A
    zoom_speed: Annotated[int, msgspec.Meta(ge=0, le=ZOOM_SPEED_MAX)] = 3
    poll_interval_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    model: str = "VISCA PTZ camera"


class NoReply(Exception):
    """The camera did not answer in time."""


class ViscaFailed(Exception):
    """The camera answered a VISCA error."""

    def __init__(self, error: ErrorReply) -> None:
        super().__init__(error.name)
        self.error = error


@dataclass(eq=False)
class _Pending:
    """A command sent and not finished: first its ACK (or answer), then its completion."""

    command: ViscaCommand
    inquiry: bool
    acked: asyncio.Future[int | Completion] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _settle(
    future: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
        future.exception()  # nobody may be waiting any more: never "exception never retrieved"
    else:
        future.set_result(result)


class ViscaPtzDriver(SerialDeviceDriver[ViscaPtzOptions]):
    """One VISCA camera head at ``address`` on its own serial port (see the module docstring)."""

    name: ClassVar[str] = "visca_ptz"
    Options: ClassVar[type[msgspec.Struct]] = ViscaPtzOptions
    label: ClassVar[str] = "visca ptz"

    def __init__(self, device_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(device_id, options)
        self._description = DeviceDescription(
            kind="ptz",
            model=self.options.model,
            capabilities=CAPABILITIES,
            heartbeat_s=self.options.poll_interval_s,
            extra={
                "port": self.options.port,
                "address": self.options.address,
                "presets": dict(self.options.presets),
            },
        )
        self._parser = PacketParser()
        self._send_lock = asyncio.Lock()
        self._awaiting_ack: deque[_Pending] = deque()
        self._sockets: dict[int, _Pending] = {}
        self._timeouts_in_row = 0
        self._last_position: PtzPosition | None = None
        #: counters reported as telemetry
        self.counters: dict[str, float] = {
            "commands_ok": 0,
            "commands_failed": 0,
            "reply_timeouts": 0,
            "garbage_bytes": 0,
            "bad_packets": 0,
            "last_preset": -1,
        }

    @property
    def poll_interval_s(self) -> float:
        return self.options.poll_interval_s

    # --- running -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[SerialLink]:
        """The driver's own port, with a task reading the camera's replies off it."""
        async with super()._connect() as link:
            reader = asyncio.create_task(self._read_loop(link), name=f"visca reader {link.port}")
            try:
                yield link
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                self._fail_all(CommandError("the VISCA driver stopped"))

    def _where(self) -> str:
        return f"port={self.options.port} address={self.options.address}"

    def _on_link_state(self, is_open: bool, reason: str) -> None:
        if is_open:
            self._parser.reset()
        else:
            self._fail_all(CommandError(f"serial port {self.options.port} is not available"))
        super()._on_link_state(is_open, reason)

    def _telemetry(self) -> None:
        if self._sink is None:
            return
        metrics = dict(self.counters)
        metrics["online"] = 1.0 if self._state == (DeviceStatus.ONLINE, "") else 0.0
        if self._last_position is not None:
            metrics.update(
                pan=float(self._last_position.pan),
                tilt=float(self._last_position.tilt),
                zoom=float(self._last_position.zoom),
            )
        self._sink.telemetry(metrics)

    def _bad_input(self, error: BadMessage) -> None:
        log.warning(
            "visca bad input device=%s reason=%s detail=%s",
            self.device_id,
            error.reason.value,
            error.detail,
        )
        self.counters["bad_packets"] += 1
        super()._bad_input(error)

    async def _poll(self) -> None:
        # a failure already updated the state and the counters
        with contextlib.suppress(CommandError):
            await self._position()
        self._telemetry()

    # --- the wire ------------------------------------------------------------------------
    async def _read_loop(self, link: SerialLink) -> None:
        while True:
            try:
                data = await link.read(4096, 1.0)
            except SerialLinkClosed:
                await link.wait_open(1.0)
                continue
            if data:
                self._receive(data)

    def _receive(self, data: bytes) -> None:
        packets = self._parser.feed(data)
        self.counters["garbage_bytes"] = float(self._parser.garbage_bytes)
        for problem in self._parser.take_problems():
            self._bad_input(problem)
        for packet in packets:
            try:
                reply = decode_reply(packet)
            except BadMessage as exc:
                self._bad_input(exc)
                continue
            self._dispatch(reply)

    def _dispatch(self, reply: ViscaReply) -> None:
        if isinstance(reply, AddressSetReply | IfClearReply):
            log.debug("visca broadcast reply device=%s reply=%r", self.device_id, reply)
            return
        if reply.address != self.options.address:
            log.debug("visca reply for another camera device=%s reply=%r", self.device_id, reply)
            return
        self._replied()
        if isinstance(reply, Ack):
            pending = self._awaiting_ack.popleft() if self._awaiting_ack else None
            if pending is None:
                log.info("visca unexpected ack device=%s socket=%d", self.device_id, reply.socket)
                return
            self._sockets[reply.socket] = pending
            _settle(pending.acked, reply.socket)
        elif isinstance(reply, Completion):
            if reply.socket == 0 and self._awaiting_ack and self._awaiting_ack[0].inquiry:
                _settle(self._awaiting_ack.popleft().acked, reply)
                return
            pending = self._sockets.pop(reply.socket, None)
            if pending is None:
                log.info("visca unexpected completion device=%s reply=%r", self.device_id, reply)
                return
            _settle(pending.done)
        else:
            pending = self._sockets.pop(reply.socket, None) if reply.socket else None
            if pending is None and self._awaiting_ack:
                pending = self._awaiting_ack.popleft()
            if pending is None:
                log.info("visca unexpected error device=%s error=%s", self.device_id, reply.name)
                return
            failure = ViscaFailed(reply)
            _settle(pending.acked, exc=failure)
            _settle(pending.done, exc=failure)

    def _replied(self) -> None:
        self._timeouts_in_row = 0
        if self._state is None or self._state[0] != DeviceStatus.ONLINE:
            self._report_state(DeviceStatus.ONLINE)

    def _timed_out(self, what: str) -> None:
        self.counters["reply_timeouts"] += 1
        self._timeouts_in_row += 1
        log.warning(
            "visca no reply device=%s what=%s in_row=%d",
            self.device_id,
            what,
            self._timeouts_in_row,
        )
        if self._timeouts_in_row >= self.options.fault_after_timeouts:
            self._report_state(
                DeviceStatus.FAULT,
                f"no reply from the camera ({self._timeouts_in_row} timeouts in a row)",
            )

    def _fail_all(self, exc: Exception) -> None:
        pendings = list(self._awaiting_ack) + list(self._sockets.values())
        self._awaiting_ack.clear()
        self._sockets.clear()
        for pending in pendings:
            _settle(pending.acked, exc=exc)
            _settle(pending.done, exc=exc)

    async def _send(self, command: ViscaCommand) -> _Pending:
        """Write ``command`` and wait for its ACK (or an inquiry's answer).

        Raises NoReply, ViscaFailed or SerialLinkClosed.
        """
        link = self._link
        if link is None:
            raise SerialLinkClosed("the VISCA driver is not running")
        pending = _Pending(command, isinstance(command, PanTiltInquiry | ZoomInquiry))
        async with self._send_lock:  # ACKs come in the order of the commands
            self._awaiting_ack.append(pending)
            try:
                await link.write(encode_command(command))
                await asyncio.wait_for(asyncio.shield(pending.acked), self.options.reply_timeout_s)
            except TimeoutError:
                self._timed_out(type(command).__name__)
                raise NoReply(f"no reply from camera {self.options.address}") from None
            finally:
                with contextlib.suppress(ValueError):
                    self._awaiting_ack.remove(pending)
        return pending

    async def _run(self, command: ViscaCommand) -> None:
        """Send ``command`` and wait for its completion; CommandError (counted) on failure."""
        opts = self.options
        try:
            pending = await self._send(command)
            try:
                await asyncio.wait_for(asyncio.shield(pending.done), opts.completion_timeout_s)
            except TimeoutError:
                self._timed_out(f"{type(command).__name__} completion")
                for socket, other in list(self._sockets.items()):
                    if other is pending:
                        del self._sockets[socket]
                raise NoReply(f"camera {opts.address} did not complete the command") from None
        except BaseException as exc:
            self.counters["commands_failed"] += 1
            raise self._command_error(exc) from None
        self.counters["commands_ok"] += 1

    def _command_error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, ViscaFailed):
            return CommandError(f"VISCA error: {exc.error.name} (camera {self.options.address})")
        if isinstance(exc, NoReply):
            return CommandError(f"no reply: {exc} on {self.options.port}")
        if isinstance(exc, SerialLinkClosed):
            return CommandError(f"serial port {self.options.port} is not available")
        return exc  # CommandError from _fail_all, cancellation

    async def _inquire(self, command: PanTiltInquiry | ZoomInquiry) -> bytes:
        try:
            pending = await self._send(command)
        except BaseException as exc:
            raise self._command_error(exc) from None
        answer = pending.acked.result()
        assert isinstance(answer, Completion)
        return answer.data

    async def _position(self) -> dict[str, int]:
        address = self.options.address
        try:
            pan, tilt = parse_pan_tilt(await self._inquire(PanTiltInquiry(address)))
            zoom = parse_zoom(await self._inquire(ZoomInquiry(address)))
        except BadMessage as exc:
            self._bad_input(exc)
            raise CommandError(f"the camera's position answer is malformed: {exc.detail}") from None
        self._last_position = PtzPosition(pan, tilt, zoom)
        return {"pan": pan, "tilt": tilt, "zoom": zoom}

    # --- commands ------------------------------------------------------------------------
    async def execute(self, name: str, args: Mapping[str, Any]) -> Any:
        address = self.options.address
        if name == "recall_preset":
            preset = self._preset(args)
            await self._run(PresetRecall(address, preset))
            self.counters["last_preset"] = float(preset)
            self._telemetry()
            return {"ok": True, "preset": preset}
        if name == "set_preset":
            preset = self._preset(args)
            await self._run(PresetSet(address, preset))
            return {"ok": True, "preset": preset}
        if name == "pan_tilt":
            direction = args.get("direction")
            if not isinstance(direction, str) or direction not in DIRECTIONS:
                raise CommandError(
                    f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}"
                )
            pan, tilt = DIRECTIONS[direction]
            pan_speed = self._int(args, "pan_speed", self.options.pan_speed, 1, PAN_SPEED_MAX)
            tilt_speed = self._int(args, "tilt_speed", self.options.tilt_speed, 1, TILT_SPEED_MAX)
            await self._run(PanTiltDrive(address, pan_speed, tilt_speed, pan, tilt))
            return {"ok": True}
        if name == "zoom":
            raw = args.get("direction")
            try:
                zoom_dir = ZoomDir(raw)
            except ValueError:
                raise CommandError(f"direction must be tele, wide or stop, not {raw!r}") from None
            speed = self._int(args, "speed", self.options.zoom_speed, 0, ZOOM_SPEED_MAX)
            await self._run(Zoom(address, zoom_dir, 0 if zoom_dir is ZoomDir.STOP else speed))
            return {"ok": True}
        if name == "home":
            await self._run(Home(address))
            return {"ok": True}
        if name == "stop":
            speeds = (self.options.pan_speed, self.options.tilt_speed)
            await self._run(PanTiltDrive(address, *speeds, PanDir.STOP, TiltDir.STOP))
            await self._run(Zoom(address, ZoomDir.STOP))
            return {"ok": True}
        if name == "position":
            try:
                position = await self._position()
            except CommandError:
                self.counters["commands_failed"] += 1
                raise
            self.counters["commands_ok"] += 1
            self._telemetry()
            return position
        raise UnknownCommand(f"PTZ camera has no command {name!r} (has: {', '.join(CAPABILITIES)})")

    def _preset(self, args: Mapping[str, Any]) -> int:
        seat, preset = args.get("seat"), args.get("preset")
        if (seat is None) == (preset is None):
            raise CommandError("give either seat or preset")
        if seat is not None:
            if not isinstance(seat, str) or seat not in self.options.presets:
                known = ", ".join(sorted(self.options.presets))
                raise CommandError(f"no preset for seat {seat!r} (seats: {known})")
            return self.options.presets[seat]
        return self._int(args, "preset", None, 0, MAX_PRESET)

    @staticmethod
    def _int(args: Mapping[str, Any], what: str, default: int | None, low: int, high: int) -> int:
        value = args.get(what, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise CommandError(f"{what} must be a whole number from {low} to {high}, not {value!r}")
        return value
