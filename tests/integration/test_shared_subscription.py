"""Scale-out ingest (issue 8): hub ingest workers sharing telemetry through MQTT 5 ``$share``.

Real Mosquitto (the hub's own, generated config with passwords and ACL), real workers
(:class:`hub.ingest_worker.IngestWorker`: paho, validation, telemetry pipeline) in this process,
agents publishing at QoS 1. Each message is identified by (agent, n): the telemetry carries
``metrics={"n": n}``, and a sink that records points tells which worker handled what.

"Crash" of a worker = its paho thread freezes inside a message (nothing acknowledged from then
on), then its TCP connection drops without DISCONNECT, and every message it had not yet handled
is dropped — what a killed process looks like to the broker.

Ordering trick (no sleeping to prove an absence): Mosquitto delivers one session's messages in
order, so once a worker has seen a *marker* published after a batch, it has seen every message
of that batch that was dealt to it.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from hub.bad_messages import BadMessageCounter
from hub.broker import Account, BrokerAccounts, MosquittoBroker
from hub.ingest import Inbound, Ingest, Item
from hub.ingest_worker import BIRTH_FILTER, IngestWorker, leader_subscriptions, shared_filter
from hub.telemetry_points import Point
from protocol.messages import Birth, DeviceInfo, Telemetry, Venue, VenueKind, encode, now_ms
from protocol.mqtt_link import MqttLink, Subscription
from protocol.topics import TopicKind, build

AGENTS = ("agent-1", "agent-2", "agent-3", "agent-4")
DEVICE = "sensor-1"
WORKER_USER = "ingest"
#: the worker account may read telemetry and births, nothing else — and no ``$share`` in the ACL
WORKER_READ = ("courthub/v1/+/+/telemetry", BIRTH_FILTER)
MARKER = -1

Key = tuple[str, int]


class RecordingSink:
    """A telemetry sink that keeps what it was given (the worker's output)."""

    name = "recording"

    def __init__(self) -> None:
        self.points: list[Point] = []

    async def start(self) -> None:
        """Nothing to open."""

    def write(self, points: Sequence[Point]) -> None:
        """Keep the points."""
        self.points.extend(points)

    async def flush(self) -> None:
        """Nothing buffered."""

    async def stop(self) -> None:
        """Nothing to close."""

    def stats(self) -> Mapping[str, float]:
        """How many points arrived."""
        return {"points": len(self.points)}

    def keys(self) -> Counter[Key]:
        """(agent, n) of every device point, with how often each came (markers left out)."""
        return Counter(
            (p.tag("agent"), int(p.fields["n"]))
            for p in self.points
            if p.measurement == "device" and p.fields["n"] != MARKER
        )

    def markers(self) -> int:
        """How many markers this sink saw."""
        return sum(1 for p in self.points if p.fields.get("n") == MARKER)


@pytest.fixture
def share_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """The hub's Mosquitto (passwords + ACL) with four agents and a read-only worker account."""
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed: run `make test`, which installs it")
    accounts = BrokerAccounts(
        hub=Account("hub", "pw-hub"),
        agents=tuple(Account(a, f"pw-{a}") for a in AGENTS),
        devices=(Account(WORKER_USER, f"pw-{WORKER_USER}", read=WORKER_READ),),
    )
    broker = MosquittoBroker(tmp_path / "broker", accounts)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Court:
    """Agents (one MQTT link each) and the workers under test."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.broker = broker
        self.agents: dict[str, MqttLink] = {}
        self.workers: list[IngestWorker] = []

    async def start_agents(self) -> None:
        for agent in AGENTS:
            link = MqttLink(
                self.broker.url, client_id=f"pub-{agent}", username=agent, password=f"pw-{agent}"
            )
            await link.start()
            assert await link.wait_connected(5), f"{agent} could not connect"
            self.agents[agent] = link
            birth = Birth(
                ts=now_ms(),
                bdseq=0,
                seq=0,
                venue=Venue(id=f"hall-of-{agent}", kind=VenueKind.LITIGATION_HALL),
                devices=[DeviceInfo(id=DEVICE, kind="env_sensor")],
            )
            await link.publish_acked(
                build(TopicKind.BIRTH, agent), encode(birth), qos=1, retain=True
            )

    async def worker(
        self, worker_id: str, sink: RecordingSink, *, persistent: bool = True
    ) -> IngestWorker:
        worker = IngestWorker(
            self.broker.url,
            username=WORKER_USER,
            password=f"pw-{WORKER_USER}",
            worker_id=worker_id,
            sinks=[sink],
            persistent_session=persistent,
        )
        await worker.start()
        self.workers.append(worker)
        assert await worker.wait_connected(5), f"worker {worker_id} could not connect"
        return worker

    async def publish(self, numbers: range) -> set[Key]:
        """Every agent publishes telemetry ``n`` for each n (QoS 1, PUBACK awaited), in parallel."""

        async def one(agent: str, link: MqttLink) -> None:
            for n in numbers:
                msg = Telemetry(ts=1_700_000_000_000 + n, seq=n, metrics={"n": float(n)})
                await link.publish_acked(build(TopicKind.TELEMETRY, agent, DEVICE), encode(msg))

        await asyncio.gather(*(one(a, link) for a, link in self.agents.items()))
        return {(a, n) for a in AGENTS for n in numbers}

    async def marker(self) -> None:
        """One marker telemetry from the first agent (see the module docstring)."""
        msg = Telemetry(ts=now_ms(), seq=0, metrics={"n": float(MARKER)})
        await self.agents[AGENTS[0]].publish_acked(
            build(TopicKind.TELEMETRY, AGENTS[0], DEVICE), encode(msg)
        )

    async def marker_reaches(self, sink: RecordingSink, timeout: float = 10.0) -> None:
        """Publish markers until ``sink`` has one more than before."""
        seen = sink.markers()
        for _ in range(8):  # round robin over at most a few sessions
            await self.marker()
            try:
                await wait_until(lambda: sink.markers() > seen, timeout / 8, "a marker")
                return
            except AssertionError:
                continue
        raise AssertionError("no marker reached the worker")

    async def close(self) -> None:
        for worker in self.workers:
            await worker.stop()
        for link in self.agents.values():
            await link.stop()


@pytest.fixture
async def court(share_broker: MosquittoBroker) -> AsyncIterator[Court]:
    court = Court(share_broker)
    await court.start_agents()
    try:
        yield court
    finally:
        await court.close()


async def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll every 10 ms; fail the test (AssertionError) after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


class Crash:
    """Freeze a worker's paho thread inside the next message, then drop its connection."""

    def __init__(self, worker: IngestWorker) -> None:
        self.worker = worker
        self.link = worker.ingest.link
        self.caught = threading.Event()
        self._release = threading.Event()
        self.dropped = 0

        def frozen(topic: str, payload: bytes, retained: bool) -> None:
            self.dropped += 1  # never handled: the process "died" holding it
            self.caught.set()
            self._release.wait(10)

        self._frozen = frozen

    def freeze(self) -> None:
        self.link._on_message = self._frozen

    def kill_connection(self) -> None:
        client = self.link._client
        client.reconnect_delay_set(30, 60)  # stay away while the test looks
        sock = client._sock  # type: ignore[attr-defined]
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)

    async def bury(self) -> None:
        """Let the frozen thread go (it drops what it holds) and stop the dead link."""
        self._release.set()
        await asyncio.to_thread(self.link._client.loop_stop)


async def broker_noticed(broker: MosquittoBroker, client_id: str) -> None:
    """Wait until Mosquitto logged that ``client_id`` is gone (notice log lines)."""

    def gone() -> bool:
        text = broker.log_path.read_text(errors="replace")
        return f"Client {client_id} closed its connection" in text or (
            f"Client {client_id} disconnected" in text
        )

    await wait_until(gone, 10, f"the broker to drop {client_id}")


def union(*sinks: RecordingSink) -> Counter[Key]:
    total: Counter[Key] = Counter()
    for sink in sinks:
        total += sink.keys()
    return total


# ------------------------------------------------------------------------------------------------


async def test_two_workers_handle_each_message_exactly_once(
    court: Court, share_broker: MosquittoBroker
) -> None:
    sink1, sink2 = RecordingSink(), RecordingSink()
    w1 = await court.worker("w1", sink1)
    w2 = await court.worker("w2", sink2)
    # the leader's scale-out subscriptions: births yes, telemetry never
    leader_kinds: list[TopicKind] = []

    def leader_handler(item: Item) -> None:
        if isinstance(item, Inbound):
            leader_kinds.append(item.kind)

    leader = Ingest(
        share_broker.url,
        username="hub",
        password="pw-hub",
        handler=leader_handler,
        bad=BadMessageCounter(),
        client_id="courthub-hub",
        subscriptions=leader_subscriptions(),
    )
    await leader.start()
    try:
        assert await leader.link.wait_connected(5)
        # every worker gets every (retained) birth: it tags points with venue and device kind
        for worker in (w1, w2):
            await wait_until(lambda w=worker: w.counters.births == len(AGENTS), 5, "births")

        expected = await court.publish(range(60))
        await wait_until(
            lambda: sum(union(sink1, sink2).values()) >= len(expected), 15, "all telemetry"
        )
        await w1.stop()
        await w2.stop()  # drains whatever they already received into the sinks

        k1, k2 = sink1.keys(), sink2.keys()
        assert set(k1) | set(k2) == expected
        assert not set(k1) & set(k2), "a message was handled by both workers"
        assert k1.total() + k2.total() == len(expected) == len(AGENTS) * 60
        assert max(k1.values()) == max(k2.values()) == 1
        assert k1.total() > 0 and k2.total() > 0, "one worker got no share"
        # births reached both workers: their points carry the venue and kind tags
        for point in sink1.points + sink2.points:
            assert point.tag("venue") == f"hall-of-{point.tag('agent')}"
            assert point.tag("kind") == "env_sensor"
        assert TopicKind.BIRTH in leader_kinds
        assert TopicKind.TELEMETRY not in leader_kinds
    finally:
        await leader.stop()


async def test_dead_worker_with_persistent_session_keeps_its_share_until_it_returns(
    court: Court, share_broker: MosquittoBroker
) -> None:
    """Measured on Mosquitto 2.0.11: the survivor does NOT take over; nothing is lost."""
    sink1, sink2 = RecordingSink(), RecordingSink()
    w1 = await court.worker("w1", sink1)
    await court.worker("w2", sink2)
    warmup = await court.publish(range(10))
    await wait_until(lambda: set(union(sink1, sink2)) == warmup, 10, "warm-up")

    crash = Crash(w1)
    crash.freeze()
    in_flight = await court.publish(range(10, 40))  # w1 freezes on its first, acks none
    await wait_until(crash.caught.is_set, 10, "w1 to freeze")
    crash.kill_connection()
    await broker_noticed(share_broker, w1.client_id)
    after = await court.publish(range(40, 70))
    await court.marker_reaches(sink2)  # w2 has all it will get of both batches

    survivor = set(sink2.keys())
    # the survivor kept its own turns only: w1's share stayed queued in w1's offline session
    assert 0 < len(survivor & in_flight) < len(in_flight)
    assert 0 < len(survivor & after) < len(after)
    await crash.bury()

    # w1 comes back under the same id: the broker redelivers its in-flight and queued share
    sink1b = RecordingSink()
    await court.worker("w1", sink1b)
    expected = warmup | in_flight | after
    await wait_until(lambda: set(union(sink1, sink2, sink1b)) == expected, 15, "w1's share")
    for worker in court.workers:
        await worker.stop()
    everything = union(sink1, sink2, sink1b)
    assert set(everything) == expected
    assert everything.total() == len(expected), "a message was handled twice"
    assert set(sink1b.keys()) == (in_flight | after) - survivor  # exactly w1's share, late
    assert crash.dropped > 0


async def test_cleanly_stopped_persistent_worker_still_takes_its_turns(
    court: Court, share_broker: MosquittoBroker
) -> None:
    """Scaling down is not ``stop()``: the session stays in the group and queues its share."""
    sink1, sink2 = RecordingSink(), RecordingSink()
    w1 = await court.worker("w1", sink1)
    await court.worker("w2", sink2)
    await w1.stop()  # clean DISCONNECT, session kept (expiry 24 h)
    await broker_noticed(share_broker, w1.client_id)
    batch = await court.publish(range(20))
    await court.marker_reaches(sink2)
    assert 0 < len(set(sink2.keys())) < len(batch)
    assert sink1.keys().total() == 0
    # the share waited in the stopped session: a restart under the same id collects it
    sink1b = RecordingSink()
    await court.worker("w1", sink1b)
    await wait_until(lambda: set(union(sink2, sink1b)) == batch, 10, "the queued share")


async def test_dead_worker_with_clean_session_loses_its_in_flight_messages(
    court: Court, share_broker: MosquittoBroker
) -> None:
    """Measured on Mosquitto 2.0.11: the survivor takes over at once, in-flight QoS 1 is lost."""
    sink1, sink2 = RecordingSink(), RecordingSink()
    w1 = await court.worker("w1", sink1, persistent=False)
    await court.worker("w2", sink2, persistent=False)

    crash = Crash(w1)
    crash.freeze()
    in_flight = await court.publish(range(0, 30))
    await wait_until(crash.caught.is_set, 10, "w1 to freeze")
    crash.kill_connection()
    await broker_noticed(share_broker, w1.client_id)
    after = await court.publish(range(30, 60))

    # the survivor gets every message published after the broker dropped w1 ...
    await wait_until(lambda: set(sink2.keys()) >= after, 10, "the survivor to take over")
    await court.marker_reaches(sink2)
    await crash.bury()
    # ... but w1's unacknowledged share of the earlier batch reached nobody
    handled = union(sink1, sink2)
    lost = in_flight - set(handled)
    assert lost, "Mosquitto re-routed a dead member's in-flight messages (update the docs)"
    assert not lost & set(sink2.keys())
    assert max(handled.values()) == 1


async def test_acl_checks_the_real_topic_and_an_unauthorised_member_swallows_its_turns(
    court: Court, share_broker: MosquittoBroker
) -> None:
    """The worker account's ACL has no ``$share`` rule: reads are checked on the real topic.

    An agent (no read access to telemetry) may still SUBSCRIBE to the group (Mosquitto 2.0
    grants it) and is dealt its turns, which the read check then drops — for the whole group.
    """
    sink = RecordingSink()
    await court.worker("w1", sink)
    intruder_got: list[str] = []
    intruder = MqttLink(
        share_broker.url,
        client_id="intruder",
        username=AGENTS[1],
        password=f"pw-{AGENTS[1]}",
        subscriptions=[Subscription(shared_filter(TopicKind.TELEMETRY))],
        on_message=lambda topic, payload, retained: intruder_got.append(topic),
    )
    await intruder.start()
    try:
        assert await intruder.wait_connected(5)
        # the SUBSCRIBE was granted: the intruder's session is in the group once messages skip w1
        batch = await court.publish(range(0, 20))
        await court.marker_reaches(sink)
        got = set(sink.keys())
        assert got < batch, "every message reached the worker: the intruder was refused"
        assert got, "the worker got nothing"
        assert intruder_got == []  # the read ACL held: nothing leaked to the agent
    finally:
        await intruder.stop()
