"""A simulated Sony VISCA PTZ head on a pty pair (see device_drivers/visca.py).

The camera holds the pty master; the driver opens :attr:`SimulatedViscaCamera.path`, a symlink
to the current slave that stays the same across ``unplug()`` / ``replug()`` (see
:mod:`simulators.pty_port`). It answers like a real head:

- two command sockets: a movement (preset recall, home, absolute position) gets ``ACK`` at once
  and its completion when the move is done, after a time proportional to the distance (at most
  ``max_move_s``); with both sockets busy a third gets ``command buffer full``;
- pan/tilt drive, zoom, preset set/reset complete at once (a drive keeps moving the head at a
  speed given by the command until a stop; :attr:`position` follows it);
- inquiries answer the position at once; an unknown command to its address gets
  ``syntax error``; recalling a preset never stored gets ``command not executable``;
- ``IF_Clear`` cancels the moves in flight (``command canceled`` on their sockets) and is echoed;
  ``address set`` takes the given address and passes on the next one.

Faults: :meth:`unplug`/:meth:`replug`, :meth:`mute` (no answers, nothing done), :meth:`garbage`
(bytes that form no packet) and :meth:`fail_next` (the next command is answered with an error).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from device_drivers.visca import (
    BUFFER_FULL,
    NOT_EXECUTABLE,
    SYNTAX_ERROR,
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
    ViscaCommand,
    ViscaReply,
    Zoom,
    ZoomDir,
    ZoomInquiry,
    decode_command,
    encode_reply,
    pan_tilt_reply,
    zoom_reply,
)
from protocol.errors import BadMessage
from simulators.pty_port import PtyDevice

#: the head's travel (units of an EVI-D70-class head)
PAN_MIN, PAN_MAX = -0x08DB, 0x08DB
TILT_MIN, TILT_MAX = -0x0190, 0x04B0
ZOOM_MIN, ZOOM_MAX = 0, 0x4000
#: travel per second per speed step of a drive command
PAN_UNITS_PER_SPEED = 40.0
TILT_UNITS_PER_SPEED = 30.0
ZOOM_UNITS_PER_SPEED = 800.0
SOCKETS = (1, 2)


def _clamp(value: float, low: int, high: int) -> int:
    return int(max(low, min(high, round(value))))


class SimulatedViscaCamera(PtyDevice):
    """One VISCA head on a simulated serial port (see the module docstring)."""

    def __init__(
        self,
        address: int = 1,
        *,
        presets: Mapping[int, PtzPosition] | None = None,
        max_move_s: float = 0.3,
    ) -> None:
        super().__init__(prefix="visca-", name="ttyVISCA")
        self.address = address
        self.max_move_s = max_move_s
        self._parser = PacketParser()
        self._muted = False
        self._fail_next: int | None = None
        #: preset number -> stored position
        self.presets: dict[int, PtzPosition] = dict(presets or {})
        self._base = PtzPosition(0, 0, 0)
        self._drive = (0.0, 0.0, 0.0)  # pan, tilt, zoom units per second
        self._drive_since = 0.0
        self._moves: dict[int, tuple[asyncio.TimerHandle, PtzPosition]] = {}
        #: every valid command received, in order
        self.received: list[ViscaCommand] = []
        #: packets that were not a known command, and garbage bytes, received
        self.bad_commands = 0
        self.garbage_bytes = 0

    def _on_plug(self) -> None:
        self._parser = PacketParser()

    def _on_unplug(self) -> None:
        """Moves in flight stop without a completion (the cable is gone)."""
        for socket in list(self._moves):
            self._finish(socket, notify=False)

    # --- state ---------------------------------------------------------------------------
    @property
    def position(self) -> PtzPosition:
        """Where the head points now (a drive in progress included)."""
        elapsed = time.monotonic() - self._drive_since
        pan_v, tilt_v, zoom_v = self._drive
        return PtzPosition(
            _clamp(self._base.pan + pan_v * elapsed, PAN_MIN, PAN_MAX),
            _clamp(self._base.tilt + tilt_v * elapsed, TILT_MIN, TILT_MAX),
            _clamp(self._base.zoom + zoom_v * elapsed, ZOOM_MIN, ZOOM_MAX),
        )

    @property
    def busy_sockets(self) -> list[int]:
        """Sockets holding a move in progress."""
        return sorted(self._moves)

    def _set_drive(self, pan_v: float | None, tilt_v: float | None, zoom_v: float | None) -> None:
        """Freeze the position now, then move at the new speeds (None keeps an axis' speed)."""
        self._base = self.position
        self._drive_since = time.monotonic()
        old = self._drive
        self._drive = (
            old[0] if pan_v is None else pan_v,
            old[1] if tilt_v is None else tilt_v,
            old[2] if zoom_v is None else zoom_v,
        )

    # --- fault injection -----------------------------------------------------------------
    def mute(self, on: bool) -> None:
        """While on, the camera neither answers nor acts (like a head without power)."""
        self._muted = on

    def garbage(self, n: int) -> None:
        """Send ``n`` bytes that form no packet (no header byte, no terminator)."""
        self._write(bytes(0x01 + i % 0x7E for i in range(n)))

    def fail_next(self, code: int) -> None:
        """Answer the next command (not an inquiry) with VISCA error ``code`` instead."""
        self._fail_next = code

    # --- the wire ------------------------------------------------------------------------
    def _on_data(self, data: bytes) -> None:
        packets = self._parser.feed(data)
        self._parser.take_problems()
        self.garbage_bytes = self._parser.garbage_bytes
        for packet in packets:
            if self._muted:
                continue
            try:
                command = decode_command(packet)
            except BadMessage:
                self.bad_commands += 1
                if packet[0] in (0x80 | self.address, 0x88):
                    self._reply(ErrorReply(self.address, 0, SYNTAX_ERROR))
                continue
            self.received.append(command)
            self._handle(command)

    def _handle(self, command: ViscaCommand) -> None:
        if isinstance(command, AddressSet):
            self.address = command.first
            self._reply(AddressSetReply(command.first + 1))
            return
        if isinstance(command, IfClear):
            for socket in list(self._moves):
                self._finish(socket, notify=False)
                self._reply(ErrorReply(self.address, socket, 0x04))
            self._set_drive(0.0, 0.0, 0.0)
            self._reply(IfClearReply())
            return
        if command.address != self.address:
            return  # for another camera on the chain
        if isinstance(command, PanTiltInquiry):
            pos = self.position
            self._reply(Completion(self.address, 0, pan_tilt_reply(pos.pan, pos.tilt)))
            return
        if isinstance(command, ZoomInquiry):
            self._reply(Completion(self.address, 0, zoom_reply(self.position.zoom)))
            return
        if self._fail_next is not None:
            code, self._fail_next = self._fail_next, None
            socket = 0 if code in (SYNTAX_ERROR, BUFFER_FULL) else 1
            self._reply(ErrorReply(self.address, socket, code))
            return
        self._command(command)

    def _command(self, command: ViscaCommand) -> None:
        target: PtzPosition | None = None
        if isinstance(command, PresetRecall):
            target = self.presets.get(command.preset)
            if target is None:
                self._reply(ErrorReply(self.address, 0, NOT_EXECUTABLE))
                return
        elif isinstance(command, Home):
            target = PtzPosition(0, 0, self.position.zoom)
        elif isinstance(command, AbsolutePosition):
            target = PtzPosition(
                _clamp(command.pan, PAN_MIN, PAN_MAX),
                _clamp(command.tilt, TILT_MIN, TILT_MAX),
                self.position.zoom,
            )
        free = [s for s in SOCKETS if s not in self._moves]
        if not free:
            self._reply(ErrorReply(self.address, 0, BUFFER_FULL))
            return
        socket = free[0]
        self._reply(Ack(self.address, socket))
        if target is not None:
            self._start_move(socket, target)
            return
        if isinstance(command, PresetSet):
            self.presets[command.preset] = self.position
        elif isinstance(command, PresetReset):
            self.presets.pop(command.preset, None)
        elif isinstance(command, PanTiltDrive):
            self._set_drive(
                {PanDir.LEFT: -1, PanDir.RIGHT: 1, PanDir.STOP: 0}[command.pan]
                * command.pan_speed
                * PAN_UNITS_PER_SPEED,
                {TiltDir.UP: 1, TiltDir.DOWN: -1, TiltDir.STOP: 0}[command.tilt]
                * command.tilt_speed
                * TILT_UNITS_PER_SPEED,
                None,
            )
        elif isinstance(command, Zoom):
            sign = {ZoomDir.TELE: 1, ZoomDir.WIDE: -1, ZoomDir.STOP: 0}[command.direction]
            self._set_drive(None, None, sign * (command.speed + 1) * ZOOM_UNITS_PER_SPEED)
        self._reply(Completion(self.address, socket))

    def _start_move(self, socket: int, target: PtzPosition) -> None:
        self._set_drive(0.0, 0.0, 0.0)
        here = self.position
        distance = max(
            abs(target.pan - here.pan) / (PAN_MAX - PAN_MIN),
            abs(target.tilt - here.tilt) / (TILT_MAX - TILT_MIN),
            abs(target.zoom - here.zoom) / (ZOOM_MAX - ZOOM_MIN),
        )
        delay = self.max_move_s * min(1.0, distance)
        handle = asyncio.get_running_loop().call_later(delay, self._finish, socket)
        self._moves[socket] = (handle, target)

    def _finish(self, socket: int, notify: bool = True) -> None:
        handle, target = self._moves.pop(socket)
        handle.cancel()
        if notify:
            self._base = target
            self._drive_since = time.monotonic()
            self._reply(Completion(self.address, socket))

    def _reply(self, reply: ViscaReply) -> None:
        if not self._muted:
            self._write(encode_reply(reply))
