"""MQTT ingest: everything agents publish, validated at the door, handed to the loop in batches.

Two modes. The hub's (``network_process=True``, ``[broker] network_process``): the connection
runs in a child process (:mod:`hub.mqtt_process`), which hands over raw messages in batches;
topic parsing, validation and dispatch run on the loop in the same budgeted ticks as below, and
no thread of the hub competes with the loop for the interpreter lock (during a telemetry flood
that competition, not the loop's own work, made the web console slow). The thread mode below is
kept for scale-out ingest workers and ``network_process = false``.

Threading (thread mode; the hot path must keep the event loop free):

- paho's network thread runs :meth:`Ingest._on_message`: topic parse, direction check, JSON or
  audio decoding — all of it there. A rejection raises :class:`protocol.errors.BadMessage`,
  which is counted per ``(agent, device, reason)`` and logged at most once per interval.
- Valid messages go into a deque. The first message that finds the deque idle schedules one
  ``call_soon_threadsafe``, and the drain runs ``coalesce_s`` (2 ms) later so that a burst
  becomes one batch: waking the loop per message costs a self-pipe write each and makes the two
  threads fight over the GIL (measured: backlog drain 5.5k msg/s per-message, 8–10k msg/s
  coalesced, where paho's own QoS 1 handling is the limit). The drain handles up to
  ``batch_size`` items per loop tick, and no more than ``tick_budget_s`` (2 ms) of them, and
  reschedules itself with ``call_soon`` while items remain, so other tasks run in between: a
  web request needs several loop ticks, and 500 telemetry messages a tick (~10 ms) made the
  API's p99 200-325 ms during a flood (bench telemetry); with 2 ms ticks, 100-170 ms.
- When the loop falls ``max_pending`` (5,000) messages behind, the network thread waits (it
  does not drop): paho acknowledges a QoS 1 message only after ``on_message`` returns, so the
  broker keeps the rest (its queue for the hub's session is ``max_queued_messages``). A longer
  deque here only let the network thread run further ahead of the loop, with every queued
  message one more object for the garbage collector to walk: at 100,000 the embedded store got
  18-24k points/s in a flood, at 5,000 26-28k.

The session is persistent (``clean_start=False``) so QoS 1 messages published while the hub is
briefly away are delivered when it is back. The hub's will is a retained ``hub/state`` with
``online: false``; every connect publishes ``online: true``. Retained messages (births, deaths,
device states) are delivered at subscribe time and flagged ``retained``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeAlias

from hub.bad_messages import BadMessageCounter
from hub.mqtt_process import MqttProcess, RawMessage, hub_offline_will
from protocol.audio import AudioFrame, decode_frame
from protocol.errors import BadMessage, BadReason
from protocol.messages import HubState, Message, Rebirth, decode, encode, now_ms
from protocol.mqtt_link import BrokerUrl, MqttLink, NotConnected, Subscription
from protocol.topics import AGENT_TO_HUB, BASE, Topic, TopicKind, build, parse

log = logging.getLogger(__name__)

#: The hub's subscription: everything under the contract's root, so that messages on unknown or
#: wrong-direction topics are seen and counted instead of silently missing.
HUB_FILTER: Final = "courthub/#"
HUB_STATE_TOPIC: Final = f"{BASE}/hub/state"

#: Most parsed topics :class:`Ingest` remembers (one per agent and device and kind in practice);
#: when full the cache starts over, so a flood of made-up topics cannot grow it without bound.
TOPIC_CACHE_SIZE: Final = 65_536

#: Topic kinds whose messages are retained; an empty payload there clears the retained message.
_RETAINED_KINDS: Final = frozenset({TopicKind.BIRTH, TopicKind.DEATH, TopicKind.DEVICE_STATE})


class Inbound(NamedTuple):
    """A validated message from an agent.

    Named tuples rather than frozen dataclasses for what is built once per message: as
    immutable, and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field)
    costs ~0.8 µs against ~0.3 µs (the hub's loop builds one per telemetry message)."""

    kind: TopicKind
    agent: str
    device: str | None
    msg: Message | AudioFrame
    retained: bool


class Rejected(NamedTuple):
    """A message refused at the door, so the loop can count it on the device's record."""

    agent: str
    device: str
    reason: BadReason


Item: TypeAlias = Inbound | Rejected


@dataclass
class IngestCounters:
    """Counters written by the network thread only (single writer), read anywhere."""

    messages_in: int = 0
    accepted: int = 0
    retained_in: int = 0
    retained_cleared: int = 0
    hub_topics_ignored: int = 0
    batches: int = 0
    backpressure_waits: int = 0


class Ingest:
    """The hub's MQTT connection: subscribe, validate, batch to the loop, publish."""

    def __init__(
        self,
        url: BrokerUrl,
        *,
        username: str | None,
        password: str | None,
        handler: Callable[[Item], None],
        bad: BadMessageCounter,
        client_id: str = "courthub-hub",
        on_connect: Callable[[], None] | None = None,
        batch_size: int = 500,
        coalesce_s: float = 0.002,
        tick_budget_s: float = 0.002,
        max_pending: int = 5_000,
        subscriptions: Sequence[Subscription] | None = None,
        announce: bool = True,
        persistent_session: bool = True,
        network_process: bool = False,
    ) -> None:
        """``subscriptions`` (default: :data:`HUB_FILTER`), ``announce`` (publish ``hub/state``
        and set it as the will) and ``persistent_session`` exist for scale-out ingest workers
        (:mod:`hub.ingest_worker`), which take a share of the topics and never speak for the hub.
        ``network_process``: the connection runs in a child process (:mod:`hub.mqtt_process`)
        and topic parsing and validation on the loop instead of paho's thread (the hub's mode).
        """
        self._announce = announce
        self._handler = handler
        self.bad = bad
        self._on_connect_cb = on_connect
        self.batch_size = batch_size
        self.coalesce_s = coalesce_s
        self.tick_budget_s = tick_budget_s
        self.max_pending = max_pending
        self.counters = IngestCounters()
        #: Items (thread mode) or RawMessages (process mode), consumed by ``self._consume``
        self._queue: deque[Any] = deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self._room = threading.Event()
        self._room.set()
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: topic string -> parsed topic, valid topics only (network thread only, no lock): a
        #: device publishes on the same few topics all day, and parse + two id regexes were
        #: ~10 % of the network thread's time per message.
        self._topics: dict[str, Topic] = {}
        self._room_async: asyncio.Event | None = None
        # process mode: a batch's ack goes to the broker once its messages are handled and
        # every ``hand_overs`` barrier passed (see hub/mqtt_process.py, "Acknowledgements")
        self._enqueued = 0
        self._consumed = 0
        self._acks: deque[tuple[int, Callable[[], None]]] = deque()
        self._ack_wake: asyncio.Event | None = None
        self._ack_task: asyncio.Task[None] | None = None
        #: awaited before acks are sent: the telemetry sink processes' "all written is in my
        #: pipe" (:meth:`hub.sink_process.SinkProcess.handed_over`), added by the app
        self.hand_overs: list[Callable[[], Awaitable[None]]] = []
        subs = (
            [Subscription(HUB_FILTER, qos=1, no_local=True)]
            if subscriptions is None
            else list(subscriptions)
        )
        self.link: MqttLink | MqttProcess
        if network_process:
            self._consume: Callable[[Any], None] = self._consume_raw
            self.link = MqttProcess(
                url,
                client_id=client_id,
                username=username,
                password=password,
                subscriptions=subs,
                on_batch=self._on_batch,
                on_connect=self._on_connected,
                will_topic=HUB_STATE_TOPIC if announce else None,
                persistent_session=persistent_session,
            )
        else:
            self._consume = self._handle
            self.link = MqttLink(
                url,
                client_id=client_id,
                username=username,
                password=password,
                subscriptions=subs,
                on_message=self._on_message,
                on_connect=self._on_connected,
                will_factory=(lambda: hub_offline_will(HUB_STATE_TOPIC)) if announce else None,
                persistent_session=persistent_session,
            )

    # lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start connecting (returns at once; see :meth:`MqttLink.wait_connected`)."""
        self._loop = asyncio.get_running_loop()
        self._room_async = asyncio.Event()
        self._room_async.set()
        self._stopping.clear()
        if isinstance(self.link, MqttProcess):
            self._ack_wake = asyncio.Event()
            self._ack_task = asyncio.create_task(self._ack_loop(), name="ingest-acks")
        await self.link.start()

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Say goodbye (retained ``online: false``) and disconnect."""
        if self._announce and self.link.connected:
            try:
                async with asyncio.timeout(timeout_s):
                    await self.link.publish_acked(
                        HUB_STATE_TOPIC,
                        encode(HubState(online=False, ts=now_ms())),
                        qos=1,
                        retain=True,
                    )
            except (TimeoutError, ConnectionError) as exc:
                log.warning("hub offline state not confirmed by the broker: %s", exc)
        self._stopping.set()
        self._room.set()  # release a network thread waiting for room
        if self._room_async is not None:
            self._room_async.set()
        if self._ack_task is not None:
            # what was received so far is handled and acknowledged before the DISCONNECT;
            # the little that comes after it the broker sends again at the next start
            self._ack_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ack_task
            self._ack_task = None
            self._drain_all()
            await self._ack_ready()
        await self.link.stop()
        self._drain_all()

    @property
    def pending(self) -> int:
        """Messages waiting for the loop."""
        return len(self._queue)

    # publishing ---------------------------------------------------------------------------------
    async def publish_acked(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK."""
        await self.link.publish_acked(topic, payload, qos=1, retain=retain)

    def _on_connected(self) -> None:
        # on the loop: announce the hub; agents re-publish births and states when they see it
        if not self._announce:
            if self._on_connect_cb is not None:
                self._on_connect_cb()
            return
        try:
            self.link.publish(
                HUB_STATE_TOPIC, encode(HubState(online=True, ts=now_ms())), qos=1, retain=True
            )
        except ConnectionError as exc:
            log.warning("could not announce hub online: %s", exc)
        if self._on_connect_cb is not None:
            self._on_connect_cb()

    # network thread -----------------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        item = self._receive(topic, payload, retained)
        if item is not None:
            self._enqueue(item)

    def _receive(self, topic: str, payload: bytes, retained: bool) -> Item | None:
        """Count, parse and validate one message (paho's thread, or the loop in process mode)."""
        counters = self.counters
        counters.messages_in += 1
        if retained:
            counters.retained_in += 1
        try:
            item: Item | None = self._decode(topic, payload, retained)
        except BadMessage as exc:
            agent, device = self.bad.record(topic, exc)
            item = Rejected(agent, device, exc.reason)
        if isinstance(item, Inbound):
            counters.accepted += 1
        return item

    def _decode(self, topic: str, payload: bytes, retained: bool) -> Inbound | None:
        parsed = self._topics.get(topic)
        if parsed is None:
            parsed = parse(topic)  # raises BadMessage: not cached, counted every time
            if len(self._topics) >= TOPIC_CACHE_SIZE:
                self._topics.clear()
            self._topics[topic] = parsed
        if parsed.agent is None:
            # hub/state and hub/alerts are the hub's own (retained copies come back on subscribe)
            self.counters.hub_topics_ignored += 1
            return None
        if parsed.kind not in AGENT_TO_HUB:
            raise BadMessage(
                BadReason.WRONG_DIRECTION, f"{parsed.kind.value} is not published by agents"
            )
        if not payload and parsed.kind in _RETAINED_KINDS:
            self.counters.retained_cleared += 1  # someone deleted a retained message
            return None
        msg: Message | AudioFrame
        if parsed.kind is TopicKind.AUDIO:
            msg = decode_frame(payload)
        else:
            msg = decode(parsed.kind, payload)
        return Inbound(parsed.kind, parsed.agent, parsed.device, msg, retained)

    def _enqueue(self, item: Item) -> None:
        while len(self._queue) >= self.max_pending and not self._stopping.is_set():
            # backpressure: hold paho's thread (and so the broker) until the loop catches up
            self.counters.backpressure_waits += 1
            self._room.clear()
            self._room.wait(0.5)
        with self._lock:
            self._queue.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        loop = self._loop
        try:
            if loop is not None:
                loop.call_soon_threadsafe(self._drain_soon)
        except RuntimeError:  # loop closed during shutdown
            pass

    # event loop ---------------------------------------------------------------------------------
    async def _on_batch(self, batch: list[RawMessage], ack: Callable[[], None]) -> None:
        """Process mode: raw messages from the child, queued for the drain in arrival order;
        ``ack`` once they are handled and handed over (:meth:`_ack_loop`)."""
        self._queue.extend(batch)
        self._enqueued += len(batch)
        self._acks.append((self._enqueued, ack))
        if not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._drain)
        room = self._room_async
        if room is not None and len(self._queue) >= self.max_pending:
            # backpressure: stop reading the child's pipe; its buffer fills and paho waits
            self.counters.backpressure_waits += 1
            room.clear()
            await room.wait()

    def _consume_raw(self, raw: RawMessage) -> None:
        item = self._receive(*raw)
        if item is not None:
            self._handle(item)

    def _drain_soon(self) -> None:
        if self.coalesce_s > 0:
            assert self._loop is not None
            self._loop.call_later(self.coalesce_s, self._drain)
        else:
            self._drain()

    def _drain(self) -> None:
        self.counters.batches += 1
        deadline = time.perf_counter() + self.tick_budget_s
        consume = self._consume
        done = 0
        for i in range(self.batch_size):
            try:
                item = self._queue.popleft()
            except IndexError:
                break
            consume(item)
            done += 1
            if i % 16 == 15 and time.perf_counter() > deadline:
                break
        self._consumed += done
        if self._acks and self._acks[0][0] <= self._consumed and self._ack_wake is not None:
            self._ack_wake.set()
        if len(self._queue) < self.max_pending // 2:
            self._room.set()
            if self._room_async is not None:
                self._room_async.set()
        with self._lock:
            if not self._queue:
                self._scheduled = False
                return
        assert self._loop is not None
        self._loop.call_soon(self._drain)  # yield to other tasks, then carry on

    def _drain_all(self) -> None:
        while self._queue:
            self._consume(self._queue.popleft())
            self._consumed += 1

    async def _ack_loop(self) -> None:
        """Acks for the broker: every batch whose messages the drain handled, once what they
        gave the sinks is in the sinks' pipes (a hub ``kill -9`` before then loses nothing:
        the broker sends the unacknowledged messages again)."""
        assert self._ack_wake is not None
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            await self._ack_ready()

    async def _ack_ready(self) -> None:
        ready: list[Callable[[], None]] = []
        while self._acks and self._acks[0][0] <= self._consumed:
            ready.append(self._acks.popleft()[1])
        if not ready:
            return
        for barrier in self.hand_overs:
            try:
                await barrier()
            except Exception:  # a sink's trouble must not stop acks (and so ingest)
                log.exception("telemetry hand-over failed; acknowledging anyway")
        for ack in ready:
            ack()

    def _handle(self, item: Item) -> None:
        try:
            self._handler(item)
        except Exception:  # one bad handler run must not stop ingest
            log.exception("ingest handler failed item=%s", _describe(item))


def _describe(item: Item) -> str:
    if isinstance(item, Rejected):
        return f"rejected {item.agent}/{item.device} {item.reason.value}"
    return f"{item.kind.value} {item.agent}/{item.device or '-'}"


class RebirthRequester:
    """Publishes ``{agent}/rebirth``, at most once per agent per ``min_interval_s``."""

    def __init__(
        self,
        publish: Callable[[str, bytes], object],
        *,
        min_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish = publish
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self.requested = 0
        self.suppressed = 0

    def request(self, agent: str, reason: str) -> bool:
        """Ask ``agent`` for a new birth; False when rate-limited or not connected."""
        now = self._clock()
        last = self._last.get(agent)
        if last is not None and now - last < self.min_interval_s:
            self.suppressed += 1
            return False
        try:
            self._publish(
                build(TopicKind.REBIRTH, agent), encode(Rebirth(ts=now_ms(), reason=reason))
            )
        except (NotConnected, ConnectionError, ValueError) as exc:
            log.warning("rebirth request not sent agent=%s: %s", agent, exc)
            return False
        self._last[agent] = now
        self.requested += 1
        log.info("rebirth requested agent=%s reason=%s", agent, reason)
        return True
