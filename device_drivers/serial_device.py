"""What every driver of a device on a serial port shares: options, the run loop, state reports.

:class:`SerialPortOptions` holds the options every serial device has (``port``, ``baudrate``,
the reopen backoff, ``reply_timeout_s``); a driver's own options subclass it.
:class:`SerialDeviceDriver` runs the device: :meth:`~SerialDeviceDriver.run` connects (by
default a :class:`~device_drivers.serial_link.SerialLink` of its own; a driver on a shared bus
overrides :meth:`~SerialDeviceDriver._connect`), waits briefly for the port, then polls the
device every :attr:`~SerialDeviceDriver.poll_interval_s` and at once whenever the port comes
back. The port going away makes the device ``offline``; states are reported only when they
change; bad bytes from the device go to the sink's bad-input counter. A driver's incremental
decoder keeps what it had to skip in a :class:`ProblemLog` for the driver to report.

Used by the LED call display, ESC/POS printer and VISCA PTZ drivers.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import msgspec

from device_drivers.base import DeviceDescription, DeviceDriver, DeviceSink
from device_drivers.serial_link import SerialLink
from protocol.errors import BadMessage
from protocol.messages import DeviceStatus

ProblemT = TypeVar("ProblemT", bound=BadMessage)


class ProblemLog(Generic[ProblemT]):
    """What an incremental decoder skipped: :attr:`bad_count` and the :attr:`problems` to report.

    At most :attr:`MAX_KEPT` problems are kept until :meth:`take_problems` drains them (a flood
    of garbage must not grow memory); :attr:`bad_count` counts them all.
    """

    MAX_KEPT: ClassVar[int] = 100

    def __init__(self) -> None:
        self.problems: list[ProblemT] = []
        self.bad_count = 0

    def take_problems(self) -> list[ProblemT]:
        """The problems kept so far; the log starts empty again."""
        problems, self.problems = self.problems, []
        return problems

    def _problem(self, error: ProblemT) -> None:
        self.bad_count += 1
        if len(self.problems) < self.MAX_KEPT:
            self.problems.append(error)


class SerialPortOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``[[devices]]`` options of every serial device (drivers subclass this)."""

    #: serial port path, e.g. ``/dev/ttyUSB0`` or ``/dev/serial/by-id/...``
    port: Annotated[str, msgspec.Meta(min_length=1)]
    baudrate: Annotated[int, msgspec.Meta(gt=0)] = 9600
    #: how long to wait for the device's reply
    reply_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=10)] = 0.5
    #: first and longest wait before reopening a lost port (the wait doubles in between)
    reopen_min_s: Annotated[float, msgspec.Meta(gt=0)] = 0.5
    reopen_max_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0


SerialOptionsT = TypeVar("SerialOptionsT", bound=SerialPortOptions)


class SerialDeviceDriver(DeviceDriver[SerialOptionsT]):
    """Base of the drivers of one device on a serial port (see the module docstring).

    Subclasses set :attr:`label` and ``_description`` and implement :attr:`poll_interval_s`
    and :meth:`_poll`.
    """

    #: how log lines name the device kind, e.g. ``"escpos printer"``
    label: ClassVar[str] = "serial device"
    _description: DeviceDescription

    def __init__(self, device_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(device_id, options)
        # log under the driver's own module, so a log filter on e.g. device_drivers.visca
        # keeps seeing its driver's lines
        self._log = logging.getLogger(type(self).__module__)
        self._sink: DeviceSink | None = None
        #: the driver's own port while :meth:`run` runs (None on a shared bus)
        self._link: SerialLink | None = None
        #: the last state reported, with its reason
        self._state: tuple[DeviceStatus, str] | None = None
        self._wake = asyncio.Event()

    @property
    def description(self) -> DeviceDescription:
        return self._description

    @property
    @abc.abstractmethod
    def poll_interval_s(self) -> float:
        """Seconds between two polls of the device's status."""

    @abc.abstractmethod
    async def _poll(self) -> object:
        """Ask the device how it is and report it; must not raise for device trouble."""

    # --- running -------------------------------------------------------------------------
    async def run(self, sink: DeviceSink) -> None:
        """Poll the device until cancelled; the link reopens a lost port by itself."""
        self._sink = sink
        async with self._connect() as link:
            self._log.info("%s device=%s %s", self.label, self.device_id, self._where())
            await link.wait_open(min(self.options.reply_timeout_s * 5, 1.0))
            while True:
                await self._poll()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[SerialLink]:
        """A :class:`SerialLink` of the driver's own on ``options.port``, closed at the end."""
        opts = self.options
        link = SerialLink(
            opts.port,
            baudrate=opts.baudrate,
            reopen_min_s=opts.reopen_min_s,
            reopen_max_s=opts.reopen_max_s,
            on_state=self._on_link_state,
        )
        self._link = link
        await link.open()
        try:
            yield link
        finally:
            self._link = None
            await link.close()

    def _where(self) -> str:
        """``key=value`` context naming the device on the wire, for log lines."""
        return f"port={self.options.port}"

    def _on_link_state(self, is_open: bool, reason: str) -> None:
        if is_open:
            self._wake.set()  # poll at once: the device may be back
        else:
            self._went_offline(f"serial port {self.options.port}: {reason}")

    def _went_offline(self, reason: str) -> None:
        """The port is gone or the device does not answer."""
        self._report_state(DeviceStatus.OFFLINE, reason)

    # --- reporting -----------------------------------------------------------------------
    def _report_state(self, state: DeviceStatus, reason: str = "") -> None:
        """Report ``state`` to the sink unless it is the one reported last."""
        if self._state == (state, reason):
            return
        self._state = (state, reason)
        self._log.info(
            "%s state device=%s state=%s reason=%r", self.label, self.device_id, state, reason
        )
        if self._sink is not None:
            self._sink.set_state(state, reason)

    def _bad_input(self, error: BadMessage) -> None:
        """The device sent bytes that break its protocol: the sink counts and logs them."""
        if self._sink is not None:
            self._sink.bad_input(error.reason.value, error.detail)
