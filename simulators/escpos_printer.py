"""A simulated ESC/POS ticket printer on a pty pair (see device_drivers/escpos_printer.py).

The printer holds the pty master; the driver opens :attr:`SimulatedPrinter.path`, a symlink to
the current slave that stays the same across ``unplug()`` / ``replug()`` (see
:mod:`simulators.pty_port`). The byte stream is decoded with the driver's own decoder; each cut
finishes a :class:`PrintedTicket` (text lines, bold and double-size segments, QR payloads).
``DLE EOT`` queries are answered at once from the fault flags. While out of paper or open,
nothing is printed (like the real thing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from device_drivers.escpos_printer import (
    BIT_COVER_OPEN,
    BIT_PAPER_STOP,
    BITS_PAPER_END,
    BITS_PAPER_NEAR_END,
    STATUS_OFFLINE,
    STATUS_PAPER,
    STATUS_PRINTER,
    Bold,
    Cut,
    EscposOp,
    EscposStream,
    Init,
    LineFeed,
    QrData,
    QrPrint,
    Size,
    StatusQuery,
    Text,
    status_byte,
)
from protocol.errors import BadMessage
from simulators.pty_port import PtyDevice


@dataclass
class PrintedTicket:
    """What one job (up to a cut) put on paper."""

    lines: list[str] = field(default_factory=list)
    bold: list[str] = field(default_factory=list)
    double: list[str] = field(default_factory=list)
    qr: list[str] = field(default_factory=list)
    cut: bool = False


class SimulatedPrinter(PtyDevice):
    """One printer on a simulated serial port (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(prefix="escpos-", name="ttyPrinter")
        self._stream = EscposStream()
        self._silent = False
        self.paper_is_out = False
        self.paper_is_low = False
        self.cover_is_open = False
        #: finished (cut) tickets, in order
        self.tickets: list[PrintedTicket] = []
        self.current = PrintedTicket()
        self._line: list[str] = []
        self._bold = False
        self._double = False
        self._qr_data = b""
        self.status_queries = 0
        self.bad_input = 0

    def _on_plug(self) -> None:
        self._stream.reset()

    # --- fault injection -----------------------------------------------------------------
    def paper_out(self, on: bool) -> None:
        self.paper_is_out = on

    def paper_low(self, on: bool) -> None:
        self.paper_is_low = on

    def cover_open(self, on: bool) -> None:
        self.cover_is_open = on

    def silence(self, on: bool) -> None:
        """Status queries go unanswered while on."""
        self._silent = on

    def garbage(self, n: int) -> None:
        """Send ``n`` bytes none of which is a valid status reply (bit 7 set)."""
        self._write(bytes(0x80 | (i % 0x7F) for i in range(n)))

    # --- the wire ------------------------------------------------------------------------
    def status_reply(self, n: int) -> int:
        bits = 0
        if n == STATUS_OFFLINE:
            bits = (BIT_COVER_OPEN if self.cover_is_open else 0) | (
                BIT_PAPER_STOP if self.paper_is_out else 0
            )
        elif n == STATUS_PAPER:
            bits = (BITS_PAPER_END if self.paper_is_out else 0) | (
                BITS_PAPER_NEAR_END if self.paper_is_low or self.paper_is_out else 0
            )
        elif n == STATUS_PRINTER:
            bits = 0x08 if self.paper_is_out or self.cover_is_open else 0
        return status_byte(bits)

    def _on_data(self, data: bytes) -> None:
        try:
            ops = self._stream.feed(data)
        except BadMessage:
            self.bad_input += 1
            return
        for op in ops:
            self._apply(op)

    def _apply(self, op: EscposOp) -> None:
        if isinstance(op, StatusQuery):
            self.status_queries += 1
            if not self._silent:
                self._write(bytes((self.status_reply(op.n),)))
            return
        if self.paper_is_out or self.cover_is_open:
            return  # nothing reaches the paper
        ticket = self.current
        if isinstance(op, Init):
            self._bold = self._double = False
        elif isinstance(op, Bold):
            self._bold = op.on
        elif isinstance(op, Size):
            self._double = op.width > 1 or op.height > 1
        elif isinstance(op, Text):
            self._line.append(op.text)
            if self._bold:
                ticket.bold.append(op.text)
            if self._double:
                ticket.double.append(op.text)
        elif isinstance(op, LineFeed):
            ticket.lines.append("".join(self._line))
            self._line = []
        elif isinstance(op, QrData):
            self._qr_data = op.data
        elif isinstance(op, QrPrint):
            ticket.qr.append(self._qr_data.decode("utf-8", "replace"))
        elif isinstance(op, Cut):
            if self._line:
                ticket.lines.append("".join(self._line))
                self._line = []
            ticket.cut = True
            self.tickets.append(ticket)
            self.current = PrintedTicket()
