"""Driver for the LED queue call displays above the windows (protocol: led-call-display.md).

Frames are ``AA 55 | address | command | length (2, BE) | payload | XOR checksum | 0D``. Text is
GB2312, GBK where GB2312 cannot encode a character; a character neither can encode is a
:class:`CommandError`, never dropped.

Several panels share one RS-485 bus, so several driver instances (one per panel address) use
the same port path. They share one :class:`LedBus` per path, handed out by a
:class:`BusRegistry` (a module-wide one unless the driver is given its own): the bus owns the
:class:`~device_drivers.serial_link.SerialLink` and a lock, so a request and its reply are one
exchange that no other panel's exchange interleaves with. The bus closes the port when its last
driver stops.

Commands (``line`` is 0-based, as on the wire): ``show_text`` {line, text, effect}, ``clear``
{line | "all"}, ``brightness`` {level}, ``chime`` {count}, ``test``, ``status``.
``show_text``, ``clear``, ``brightness`` and ``chime`` take ``broadcast: true`` to address every
panel on the bus (no reply is expected). Status is polled every ``poll_interval_s`` and reported
as telemetry; fault flags make the device ``fault``; no reply makes it ``offline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final

import msgspec

from device_drivers.base import CommandError, DeviceDescription, UnknownCommand
from device_drivers.serial_device import ProblemLog, SerialDeviceDriver, SerialPortOptions
from device_drivers.serial_link import SerialLink, SerialLinkClosed
from protocol.errors import BadMessage, BadReason
from protocol.messages import DeviceStatus

log = logging.getLogger(__name__)

START: Final = b"\xaa\x55"
END: Final = 0x0D
BROADCAST: Final = 0xFF
MAX_PAYLOAD: Final = 512
HEADER: Final = 6  # start, address, command, length

CMD_SHOW_TEXT: Final = 0x01
CMD_CLEAR: Final = 0x02
CMD_BRIGHTNESS: Final = 0x03
CMD_CHIME: Final = 0x04
CMD_STATUS: Final = 0x10
ACK_FLAG: Final = 0x80
REPLY_STATUS: Final = 0x90
CLEAR_ALL: Final = 0xFF

EFFECTS: Final = {"static": 0, "scroll": 1, "flash": 2}
ACK_OK: Final = 0
ACK_MESSAGES: Final = {
    1: "the display received a corrupted frame (bad checksum; check the RS-485 wiring)",
    2: "the display does not know this command",
    3: "the text is too long for the display's line",
    4: "the display rejected an argument (line, effect or value out of range)",
}
FLAG_LED_FAULT: Final = 0x01
FLAG_POWER_FAULT: Final = 0x02
CAPABILITIES: Final = ("show_text", "clear", "brightness", "chime", "test", "status")


# --- codec -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    address: int
    command: int
    payload: bytes = b""


class FrameError(BadMessage):
    """A BadMessage about one frame; ``address`` and ``command`` are set when readable."""

    def __init__(
        self,
        reason: BadReason,
        detail: str,
        address: int | None = None,
        command: int | None = None,
    ) -> None:
        super().__init__(reason, detail)
        self.address = address
        self.command = command


def checksum(body: bytes) -> int:
    """XOR of address, command, length and payload bytes."""
    value = 0
    for byte in body:
        value ^= byte
    return value


def encode_frame(address: int, command: int, payload: bytes = b"") -> bytes:
    """The frame's bytes; raises ValueError for out-of-range fields (a programming error)."""
    if not 0 <= address <= 0xFF or not 0 <= command <= 0xFF:
        raise ValueError(f"address {address} / command {command} must be bytes")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes > {MAX_PAYLOAD}")
    body = bytes((address, command)) + len(payload).to_bytes(2, "big") + payload
    return START + body + bytes((checksum(body), END))


class FrameParser(ProblemLog[FrameError]):
    """Incremental decoder: :meth:`feed` bytes, get whole frames.

    Bytes before a start marker are skipped, a frame with a wrong end byte or an oversized length
    is dropped (resyncing just after its start marker), a frame with a bad checksum is consumed.
    Each of these is recorded as a :class:`FrameError` (a :class:`BadMessage`) in
    :attr:`problems` (drain with :meth:`take_problems`) and counted in :attr:`bad_count`. Every
    step consumes bytes or waits for more, so :meth:`feed` always terminates; at most one frame's
    worth of bytes is kept between calls.
    """

    def __init__(self) -> None:
        super().__init__()
        self._buffer = bytearray()

    def reset(self) -> None:
        self._buffer.clear()

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buffer
        buf += data
        frames: list[Frame] = []
        while buf:
            start = buf.find(START)
            if start < 0:
                keep = 1 if buf[-1] == START[0] else 0  # maybe the first half of a marker
                skipped = len(buf) - keep
                if skipped:
                    self._problem(FrameError(BadReason.BAD_MAGIC, f"skipped {skipped} bytes"))
                    del buf[:skipped]
                break
            if start > 0:
                self._problem(FrameError(BadReason.BAD_MAGIC, f"skipped {start} bytes"))
                del buf[:start]
            if len(buf) < HEADER:
                break
            address, command = buf[2], buf[3]
            length = int.from_bytes(buf[4:6], "big")
            if length > MAX_PAYLOAD:
                self._problem(
                    FrameError(BadReason.OVERSIZED, f"length {length} > {MAX_PAYLOAD}", address)
                )
                del buf[:2]
                continue
            total = HEADER + length + 2
            if len(buf) < total:
                break
            if buf[total - 1] != END:
                self._problem(
                    FrameError(BadReason.BAD_HEADER, f"end byte 0x{buf[total - 1]:02x}", address)
                )
                del buf[:2]
                continue
            body = bytes(buf[2 : HEADER + length])
            expected, got = checksum(body), buf[total - 2]
            del buf[:total]
            if expected != got:
                self._problem(
                    FrameError(
                        BadReason.BAD_HEADER,
                        f"bad checksum 0x{got:02x} (expected 0x{expected:02x})",
                        address,
                        command,
                    )
                )
                continue
            frames.append(Frame(address, command, body[4:]))
        return frames


def encode_text(text: str) -> bytes:
    """GB2312, or GBK when GB2312 cannot; CommandError naming a character neither can encode."""
    try:
        return text.encode("gb2312")
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("gbk")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end]
        raise CommandError(
            f"the display cannot show {bad!r} (U+{ord(bad[0]):04X}): not in GB2312/GBK"
        ) from None


def decode_text(data: bytes) -> str:
    """Text bytes back to a string (GBK is a superset of GB2312); raises BadMessage."""
    try:
        return data.decode("gbk")
    except UnicodeDecodeError as exc:
        raise BadMessage(BadReason.SCHEMA, f"text is not GBK: {exc}") from None


# --- the shared bus ----------------------------------------------------------------------
class NoReply(Exception):
    """The panel did not answer within the timeout, after all retries."""


class LedBus:
    """One serial port shared by every panel driver on it; exchanges are serialised."""

    def __init__(self, port: str, baudrate: int, reopen_min_s: float, reopen_max_s: float) -> None:
        self.port = port
        self.loop = asyncio.get_running_loop()
        self.link = SerialLink(
            port,
            baudrate=baudrate,
            reopen_min_s=reopen_min_s,
            reopen_max_s=reopen_max_s,
            on_state=self._fan_out,
        )
        self.lock = asyncio.Lock()
        self.parser = FrameParser()
        self.listeners: list[Callable[[bool, str], None]] = []

    def _fan_out(self, is_open: bool, reason: str) -> None:
        if not is_open:
            self.parser.reset()
        for listener in list(self.listeners):
            listener(is_open, reason)

    def _report(self, on_bad: Callable[[BadMessage], None]) -> None:
        for problem in self.parser.take_problems():
            on_bad(problem)

    async def exchange(
        self,
        address: int,
        command: int,
        payload: bytes,
        *,
        reply_commands: frozenset[int],
        timeout: float,
        retries: int,
        on_bad: Callable[[BadMessage], None],
    ) -> Frame | None:
        """Send a frame and wait for the panel's reply (None for broadcasts, which get none).

        Raises :class:`NoReply` or :class:`SerialLinkClosed`.
        """
        frame = encode_frame(address, command, payload)
        async with self.lock:
            # bytes that came between exchanges: garbage is reported, stray frames ignored
            self.parser.feed(self.link.take_buffered())
            self._report(on_bad)
            for _attempt in range(retries + 1):
                await self.link.write(frame)
                if address == BROADCAST:
                    return None
                reply = await self._await_reply(address, reply_commands, timeout, on_bad)
                if reply is not None:
                    return reply
            raise NoReply(f"no reply from the display at address {address}")

    async def _await_reply(
        self,
        address: int,
        reply_commands: frozenset[int],
        timeout: float,
        on_bad: Callable[[BadMessage], None],
    ) -> Frame | None:
        deadline = self.loop.time() + timeout
        while (remaining := deadline - self.loop.time()) > 0:
            data = await self.link.read(4096, remaining)
            frames = self.parser.feed(data)
            self._report(on_bad)
            for frame in frames:
                if frame.address == address and frame.command in reply_commands:
                    return frame
        return None


class BusRegistry:
    """The :class:`LedBus` of each port path, shared by the drivers using that path."""

    def __init__(self) -> None:
        self._buses: dict[str, LedBus] = {}

    async def acquire(
        self,
        port: str,
        baudrate: int,
        listener: Callable[[bool, str], None],
        *,
        reopen_min_s: float = 0.5,
        reopen_max_s: float = 10.0,
    ) -> LedBus:
        """The bus of ``port`` (opened when it is the first user); ``listener`` gets link state."""
        bus = self._buses.get(port)
        if bus is None or bus.loop is not asyncio.get_running_loop():
            bus = LedBus(port, baudrate, reopen_min_s, reopen_max_s)
            self._buses[port] = bus
            await bus.link.open()
        elif bus.link.baudrate != baudrate:
            log.warning(
                "led bus port=%s already runs at %d baud; ignoring %d",
                port,
                bus.link.baudrate,
                baudrate,
            )
        bus.listeners.append(listener)
        return bus

    async def release(self, bus: LedBus, listener: Callable[[bool, str], None]) -> None:
        """Stop reporting to ``listener``; closes the port when nobody uses it any more."""
        with contextlib.suppress(ValueError):
            bus.listeners.remove(listener)
        if not bus.listeners:
            if self._buses.get(bus.port) is bus:
                del self._buses[bus.port]
            await bus.link.close()


#: the registry drivers use unless given their own
BUSES: Final = BusRegistry()


# --- the driver --------------------------------------------------------------------------
class LedCallDisplayOptions(SerialPortOptions, frozen=True, kw_only=True):
    """``[[devices]]`` options of an ``led_call_display`` device (and the serial port's)."""

    address: Annotated[int, msgspec.Meta(ge=1, le=254)] = 1
    lines: Annotated[int, msgspec.Meta(ge=1, le=16)] = 2
    #: line width in bytes (a Chinese character takes 2)
    line_width: Annotated[int, msgspec.Meta(ge=1, le=500)] = 32
    reply_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=10)] = 0.1
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    poll_interval_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    model: str = "LED call display"


class LedCallDisplayDriver(SerialDeviceDriver[LedCallDisplayOptions]):
    """One LED panel at one address on a (possibly shared) serial bus."""

    name: ClassVar[str] = "led_call_display"
    Options: ClassVar[type[msgspec.Struct]] = LedCallDisplayOptions
    label: ClassVar[str] = "led display"

    def __init__(
        self, device_id: str, options: Mapping[str, Any], *, buses: BusRegistry | None = None
    ) -> None:
        super().__init__(device_id, options)
        self._buses = buses if buses is not None else BUSES
        self._description = DeviceDescription(
            kind="call_display",
            model=self.options.model,
            capabilities=CAPABILITIES,
            heartbeat_s=self.options.poll_interval_s,
            extra={
                "port": self.options.port,
                "address": self.options.address,
                "lines": self.options.lines,
                "line_width": self.options.line_width,
            },
        )
        self._bus: LedBus | None = None

    @property
    def poll_interval_s(self) -> float:
        return self.options.poll_interval_s

    # --- running -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[SerialLink]:
        """The shared bus of the port (the registry reopens and finally closes it)."""
        opts = self.options
        bus = await self._buses.acquire(
            opts.port,
            opts.baudrate,
            self._on_link_state,
            reopen_min_s=opts.reopen_min_s,
            reopen_max_s=opts.reopen_max_s,
        )
        self._bus = bus
        try:
            yield bus.link
        finally:
            self._bus = None
            await self._buses.release(bus, self._on_link_state)

    def _where(self) -> str:
        return f"port={self.options.port} address={self.options.address}"

    async def _poll(self) -> dict[str, float] | None:
        try:
            reply = await self._exchange(CMD_STATUS, b"", frozenset({REPLY_STATUS}))
        except CommandError as exc:
            self._report_state(DeviceStatus.OFFLINE, str(exc))
            return None
        assert reply is not None
        if len(reply.payload) != 3:
            self._bad_input(BadMessage(BadReason.SCHEMA, f"status of {len(reply.payload)} bytes"))
            return None
        temperature = int.from_bytes(reply.payload[:1], "big", signed=True)
        brightness, flags = reply.payload[1], reply.payload[2]
        metrics = {
            "temperature_c": float(temperature),
            "brightness": float(brightness),
            "led_fault": 1.0 if flags & FLAG_LED_FAULT else 0.0,
            "power_fault": 1.0 if flags & FLAG_POWER_FAULT else 0.0,
        }
        if self._sink is not None:
            self._sink.telemetry(metrics)
        faults = [
            name
            for bit, name in ((FLAG_LED_FAULT, "LED fault"), (FLAG_POWER_FAULT, "power fault"))
            if flags & bit
        ]
        if faults:
            self._report_state(DeviceStatus.FAULT, ", ".join(faults))
        else:
            self._report_state(DeviceStatus.ONLINE)
        return metrics

    async def _exchange(
        self, command: int, payload: bytes, replies: frozenset[int], *, broadcast: bool = False
    ) -> Frame | None:
        bus = self._bus
        if bus is None:
            raise CommandError("the LED display driver is not running")
        opts = self.options
        address = BROADCAST if broadcast else opts.address
        try:
            return await bus.exchange(
                address,
                command,
                payload,
                reply_commands=replies,
                timeout=opts.reply_timeout_s,
                retries=opts.retries,
                on_bad=self._bad_input,
            )
        except NoReply:
            raise CommandError(
                f"no reply from the display at address {address} on {opts.port} "
                f"(tried {opts.retries + 1} times)"
            ) from None
        except SerialLinkClosed:
            raise CommandError(f"serial port {opts.port} is not available") from None

    async def _command(self, command: int, payload: bytes, broadcast: bool) -> dict[str, Any]:
        reply = await self._exchange(
            command, payload, frozenset({ACK_FLAG | command}), broadcast=broadcast
        )
        if reply is None:
            return {"ok": True, "broadcast": True}
        status = reply.payload[0] if reply.payload else -1
        if status != ACK_OK:
            raise CommandError(ACK_MESSAGES.get(status, f"the display answered status {status}"))
        return {"ok": True}

    # --- commands ------------------------------------------------------------------------
    async def execute(self, name: str, args: Mapping[str, Any]) -> Any:
        broadcast = args.get("broadcast", False) is True
        if name == "show_text":
            line = self._line(args.get("line"))
            effect = args.get("effect", "static")
            if effect not in EFFECTS:
                raise CommandError(f"effect must be one of {', '.join(EFFECTS)}, not {effect!r}")
            text = self._text(args.get("text"))
            payload = bytes((line, EFFECTS[effect])) + text
            return await self._command(CMD_SHOW_TEXT, payload, broadcast)
        if name == "clear":
            raw = args.get("line", "all")
            line = CLEAR_ALL if raw == "all" else self._line(raw)
            return await self._command(CMD_CLEAR, bytes((line,)), broadcast)
        if name == "brightness":
            level = self._int(args.get("level"), "level", 0, 15)
            return await self._command(CMD_BRIGHTNESS, bytes((level,)), broadcast)
        if name == "chime":
            count = self._int(args.get("count", 1), "count", 1, 5)
            return await self._command(CMD_CHIME, bytes((count,)), broadcast)
        if name == "test":
            pattern = self._test_pattern()
            for line in range(self.options.lines):
                await self._command(
                    CMD_SHOW_TEXT, bytes((line, EFFECTS["static"])) + pattern, False
                )
            return {"ok": True, "lines": self.options.lines}
        if name == "status":
            metrics = await self._poll()
            if metrics is None:
                reason = self._state[1] if self._state else "no status"
                raise CommandError(f"the display gave no status: {reason}")
            return metrics
        raise UnknownCommand(
            f"LED display has no command {name!r} (has: {', '.join(CAPABILITIES)})"
        )

    def _line(self, value: Any) -> int:
        return self._int(value, "line", 0, self.options.lines - 1)

    @staticmethod
    def _int(value: Any, what: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise CommandError(f"{what} must be a whole number from {low} to {high}, not {value!r}")
        return value

    def _text(self, value: Any) -> bytes:
        if not isinstance(value, str):
            raise CommandError(f"text must be a string, not {type(value).__name__}")
        data = encode_text(value)
        if len(data) > self.options.line_width:
            raise CommandError(
                f"text needs {len(data)} bytes; a line holds {self.options.line_width} "
                "(a Chinese character takes 2)"
            )
        return data

    def _test_pattern(self) -> bytes:
        width = self.options.line_width
        if width < 4:
            return b"#" * width
        return encode_text("测试" + "■" * ((width - 4) // 2))
