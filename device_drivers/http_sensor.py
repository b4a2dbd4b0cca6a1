"""Driver for networked sensors that serve their readings as JSON over HTTP.

Building sensors (temperature/humidity/CO₂, UPS and power meters, door contacts) commonly answer
``GET {url}`` with one JSON object::

    {"model": "EM-300", "firmware": "1.4", "status": "ok",
     "readings": {"temperature_c": 22.5, "humidity_pct": 41.0, "co2_ppm": 640}}

``status`` may be ``"fault"`` with a ``fault`` reason. The driver polls every ``interval_s``,
reports numeric readings as telemetry (booleans as 1/0; anything else is dropped and counted as
bad input), and the state online / fault(reason). An unreachable sensor or an HTTP error makes
it offline and the poll interval doubles up to ``max_backoff_s`` until the sensor answers
again. ``identify`` asks the sensor to blink (``POST {url}/identify``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Final, Literal

import aiohttp
import msgspec

from device_drivers.base import (
    CommandError,
    DeviceDescription,
    DeviceDriver,
    DeviceSink,
    UnknownCommand,
)
from protocol.errors import BadMessage, BadReason
from protocol.messages import DeviceStatus

log = logging.getLogger(__name__)

#: A sensor's JSON answer is small; anything bigger is a wrong endpoint or a broken device.
MAX_BODY: Final = 64 * 1024
CAPABILITIES: Final = ("poll_now", "identify")


class HttpSensorOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[[devices]]`` options of an ``http_sensor`` device."""

    #: the sensor's JSON endpoint, e.g. ``http://10.1.2.3/sensors/env-1``
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/]+(/\S*)?$")]
    interval_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=120)] = 2.0
    #: longest wait between polls while the sensor is unreachable
    max_backoff_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    kind: str = "sensor"
    #: model to report until the sensor names its own
    model: str = ""


class SensorAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """What a sensor answers; unknown fields are ignored."""

    readings: dict[str, Any]
    model: str = ""
    firmware: str = ""
    status: Literal["ok", "fault"] = "ok"
    fault: str = ""


class _Unreachable(Exception):
    """The sensor did not answer, or answered with an HTTP error."""


def parse_answer(body: bytes) -> SensorAnswer:
    """Validate a sensor's HTTP body; raises only :class:`protocol.errors.BadMessage`."""
    if len(body) > MAX_BODY:
        raise BadMessage(BadReason.OVERSIZED, f"body larger than {MAX_BODY} bytes")
    try:
        return _DECODER.decode(body)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: catch it first
        raise BadMessage(BadReason.SCHEMA, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadMessage(BadReason.MALFORMED_JSON, str(exc)) from None


_DECODER: Final = msgspec.json.Decoder(SensorAnswer)


class HttpSensorDriver(DeviceDriver[HttpSensorOptions]):
    """One HTTP/JSON sensor, polled (see the module docstring)."""

    name: ClassVar[str] = "http_sensor"
    Options: ClassVar[type[msgspec.Struct]] = HttpSensorOptions

    def __init__(self, device_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(device_id, options)
        self._description = DeviceDescription(
            kind=self.options.kind,
            model=self.options.model,
            capabilities=CAPABILITIES,
            heartbeat_s=self.options.interval_s,
            extra={"url": self.options.url},
        )
        self._described = False
        self._session: aiohttp.ClientSession | None = None
        self._sink: DeviceSink | None = None
        self._state: tuple[DeviceStatus, str] | None = None
        self._wake = asyncio.Event()  # poll_now's success cuts a long backoff short
        self.failures = 0  # consecutive failed polls

    @property
    def description(self) -> DeviceDescription:
        """Kind from the options; model and firmware as the sensor last said."""
        return self._description

    # --- running -------------------------------------------------------------------------
    async def run(self, sink: DeviceSink) -> None:
        """Poll the sensor until cancelled; backs off while it is unreachable."""
        self._sink = sink
        timeout = aiohttp.ClientTimeout(total=self.options.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self._session = session
            log.info("http sensor polling device=%s url=%s", self.device_id, self.options.url)
            try:
                while True:
                    await self._poll_and_report()
                    while await self._sleep(self._next_delay()):
                        pass  # poll_now just polled: the interval starts over
            finally:
                self._session = None

    def _next_delay(self) -> float:
        """``interval_s`` while healthy; doubling per failed poll up to ``max_backoff_s``."""
        if self.failures == 0:
            return self.options.interval_s
        backoff: float = self.options.interval_s * 2.0 ** min(self.failures, 30)
        return min(backoff, self.options.max_backoff_s)

    async def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; True when :meth:`execute` ("poll_now") woke us up early."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _poll_and_report(self) -> dict[str, float] | None:
        """One poll, reported to the sink; the numeric readings, or None when it failed."""
        sink = self._sink
        assert sink is not None
        try:
            answer = await self._fetch()
        except _Unreachable as exc:
            self.failures += 1
            self._report_state(DeviceStatus.OFFLINE, str(exc))
            return None
        except BadMessage as exc:
            # the sensor is there but talks nonsense: no backoff, it may recover any time
            self.failures = 0
            sink.bad_input(exc.reason.value, exc.detail)
            self._report_state(DeviceStatus.FAULT, "bad response")
            return None
        self.failures = 0
        self._describe(sink, answer)
        readings = self._numeric_readings(sink, answer.readings)
        if readings:
            sink.telemetry(readings)
        if answer.status == "fault":
            self._report_state(DeviceStatus.FAULT, answer.fault or "sensor fault")
        else:
            self._report_state(DeviceStatus.ONLINE)
        return readings

    async def _fetch(self) -> SensorAnswer:
        session = self._require_session()
        try:
            async with session.get(self.options.url) as resp:
                if resp.status >= 400:
                    raise _Unreachable(f"HTTP {resp.status} {resp.reason or ''}".strip())
                body = await _read_limited(resp, MAX_BODY)
        except TimeoutError:
            raise _Unreachable(f"no answer within {self.options.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise _Unreachable(f"unreachable: {exc.__class__.__name__}: {exc}") from None
        if body is None:
            raise BadMessage(BadReason.OVERSIZED, f"body larger than {MAX_BODY} bytes")
        return parse_answer(body)

    def _numeric_readings(self, sink: DeviceSink, readings: Mapping[str, Any]) -> dict[str, float]:
        """Numbers pass (booleans as 1/0); every other value is dropped and counted."""
        numeric: dict[str, float] = {}
        for key, value in readings.items():
            if isinstance(value, bool):
                numeric[key] = 1.0 if value else 0.0
            elif isinstance(value, int | float):
                numeric[key] = float(value)
            else:
                sink.bad_input(
                    BadReason.SCHEMA.value,
                    f"reading {key[:64]!r} is not a number: {type(value).__name__}",
                )
        return numeric

    def _describe(self, sink: DeviceSink, answer: SensorAnswer) -> None:
        model = answer.model or self.options.model
        firmware = answer.firmware
        if self._described and (model, firmware) == (
            self._description.model,
            self._description.firmware,
        ):
            return
        self._described = True
        self._description = DeviceDescription(
            kind=self.options.kind,
            model=model,
            firmware=firmware,
            capabilities=CAPABILITIES,
            heartbeat_s=self.options.interval_s,
            extra={"url": self.options.url},
        )
        sink.describe(self._description)

    def _report_state(self, state: DeviceStatus, reason: str = "") -> None:
        if self._state == (state, reason):
            return
        self._state = (state, reason)
        log.info(
            "http sensor state device=%s state=%s reason=%r", self.device_id, state.value, reason
        )
        if self._sink is not None:
            self._sink.set_state(state, reason)

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise CommandError("sensor driver is not running")
        return self._session

    # --- commands ------------------------------------------------------------------------
    async def execute(self, name: str, args: Mapping[str, Any]) -> Any:
        """``poll_now`` returns the readings; ``identify`` makes the sensor blink."""
        if name == "poll_now":
            return await self._poll_now()
        if name == "identify":
            return await self._identify()
        raise UnknownCommand(f"sensor has no command {name!r} (has: {', '.join(CAPABILITIES)})")

    async def _poll_now(self) -> dict[str, Any]:
        self._require_session()
        readings = await self._poll_and_report()
        if readings is None:
            reason = self._state[1] if self._state else "no answer"
            raise CommandError(f"sensor did not give readings: {reason}")
        self._wake.set()  # the regular loop starts its interval over (and ends a backoff)
        return {"readings": readings}

    async def _identify(self) -> dict[str, Any]:
        session = self._require_session()
        url = self.options.url.rstrip("/") + "/identify"
        try:
            async with session.post(url) as resp:
                if resp.status >= 400:
                    raise CommandError(f"sensor refused identify: HTTP {resp.status}")
                body = await _read_limited(resp, MAX_BODY)
        except TimeoutError:
            raise CommandError(
                f"sensor did not answer within {self.options.timeout_s:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise CommandError(f"sensor unreachable: {exc}") from None
        answer: Any = None
        if body:
            with contextlib.suppress(msgspec.DecodeError):
                answer = msgspec.json.decode(body)
        return {"identified": True, "answer": answer}


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None when it is longer than ``limit`` (without reading it all)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(8192):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
