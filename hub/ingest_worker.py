"""Scale-out ingest: several hub ingest workers behind one broker, MQTT 5 shared subscriptions.

A court that outgrows one hub process splits the hub in two roles (courthub issue 8):

- **ingest workers** (this module, any number, any host): the part of the hub that scales
  horizontally — validate telemetry at the door (:class:`hub.ingest.Ingest`, paho's thread),
  turn it into points (:class:`hub.telemetry_pipeline.TelemetryPipeline`) and hand them to the
  telemetry sinks. Workers join one share group, so the broker gives every message to exactly
  one of them.
- **the leader** (the normal :class:`hub.service.HubService`, exactly one): everything that must
  have one owner.

| topic filter                                     | who                    | subscription |
|--------------------------------------------------|------------------------|--------------|
| ``$share/{group}/courthub/v1/+/+/telemetry``     | workers                | shared       |
| ``$share/{group}/courthub/v1/+/+/event``         | workers, opt-in        | shared       |
| ``courthub/v1/+/birth``                          | leader *and* every worker | normal (retained) |
| ``courthub/v1/+/death``, ``+/+/state``           | leader                 | normal       |
| ``courthub/v1/+/+/event``                        | leader                 | normal       |
| ``courthub/v1/+/+/cmd/result``, ``+/+/audio``    | leader                 | normal       |

Why these stay with the leader: births and deaths are compared by ``bdseq`` and drive device
health and the registry that the hub persists; ``event`` carries the kiosks' ``ticket_request``
that the hall queue (one queue, one owner) turns into tickets; ``cmd/result`` completes the
command future of the process that sent the ``cmd``; ``audio`` frames feed the one recorder and
live transcriber of a hearing. None of them is high volume next to telemetry. Events are
therefore *not* shared by default (``kinds``): a worker that took a ``ticket_request`` would have
no queue to give it to. A worker with :data:`TopicKind.EVENT` in ``kinds`` hands events to its
own registry listeners (an event sink), alongside the leader's normal subscription, which still
gets every event. Every worker also reads the retained births (not shared: each worker needs all
of them) only to tag points with venue and device kind; it keeps no health.

Sequence numbers and duplicates (be precise): ``seq`` is per agent across its telemetry and
events, and gap detection, duplicate dropping and rebirth requests (:mod:`hub.seq_tracker`) need
*one observer that sees every seq of an agent*. A shared subscription deals an agent's messages
out per message (Mosquitto: round robin), so no worker sees a contiguous stream; workers
therefore do **no** seq tracking, **no** duplicate dropping and **no** gap detection — that
guarantee is lost for telemetry in scale-out mode. What remains:

- Broker redelivery (a QoS 1 message sent to a worker but not acknowledged) goes back to the
  *same session*, not to another worker (measured, Mosquitto 2.0.11, see below), with DUP set.
- An agent's outbox replays a message whose PUBACK it lost (``historical``); that copy can land
  on any worker. Such duplicates reach the sinks twice, and the sinks make them harmless by key:
  the embedded store keeps the first row per (series, field, ts) and never double-counts a
  rollup; InfluxDB overwrites a point with the same series and timestamp. (VictoriaMetrics keeps
  both unless started with ``-dedup.minScrapeInterval``.) The key includes the tags: a worker
  that has not yet seen an agent's birth writes points without ``venue``/``kind`` tags, i.e.
  another series — births are retained and subscribed first, but messages queued in a
  persistent session may be delivered before them on reconnect (not measured).
- :class:`Ingest` acknowledges a message when it is queued for the loop, not when a sink has
  written it: a worker killed in between loses what it had queued (the hub has the same window).

Mosquitto 2.0.11, measured (``tests/integration/test_shared_subscription.py``):

- Messages are dealt out round robin among the group's *sessions*, connected or not. A worker
  with a persistent session (``persistent_session=True``, the default here and in the hub) that
  dies keeps getting its share queued while it is away (up to ``max_queued_messages``); the
  survivors do **not** take it over. When it comes back with the same client id it receives its
  unacknowledged in-flight messages again (DUP set) and the queued share: nothing lost, late.
  So run workers under a supervisor that restarts them with their stable ``worker_id``. A clean
  :meth:`IngestWorker.stop` does not leave the group either (measured: the stopped session keeps
  collecting its turns until it expires after 24 h, then they are dropped), so scaling *down*
  needs an UNSUBSCRIBE of the shares before the disconnect — :class:`MqttLink` has no unsubscribe
  yet: not done.
- With ``persistent_session=False`` the session ends when the broker notices the disconnect
  (at once on a closed socket, 1.5 x keepalive for a silent peer); from then on the survivors get
  every message. The QoS 1 messages already dealt to the dead worker and not acknowledged (in
  flight or queued for it) are **lost**: Mosquitto does not re-route them to another member
  (test: 60 of 120 lost, the dead worker's whole unacknowledged share).
- ACL: Mosquitto grants the SUBSCRIBE of ``$share/…`` (and of any filter) and checks ``read``
  when it delivers, against the message's real topic — no share prefix. A worker account needs
  ``read courthub/v1/+/+/telemetry`` and ``read courthub/v1/+/birth``; the hub's ``readwrite
  courthub/#`` covers it. A client *without* read access that joins the group still gets its
  turn in the round robin, and that message is dropped for the whole group. The group name is
  no secret, and ``acl_file`` cannot refuse such a SUBSCRIBE (measured): a misbehaving agent
  account can make the workers lose telemetry (it cannot read it). Subscribe-time ACLs (e.g.
  Mosquitto's dynamic-security plugin, EMQX) would close that; not tried here.

Not done here: :class:`hub.service.HubService` has no scale-out mode yet. To lead workers it
must subscribe :func:`leader_subscriptions` instead of ``courthub/#``, stop feeding event seqs
alone into its seq tracker (with telemetry gone every event looks like a gap), and get device
liveness and last values some other way (today telemetry is the heartbeat; workers could
publish a per-device last-seen digest). Until then a scale-out leader would mark
telemetry-only devices stale.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final

from hub.bad_messages import BadMessageCounter
from hub.ingest import Inbound, Ingest, Item, Rejected
from hub.registry import AgentChanged, EventReceived, Listener, Registry, TelemetryReceived
from hub.telemetry_pipeline import TelemetryPipeline
from hub.telemetry_points import TelemetrySink
from protocol.messages import Birth, Event, Telemetry, now_ms
from protocol.mqtt_link import BrokerUrl, Subscription
from protocol.topics import BASE, TopicKind, check_id

log = logging.getLogger(__name__)

#: The share group of the court's ingest workers (``$share/courthub/…``).
SHARE_GROUP: Final = "courthub"
#: Topic kinds a worker may take a share of.
SHAREABLE_KINDS: Final = frozenset({TopicKind.TELEMETRY, TopicKind.EVENT})
#: What a worker takes by default: telemetry only (events stay with the leader's queue).
DEFAULT_KINDS: Final = (TopicKind.TELEMETRY,)
BIRTH_FILTER: Final = f"{BASE}/+/birth"


def shared_filter(kind: TopicKind, group: str = SHARE_GROUP) -> str:
    """The shared subscription of ``kind`` for ``group``: ``$share/{group}/courthub/v1/+/+/…``."""
    if kind not in SHAREABLE_KINDS:
        raise ValueError(f"{kind.value} is leader-only and cannot be shared")
    check_id(group, "share group")  # no '/', '+' or '#' (MQTT forbids them in a share name)
    return f"$share/{group}/{BASE}/+/+/{kind.value}"


def worker_subscriptions(
    group: str = SHARE_GROUP, kinds: Collection[TopicKind] = DEFAULT_KINDS
) -> list[Subscription]:
    """A worker's subscriptions: its shares (QoS 1) and, not shared, the retained births."""
    if not kinds:
        raise ValueError("an ingest worker needs at least one topic kind to share")
    shares = [Subscription(shared_filter(kind, group), qos=1) for kind in sorted(kinds)]
    return [*shares, Subscription(BIRTH_FILTER, qos=1)]


def leader_subscriptions() -> list[Subscription]:
    """The leader's non-shared subscriptions in scale-out mode: everything but telemetry."""
    filters = [
        BIRTH_FILTER,
        f"{BASE}/+/death",
        f"{BASE}/+/+/state",
        f"{BASE}/+/+/event",
        f"{BASE}/+/+/cmd/result",
        f"{BASE}/+/+/audio",
    ]
    return [Subscription(f, qos=1, no_local=True) for f in filters]


@dataclass
class WorkerCounters:
    """What one worker handled (on the loop)."""

    telemetry: int = 0
    events: int = 0
    births: int = 0
    rejected: int = 0
    unexpected: int = 0


class IngestWorker:
    """One horizontally scaled ingest worker: shared subscription → validation → telemetry sinks.

    ``worker_id`` must be stable across restarts and unique in the court: it names the MQTT
    session (``courthub-worker-{worker_id}``) that holds this worker's share while it is away.
    The caller owns the sinks (``start``/``flush``/``stop``); :meth:`stop` drains everything
    already received into them first. The worker never publishes (no ``hub/state``, no will,
    no rebirth requests): it does not speak for the hub.
    """

    def __init__(
        self,
        url: BrokerUrl | str,
        *,
        username: str | None,
        password: str | None,
        worker_id: str,
        sinks: Sequence[TelemetrySink],
        group: str = SHARE_GROUP,
        kinds: Collection[TopicKind] = DEFAULT_KINDS,
        persistent_session: bool = True,
    ) -> None:
        check_id(worker_id, "worker id")
        self.worker_id = worker_id
        self.group = group
        self.client_id = f"courthub-worker-{worker_id}"
        self.counters = WorkerCounters()
        #: births only (venue and kind tags for points); no health, nothing persisted
        self.registry = Registry()
        self.bad = BadMessageCounter()
        self.pipeline = TelemetryPipeline(self.registry, sinks, hub_id=self.client_id)
        self.registry.add_listener(self.pipeline.on_change)
        self.ingest = Ingest(
            url if isinstance(url, BrokerUrl) else BrokerUrl.parse(url),
            username=username,
            password=password,
            handler=self._dispatch,
            bad=self.bad,
            client_id=self.client_id,
            subscriptions=worker_subscriptions(group, kinds),
            announce=False,
            persistent_session=persistent_session,
        )

    async def start(self) -> None:
        """Start connecting (returns at once; see :meth:`wait_connected`)."""
        log.info("ingest worker starting worker=%s group=%s", self.worker_id, self.group)
        await self.ingest.start()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the broker session is up; False on timeout."""
        return await self.ingest.link.wait_connected(timeout)

    async def stop(self) -> None:
        """Disconnect cleanly and hand everything received to the sinks (not flushed)."""
        await self.ingest.stop()

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Listen to what this worker handles (``TelemetryReceived``, ``EventReceived``)."""
        return self.registry.add_listener(listener)

    def stats(self) -> dict[str, float]:
        """Counters for logs and /metrics."""
        c = self.counters
        return {
            "telemetry": c.telemetry,
            "events": c.events,
            "births": c.births,
            "rejected": c.rejected,
            "unexpected": c.unexpected,
            "bad_messages": self.bad.total,
            "messages_in": self.ingest.counters.messages_in,
            "ingest_pending": self.ingest.pending,
            "points": self.pipeline.points,
        }

    # on the loop --------------------------------------------------------------------------------
    def _dispatch(self, item: Item) -> None:
        if isinstance(item, Rejected):
            self.counters.rejected += 1  # counted and logged by BadMessageCounter already
            return
        msg = item.msg
        if item.kind is TopicKind.TELEMETRY and isinstance(msg, Telemetry) and item.device:
            self.counters.telemetry += 1
            self.registry.notify(TelemetryReceived(item.agent, item.device, msg))
        elif item.kind is TopicKind.EVENT and isinstance(msg, Event) and item.device:
            self.counters.events += 1
            self.registry.notify(EventReceived(item.agent, item.device, msg))
        elif item.kind is TopicKind.BIRTH and isinstance(msg, Birth):
            self._on_birth(item, msg)
        else:
            self.counters.unexpected += 1
            log.warning(
                "ingest worker got a topic it does not subscribe worker=%s kind=%s agent=%s",
                self.worker_id,
                item.kind.value,
                item.agent,
            )

    def _on_birth(self, item: Inbound, birth: Birth) -> None:
        """Remember venue and device kinds for tags (the leader owns health and the registry)."""
        self.counters.births += 1
        agent = self.registry.ensure_agent(item.agent)
        agent.venue_id = birth.venue.id
        agent.venue_kind = birth.venue.kind.value
        agent.venue_name = birth.venue.name
        agent.bdseq = birth.bdseq
        agent.last_birth_ms = birth.ts
        self.registry.replace_devices(item.agent, birth.devices, now_ms())
        self.registry.take_dirty()  # nothing persists a worker's registry: do not let it grow
        self.registry.notify(AgentChanged(item.agent))
