"""An asyncio serial port that survives unplug/replug (USB adapters, RS-485 converters, ptys).

:class:`SerialLink` keeps a port open in the background: :meth:`SerialLink.open` starts a task
that opens the port, watches it and, when it goes away, reopens it with a doubling backoff
(``reopen_min_s`` … ``reopen_max_s``). Received bytes collect in a buffer that :meth:`read`
hands out. ``on_state(open, reason)`` is called on every open/closed transition, so a driver can
report its device online/offline.

Nothing blocking runs on the event loop: the port is opened in a worker thread, reads are driven
by ``loop.add_reader`` on the port's file descriptor (the callback only runs when bytes are
ready, so ``os.read`` returns at once) and writes go through a worker thread. The serial
device drivers (LED call display, ESC/POS printer, VISCA PTZ) use it through
:class:`device_drivers.serial_device.SerialDeviceDriver`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
from collections.abc import Callable
from typing import Any

import serial

log = logging.getLogger(__name__)

#: most bytes kept unread; older bytes are dropped (a device spewing garbage must not eat memory)
MAX_BUFFER = 64 * 1024


class SerialLinkClosed(ConnectionError):
    """The port is not open (unplugged, not yet opened, or closed)."""


class SerialLink:
    """One serial port, kept open in the background (see the module docstring)."""

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 9600,
        reopen_min_s: float = 0.5,
        reopen_max_s: float = 10.0,
        on_state: Callable[[bool, str], None] | None = None,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.reopen_min_s = reopen_min_s
        self.reopen_max_s = reopen_max_s
        self.on_state = on_state
        self._serial: Any = None  # serial.Serial while open
        self._fd = -1
        self._buffer = bytearray()
        self._data = asyncio.Event()  # set while the buffer has bytes (or the port was lost)
        self._opened = asyncio.Event()
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._task: asyncio.Task[None] | None = None
        self._reported: bool | None = None  # last state given to on_state

    # --- lifetime ------------------------------------------------------------------------
    async def open(self) -> None:
        """Start keeping the port open; returns at once (see :meth:`wait_open`)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._keep_open(), name=f"serial {self.port}")

    async def close(self) -> None:
        """Stop reopening and close the port."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._drop()

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    async def wait_open(self, timeout: float) -> bool:
        """True once the port is open; False when it is still closed after ``timeout`` s."""
        try:
            await asyncio.wait_for(self._opened.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _keep_open(self) -> None:
        delay = self.reopen_min_s
        while True:
            try:
                ser = await asyncio.to_thread(
                    serial.Serial, self.port, self.baudrate, timeout=0, write_timeout=2.0
                )
            except (serial.SerialException, OSError, ValueError) as exc:
                self._report(False, f"cannot open: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reopen_max_s)
                continue
            self._serial, self._fd = ser, ser.fileno()
            self._lost.clear()
            asyncio.get_running_loop().add_reader(self._fd, self._on_readable)
            self._opened.set()
            delay = self.reopen_min_s
            log.info("serial port open port=%s baud=%d", self.port, self.baudrate)
            self._report(True, "open")
            await self._lost.wait()
            reason = self._lost_reason or "lost"
            log.warning("serial port lost port=%s reason=%s", self.port, reason)
            self._drop()
            self._report(False, reason)
            await asyncio.sleep(delay)

    def _on_readable(self) -> None:
        """Called by the loop when the fd is readable: read what is there, never blocking."""
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO when a pty's other side or a USB adapter goes away
            self._lose(f"read failed: {exc}")
            return
        if not data:
            # pyserial's timeout=0 sets VMIN=0/VTIME=0, so a tty answers b"" when it woke the
            # loop with nothing to read — not an end of file. Only a hang-up (the other side
            # of a pty closed, a USB adapter gone) is; poll says which, without blocking.
            if _hung_up(self._fd):
                self._lose("hang-up")
            return
        self._buffer += data
        if len(self._buffer) > MAX_BUFFER:
            del self._buffer[: len(self._buffer) - MAX_BUFFER]
        self._data.set()

    def _lose(self, reason: str) -> None:
        self._lost_reason = reason
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
        self._lost.set()
        self._data.set()  # wake readers so they see the port is gone

    def _drop(self) -> None:
        ser, self._serial = self._serial, None
        if ser is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            with contextlib.suppress(Exception):
                ser.close()
        self._fd = -1
        self._opened.clear()
        self._buffer.clear()

    def _report(self, is_open: bool, reason: str) -> None:
        if self._reported == is_open:
            return
        self._reported = is_open
        if self.on_state is not None:
            try:
                self.on_state(is_open, reason)
            except Exception:
                log.exception("serial on_state callback failed port=%s", self.port)

    # --- data ----------------------------------------------------------------------------
    async def write(self, data: bytes) -> None:
        """Send ``data``; raises :class:`SerialLinkClosed` when the port is not open."""
        ser = self._serial
        if ser is None:
            raise SerialLinkClosed(f"serial port {self.port} is not open")
        try:
            await asyncio.to_thread(ser.write, data)
        except (serial.SerialException, OSError) as exc:
            if ser is self._serial:
                self._lose(f"write failed: {exc}")
            raise SerialLinkClosed(f"serial port {self.port}: write failed: {exc}") from None

    async def read(self, n: int = 4096, timeout: float = 0.1) -> bytes:
        """Up to ``n`` received bytes; ``b""`` when none came within ``timeout`` s.

        Raises :class:`SerialLinkClosed` when the port is not open (or goes away meanwhile).
        """
        if not self._buffer:
            if self._serial is None or self._lost.is_set():
                raise SerialLinkClosed(f"serial port {self.port} is not open")
            self._data.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._data.wait(), timeout)
            if not self._buffer:
                if self._serial is None or self._lost.is_set():
                    raise SerialLinkClosed(f"serial port {self.port} is not open")
                return b""
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def take_buffered(self) -> bytes:
        """Everything received and not yet read (without waiting)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def reset_input(self) -> None:
        """Drop everything received and not yet read."""
        self._buffer.clear()


def _hung_up(fd: int) -> bool:
    """True when the tty ``fd`` reports a hang-up or an error (``poll``, no waiting)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        events = poller.poll(0)
    except OSError:
        return True
    return any(mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _fd, mask in events)
