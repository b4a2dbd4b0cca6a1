"""A simulated self-service kiosk speaking the kiosk MQTT protocol (``kiosk-mqtt.md``).

It behaves like the real firmware: ``hello`` on every (re)connect, ``status`` every
``status_interval_s``, litigants arriving as a Poisson process per service (some elderly or
disabled, some reading their ID card first), case look-ups, ticket printing that uses paper,
random printer jams that a clerk clears later, and a repeat of every request that gets no answer
within ``answer_timeout_s`` (same ``request_id``). Its MQTT will is ``{"type":"offline"}``.

It records everything it received (:attr:`SimulatedKiosk.tickets` by request id) so tests can
check "the same ticket, never a second one", and offers fault injection: :meth:`drop` (vanish
without DISCONNECT, so the broker fires the will), :meth:`reconnect`, :meth:`send_garbage`,
:meth:`jam_printer`, :meth:`run_out_of_paper`, :meth:`card_reader_fault`.

It uses paho directly (MQTT 3.1.1, one fresh client per connection) rather than
:class:`protocol.mqtt_link.MqttLink`, because a kiosk must be able to vanish and stay away,
which an auto-reconnecting link cannot do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import socket
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from device_drivers.kiosk_messages import (
    OFFLINE_WILL,
    CaseInfo,
    CaseQuery,
    DownMessage,
    ErrorReply,
    Hello,
    IdCard,
    PrintDone,
    PrintJob,
    Priority,
    ShowMessage,
    Status,
    Ticket,
    TicketRequest,
    UpMessage,
    down_topic,
    encode_up,
    parse_down,
    up_topic,
)
from protocol.errors import BadMessage
from protocol.mqtt_link import BrokerUrl

log = logging.getLogger(__name__)

#: how many received messages and sent messages are kept for inspection
HISTORY: Final = 10_000

GarbageKind = Literal["not_json", "not_object", "unknown_type", "wrong_schema", "oversized"]
_GARBAGE: Final[Mapping[str, bytes]] = {
    "not_json": b"\x00\xffPRINTER READY\r\n{",
    "not_object": b'["hello", 1, 2]',
    "unknown_type": b'{"type":"self_destruct","in_s":3}',
    "wrong_schema": b'{"type":"status","paper_pct":"lots","printer":"on fire"}',
    "oversized": b'{"type":"hello","model":"' + b"x" * 40_000 + b'"}',
}
_SURNAMES: Final = ("张", "王", "李", "赵", "刘", "陈", "杨", "黄", "周", "吴", "欧阳", "司马")
_CASE_KINDS: Final = ("民初", "民终", "执", "执保", "刑初", "行初", "商初")


@dataclass(frozen=True)
class KioskProfile:
    """How a simulated kiosk behaves; the defaults look like a quiet morning in a real hall."""

    model: str = "CH-K300"
    firmware: str = "3.2.1"
    #: litigants per minute asking for a ticket, by service (Poisson arrivals)
    arrivals_per_min: Mapping[str, float] = field(
        default_factory=lambda: {"filing": 1.0, "consult": 1.5, "payment": 0.5, "materials": 0.5}
    )
    #: case look-ups per minute
    case_queries_per_min: float = 0.5
    #: share of ticket requests preceded by an ID card read (the request then carries id_hash)
    id_card_share: float = 0.6
    elderly_share: float = 0.12
    disabled_share: float = 0.04
    status_interval_s: float = 10.0
    #: the protocol's "no answer in 5 s -> repeat with the same request_id"
    answer_timeout_s: float = 5.0
    #: repeats before the litigant gives up and walks away
    max_repeats: int = 3
    court_code: str = "京0105"
    paper_pct: float = 100.0
    paper_per_ticket_pct: float = 0.5
    paper_per_line_pct: float = 0.05
    #: chance that a print jams the printer, and how long until a clerk clears it
    jam_probability: float = 0.005
    jam_clear_s: float = 120.0
    #: a clerk refills paper this long after it ran out (None: never by itself)
    refill_after_s: float | None = None
    keepalive_s: int = 10
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 30.0


@dataclass
class _Pending:
    """A request that has not been answered yet."""

    msg: TicketRequest | CaseQuery
    last_sent: float
    repeats: int = 0


class SimulatedKiosk:
    """A fake kiosk on an MQTT broker (see the module docstring)."""

    def __init__(
        self,
        broker_url: BrokerUrl | str,
        *,
        kiosk_id: str = "k1",
        username: str | None = None,
        password: str | None = None,
        profile: KioskProfile | None = None,
        seed: int | None = None,
        client_id: str | None = None,
    ) -> None:
        self.url = broker_url if isinstance(broker_url, BrokerUrl) else BrokerUrl.parse(broker_url)
        self.kiosk_id = kiosk_id
        self.profile = profile or KioskProfile()
        self._username = username if username is not None else self.url.username
        self._password = password if password is not None else self.url.password
        self._client_id = client_id or f"kiosk-{kiosk_id}"
        self._rng = random.Random(seed)
        self._up = up_topic(kiosk_id)
        self._down = down_topic(kiosk_id)
        # device state
        self.paper_pct = self.profile.paper_pct
        self.printer: Literal["ok", "jam", "no_paper"] = "ok" if self.paper_pct > 0 else "no_paper"
        self.card_reader: Literal["ok", "fault"] = "ok"
        self._cpu_temp = 45.0
        self._boot = 0.0
        # what happened, for tests and the scenario runner
        self.sent: deque[UpMessage] = deque(maxlen=HISTORY)
        self.received: deque[DownMessage] = deque(maxlen=HISTORY)
        self.tickets: OrderedDict[str, list[Ticket]] = OrderedDict()
        self.stats: Counter[str] = Counter()
        self.pending: dict[str, _Pending] = {}
        # connection
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None
        self._closed = asyncio.Event()
        self._connected = asyncio.Event()
        self._want_online = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Power on: connect (retrying) and start the kiosk's behaviour loops."""
        self._loop = asyncio.get_running_loop()
        self._boot = self._loop.time()
        self._want_online.set()
        self._tasks = [
            asyncio.create_task(self._supervise(), name=f"kiosk-{self.kiosk_id}-mqtt"),
            asyncio.create_task(self._status_loop(), name=f"kiosk-{self.kiosk_id}-status"),
            asyncio.create_task(self._arrivals_loop(), name=f"kiosk-{self.kiosk_id}-arrivals"),
            asyncio.create_task(self._retry_loop(), name=f"kiosk-{self.kiosk_id}-retry"),
        ]
        log.info("simulated kiosk started kiosk=%s broker=%s", self.kiosk_id, self.url)

    async def stop(self) -> None:
        """Power off gracefully: say ``offline`` ourselves, then disconnect (no will)."""
        self._want_online.clear()
        supervisor, behaviour = self._tasks[:1], self._tasks[1:]
        await _cancel(behaviour)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        client = self._client
        if client is not None:
            if self.connected:
                info = client.publish(self._up, OFFLINE_WILL, qos=1)
                with contextlib.suppress(RuntimeError, ValueError):
                    await asyncio.to_thread(info.wait_for_publish, 1.0)
            client.disconnect()  # a clean DISCONNECT: the broker discards the will
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), 2.0)
        await _cancel(supervisor)
        self._tasks = []
        self._client = None
        self._connected.clear()
        log.info("simulated kiosk stopped kiosk=%s", self.kiosk_id)

    @property
    def connected(self) -> bool:
        """True while the kiosk has a broker session."""
        return self._connected.is_set()

    async def wait_connected(self, timeout: float = 5.0) -> bool:
        """Wait until connected; False on timeout."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # --- fault injection -----------------------------------------------------------------
    async def drop(self) -> None:
        """Vanish like a kiosk whose cable was pulled: the socket closes without DISCONNECT,
        so the broker publishes the will. The kiosk stays away until :meth:`reconnect`."""
        self._want_online.clear()
        client = self._client
        if client is None:
            return
        sock = client.socket()
        if not self.connected or not isinstance(sock, socket.socket):
            client.disconnect()  # still connecting: just stop trying
            self._closed.set()
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        # paho sees the dead socket and its thread ends (no auto-reconnect: see _new_client)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), 5.0)
        log.info("simulated kiosk dropped kiosk=%s", self.kiosk_id)

    async def reconnect(self, timeout: float = 5.0) -> bool:
        """Come back after :meth:`drop` (or force a new session); True once connected."""
        if self._want_online.is_set() and self._client is not None:
            await self.drop()
        self._want_online.set()
        return await self.wait_connected(timeout)

    def send_garbage(self, kind: GarbageKind = "not_json") -> bytes:
        """Publish a payload that breaks the protocol; returns what was sent."""
        payload = _GARBAGE[kind]
        self.publish_raw(payload)
        self.stats["garbage_sent"] += 1
        return payload

    def publish_raw(self, payload: bytes, retain: bool = False) -> bool:
        """Publish arbitrary bytes on the kiosk's up topic; False when not connected."""
        client = self._client
        if client is None or not self.connected:
            return False
        client.publish(self._up, payload, qos=1, retain=retain)
        return True

    def jam_printer(self, clear_after_s: float | None = None) -> None:
        """Jam the printer; it clears after ``clear_after_s`` (default: the profile's)."""
        self.printer = "jam"
        self.stats["jams"] += 1
        delay = self.profile.jam_clear_s if clear_after_s is None else clear_after_s
        self._schedule("jam", delay, self.clear_jam)

    def clear_jam(self) -> None:
        """A clerk opened the printer and cleared the jam."""
        if self.printer == "jam":
            self.printer = "ok" if self.paper_pct > 0 else "no_paper"

    def run_out_of_paper(self) -> None:
        """The paper roll is empty."""
        self.paper_pct = 0.0
        if self.printer == "ok":
            self.printer = "no_paper"
        if self.profile.refill_after_s is not None:
            self._schedule("refill", self.profile.refill_after_s, self.refill)

    def refill(self, paper_pct: float = 100.0) -> None:
        """A clerk put in a new roll."""
        self.paper_pct = paper_pct
        if self.printer == "no_paper":
            self.printer = "ok"

    def card_reader_fault(self, broken: bool = True) -> None:
        """Break (or repair) the ID card reader."""
        self.card_reader = "fault" if broken else "ok"

    # --- litigant actions (also driven by the Poisson arrivals) ----------------------------
    def request_ticket(
        self, service: str, priority: Priority = "normal", id_hash: str | None = None
    ) -> str:
        """A litigant taps "take a ticket"; returns the request id (retried until answered)."""
        msg = TicketRequest(
            request_id=self._new_request_id(),
            service=service,
            priority=priority,
            id_hash=id_hash,
        )
        self._send_request(msg)
        return msg.request_id

    def query_case(self, case_no: str | None = None) -> str:
        """A litigant looks up a case; returns the request id."""
        msg = CaseQuery(request_id=self._new_request_id(), case_no=case_no or self._case_no())
        self._send_request(msg)
        return msg.request_id

    def read_id_card(self) -> IdCard | None:
        """A litigant puts an ID card on the reader; None when the reader is broken."""
        if self.card_reader != "ok":
            self.stats["card_read_failures"] += 1
            return None
        raw_number = "".join(str(self._rng.randint(0, 9)) for _ in range(17)) + "X"
        surname = self._rng.choice(_SURNAMES)
        msg = IdCard(
            # the raw number is hashed here and never leaves the kiosk
            id_hash=hashlib.sha256(f"courthub-demo-salt:{raw_number}".encode()).hexdigest(),
            name_masked=surname + "*" * self._rng.randint(1, 2),
        )
        self._publish(msg)
        return msg

    def send_hello(self) -> None:
        """Announce the kiosk (sent by itself on every connect)."""
        self._publish(
            Hello(
                model=self.profile.model,
                firmware=self.profile.firmware,
                services=list(self.profile.arrivals_per_min),
            )
        )

    def send_status(self) -> Status:
        """Report status now (also sent by itself every ``status_interval_s``)."""
        msg = self.status()
        self._publish(msg)
        return msg

    def status(self) -> Status:
        """The kiosk's health as a status message."""
        loop = self._loop
        uptime = loop.time() - self._boot if loop is not None else 0.0
        self._cpu_temp = min(90.0, max(35.0, self._cpu_temp + self._rng.gauss(0, 0.4)))
        return Status(
            paper_pct=round(max(0.0, self.paper_pct), 1),
            printer=self.printer,
            card_reader=self.card_reader,
            cpu_temp_c=round(self._cpu_temp, 1),
            uptime_s=round(uptime, 1),
        )

    # --- behaviour loops -----------------------------------------------------------------
    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.profile.status_interval_s)
            self.send_status()

    async def _arrivals_loop(self) -> None:
        """Superposed Poisson processes: one per service, plus case look-ups."""
        kinds = [k for k, r in self.profile.arrivals_per_min.items() if r > 0]
        weights = [self.profile.arrivals_per_min[k] for k in kinds]
        if self.profile.case_queries_per_min > 0:
            kinds.append("")  # "" stands for a case look-up
            weights.append(self.profile.case_queries_per_min)
        total_per_s = sum(weights) / 60.0
        if total_per_s <= 0:
            return
        while True:
            await asyncio.sleep(self._rng.expovariate(total_per_s))
            kind = self._rng.choices(kinds, weights)[0]
            if not self.connected:
                self.stats["turned_away"] += 1  # the screen says "network error"
            elif kind:
                self._litigant_wants_ticket(kind)
            else:
                self.query_case()

    def _litigant_wants_ticket(self, service: str) -> None:
        id_hash = None
        if self._rng.random() < self.profile.id_card_share:
            card = self.read_id_card()
            id_hash = card.id_hash if card is not None else None
        roll = self._rng.random()
        priority: Priority = "normal"
        if roll < self.profile.disabled_share:
            priority = "disabled"
        elif roll < self.profile.disabled_share + self.profile.elderly_share:
            priority = "elderly"
        self.request_ticket(service, priority, id_hash)

    async def _retry_loop(self) -> None:
        """Repeat unanswered requests with the same request_id, as the firmware does."""
        timeout = self.profile.answer_timeout_s
        while True:
            await asyncio.sleep(min(0.25, timeout / 5))
            if not self.connected:
                continue
            now = self._now()
            for rid, pending in list(self.pending.items()):
                if now - pending.last_sent < timeout:
                    continue
                if pending.repeats >= self.profile.max_repeats:
                    del self.pending[rid]
                    self.stats["abandoned"] += 1
                    log.info("litigant gave up kiosk=%s request_id=%s", self.kiosk_id, rid)
                    continue
                pending.repeats += 1
                pending.last_sent = now
                self.stats["repeats"] += 1
                self._publish(pending.msg)

    # --- receiving -----------------------------------------------------------------------
    def _on_down(self, payload: bytes) -> None:
        try:
            msg = parse_down(payload)
        except BadMessage as exc:
            self.stats["bad_down"] += 1
            log.warning("kiosk got a bad message kiosk=%s reason=%s", self.kiosk_id, exc.reason)
            return
        self.received.append(msg)
        if isinstance(msg, Ticket):
            self._on_ticket(msg)
        elif isinstance(msg, CaseInfo | ErrorReply):
            self.stats[type(msg).__name__] += 1
            self.pending.pop(msg.request_id, None)
        elif isinstance(msg, PrintJob):
            self.stats["print_jobs"] += 1
            self._print(msg.request_id, len(msg.lines) * self.profile.paper_per_line_pct)
        elif isinstance(msg, ShowMessage):
            self.stats["messages_shown"] += 1

    def _on_ticket(self, ticket: Ticket) -> None:
        self.tickets.setdefault(ticket.request_id, []).append(ticket)
        while len(self.tickets) > HISTORY:
            self.tickets.popitem(last=False)
        if self.pending.pop(ticket.request_id, None) is None:
            # an answer to a request already answered (or never made): the firmware ignores it
            self.stats["duplicate_answers"] += 1
            return
        self.stats["tickets"] += 1
        self._print(ticket.request_id, self.profile.paper_per_ticket_pct)

    def _print(self, request_id: str, paper_cost_pct: float) -> None:
        """Print a job: uses paper, may jam, always reports ``print_done``."""
        if self.printer != "ok":
            self._publish(
                PrintDone(request_id=request_id, ok=False, error=f"printer {self.printer}")
            )
            return
        if self._rng.random() < self.profile.jam_probability:
            self.jam_printer()
            self._publish(PrintDone(request_id=request_id, ok=False, error="printer jam"))
            return
        self.paper_pct = max(0.0, self.paper_pct - paper_cost_pct)
        self.stats["printed"] += 1
        self._publish(PrintDone(request_id=request_id, ok=True))
        if self.paper_pct <= 0:
            self.run_out_of_paper()

    # --- MQTT ------------------------------------------------------------------------------
    async def _supervise(self) -> None:
        """Keep one MQTT session up while wanted; a fresh paho client per connection."""
        delay = self.profile.reconnect_min_s
        while True:
            await self._want_online.wait()
            client = self._new_client()
            self._client = client
            self._closed.clear()
            client.connect_async(self.url.host, self.url.port, keepalive=self.profile.keepalive_s)
            connects_before = self.stats["connects"]
            client.loop_start()
            try:
                await self._closed.wait()
            finally:
                await asyncio.to_thread(client.loop_stop)
            if self._client is client:
                self._client = None
            if self.stats["connects"] > connects_before:
                delay = self.profile.reconnect_min_s  # this session worked: start over
            if self._want_online.is_set():
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.profile.reconnect_max_s)

    def _new_client(self) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=paho.MQTTv311,
            # we reconnect ourselves, so that drop() can make the kiosk stay away
            reconnect_on_failure=False,
        )
        if self._username:
            client.username_pw_set(self._username, self._password)
        if self.url.tls:
            client.tls_set(
                ca_certs=self.url.ca_file, certfile=self.url.cert_file, keyfile=self.url.key_file
            )
        client.will_set(self._up, OFFLINE_WILL, qos=1)
        # paho only uses this while retrying the first connection of a session (whole seconds)
        client.reconnect_delay_set(
            max(1, round(self.profile.reconnect_min_s)), max(1, round(self.profile.reconnect_max_s))
        )
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        # a refused TCP connect (broker down) never reaches on_disconnect: without this the
        # supervisor would wait forever and the kiosk would not come back after a broker restart
        client.on_connect_fail = self._paho_connect_fail
        client.on_message = self._paho_message
        return client

    def _paho_connect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if rc.is_failure:
            log.warning("kiosk connect refused kiosk=%s reason=%s", self.kiosk_id, rc)
            return
        client.subscribe(self._down, qos=1)
        self._to_loop(self._on_connected, client)

    def _paho_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        self._to_loop(self._on_disconnected, client)

    def _paho_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._to_loop(self._on_connect_failed, client)

    def _paho_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic == self._down:
            self._to_loop(self._on_down, bytes(msg.payload))

    def _on_connected(self, client: paho.Client) -> None:
        if client is not self._client:
            return
        self.stats["connects"] += 1
        self._connected.set()
        log.info("simulated kiosk connected kiosk=%s", self.kiosk_id)
        self.send_hello()

    def _on_connect_failed(self, client: paho.Client) -> None:
        self.stats["connect_failures"] += 1
        self._on_disconnected(client)

    def _on_disconnected(self, client: paho.Client) -> None:
        if client is not self._client:
            return
        if self._connected.is_set():
            self.stats["disconnects"] += 1
        self._connected.clear()
        self._closed.set()

    def _to_loop(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    # --- helpers ---------------------------------------------------------------------------
    def _send_request(self, msg: TicketRequest | CaseQuery) -> None:
        self.pending[msg.request_id] = _Pending(msg, self._now())
        self.stats["requests"] += 1
        self._publish(msg)

    def _publish(self, msg: UpMessage) -> bool:
        """Publish when connected; a kiosk without a network just drops status and events
        (its requests stay pending and are repeated after the reconnect)."""
        client = self._client
        if client is None or not self.connected:
            return False
        client.publish(self._up, encode_up(msg), qos=1)
        self.sent.append(msg)
        return True

    def _schedule(self, name: str, delay_s: float, fn: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        self._timers[name] = loop.call_later(delay_s, fn)

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def _new_request_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _case_no(self) -> str:
        year = self._rng.choice((2024, 2025, 2026))
        kind = self._rng.choice(_CASE_KINDS)
        return f"({year}){self.profile.court_code}{kind}{self._rng.randint(1, 29999)}号"


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
