"""Driver for the hall's self-service kiosks, which speak their own MQTT protocol.

Protocol: ``shared/protocols/kiosk-mqtt.md`` (messages in :mod:`device_drivers.kiosk_messages`).
The driver keeps one MQTT connection to the kiosks' broker per kiosk, subscribes to
``kiosk/{id}/up`` and answers on ``kiosk/{id}/down``. It maps what the kiosk says onto the
:class:`DeviceSink` (state, telemetry, events) and turns the hub's commands into down messages.

Liveness: the kiosk's MQTT will (``{"type":"offline"}``) marks it offline at once; silence for
``offline_after_s`` (three missed 10 s status reports by default) does so as well. Any valid
message from the kiosk is proof of life and brings it back.

Idempotency at the edge: a kiosk repeats a request with the same ``request_id`` when it gets
no answer within 5 s, and must then get the *same* ticket, never a second one. The driver
remembers the answers it delivered (bounded LRU) and answers such repeats itself, so the hub's
queue never sees a duplicate request; a repeat of a request still unanswered is forwarded
again, flagged ``repeat``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Final

import msgspec

from device_drivers.base import (
    CommandError,
    DeviceDescription,
    DeviceDriver,
    DeviceSink,
    DriverConfigError,
    UnknownCommand,
)
from device_drivers.kiosk_messages import (
    CaseInfo,
    CaseQuery,
    DownMessage,
    ErrorReply,
    Hello,
    IdCard,
    Offline,
    PrintDone,
    PrintJob,
    ShowMessage,
    Status,
    Ticket,
    TicketRequest,
    UpMessage,
    down_topic,
    encode_down,
    parse_up,
    up_topic,
)
from protocol.errors import BadMessage
from protocol.messages import DeviceStatus
from protocol.mqtt_link import BrokerUrl, MqttLink, NotConnected, PublishRefused, Subscription

log = logging.getLogger(__name__)

#: The kiosk reports its status every 10 s (protocol).
STATUS_INTERVAL_S: Final = 10.0
#: ``paper_low`` fires once when paper falls below this, and re-arms above the second value
#: (hysteresis, so a sensor wobbling around 10 % does not repeat the event).
PAPER_LOW_PCT: Final = 10.0
PAPER_LOW_REARM_PCT: Final = 15.0
#: Printer states as numbers (telemetry carries numbers only).
PRINTER_CODES: Final = {"ok": 0, "jam": 1, "no_paper": 2}
#: How long a command waits for the broker to acknowledge the down message.
PUBLISH_TIMEOUT_S: Final = 10.0

#: command name -> the down message its arguments describe
COMMANDS: Final[Mapping[str, type[DownMessage]]] = {
    "send_ticket": Ticket,
    "send_case_info": CaseInfo,
    "print": PrintJob,
    "show_message": ShowMessage,
    "send_error": ErrorReply,
}
#: down messages that answer a kiosk request; they are remembered to answer repeats
_ANSWERS: Final = (Ticket, CaseInfo, ErrorReply)


class KioskMqttOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[[devices]]`` options of a ``kiosk_mqtt`` device."""

    #: the kiosks' broker, ``mqtt://host:port`` or ``mqtts://host:port?ca=...``
    broker_url: str
    #: the kiosk's own id, as in its topics ``kiosk/{kiosk_id}/up``
    kiosk_id: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9-]{1,64}$")]
    username: str | None = None
    password: str | None = None
    #: MQTT client id; default ``{username}-kiosk-{kiosk_id}``
    client_id: str = ""
    #: silence after which the kiosk counts as offline (three missed status reports)
    offline_after_s: Annotated[float, msgspec.Meta(gt=0)] = 35.0
    #: how many delivered answers (tickets, case infos, errors) are remembered for repeats
    ticket_cache: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1024

    def __repr__(self) -> str:
        """Like the default, without the password (options end up in logs and tracebacks)."""
        shown = msgspec.structs.asdict(self)
        if self.password:
            shown["password"] = "***"
        shown["broker_url"] = re.sub(r"://[^@/]*@", "://***@", self.broker_url)
        fields = ", ".join(f"{name}={value!r}" for name, value in shown.items())
        return f"{type(self).__name__}({fields})"


class _Lru:
    """A bounded mapping that forgets the least recently used entry first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, DownMessage] = OrderedDict()

    def get(self, key: str) -> DownMessage | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: str, value: DownMessage) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def pop(self, key: str) -> None:
        self._items.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._items


class KioskMqttDriver(DeviceDriver[KioskMqttOptions]):
    """One self-service kiosk reached over MQTT (see the module docstring)."""

    name: ClassVar[str] = "kiosk_mqtt"
    Options: ClassVar[type[msgspec.Struct]] = KioskMqttOptions

    def __init__(self, device_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(device_id, options)
        try:
            self._url = BrokerUrl.parse(self.options.broker_url)
        except ValueError as exc:
            raise DriverConfigError(f"device {device_id!r} ({self.name}): {exc}") from None
        user = self.options.username or self._url.username or "courthub"
        self._client_id = self.options.client_id or f"{user}-kiosk-{self.options.kiosk_id}"
        self._up = up_topic(self.options.kiosk_id)
        self._down = down_topic(self.options.kiosk_id)
        self._description = DeviceDescription(
            kind="kiosk",
            capabilities=tuple(COMMANDS),
            heartbeat_s=STATUS_INTERVAL_S,
            extra={"kiosk_id": self.options.kiosk_id},
        )
        self._described = False
        self._link: MqttLink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink: DeviceSink | None = None
        # what we last reported, so the sink only hears about changes
        self._state: tuple[DeviceStatus, str] | None = None
        self._fault = ""  # fault reason from the last status ("" = healthy)
        self._last_heard: float | None = None  # loop time of the last valid message
        self._paper_low = False
        self._answers = _Lru(self.options.ticket_cache)
        self._pending: OrderedDict[str, None] = OrderedDict()  # forwarded, not yet answered
        self.repeat_requests = 0
        self.answers_resent = 0

    @property
    def description(self) -> DeviceDescription:
        """Kind ``kiosk``; model, firmware and services as the last ``hello`` said."""
        return self._description

    # --- running -------------------------------------------------------------------------
    async def run(self, sink: DeviceSink) -> None:
        """Connect to the kiosks' broker and serve the kiosk until cancelled."""
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._report_state(DeviceStatus.OFFLINE, "connecting to kiosk broker")
        link = MqttLink(
            self._url,
            client_id=self._client_id,
            username=self.options.username,
            password=self.options.password,
            subscriptions=[Subscription(self._up, qos=1)],
            on_message=self._on_mqtt_message,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
        )
        self._link = link
        log.info(
            "kiosk driver starting device=%s kiosk=%s broker=%s",
            self.device_id,
            self.options.kiosk_id,
            self._url,
        )
        await link.start()
        try:
            await self._watch_liveness()
        finally:
            self._link = None
            await link.stop()

    async def _watch_liveness(self) -> None:
        """Mark the kiosk offline when it falls silent, or the broker stays out of reach."""
        assert self._loop is not None
        started = self._loop.time()
        tick = min(1.0, self.options.offline_after_s / 4)
        while True:
            await asyncio.sleep(tick)
            now = self._loop.time()
            link = self._link
            if link is None or not link.connected:
                if now - started > self.options.offline_after_s:
                    self._report_state(DeviceStatus.OFFLINE, "kiosk broker unreachable")
                continue
            if (
                self._last_heard is not None
                and now - self._last_heard > self.options.offline_after_s
            ):
                self._last_heard = None
                log.warning(
                    "kiosk silent device=%s kiosk=%s after_s=%g",
                    self.device_id,
                    self.options.kiosk_id,
                    self.options.offline_after_s,
                )
                self._report_state(
                    DeviceStatus.OFFLINE,
                    f"no message from kiosk for {self.options.offline_after_s:g} s",
                )

    def _on_connect(self) -> None:
        if self._last_heard is None:
            self._report_state(DeviceStatus.OFFLINE, "waiting for kiosk")

    def _on_disconnect(self, reason: str) -> None:
        self._last_heard = None
        self._report_state(DeviceStatus.OFFLINE, "kiosk broker unreachable")

    def _on_mqtt_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """paho's network thread: hop onto the loop, where all driver state lives."""
        loop = self._loop
        if topic != self._up or loop is None:
            return
        if retained:
            # the protocol retains nothing: a retained message is a stale leftover (e.g. a
            # firmware that retains its will) and says nothing about the kiosk now
            log.debug("ignoring retained kiosk message device=%s", self.device_id)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed while a message was in flight
            loop.call_soon_threadsafe(self._handle_payload, payload)

    # --- kiosk -> driver -----------------------------------------------------------------
    def _handle_payload(self, payload: bytes) -> None:
        sink = self._sink
        if sink is None:
            return
        try:
            msg = parse_up(payload)
        except BadMessage as exc:
            log.debug("bad kiosk payload device=%s reason=%s", self.device_id, exc.reason)
            sink.bad_input(exc.reason.value, exc.detail)
            return
        if isinstance(msg, Offline):
            self._on_offline()
            return
        assert self._loop is not None
        self._last_heard = self._loop.time()
        self._dispatch(sink, msg)
        if self._state is not None and self._state[0] == DeviceStatus.OFFLINE:
            # any valid message is proof of life: bring back a kiosk we had given up on
            self._report_health()

    def _dispatch(self, sink: DeviceSink, msg: UpMessage) -> None:
        if isinstance(msg, Hello):
            self._on_hello(sink, msg)
        elif isinstance(msg, Status):
            self._on_status(sink, msg)
        elif isinstance(msg, TicketRequest | CaseQuery):
            self._on_request(sink, msg)
        elif isinstance(msg, IdCard):
            # only the hash and the masked name exist here: the raw number never leaves the kiosk
            sink.event("id_card", {"id_hash": msg.id_hash, "name_masked": msg.name_masked})
        elif isinstance(msg, PrintDone):
            data: dict[str, Any] = {"request_id": msg.request_id, "ok": msg.ok}
            if msg.error is not None:
                data["error"] = msg.error
            sink.event("print_done", data)

    def _on_offline(self) -> None:
        log.info("kiosk offline (will) device=%s kiosk=%s", self.device_id, self.options.kiosk_id)
        self._last_heard = None
        self._report_state(DeviceStatus.OFFLINE, "kiosk offline")

    def _on_hello(self, sink: DeviceSink, msg: Hello) -> None:
        log.info(
            "kiosk hello device=%s kiosk=%s model=%s firmware=%s services=%s",
            self.device_id,
            self.options.kiosk_id,
            msg.model,
            msg.firmware,
            ",".join(msg.services),
        )
        description = DeviceDescription(
            kind="kiosk",
            model=msg.model,
            firmware=msg.firmware,
            capabilities=tuple(COMMANDS),
            heartbeat_s=STATUS_INTERVAL_S,
            extra={"kiosk_id": self.options.kiosk_id, "services": list(msg.services)},
        )
        if description != self._description or not self._described:
            self._described = True
            self._description = description
            sink.describe(description)
        # a (re)started kiosk: its next status report tells us about faults again
        self._fault = ""
        self._report_state(DeviceStatus.ONLINE)
        sink.event("hello", {"services": list(msg.services)})

    def _on_status(self, sink: DeviceSink, msg: Status) -> None:
        sink.telemetry(
            {
                "paper_pct": msg.paper_pct,
                "printer_code": PRINTER_CODES[msg.printer],
                "card_reader_ok": 1 if msg.card_reader == "ok" else 0,
                "cpu_temp_c": msg.cpu_temp_c,
                "uptime_s": msg.uptime_s,
                "repeat_requests": self.repeat_requests,
                "answers_resent": self.answers_resent,
            }
        )
        self._check_paper(sink, msg.paper_pct)
        self._fault = _fault_reason(msg)
        self._report_health()

    def _check_paper(self, sink: DeviceSink, paper_pct: float) -> None:
        if not self._paper_low and paper_pct < PAPER_LOW_PCT:
            self._paper_low = True
            sink.event("paper_low", {"paper_pct": paper_pct})
        elif self._paper_low and paper_pct >= PAPER_LOW_REARM_PCT:
            self._paper_low = False  # refilled: the next fall below 10 % is news again

    def _on_request(self, sink: DeviceSink, msg: TicketRequest | CaseQuery) -> None:
        """Forward a new request; answer a repeat of an answered one from the cache."""
        rid = msg.request_id
        answer = self._answers.get(rid)
        repeat = answer is not None or rid in self._pending
        if repeat:
            self.repeat_requests += 1
        if answer is not None:
            self.answers_resent += 1
            log.info(
                "kiosk repeated an answered request device=%s request_id=%s; re-sending %s",
                self.device_id,
                rid,
                type(answer).__name__,
            )
            self._publish_now(answer)
            sink.telemetry(
                {"repeat_requests": self.repeat_requests, "answers_resent": self.answers_resent}
            )
            return
        self._remember_pending(rid)
        data = _request_event(msg)
        if repeat:
            data["repeat"] = True
            sink.telemetry(
                {"repeat_requests": self.repeat_requests, "answers_resent": self.answers_resent}
            )
        sink.event("ticket_request" if isinstance(msg, TicketRequest) else "case_query", data)

    def _remember_pending(self, request_id: str) -> None:
        self._pending[request_id] = None
        self._pending.move_to_end(request_id)
        while len(self._pending) > self.options.ticket_cache:
            self._pending.popitem(last=False)

    # --- state ---------------------------------------------------------------------------
    def _report_health(self) -> None:
        """Online, or fault with the reason from the last status report."""
        if self._fault:
            self._report_state(DeviceStatus.FAULT, self._fault)
        else:
            self._report_state(DeviceStatus.ONLINE)

    def _report_state(self, state: DeviceStatus, reason: str = "") -> None:
        if self._state == (state, reason):
            return
        self._state = (state, reason)
        log.info(
            "kiosk state device=%s kiosk=%s state=%s reason=%r",
            self.device_id,
            self.options.kiosk_id,
            state.value,
            reason,
        )
        if self._sink is not None:
            self._sink.set_state(state, reason)

    # --- commands ------------------------------------------------------------------------
    async def execute(self, name: str, args: Mapping[str, Any]) -> Any:
        """Send one of :data:`COMMANDS` to the kiosk; returns what was sent."""
        cls = COMMANDS.get(name)
        if cls is None:
            raise UnknownCommand(f"kiosk has no command {name!r} (has: {', '.join(COMMANDS)})")
        msg = _convert_args(name, args, cls)
        if isinstance(msg, Ticket):
            self._check_second_ticket(msg)
        if isinstance(msg, _ANSWERS):
            # remembered before publishing: if this send fails, the kiosk's repeat after the
            # link recovers still gets this answer, never a new one
            self._answers.put(msg.request_id, msg)
            self._pending.pop(msg.request_id, None)
        await self._publish_acked(msg)
        result: dict[str, Any] = {"sent": name, "kiosk_online": self._kiosk_online()}
        request_id = getattr(msg, "request_id", None)
        if request_id is not None:
            result["request_id"] = request_id
        return result

    def _check_second_ticket(self, ticket: Ticket) -> None:
        previous = self._answers.get(ticket.request_id)
        if isinstance(previous, Ticket) and previous.number != ticket.number:
            raise CommandError(
                f"request {ticket.request_id} already got ticket {previous.number}; "
                f"a second ticket ({ticket.number}) is never sent"
            )

    def _kiosk_online(self) -> bool:
        return self._state is not None and self._state[0] != DeviceStatus.OFFLINE

    async def _publish_acked(self, msg: DownMessage) -> None:
        link = self._link
        if link is None:
            raise CommandError("kiosk driver is not running")
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await link.publish_acked(self._down, encode_down(msg), qos=1)
        except PublishRefused as exc:
            raise CommandError(f"kiosk broker refused the message: {exc.reason}") from None
        except (ConnectionError, TimeoutError) as exc:
            raise CommandError(f"kiosk broker unreachable: {exc}") from None

    def _publish_now(self, msg: DownMessage) -> None:
        """Queue a down message without waiting (used from the receive path)."""
        link = self._link
        if link is None:
            return
        try:
            link.publish(self._down, encode_down(msg), qos=1)
        except (NotConnected, ConnectionError) as exc:
            log.warning("kiosk re-send failed device=%s error=%s", self.device_id, exc)


def _fault_reason(msg: Status) -> str:
    """The human-readable fault of a status report ("" when all is well)."""
    reasons = []
    if msg.printer == "jam":
        reasons.append("printer jam")
    elif msg.printer == "no_paper":
        reasons.append("paper out")
    if msg.card_reader == "fault":
        reasons.append("card reader fault")
    return ", ".join(reasons)


def _request_event(msg: TicketRequest | CaseQuery) -> dict[str, Any]:
    if isinstance(msg, CaseQuery):
        return {"request_id": msg.request_id, "case_no": msg.case_no}
    data: dict[str, Any] = {
        "request_id": msg.request_id,
        "service": msg.service,
        "priority": msg.priority,
    }
    if msg.id_hash is not None:
        data["id_hash"] = msg.id_hash
    return data


def _convert_args(name: str, args: Mapping[str, Any], cls: type[DownMessage]) -> DownMessage:
    """Validate a command's arguments into the down message they describe."""
    if not isinstance(args, Mapping):
        raise CommandError(f"{name}: arguments must be an object")
    fields = set(cls.__struct_fields__)
    unknown = sorted(set(args) - fields)
    if unknown:
        raise CommandError(
            f"{name}: unknown argument(s) {', '.join(unknown)} (allowed: {', '.join(sorted(fields))})"
        )
    try:
        return msgspec.convert(dict(args), cls)
    except msgspec.ValidationError as exc:
        raise CommandError(f"{name}: {exc}") from None
