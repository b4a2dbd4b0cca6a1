"""SimulatedKiosk speaks the kiosk protocol, checked from the agent's side of a real Mosquitto."""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device_drivers.kiosk_messages import (
    CaseQuery,
    Hello,
    IdCard,
    Offline,
    PrintDone,
    Status,
    Ticket,
    TicketRequest,
    UpMessage,
    encode_down,
    parse_up,
)
from hub.broker import MosquittoBroker
from protocol.errors import BadMessage
from simulators.kiosk import KioskProfile, SimulatedKiosk

CASE_NO = re.compile(r"^\(20\d\d\)京0105(民初|民终|执|执保|刑初|行初|商初)\d{1,5}号$")
QUIET = KioskProfile(
    arrivals_per_min={"filing": 0.0, "consult": 0.0},
    case_queries_per_min=0.0,
    status_interval_s=0.1,
    answer_timeout_s=60.0,
    jam_probability=0.0,
)


class Agent:
    """The hall agent's side of kiosk k1 (plain paho, to wait for the SUBACK): records what the
    kiosk says and answers on its down topic."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.messages: list[UpMessage] = []
        self.garbage: list[bytes] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-agent")
        self.client.username_pw_set("hall-1", "pw-hall-1")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("kiosk/+/up", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self._url = broker.url

    async def start(self) -> None:
        self.client.connect(self._url.host, self._url.port)
        self.client.loop_start()
        assert await asyncio.to_thread(self._subscribed.wait, 5.0), "no SUBACK"

    async def stop(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        try:
            parsed = parse_up(payload)
        except BadMessage:
            with self._lock:
                self.garbage.append(payload)
            return
        with self._lock:
            self.messages.append(parsed)

    def of(self, cls: type[Any]) -> list[Any]:
        with self._lock:
            return [m for m in self.messages if isinstance(m, cls)]

    async def answer(self, ticket: Ticket) -> None:
        info = self.client.publish("kiosk/k1/down", encode_down(ticket), qos=1)
        await asyncio.to_thread(info.wait_for_publish, 5.0)
        assert info.is_published(), "the broker did not take the answer"


def last_printer(agent: Agent) -> str | None:
    """The printer state of the kiosk's latest status (None before the first one)."""
    statuses = agent.of(Status)
    return statuses[-1].printer if statuses else None


async def wait_for(condition: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def agent(broker: MosquittoBroker) -> AsyncIterator[Agent]:
    agent = Agent(broker)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


@pytest.fixture
async def start_kiosk(
    broker: MosquittoBroker,
) -> AsyncIterator[Callable[..., Awaitable[SimulatedKiosk]]]:
    kiosks: list[SimulatedKiosk] = []

    async def start(profile: KioskProfile = QUIET, seed: int = 42) -> SimulatedKiosk:
        kiosk = SimulatedKiosk(
            broker.url,
            kiosk_id="k1",
            username="kiosk-k1",
            password="pw-kiosk-k1",
            profile=profile,
            seed=seed,
        )
        kiosks.append(kiosk)
        await kiosk.start()
        assert await kiosk.wait_connected()
        return kiosk

    yield start
    for kiosk in kiosks:
        await kiosk.stop()


def ticket_for(req: TicketRequest, number: str) -> Ticket:
    return Ticket(
        request_id=req.request_id,
        number=number,
        service=req.service,
        waiting_ahead=0,
        estimated_wait_s=60,
        issued_at=1_795_000_000_000,
    )


async def test_hello_status_and_graceful_stop(agent: Agent, start_kiosk: Any) -> None:
    kiosk = await start_kiosk()
    await wait_for(lambda: agent.of(Hello), "hello")
    assert agent.of(Hello)[0] == Hello(
        model="CH-K300", firmware="3.2.1", services=["filing", "consult"]
    )
    await wait_for(lambda: len(agent.of(Status)) >= 3, "periodic status")
    status = agent.of(Status)[-1]
    assert (status.printer, status.card_reader, status.paper_pct) == ("ok", "ok", 100.0)
    await kiosk.stop()
    await wait_for(lambda: agent.of(Offline), "goodbye")


async def test_fast_litigants_of_several_services_and_retries(
    agent: Agent, start_kiosk: Any
) -> None:
    profile = KioskProfile(
        arrivals_per_min={"filing": 900, "consult": 900, "payment": 600, "materials": 600},
        case_queries_per_min=300,
        status_interval_s=1.0,
        answer_timeout_s=0.3,
        max_repeats=2,
        elderly_share=0.3,
        disabled_share=0.2,
        jam_probability=0.0,
    )
    kiosk = await start_kiosk(profile)

    def repeated() -> list[str]:
        counts = Counter(r.request_id for r in agent.of(TicketRequest))
        return [rid for rid, n in counts.items() if n >= 2]

    await wait_for(
        lambda: len(agent.of(TicketRequest)) >= 40 and repeated() and agent.of(CaseQuery),
        "many requests, some repeated",
    )
    requests = agent.of(TicketRequest)
    assert {r.service for r in requests} >= {"filing", "consult", "payment", "materials"}
    assert {r.priority for r in requests} == {"normal", "elderly", "disabled"}
    # a repeat is the very same request
    rid = repeated()[0]
    copies = [r for r in requests if r.request_id == rid]
    assert all(c == copies[0] for c in copies)
    assert all(CASE_NO.match(q.case_no) for q in agent.of(CaseQuery))
    # ID cards: only a hash and a masked name, and the request carries the same hash
    cards = agent.of(IdCard)
    assert cards and all(re.fullmatch(r"[0-9a-f]{64}", c.id_hash) for c in cards)
    assert all(re.fullmatch(r"\w{1,2}\*{1,2}", c.name_masked) for c in cards)
    assert {c.id_hash for c in cards} & {r.id_hash for r in requests if r.id_hash}
    # litigants give up after max_repeats
    await wait_for(lambda: kiosk.stats["abandoned"] > 0, "a litigant walked away")
    assert max(Counter(r.request_id for r in agent.of(TicketRequest)).values()) <= 3


def test_same_seed_same_litigants() -> None:
    def first_requests(seed: int) -> list[tuple[str, str]]:
        kiosk = SimulatedKiosk("mqtt://127.0.0.1:1", kiosk_id="k1", seed=seed)
        return [(kiosk.request_ticket("filing"), kiosk._case_no()) for _ in range(3)]

    assert first_requests(5) == first_requests(5)
    assert first_requests(5) != first_requests(6)


async def test_ticket_is_printed_once_and_repeats_stop(agent: Agent, start_kiosk: Any) -> None:
    kiosk = await start_kiosk(
        KioskProfile(
            arrivals_per_min={"filing": 0.0},
            case_queries_per_min=0.0,
            status_interval_s=0.1,
            answer_timeout_s=0.3,
            paper_per_ticket_pct=30.0,
            jam_probability=0.0,
        )
    )
    rid = kiosk.request_ticket("filing", "elderly")
    await wait_for(lambda: len(agent.of(TicketRequest)) >= 2, "a repeat while unanswered")
    req = agent.of(TicketRequest)[0]
    assert (req.request_id, req.priority) == (rid, "elderly")
    await agent.answer(ticket_for(req, "A001"))
    await wait_for(lambda: agent.of(PrintDone), "print_done")
    assert agent.of(PrintDone)[0] == PrintDone(request_id=rid, ok=True)
    assert kiosk.paper_pct == 70.0
    await agent.answer(ticket_for(req, "A001"))  # a duplicate answer is not printed again
    await wait_for(lambda: kiosk.stats["duplicate_answers"] == 1, "duplicate ignored")
    assert kiosk.tickets[rid] == [ticket_for(req, "A001")] * 2
    repeats = len(agent.of(TicketRequest))
    # the status reports are the clock: 5 x 0.1 s is longer than answer_timeout_s
    statuses = len(agent.of(Status))
    await wait_for(lambda: len(agent.of(Status)) >= statuses + 5, "half a second of status")
    assert len(agent.of(TicketRequest)) == repeats
    assert len(agent.of(PrintDone)) == 1


async def test_paper_runs_out_and_jams_clear(agent: Agent, start_kiosk: Any) -> None:
    kiosk = await start_kiosk(
        KioskProfile(
            arrivals_per_min={"filing": 0.0},
            case_queries_per_min=0.0,
            status_interval_s=0.05,
            paper_pct=50.0,
            paper_per_ticket_pct=30.0,
            jam_probability=0.0,
        )
    )
    for i, number in enumerate(("A001", "A002", "A003")):
        rid = kiosk.request_ticket("filing")
        # answer the request the agent received, as a real agent does: the kiosk's SUBSCRIBE
        # went out before it on the same connection. Answering from kiosk.pending raced it
        # (CI once lost the first answer: published before the broker had the subscription)
        await wait_for(lambda i=i: len(agent.of(TicketRequest)) > i, "request at the agent")
        req = agent.of(TicketRequest)[i]
        assert req.request_id == rid
        await agent.answer(ticket_for(req, number))
        await wait_for(lambda: not kiosk.pending, "answered")
    await wait_for(lambda: len(agent.of(PrintDone)) == 3, "three print results")
    assert [p.ok for p in agent.of(PrintDone)] == [True, True, False]
    assert agent.of(PrintDone)[2].error == "printer no_paper"
    await wait_for(lambda: last_printer(agent) == "no_paper", "no paper reported")
    assert agent.of(Status)[-1].paper_pct == 0.0

    kiosk.refill()
    kiosk.jam_printer(clear_after_s=0.3)
    await wait_for(lambda: last_printer(agent) == "jam", "jam reported")
    await wait_for(lambda: last_printer(agent) == "ok", "jam cleared by itself")
    kiosk.card_reader_fault()
    assert kiosk.read_id_card() is None
    await wait_for(
        lambda: bool(agent.of(Status)) and agent.of(Status)[-1].card_reader == "fault",
        "reader fault",
    )


async def test_drop_fires_the_will_and_reconnect_says_hello(agent: Agent, start_kiosk: Any) -> None:
    kiosk = await start_kiosk()
    await wait_for(lambda: agent.of(Hello), "hello")
    await kiosk.drop()
    assert not kiosk.connected
    await wait_for(lambda: agent.of(Offline), "the will")
    statuses = len(agent.of(Status))
    # gone means gone until reconnect(): no status although its 0.1 s interval passed
    await asyncio.sleep(0.3)
    assert len(agent.of(Status)) == statuses
    assert await kiosk.reconnect()
    await wait_for(lambda: len(agent.of(Hello)) == 2, "hello after reconnect")
    assert kiosk.stats["connects"] == 2


async def test_garbage_does_not_parse(agent: Agent, start_kiosk: Any) -> None:
    kiosk = await start_kiosk()
    sent = [kiosk.send_garbage(kind) for kind in ("not_json", "not_object", "wrong_schema")]
    await wait_for(lambda: len(agent.garbage) == 3, "garbage at the agent")
    assert agent.garbage == sent


async def test_kiosk_comes_back_after_the_broker_was_down(
    broker: MosquittoBroker, start_kiosk: Any
) -> None:
    """Found by the demo: a refused connect while the broker was down left the kiosk offline."""
    kiosk = await start_kiosk()
    await asyncio.to_thread(broker.stop)
    await wait_for(lambda: not kiosk.connected, "the kiosk to notice the broker is gone")
    # stay down long enough for at least one refused connect attempt
    await wait_for(lambda: kiosk.stats["connect_failures"] >= 1, "a refused connect", timeout=10)
    await asyncio.to_thread(broker.start)
    await wait_for(lambda: kiosk.connected, "the kiosk to reconnect", timeout=15)
    assert kiosk.stats["connects"] == 2
