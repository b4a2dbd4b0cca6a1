"""An asyncio-friendly MQTT connection on top of paho-mqtt, shared by agents and the hub.

Why paho and not aiomqtt: measured on this 2-core machine, paho receives ~3.5x more messages
per second in one process (see ``bench/``), and its network thread keeps decoding off the event
loop. paho also reconnects by itself with exponential backoff, which aiomqtt leaves to the user.

Threading model: paho runs its own network thread (``loop_start``).
- ``on_message`` is called **in that thread** so the hub can decode without touching the loop;
  callers that need the loop hop over with ``loop.call_soon_threadsafe``.
- ``on_connect`` / ``on_disconnect`` callbacks are delivered **on the event loop**.
- :meth:`MqttLink.publish` is thread-safe; :meth:`MqttLink.publish_acked` awaits the PUBACK.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger(__name__)

MessageCallback = Callable[[str, bytes, bool], None]
#: ``(topic, payload, retained, mid, qos)``: a message of a ``manual_ack`` link; hand ``mid``
#: and ``qos`` to :meth:`MqttLink.ack` once the message is safe
AckedMessageCallback = Callable[[str, bytes, bool, int, int], None]


class NotConnected(ConnectionError):
    """Raised by publish when the link is down; the caller keeps the message."""


class PublishRefused(ConnectionError):
    """The broker refused a publish (MQTT 5 reason code >= 128, e.g. 135 Not authorized)."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"publish to {topic} refused: {reason}")
        self.topic = topic
        self.reason = reason


@dataclass(frozen=True)
class BrokerUrl:
    """``mqtt://[user[:pass]@]host[:port]`` or ``mqtts://…?ca=FILE&cert=FILE&key=FILE``."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        """Parse a broker URL; raises ``ValueError`` naming what is wrong."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(
                f"broker URL must start with mqtt:// or mqtts://, got {parts.scheme!r}"
            )
        if not parts.hostname:
            raise ValueError("broker URL has no host")
        tls = parts.scheme == "mqtts"
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ca_file=query.get("ca"),
            cert_file=query.get("cert"),
            key_file=query.get("key"),
        )

    def __str__(self) -> str:
        """The URL without its password (safe to log)."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


@dataclass(frozen=True)
class Will:
    """An MQTT last will."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class Subscription:
    """A topic filter to (re)subscribe on every connect."""

    topic_filter: str
    qos: int = 1
    no_local: bool = False


#: Bytes asked of the socket per read by :class:`_BufferedClient`.
_READ_CHUNK = 64 * 1024


class _BufferedClient(paho.Client):
    """A paho client that reads the socket in large chunks instead of per packet field.

    paho 2.x reads every packet with at least three ``recv`` calls (the command byte, each
    remaining-length byte, then the body) and runs one ``select`` per packet when nothing is in
    flight (QoS 0). At ~20k msg/s that is ~80k syscalls/s in the network thread, and every one of
    them releases the GIL, which the event loop thread then takes — the network thread waits for
    it back (GIL convoy). Here ``_sock_recv`` serves paho's small reads from a user-space buffer
    that is refilled with one ``recv(_READ_CHUNK)``, and :meth:`loop_read` keeps parsing while
    buffered bytes remain (otherwise paho would ``select`` on a socket whose data we already
    hold). Packet parsing, acks and keepalive stay paho's own.

    Relies on paho's private ``_sock_recv`` (paho 2.x); :data:`_BUFFERED_READS` falls back to the
    plain client when it is missing.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rbuf_pos = 0
        self._rbuf_sock: object = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rbuf_sock is not self._sock:
            # new connection (or none): bytes buffered from an old socket are meaningless
            self._rbuf, self._rbuf_pos, self._rbuf_sock = b"", 0, self._sock
        pos = self._rbuf_pos
        if pos >= len(self._rbuf):
            # empty: one big read; BlockingIOError / OSError / b"" (closed) propagate as before
            data = super()._sock_recv(max(bufsize, _READ_CHUNK))
            if len(data) <= bufsize:
                self._rbuf, self._rbuf_pos = b"", 0
                return data
            self._rbuf, pos = data, 0
        end = pos + bufsize
        self._rbuf_pos = end
        return self._rbuf[pos:end]  # may be shorter than bufsize, like recv

    def _buffered(self) -> bool:
        return self._rbuf_sock is self._sock and self._rbuf_pos < len(self._rbuf)

    def _handle_publish(self) -> MQTTErrorCode:
        """paho's PUBLISH handling minus a fresh MQTT 5 ``Properties`` object per message.

        paho builds and clears a ``Properties`` (a few dozen dict and ``hasattr`` operations)
        for every incoming PUBLISH: measured ~30 % of the network thread at 10k msg/s. Agents
        publish without properties, so when the property length is 0 the message gets a shared,
        empty ``Properties`` (read-only by convention: :class:`MqttLink` never looks at it).
        Anything else — MQTT 3, QoS 2, topic aliases, properties present — goes to paho's own
        handler. With manual acks the PUBACK is left to :meth:`MqttLink.ack`, as paho does.
        (paho's per-message debug log line is skipped; MqttLink sets no paho logger.)
        """
        command = self._in_packet["command"]
        packet = self._in_packet["packet"]
        qos = (command & 0x06) >> 1
        if self._protocol != paho.MQTTv5 or qos == 2 or len(packet) < 3:
            return super()._handle_publish()
        slen = (packet[0] << 8) | packet[1]
        props_at = 2 + slen + (2 if qos else 0)
        if slen == 0 or len(packet) <= props_at or packet[props_at] != 0:
            return super()._handle_publish()
        # MQTTMessage.__init__ also builds an MQTTMessageInfo (a Condition and an RLock), which
        # only means something for outgoing messages: fill the slots directly, sharing one info.
        message = _new_message()
        message.mid = ((packet[2 + slen] << 8) | packet[3 + slen]) if qos else 0
        message.topic = bytes(packet[2 : 2 + slen])
        message.state = paho.mqtt_ms_invalid
        message.info = _INBOUND_INFO
        message.dup = bool(command & 0x08)
        message.qos = qos
        message.retain = bool(command & 0x01)
        message.properties = _EMPTY_PUBLISH_PROPERTIES
        message.payload = bytes(packet[props_at + 1 :])
        message.timestamp = paho.time_func()
        self._deliver(message)
        if qos == 0 or self._manual_ack:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._send_puback(message.mid)

    def _deliver(self, message: paho.MQTTMessage) -> None:
        """paho's ``_handle_on_message`` minus its per-topic callback matcher when no per-topic
        callback exists (MqttLink adds none): the matcher splits and walks every topic — measured
        ~15 % of the network thread at 12k msg/s (py-spy, bench telemetry)."""
        filtered = getattr(self, "_on_message_filtered", None)
        root = getattr(filtered, "_root", None)
        if root is None or root._children or not hasattr(self, "_in_callback_mutex"):
            self._handle_on_message(message)  # a topic callback exists, or paho changed
            return
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                try:
                    on_message(self, self._userdata, message)
                except Exception as err:  # as paho does: log, and re-raise unless suppressed
                    self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                    if not self.suppress_exceptions:
                        raise

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        # paho reads at most len(inflight) packets per select: drain what is already buffered
        # (select would not wake for it). A packet straddling the buffer's end refills it, so
        # under a steady flood this can go on: every 256 reads, let writes (PUBACKs) and the
        # keepalive run, as paho's own loop does between selects.
        reads = 0
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self._buffered():
            reads += 1
            if reads % 256 == 0:
                if self.want_write():
                    rc = self.loop_write()
                    if rc or self._sock is None:
                        return rc
                rc = self.loop_misc()
                if rc or self._sock is None:
                    return rc
            rc = super().loop_read(max_packets)
        return rc


_BUFFERED_READS = all(
    hasattr(paho.Client, name)
    for name in (
        "_sock_recv",
        "_packet_read",
        "_handle_publish",
        "_handle_on_message",
        "_send_puback",
        "_easy_log",
    )
)
_EMPTY_PUBLISH_PROPERTIES = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
_INBOUND_INFO = paho.MQTTMessageInfo(0)


def _new_message() -> paho.MQTTMessage:
    return paho.MQTTMessage.__new__(paho.MQTTMessage)


class MqttLink:
    """One MQTT client connection with automatic reconnect (1 s doubling to ``max_backoff_s``)."""

    def __init__(
        self,
        url: BrokerUrl,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        subscriptions: Sequence[Subscription] = (),
        on_message: MessageCallback | None = None,
        on_acked_message: AckedMessageCallback | None = None,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[str], None] | None = None,
        will_factory: Callable[[], Will | None] | None = None,
        persistent_session: bool = False,
        keepalive_s: int = 10,
        max_backoff_s: int = 30,
    ) -> None:
        self.url = url
        self.client_id = client_id
        self._subscriptions = list(subscriptions)
        self._on_message = on_message
        #: given: the link acknowledges nothing itself; the owner calls :meth:`ack` per message
        self._on_acked_message = on_acked_message
        self._on_connect_cb = on_connect
        self._on_disconnect_cb = on_disconnect
        self._will_factory = will_factory
        self._persistent = persistent_session
        self._keepalive = keepalive_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = threading.Event()
        self._connected_async: asyncio.Event | None = None
        self._acks_lock = threading.Lock()
        self._ack_waiters: dict[int, tuple[asyncio.Future[None], str]] = {}
        # Acks that came while a publish_acked was between paho's publish() and registering its
        # waiter (the PUBACK can beat publish()'s return). Kept only during that window: the
        # acks of plain QoS 1 publish() calls (command results, states), which nobody waits
        # for, used to pile up here until a 10,000-entry reset, ~1.2 kB each (paho's
        # ReasonCode copies its names table): the hall agent's +12 MB/h in the soak test.
        self._early_acks: dict[int, ReasonCode] = {}
        self._registering = 0  # publish_acked calls inside that window (under _acks_lock)
        self._stopping = False
        self.connects = 0
        self.disconnects = 0

        client_class = _BufferedClient if _BUFFERED_READS else paho.Client
        self._client = client_class(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            manual_ack=on_acked_message is not None,
        )
        user = username if username is not None else url.username
        secret = password if password is not None else url.password
        if user:
            self._client.username_pw_set(user, secret)
        if url.tls:
            self._client.tls_set(
                ca_certs=url.ca_file,
                certfile=url.cert_file,
                keyfile=url.key_file,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        self._client.reconnect_delay_set(1, max_backoff_s)
        self._client.max_inflight_messages_set(100)
        self._client.on_pre_connect = self._paho_pre_connect
        self._client.on_connect = self._paho_connect
        self._client.on_disconnect = self._paho_disconnect
        self._client.on_message = self._paho_message
        self._client.on_publish = self._paho_publish

    # lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start connecting in the background; returns at once (see :meth:`wait_connected`)."""
        self._loop = asyncio.get_running_loop()
        self._connected_async = asyncio.Event()
        self._stopping = False
        self._apply_will()
        props = None
        if self._persistent:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 24 * 3600
        self._client.connect_async(
            self.url.host,
            self.url.port,
            keepalive=self._keepalive,
            clean_start=not self._persistent,
            properties=props,
        )
        self._client.loop_start()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected; False on timeout."""
        assert self._connected_async is not None, "start() first"
        try:
            await asyncio.wait_for(self._connected_async.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a received message (links built with ``on_acked_message``); any thread.

        Until then the broker keeps it for this session: a connection lost before the ack
        gets it again on reconnect (with a persistent session), so nothing is lost with a
        consumer that dies before the message was safe."""
        if qos:
            self._client.ack(mid, qos)

    async def stop(self) -> None:
        """Disconnect cleanly (no will is sent) and stop the network thread."""
        self._stopping = True
        await asyncio.to_thread(self._stop_blocking)

    def _stop_blocking(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        """True while a broker session is up."""
        return self._connected.is_set()

    def set_subscriptions(self, subscriptions: Sequence[Subscription]) -> None:
        """Replace the subscriptions (takes effect now if connected, and on every reconnect)."""
        self._subscriptions = list(subscriptions)
        if self.connected:
            self._subscribe_all()

    # publishing ----------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> int:
        """Queue a publish; returns its message id. Raises :class:`NotConnected` when down."""
        if not self._connected.is_set():
            raise NotConnected(f"not connected to {self.url}")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            raise NotConnected(f"not connected to {self.url}")
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        return info.mid

    async def publish_acked(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish at QoS 1/2 and wait for the broker's acknowledgement.

        Raises :class:`NotConnected` if the link drops first and :class:`PublishRefused` when the
        broker answers with an MQTT 5 failure code (such as 135 Not authorized).
        """
        if qos == 0:
            self.publish(topic, payload, 0, retain)
            return
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        # paho calls on_publish holding its own message lock, which publish() takes too, so
        # our lock cannot span publish(): an ack arriving before the waiter is registered is
        # kept aside, but only while some publish_acked is inside this window.
        with self._acks_lock:
            self._registering += 1
        try:
            mid = self.publish(topic, payload, qos, retain)
        except BaseException:
            with self._acks_lock:
                self._leave_window()
            raise
        with self._acks_lock:
            early = self._early_acks.pop(mid, None)
            if early is None:
                self._ack_waiters[mid] = (future, topic)
            self._leave_window()
        if early is not None:
            self._settle(future, topic, early)
        await future

    def _leave_window(self) -> None:
        """A publish_acked registered its waiter (or failed to publish); ``_acks_lock`` held."""
        self._registering -= 1
        if not self._registering:
            # Whatever else was kept acknowledged a plain publish() nobody waits for: forget
            # it, or a later publish_acked reusing its mid (ids wrap at 65535) would take it.
            self._early_acks.clear()

    # paho callbacks (network thread) ------------------------------------------------------
    def _apply_will(self) -> None:
        if self._will_factory is None:
            return
        will = self._will_factory()
        if will is None:
            self._client.will_clear()
        else:
            self._client.will_set(will.topic, will.payload, will.qos, will.retain)

    def _paho_pre_connect(self, client: paho.Client, userdata: Any) -> None:
        # A new connection gets a fresh will (agents bump bdseq per connection).
        if self.connects or self.disconnects:
            self._apply_will()

    def _paho_connect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if rc.is_failure:
            log.warning(
                "mqtt connect refused client=%s broker=%s reason=%s", self.client_id, self.url, rc
            )
            return
        self.connects += 1
        self._subscribe_all()
        self._connected.set()
        log.info("mqtt connected client=%s broker=%s", self.client_id, self.url)
        self._to_loop(self._mark_connected, True)
        if self._on_connect_cb is not None:
            self._to_loop(self._on_connect_cb)

    def _paho_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if not was_connected:
            return
        self.disconnects += 1
        reason = str(rc)
        if not self._stopping:
            log.warning(
                "mqtt disconnected client=%s reason=%s; reconnecting", self.client_id, reason
            )
        with self._acks_lock:
            waiters = list(self._ack_waiters.values())
            self._ack_waiters.clear()
        for future, topic in waiters:
            self._to_loop(_fail, future, NotConnected(f"link dropped before PUBACK for {topic}"))
        self._to_loop(self._mark_connected, False)
        if self._on_disconnect_cb is not None:
            self._to_loop(self._on_disconnect_cb, reason)

    def _paho_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            if self._on_acked_message is not None:
                self._on_acked_message(
                    msg.topic, bytes(msg.payload), bool(msg.retain), msg.mid, msg.qos
                )
            elif self._on_message is not None:
                self._on_message(msg.topic, bytes(msg.payload), bool(msg.retain))
        except Exception:  # a consumer bug must not kill paho's network thread
            log.exception("mqtt message handler failed topic=%s", msg.topic[:120])

    def _paho_publish(
        self, client: paho.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any
    ) -> None:
        with self._acks_lock:
            waiter = self._ack_waiters.pop(mid, None)
            if waiter is None:
                if self._registering:  # maybe the ack of the publish_acked in its window
                    self._early_acks[mid] = rc
                return  # else a plain publish(): nobody waits for it
        future, topic = waiter
        self._to_loop(self._settle, future, topic, rc)

    # helpers ---------------------------------------------------------------------------------
    def _subscribe_all(self) -> None:
        if not self._subscriptions:
            return
        self._client.subscribe(
            [
                (s.topic_filter, SubscribeOptions(qos=s.qos, noLocal=s.no_local))
                for s in self._subscriptions
            ]
        )

    def _mark_connected(self, up: bool) -> None:
        assert self._connected_async is not None
        if up:
            self._connected_async.set()
        else:
            self._connected_async.clear()

    @staticmethod
    def _settle(future: asyncio.Future[None], topic: str, rc: ReasonCode) -> None:
        if future.done():
            return
        if rc.is_failure:
            future.set_exception(PublishRefused(topic, str(rc)))
        else:
            future.set_result(None)

    def _to_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)


def _fail(future: asyncio.Future[None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
