"""The common interface every device driver implements (like a Home Assistant integration).

A driver owns one device. It turns the device's bytes into typed state, telemetry and events
reported through a :class:`DeviceSink`, and turns typed commands into bytes. It knows nothing
about MQTT topics, the hub or venues; the edge agent wires it to the contract.

Life of a driver::

    driver = DRIVERS["kiosk_mqtt"](device_id, options)   # options validated here
    task = asyncio.create_task(driver.run(sink))          # runs until cancelled
    result = await driver.execute("show_message", {...})  # commands, any time

``run`` must survive the device going away (report ``offline``, retry with backoff) and never
raise for device trouble: bad bytes from a device are counted and reported, not thrown.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from protocol.messages import DeviceStatus


class DriverConfigError(ValueError):
    """A driver's options in the venue config are wrong; the message names the device and field."""


class CommandError(Exception):
    """A command failed; the message is shown to the user who sent it."""


class UnknownCommand(CommandError):
    """The device has no such capability."""


@dataclass(frozen=True)
class DeviceDescription:
    """What the agent's birth certificate says about the device."""

    kind: str
    model: str = ""
    firmware: str = ""
    capabilities: tuple[str, ...] = ()
    #: seconds between telemetry messages; the hub marks the device stale after 3 missed
    heartbeat_s: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)


class DeviceSink(abc.ABC):
    """Where a driver reports what its device does. Calls never block and never raise."""

    @abc.abstractmethod
    def set_state(self, state: DeviceStatus, reason: str = "") -> None:
        """The device is online, offline or in fault (with a human-readable reason)."""

    @abc.abstractmethod
    def telemetry(self, metrics: Mapping[str, float]) -> None:
        """Numbers sampled now; string states must be mapped to numeric codes by the driver."""

    @abc.abstractmethod
    def event(self, type: str, data: Mapping[str, Any]) -> None:
        """Something happened at the device (ticket requested, card read, paper low, ...)."""

    @abc.abstractmethod
    def describe(self, description: DeviceDescription) -> None:
        """The device told us more about itself (model, firmware); the agent re-announces it."""

    @abc.abstractmethod
    def bad_input(self, reason: str, detail: str) -> None:
        """The device sent bytes that do not follow its protocol (counted and logged)."""

    def audio(self, frame: bytes) -> None:  # noqa: B027 - optional: most devices have no audio
        """A live audio frame, encoded by :func:`protocol.audio.encode_frame` (callable from any
        thread). Live data: sent now or dropped and counted, never buffered. Sinks that carry no
        audio keep this default, which drops it."""


OptionsT = TypeVar("OptionsT", bound=msgspec.Struct)


class DeviceDriver(abc.ABC, Generic[OptionsT]):
    """Base class of all drivers. Subclasses set ``name``, ``Options`` and implement the rest."""

    #: the ``driver = "..."`` value in a venue config
    name: ClassVar[str]
    #: a msgspec Struct describing the driver's options (validated at construction)
    Options: ClassVar[type[msgspec.Struct]]

    def __init__(self, device_id: str, options: Mapping[str, Any]) -> None:
        self.device_id = device_id
        try:
            self.options: OptionsT = msgspec.convert(dict(options), self.Options)  # type: ignore[assignment]
        except msgspec.ValidationError as exc:
            raise DriverConfigError(f"device {device_id!r} ({self.name}): {exc}") from None

    @property
    @abc.abstractmethod
    def description(self) -> DeviceDescription:
        """Kind, model, firmware and capabilities, as known now."""

    @abc.abstractmethod
    async def run(self, sink: DeviceSink) -> None:
        """Talk to the device until cancelled, reporting through ``sink``."""

    @abc.abstractmethod
    async def execute(self, name: str, args: Mapping[str, Any]) -> Any:
        """Run a command (one of ``description.capabilities``); return a JSON-able result.

        Raises :class:`UnknownCommand` or :class:`CommandError` with a user-facing message.
        """
