"""A simulated RS-485 bus of LED call display panels on a pty pair (protocol: led-call-display.md).

The bus holds the pty master; the driver opens :attr:`SimulatedLedBus.path`, a symlink (like
socat's ``link=``) to the current slave, which stays the same across ``unplug()`` /
``replug()`` (see :mod:`simulators.pty_port`). Each :class:`SimulatedPanel` answers frames to its
address at once (or after :meth:`slow`), records the decoded text of each line and the chimes, and can be told to fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from device_drivers.led_call_display import (
    ACK_FLAG,
    BROADCAST,
    CLEAR_ALL,
    CMD_BRIGHTNESS,
    CMD_CHIME,
    CMD_CLEAR,
    CMD_SHOW_TEXT,
    CMD_STATUS,
    FLAG_LED_FAULT,
    FLAG_POWER_FAULT,
    REPLY_STATUS,
    Frame,
    FrameParser,
    encode_frame,
)
from simulators.pty_port import PtyDevice

EFFECT_NAMES = {0: "static", 1: "scroll", 2: "flash"}


@dataclass
class SimulatedPanel:
    """One panel: what it shows and how it is doing."""

    address: int
    lines: int = 2
    line_width: int = 32
    brightness: int = 8
    temperature_c: int = 35
    led_fault: bool = False
    power_fault: bool = False
    text: list[str] = field(default_factory=list)
    effects: list[str] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    chimes: int = 0

    def __post_init__(self) -> None:
        self.text = [""] * self.lines
        self.effects = ["static"] * self.lines
        self.raw = [b""] * self.lines

    def handle(self, frame: Frame) -> bytes:
        """Apply a command; the reply frame's bytes."""
        if frame.command == CMD_STATUS:
            flags = (FLAG_LED_FAULT if self.led_fault else 0) | (
                FLAG_POWER_FAULT if self.power_fault else 0
            )
            temperature = self.temperature_c.to_bytes(1, "big", signed=True)
            payload = temperature + bytes((self.brightness, flags))
            return encode_frame(self.address, REPLY_STATUS, payload)
        return encode_frame(self.address, ACK_FLAG | frame.command, bytes((self._apply(frame),)))

    def _apply(self, frame: Frame) -> int:
        """The ack status: 0 ok, 2 unknown command, 3 text too long, 4 bad argument."""
        p = frame.payload
        if frame.command == CMD_SHOW_TEXT:
            if len(p) < 2 or p[0] >= self.lines or p[1] not in EFFECT_NAMES:
                return 4
            text = p[2:]
            if len(text) > self.line_width:
                return 3
            try:
                decoded = text.decode("gbk")
            except UnicodeDecodeError:
                return 4
            self.text[p[0]], self.effects[p[0]], self.raw[p[0]] = decoded, EFFECT_NAMES[p[1]], text
            return 0
        if frame.command == CMD_CLEAR:
            if len(p) != 1 or (p[0] != CLEAR_ALL and p[0] >= self.lines):
                return 4
            for line in range(self.lines) if p[0] == CLEAR_ALL else (p[0],):
                self.text[line], self.effects[line], self.raw[line] = "", "static", b""
            return 0
        if frame.command == CMD_BRIGHTNESS:
            if len(p) != 1 or p[0] > 15:
                return 4
            self.brightness = p[0]
            return 0
        if frame.command == CMD_CHIME:
            if len(p) != 1 or not 1 <= p[0] <= 5:
                return 4
            self.chimes += p[0]
            return 0
        return 2


class SimulatedLedBus(PtyDevice):
    """Panels at addresses on one simulated serial bus (see the module docstring)."""

    def __init__(self, panels: list[SimulatedPanel]) -> None:
        super().__init__(prefix="led-bus-", name="ttyLED")
        self.panels = {panel.address: panel for panel in panels}
        self._parser = FrameParser()
        self._bad_checksums = False
        self._silent = False
        self._delay = 0.0
        #: every valid frame received, in order
        self.received: list[Frame] = []
        self.bad_frames = 0
        #: called with each valid frame as it is read off the line (before the panel applies it)
        self.on_frame: Callable[[Frame], None] | None = None

    def _on_plug(self) -> None:
        self._parser = FrameParser()

    # --- fault injection -----------------------------------------------------------------
    def garbage(self, n: int) -> None:
        """Send ``n`` bytes that contain no start marker."""
        self._write(bytes((0x20 + i % 90) for i in range(n)))

    def bad_checksums(self, on: bool) -> None:
        """Replies carry a wrong checksum while on."""
        self._bad_checksums = on

    def silence(self, on: bool) -> None:
        """No panel answers while on (commands are still applied)."""
        self._silent = on

    def slow(self, seconds: float) -> None:
        """Answer after ``seconds``."""
        self._delay = seconds

    def set_fault(
        self, address: int, *, led: bool | None = None, power: bool | None = None
    ) -> None:
        panel = self.panels[address]
        if led is not None:
            panel.led_fault = led
        if power is not None:
            panel.power_fault = power

    # --- the wire ------------------------------------------------------------------------
    def _on_data(self, data: bytes) -> None:
        frames = self._parser.feed(data)
        self.bad_frames += len(self._parser.problems)
        for problem in self._parser.take_problems():
            address, command = problem.address, problem.command
            if "checksum" in problem.detail and address in self.panels and command is not None:
                self._reply(encode_frame(address, ACK_FLAG | command, b"\x01"))
        for frame in frames:
            self.received.append(frame)
            if self.on_frame is not None:
                self.on_frame(frame)
            if frame.address == BROADCAST:
                for panel in self.panels.values():
                    panel.handle(frame)
            elif frame.address in self.panels:
                self._reply(self.panels[frame.address].handle(frame))

    def _reply(self, data: bytes) -> None:
        if self._silent:
            return
        if self._bad_checksums:
            data = data[:-2] + bytes((data[-2] ^ 0xFF,)) + data[-1:]
        if self._delay > 0:
            asyncio.get_running_loop().call_later(self._delay, self._write, data)
        else:
            self._write(data)
