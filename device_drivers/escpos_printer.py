"""Driver for the thermal ticket printer on the queue kiosk: ESC/POS over a serial port.

Printer model assumption: a Chinese-market 58/80 mm ESC/POS printer (Xprinter XP-58/XP-80,
GPrinter GP-58 class) whose Chinese mode prints GB18030 two/four-byte characters. Every job
starts with ``ESC @`` (initialise) and ``FS &`` (select Chinese character mode), so the printer's
power-on code page does not matter. Text is encoded in GB18030, which covers all of Unicode;
control characters in text are refused.

Commands used (bytes as sent)::

    ESC @            1B 40              initialise
    FS &             1C 26              Chinese character mode on (FS . 1C 2E: off)
    ESC E n          1B 45 n            bold on (n=1) / off (n=0)
    GS ! n           1D 21 n            character size: width (n>>4)+1, height (n&15)+1
    ESC a n          1B 61 n            align 0 left, 1 centre, 2 right
    LF               0A                 print the line
    ESC d n          1B 64 n            feed n lines
    GS ( k           1D 28 6B pL pH cn fn ...   QR code (cn=0x31): model (fn 0x41),
                                        module size (0x43), error correction (0x45),
                                        store data (0x50), print (0x51)
    GS V m [n]       1D 56 m [n]        cut; m=0x42 (66): feed n lines, then partial cut
    DLE EOT n        10 04 n            real-time status (n=1 printer, 2 offline, 4 paper)

Every ``DLE EOT`` reply is one byte with bits 1 and 4 set and bits 0 and 7 clear. ``n=1``: bit 3
offline. ``n=2``: bit 2 cover open, bit 5 printing stopped by paper end, bit 6 error. ``n=4``:
bits 2+3 paper near end, bits 5+6 paper end.

:func:`parse_escpos` decodes a job back into :data:`EscposOp` values (text runs, style changes,
QR data, cut); it raises only :class:`~protocol.errors.BadMessage`. The simulator and the tests
use it to read what was printed.

Driver commands: ``print_ticket`` {number, service_name, waiting_ahead, estimated_wait_s,
issued_at (UTC ms), ticket_id, court_name?, timezone?}, ``print_lines`` {lines}, ``test_page``,
``status``. Printing commands ask the printer's status first and refuse (``缺纸 (paper out)``,
``cover open``) rather than sending a job the printer would drop. Status is polled every
``status_interval_s``: telemetry ``paper_out``, ``paper_low``, ``cover_open``, ``online`` (0/1);
``fault`` with the reason while out of paper or open; ``offline`` without a reply or a port.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from device_drivers.base import CommandError, DeviceDescription, UnknownCommand
from device_drivers.serial_device import SerialDeviceDriver, SerialPortOptions
from device_drivers.serial_link import SerialLink, SerialLinkClosed
from protocol.errors import BadMessage, BadReason
from protocol.messages import DeviceStatus

ESC: Final = 0x1B
FS: Final = 0x1C
GS: Final = 0x1D
DLE: Final = 0x10
EOT: Final = 0x04
LF: Final = 0x0A

QR_CN: Final = 0x31
QR_MODEL: Final = 0x41
QR_SIZE: Final = 0x43
QR_ERROR: Final = 0x45
QR_STORE: Final = 0x50
QR_PRINT: Final = 0x51
QR_MAX_DATA: Final = 7089

STATUS_PRINTER: Final = 1
STATUS_OFFLINE: Final = 2
STATUS_PAPER: Final = 4
STATUS_FIXED: Final = 0x12  # bits 1 and 4 set in every reply
STATUS_MASK: Final = 0x93  # bits 0, 1, 4 and 7 are fixed
BIT_OFFLINE: Final = 0x08  # n=1
BIT_COVER_OPEN: Final = 0x04  # n=2
BIT_PAPER_STOP: Final = 0x20  # n=2
BIT_ERROR: Final = 0x40  # n=2
BITS_PAPER_NEAR_END: Final = 0x0C  # n=4
BITS_PAPER_END: Final = 0x60  # n=4

DEFAULT_TIMEZONE: Final = "Asia/Shanghai"
CAPABILITIES: Final = ("print_ticket", "print_lines", "test_page", "status")
PAPER_OUT: Final = "缺纸 (paper out)"
COVER_OPEN: Final = "cover open"


# --- ops ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Init:
    """``ESC @``."""


@dataclass(frozen=True)
class ChineseMode:
    """``FS &`` (on) or ``FS .`` (off)."""

    on: bool


@dataclass(frozen=True)
class Text:
    """A run of printable text (GB18030 decoded)."""

    text: str


@dataclass(frozen=True)
class LineFeed:
    """``LF``: print the buffered line."""


@dataclass(frozen=True)
class Bold:
    on: bool


@dataclass(frozen=True)
class Size:
    """Character magnification, 1-8 each way."""

    width: int
    height: int


@dataclass(frozen=True)
class Align:
    """0 left, 1 centre, 2 right."""

    value: int


@dataclass(frozen=True)
class Feed:
    lines: int


@dataclass(frozen=True)
class QrSetting:
    """``GS ( k`` function 0x41 (model), 0x43 (module size) or 0x45 (error correction)."""

    function: int
    value: int


@dataclass(frozen=True)
class QrData:
    """``GS ( k`` function 0x50: the symbol's data."""

    data: bytes


@dataclass(frozen=True)
class QrPrint:
    """``GS ( k`` function 0x51: print the stored symbol."""


@dataclass(frozen=True)
class Cut:
    partial: bool
    feed: int = 0


@dataclass(frozen=True)
class StatusQuery:
    """``DLE EOT n``."""

    n: int


EscposOp = (
    Init
    | ChineseMode
    | Text
    | LineFeed
    | Bold
    | Size
    | Align
    | Feed
    | QrSetting
    | QrData
    | QrPrint
    | Cut
    | StatusQuery
)


# --- decoder -----------------------------------------------------------------------------
class Incomplete(BadMessage):
    """The bytes end inside a command or a text run."""


def _need(data: bytes, pos: int, n: int) -> None:
    if pos + n > len(data):
        raise Incomplete(BadReason.BAD_LENGTH, f"command at byte {pos} is cut short")


def _parse(data: bytes, chinese: bool, *, final: bool) -> tuple[list[EscposOp], int, bool]:
    """Ops decoded from ``data``, bytes consumed, Chinese mode after them.

    With ``final`` false, a trailing text run or command cut short is left unconsumed (it may
    continue in the next chunk); with ``final`` true it is an :class:`Incomplete` error.
    """
    ops: list[EscposOp] = []
    pos = 0
    end = len(data)
    while pos < end:
        start = pos
        try:
            if data[pos] >= 0x20:
                stop = pos
                while stop < end and data[stop] >= 0x20:
                    stop += 1
                if stop == end and not final:
                    return ops, start, chinese
                ops.append(_text(data[pos:stop], pos, chinese))
                pos = stop
                continue
            op, pos = _command(data, pos)
        except Incomplete:
            if final:
                raise
            return ops, start, chinese
        if isinstance(op, ChineseMode):
            chinese = op.on
        ops.append(op)
    return ops, pos, chinese


def _text(run: bytes, pos: int, chinese: bool) -> Text:
    if not chinese and any(b >= 0x80 for b in run):
        raise BadMessage(BadReason.SCHEMA, f"non-ASCII text at byte {pos} outside Chinese mode")
    try:
        return Text(run.decode("gb18030"))
    except UnicodeDecodeError as exc:
        raise BadMessage(
            BadReason.SCHEMA, f"text at byte {pos} is not GB18030: {exc.reason}"
        ) from None


def _command(data: bytes, pos: int) -> tuple[EscposOp, int]:
    """The control command at ``pos`` and the position after it."""
    byte = data[pos]
    if byte == LF:
        return LineFeed(), pos + 1
    if byte not in (ESC, FS, GS, DLE):
        raise BadMessage(BadReason.SCHEMA, f"unknown control byte 0x{byte:02x} at {pos}")
    _need(data, pos, 2)
    second = data[pos + 1]
    if byte == FS:
        if second not in (0x26, 0x2E):
            raise BadMessage(BadReason.SCHEMA, f"unknown command FS 0x{second:02x}")
        return ChineseMode(second == 0x26), pos + 2
    if byte == ESC and second == 0x40:
        return Init(), pos + 2
    if byte == GS and second == 0x28:
        return _parse_qr(data, pos)
    _need(data, pos, 3)
    n = data[pos + 2]
    if byte == ESC:
        return _esc(second, n), pos + 3
    if byte == DLE:
        if second != EOT or n not in (1, 2, 3, 4):
            raise BadMessage(BadReason.SCHEMA, f"unknown command DLE 0x{second:02x} {n}")
        return StatusQuery(n), pos + 3
    if second == 0x21:
        if (n >> 4) > 7 or (n & 0x0F) > 7:
            raise BadMessage(BadReason.SCHEMA, f"GS ! 0x{n:02x}")
        return Size((n >> 4) + 1, (n & 0x0F) + 1), pos + 3
    if second == 0x56:
        if n in (0, 1, 48, 49):
            return Cut(partial=n in (1, 49)), pos + 3
        if n in (65, 66):
            _need(data, pos, 4)
            return Cut(partial=n == 66, feed=data[pos + 3]), pos + 4
        raise BadMessage(BadReason.SCHEMA, f"GS V {n}")
    raise BadMessage(BadReason.SCHEMA, f"unknown command GS 0x{second:02x}")


def _esc(second: int, n: int) -> EscposOp:
    if second == 0x45:
        return Bold(bool(n & 1))
    if second == 0x61:
        if n not in (0, 1, 2, 48, 49, 50):
            raise BadMessage(BadReason.SCHEMA, f"ESC a {n}")
        return Align(n % 48)
    if second == 0x64:
        return Feed(n)
    raise BadMessage(BadReason.SCHEMA, f"unknown command ESC 0x{second:02x}")


def _parse_qr(data: bytes, pos: int) -> tuple[EscposOp, int]:
    _need(data, pos, 5)
    if data[pos + 2] != 0x6B:
        raise BadMessage(BadReason.SCHEMA, f"unknown command GS ( 0x{data[pos + 2]:02x}")
    length = data[pos + 3] | data[pos + 4] << 8
    if length < 2 or length > QR_MAX_DATA + 3:
        raise BadMessage(BadReason.BAD_LENGTH, f"GS ( k length {length}")
    _need(data, pos, 5 + length)
    body = data[pos + 5 : pos + 5 + length]
    cn, fn, rest = body[0], body[1], body[2:]
    if cn != QR_CN:
        raise BadMessage(BadReason.SCHEMA, f"GS ( k symbol 0x{cn:02x} (only QR, 0x31)")
    if fn in (QR_SIZE, QR_ERROR) and len(rest) == 1:
        value = rest[0]
        if (fn == QR_SIZE and not 1 <= value <= 16) or (fn == QR_ERROR and not 48 <= value <= 51):
            raise BadMessage(BadReason.SCHEMA, f"QR function 0x{fn:02x} value {value}")
        op: EscposOp = QrSetting(fn, value)
    elif fn == QR_MODEL and len(rest) == 2 and rest[0] in (49, 50) and rest[1] == 0:
        op = QrSetting(fn, rest[0])
    elif fn == QR_STORE and len(rest) >= 2 and rest[0] == 0x30:
        op = QrData(bytes(rest[1:]))
    elif fn == QR_PRINT and len(rest) == 1 and rest[0] == 0x30:
        op = QrPrint()
    else:
        raise BadMessage(BadReason.SCHEMA, f"QR function 0x{fn:02x} with {len(rest)} bytes")
    return op, pos + 5 + length


def parse_escpos(data: bytes) -> list[EscposOp]:
    """Decode a whole job; raises :class:`BadMessage` (and nothing else) for anything else."""
    ops, _, _ = _parse(bytes(data), False, final=True)
    return ops


class EscposStream:
    """Incremental decoding of a byte stream that arrives in chunks (the simulator's side).

    :meth:`feed` returns the ops complete so far and keeps a partial command for the next chunk.
    On bytes that are not ESC/POS it drops what it holds and raises :class:`BadMessage`.
    """

    MAX_PENDING: ClassVar[int] = 16 * 1024

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.chinese = False

    def reset(self) -> None:
        self._buffer.clear()
        self.chinese = False

    def feed(self, data: bytes) -> list[EscposOp]:
        self._buffer += data
        try:
            ops, used, self.chinese = _parse(bytes(self._buffer), self.chinese, final=False)
        except BadMessage:
            self._buffer.clear()
            raise
        del self._buffer[:used]
        if len(self._buffer) > self.MAX_PENDING:
            held = len(self._buffer)
            self._buffer.clear()
            raise BadMessage(BadReason.OVERSIZED, f"{held} bytes without a complete command")
        return ops


def printed_lines(ops: Sequence[EscposOp]) -> list[str]:
    """The text of each printed line (text runs joined, split at LF)."""
    lines: list[str] = []
    current: list[str] = []
    for op in ops:
        if isinstance(op, Text):
            current.append(op.text)
        elif isinstance(op, LineFeed):
            lines.append("".join(current))
            current = []
    if current:
        lines.append("".join(current))
    return lines


# --- builder -----------------------------------------------------------------------------
def _encode(text: str) -> bytes:
    for char in text:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            raise ValueError(f"control character U+{ord(char):04X} in printed text")
    return text.encode("gb18030")


@dataclass
class TicketBuilder:
    """Accumulates one ESC/POS job; every method returns ``self``."""

    buffer: bytearray = field(default_factory=bytearray)

    def init(self) -> TicketBuilder:
        self.buffer += b"\x1b\x40\x1c\x26"  # ESC @, FS &
        return self

    def text(self, text: str) -> TicketBuilder:
        self.buffer += _encode(text)
        return self

    def line(self, text: str = "") -> TicketBuilder:
        self.buffer += _encode(text) + b"\n"
        return self

    def bold(self, on: bool) -> TicketBuilder:
        self.buffer += bytes((ESC, 0x45, 1 if on else 0))
        return self

    def size(self, width: int, height: int) -> TicketBuilder:
        if not (1 <= width <= 8 and 1 <= height <= 8):
            raise ValueError(f"size {width}x{height} out of 1..8")
        self.buffer += bytes((GS, 0x21, (width - 1) << 4 | (height - 1)))
        return self

    def align(self, value: int) -> TicketBuilder:
        if value not in (0, 1, 2):
            raise ValueError(f"alignment {value}")
        self.buffer += bytes((ESC, 0x61, value))
        return self

    def feed(self, lines: int) -> TicketBuilder:
        self.buffer += bytes((ESC, 0x64, lines))
        return self

    def qr(self, data: bytes, *, module_size: int = 6, error_level: int = 49) -> TicketBuilder:
        """Model 2 QR code of ``data``; ``error_level`` 48 L, 49 M, 50 Q, 51 H."""
        if not 1 <= len(data) <= QR_MAX_DATA:
            raise ValueError(f"QR data of {len(data)} bytes")

        def fn(*body: int | bytes) -> bytes:
            payload = b"".join(bytes((b,)) if isinstance(b, int) else b for b in body)
            return bytes((GS, 0x28, 0x6B)) + len(payload).to_bytes(2, "little") + payload

        self.buffer += fn(QR_CN, QR_MODEL, 50, 0)
        self.buffer += fn(QR_CN, QR_SIZE, module_size)
        self.buffer += fn(QR_CN, QR_ERROR, error_level)
        self.buffer += fn(QR_CN, QR_STORE, 0x30, data)
        self.buffer += fn(QR_CN, QR_PRINT, 0x30)
        return self

    def cut(self, feed: int = 3) -> TicketBuilder:
        self.buffer += bytes((GS, 0x56, 66, feed))  # feed, then partial cut
        return self

    def build(self) -> bytes:
        return bytes(self.buffer)


@dataclass(frozen=True)
class Ticket:
    """What a queue ticket shows."""

    number: str
    service_name: str
    waiting_ahead: int
    estimated_wait_s: float
    issued_at: int  # UTC milliseconds
    ticket_id: str
    court_name: str = ""
    timezone: str = DEFAULT_TIMEZONE


def ticket_lines(ticket: Ticket) -> list[str]:
    """The lines :func:`build_ticket` prints, in order (the QR code comes after the last)."""
    zone = ZoneInfo(ticket.timezone)
    issued = datetime.fromtimestamp(ticket.issued_at / 1000, UTC).astimezone(zone)
    minutes = max(1, math.ceil(ticket.estimated_wait_s / 60))
    court = [ticket.court_name] if ticket.court_name else []
    return [
        *court,
        ticket.service_name,
        ticket.number,
        f"前面还有 {ticket.waiting_ahead} 人",
        f"预计等待约 {minutes} 分钟",
        f"取号时间 {issued:%Y-%m-%d %H:%M}",
        ticket.ticket_id,
    ]


def build_ticket(ticket: Ticket) -> bytes:
    """The ESC/POS job of one ticket. Raises ValueError for control characters / bad zone."""
    lines = ticket_lines(ticket)
    b = TicketBuilder().init().align(1)
    if ticket.court_name:
        b.bold(True).line(lines.pop(0)).bold(False)
    service, number, ahead, wait, issued, ticket_id = lines
    b.line(service)
    b.bold(True).size(2, 2).line(number).size(1, 1).bold(False)
    b.align(0).line(ahead).line(wait).line(issued)
    b.align(1).qr(ticket.ticket_id.encode("ascii")).line().line(ticket_id)
    return b.cut().build()


def build_lines(lines: Sequence[str]) -> bytes:
    b = TicketBuilder().init()
    for text in lines:
        b.line(text)
    return b.cut().build()


TEST_PAGE_LINES: Final = ("courthub 打印测试", "中文 GB18030 测试：诉讼服务中心", "0123456789")


def build_test_page() -> bytes:
    b = TicketBuilder().init().align(1).bold(True).size(2, 2).line("测试页").size(1, 1)
    b.bold(False).align(0)
    for text in TEST_PAGE_LINES:
        b.line(text)
    return b.align(1).qr(b"courthub-test").line().cut().build()


# --- status ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrinterStatus:
    offline: bool = False
    cover_open: bool = False
    paper_out: bool = False
    paper_low: bool = False
    error: bool = False

    @classmethod
    def from_replies(cls, printer: int, offline: int, paper: int) -> PrinterStatus:
        return cls(
            offline=bool(printer & BIT_OFFLINE),
            cover_open=bool(offline & BIT_COVER_OPEN),
            paper_out=(paper & BITS_PAPER_END) == BITS_PAPER_END or bool(offline & BIT_PAPER_STOP),
            paper_low=(paper & BITS_PAPER_NEAR_END) == BITS_PAPER_NEAR_END,
            error=bool(offline & BIT_ERROR),
        )

    def metrics(self) -> dict[str, float]:
        return {
            "paper_out": float(self.paper_out),
            "paper_low": float(self.paper_low),
            "cover_open": float(self.cover_open),
            "online": 1.0,
        }

    def faults(self) -> list[str]:
        faults = []
        if self.paper_out:
            faults.append(PAPER_OUT)
        if self.cover_open:
            faults.append(COVER_OPEN)
        if self.error:
            faults.append("printer error")
        return faults


def status_byte(bits: int) -> int:
    """A ``DLE EOT`` reply byte carrying ``bits`` (the fixed bits added)."""
    return STATUS_FIXED | (bits & ~STATUS_MASK & 0xFF)


def is_status_byte(byte: int) -> bool:
    return byte & STATUS_MASK == STATUS_FIXED


class NoReply(Exception):
    """The printer did not answer a status query in time."""


# --- the driver --------------------------------------------------------------------------
class EscposPrinterOptions(SerialPortOptions, frozen=True, kw_only=True):
    """``[[devices]]`` options of an ``escpos_printer`` device (and the serial port's)."""

    status_interval_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    model: str = "ESC/POS thermal printer (GB18030)"


class EscposPrinterDriver(SerialDeviceDriver[EscposPrinterOptions]):
    """One ESC/POS ticket printer on its own serial port."""

    name: ClassVar[str] = "escpos_printer"
    Options: ClassVar[type[msgspec.Struct]] = EscposPrinterOptions
    label: ClassVar[str] = "escpos printer"

    def __init__(self, device_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(device_id, options)
        self._description = DeviceDescription(
            kind="ticket_printer",
            model=self.options.model,
            capabilities=CAPABILITIES,
            heartbeat_s=self.options.status_interval_s,
            extra={"port": self.options.port},
        )
        self._lock = asyncio.Lock()
        self._paper_low = False

    @property
    def poll_interval_s(self) -> float:
        return self.options.status_interval_s

    # --- running -------------------------------------------------------------------------
    def _went_offline(self, reason: str) -> None:
        # the online metric goes to 0 once, when the printer goes offline
        if (
            self._sink is not None
            and self._state is not None
            and self._state[0] != DeviceStatus.OFFLINE
        ):
            self._sink.telemetry({"online": 0.0})
        super()._went_offline(reason)

    def _garbage(self, data: bytes) -> None:
        if data:
            self._bad_input(
                BadMessage(BadReason.SCHEMA, f"{len(data)} unexpected bytes: {data[:16].hex()}")
            )

    async def _status(self) -> PrinterStatus:
        """Ask ``DLE EOT`` 1, 2 and 4 (the lock must be held). Raises NoReply/SerialLinkClosed."""
        link = self._link
        if link is None:
            raise SerialLinkClosed("the printer driver is not running")
        self._garbage(link.take_buffered())
        replies = []
        for n in (STATUS_PRINTER, STATUS_OFFLINE, STATUS_PAPER):
            await link.write(bytes((DLE, EOT, n)))
            replies.append(await self._await_status_byte(link, n))
        return PrinterStatus.from_replies(*replies)

    async def _await_status_byte(self, link: SerialLink, n: int) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.reply_timeout_s
        junk = bytearray()
        try:
            while (remaining := deadline - loop.time()) > 0:
                data = await link.read(1, remaining)
                if not data:
                    break
                if is_status_byte(data[0]):
                    return data[0]
                junk += data
        finally:
            self._garbage(bytes(junk))
        raise NoReply(f"no reply to DLE EOT {n}")

    def _apply(self, status: PrinterStatus) -> None:
        if self._sink is not None:
            self._sink.telemetry(status.metrics())
            if status.paper_low and not self._paper_low:
                self._sink.event("paper_low", {})
        self._paper_low = status.paper_low
        faults = status.faults()
        if faults:
            self._report_state(DeviceStatus.FAULT, ", ".join(faults))
        elif status.offline:
            self._report_state(DeviceStatus.FAULT, "printer offline")
        else:
            self._report_state(DeviceStatus.ONLINE)

    async def _checked_status(self) -> PrinterStatus:
        """Status (lock held), applied to state/telemetry; CommandError when unreachable."""
        try:
            status = await self._status()
        except NoReply:
            self._went_offline("no status reply")
            raise CommandError(f"the printer on {self.options.port} does not answer") from None
        except SerialLinkClosed:
            self._went_offline(f"serial port {self.options.port} is not available")
            raise CommandError(f"serial port {self.options.port} is not available") from None
        self._apply(status)
        return status

    async def _poll(self) -> dict[str, float] | None:
        async with self._lock:
            try:
                return (await self._checked_status()).metrics()
            except CommandError:
                return None

    async def _print(self, job: bytes) -> dict[str, Any]:
        async with self._lock:
            status = await self._checked_status()
            refusals = status.faults() + (["printer offline"] if status.offline else [])
            if refusals:
                raise CommandError(f"cannot print: {', '.join(refusals)}")
            assert self._link is not None
            try:
                await self._link.write(job)
            except SerialLinkClosed:
                raise CommandError(f"serial port {self.options.port} is not available") from None
        return {"ok": True, "bytes": len(job)}

    # --- commands ------------------------------------------------------------------------
    async def execute(self, name: str, args: Mapping[str, Any]) -> Any:
        if name == "print_ticket":
            return await self._print(build_ticket(self._ticket(args)))
        if name == "print_lines":
            lines = args.get("lines")
            if (
                not isinstance(lines, list)
                or not lines
                or not all(isinstance(line, str) for line in lines)
            ):
                raise CommandError("lines must be a non-empty list of strings")
            try:
                job = build_lines(lines)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            return await self._print(job)
        if name == "test_page":
            return await self._print(build_test_page())
        if name == "status":
            async with self._lock:
                return (await self._checked_status()).metrics()
        raise UnknownCommand(f"printer has no command {name!r} (has: {', '.join(CAPABILITIES)})")

    @staticmethod
    def _ticket(args: Mapping[str, Any]) -> Ticket:
        def text(key: str, required: bool = True) -> str:
            value = args.get(key, None if required else "")
            if not isinstance(value, str) or (required and not value):
                raise CommandError(f"{key} must be a non-empty string, not {value!r}")
            return value

        def number(key: str) -> int | float:
            value = args.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise CommandError(f"{key} must be a number >= 0, not {value!r}")
            if not math.isfinite(value):
                raise CommandError(f"{key} must be finite")
            return value

        ticket_id = text("ticket_id")
        if not ticket_id.isascii() or len(ticket_id) > 200:
            raise CommandError("ticket_id must be ASCII, at most 200 characters")
        timezone = text("timezone", required=False) or DEFAULT_TIMEZONE
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise CommandError(f"unknown timezone {timezone!r}") from None
        waiting = number("waiting_ahead")
        issued = number("issued_at")
        if not isinstance(waiting, int) or not isinstance(issued, int):
            raise CommandError("waiting_ahead and issued_at must be whole numbers")
        ticket = Ticket(
            number=text("number"),
            service_name=text("service_name"),
            waiting_ahead=waiting,
            estimated_wait_s=float(number("estimated_wait_s")),
            issued_at=issued,
            ticket_id=ticket_id,
            court_name=text("court_name", required=False),
            timezone=timezone,
        )
        try:
            build_ticket(ticket)
        except (ValueError, OverflowError) as exc:
            raise CommandError(str(exc)) from None
        return ticket
