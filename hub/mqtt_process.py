"""The hub's MQTT connection in its own process, so a telemetry flood cannot starve the web console.

Why (issue 7, bench telemetry): at 20-30k messages/s paho's network thread — packet parsing,
one PUBACK per message — needs most of a core, and it shares the hub's interpreter lock with the
event loop. The loop then waits for the lock between every step of a web request, and the API's
p99 during a flood was 100-280 ms (target 100 ms) however short the loop's own ingest ticks were
(the switch interval and GC thresholds made no difference). Here paho runs in a child process
(``python -m hub.mqtt_process``) with the same :class:`~protocol.mqtt_link.MqttLink`, the same
client id, session, subscriptions and will; the hub receives raw messages in batches and does the
rest (topic parse, validation, dispatch) on its loop in ticks of ~2 ms, with no second thread
competing for its lock.

:class:`MqttProcess` is the hub's side and looks like an :class:`MqttLink` to the hub:
``start``/``stop``/``connected``/``wait_connected``/``publish``/``publish_acked``. One session for
both directions, as before, so ``no_local`` keeps the hub's own commands out of its ingest and the
broker's will still speaks for the hub.

Pipe protocol (frames of :mod:`hub.pipe_frames`). Hub → child (stdin):

- ``C`` config (JSON: broker, account, client id, subscriptions, session, will) — first frame;
- ``P`` publish (msgpack ``[request id, topic, payload, qos, retain]``; id 0: fire and forget);
- ``K`` acknowledge (8 bytes, big-endian): every ``M`` frame up to that count (from 1) is safe;
- ``S`` stop: disconnect cleanly (no will), send every message received, then ``X``, exit;
- end of file without ``S``: the hub died. The child exits at once *without* a DISCONNECT, so the
  broker publishes the hub's will and keeps what it had not delivered for the hub's session.

Child → hub (stdout):

- ``M`` messages (msgpack array of ``[topic, payload, retained]``), in arrival order;
- ``L`` link state (``1`` connected, ``0`` down);
- ``A`` publish answer (msgpack ``[request id, error kind, text]``; kind "" = acknowledged);
- ``X`` stopped.

Acknowledgements and loss (be precise): the child acknowledges a QoS 1 message to the broker only
when the hub says so (``K``), and the hub says so once the batch was handled and what it gave the
telemetry sinks' processes is in their pipes (``on_batch``'s ``ack``). Until then the broker
holds the message for the hub's persistent session: a ``kill -9`` of the hub (the child then
exits without a DISCONNECT) gets it delivered again when the hub is back, and the sinks store
it once. Before, paho acknowledged on receipt and a ``kill -9`` lost what the child's batch, the
pipe and the hub's ingest tick held (1 telemetry point in two of three full chaos runs). The
broker sends at most its in-flight limit of unacknowledged messages (``max_inflight_messages``,
hub/broker.py), which bounds that window. A message acknowledged before a connection dropped is
not acknowledged on the next one (message ids are per connection); the broker sends it again.
A clean stop loses nothing: the child sends its buffer before it exits and the hub drains it.

The child ignores SIGTERM and SIGINT (systemd signals the whole service; the hub's clean stop
then ends the child). It is restarted with back-off if it dies on its own; meanwhile the hub is
disconnected and publishes raise :class:`~protocol.mqtt_link.NotConnected`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import itertools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any, Final, TypeAlias

import msgspec

from hub.pipe_frames import FrameError, frame, read_frame, stdin_reader, write_all
from protocol.messages import HubState, encode, now_ms
from protocol.mqtt_link import (
    BrokerUrl,
    MqttLink,
    NotConnected,
    PublishRefused,
    Subscription,
    Will,
)

log = logging.getLogger(__name__)

#: ``(topic, payload, retained)`` as received by the child
RawMessage: TypeAlias = tuple[str, bytes, bool]
#: ``on_batch(batch, ack)``: ``ack()`` once every message of the batch is safe (see "Acknowledgements")
BatchHandler: TypeAlias = Callable[[list[RawMessage], Callable[[], None]], Awaitable[None]]

#: messages the child holds for the hub at most (paho's thread waits beyond it)
DEFAULT_MAX_BUFFER: Final = 1_000
#: the child gathers a burst this long into one frame (one pipe write, one decode)
COALESCE_S: Final = 0.001
#: ... and this long while busy (the last frame held ``BUSY_BATCH`` messages or more): every
#: frame wakes the hub, which then wakes both sinks' processes, and at a sustained 22,000 msg/s
#: 1 ms frames of ~20 messages cost every process on the way ~20 % more CPU per message than
#: the large frames of a backlog (bench telemetry, paced vs flood). Quiet traffic keeps the
#: 1 ms frame, so a hub ``kill -9`` takes at most ~1 ms of it.
BUSY_COALESCE_S: Final = 0.005
BUSY_BATCH: Final = 50
READY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 15.0
RESTART_BACKOFF_S: Final = (0.5, 30.0)

_BATCH_ENCODER = msgspec.msgpack.Encoder()


def hub_offline_will(topic: str) -> Will:
    """The hub's last will: a retained ``hub/state`` saying offline, stamped now."""
    return Will(topic, encode(HubState(online=False, ts=now_ms())), qos=1, retain=True)


# --- the hub's side ------------------------------------------------------------------------------
class _Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.stdin = proc.stdin
        self.stdout = proc.stdout
        self.stopped = False  # said ``X``
        self.frames = 0  # ``M`` frames read

    def ack(self, through: int) -> None:
        """``K``: the child may acknowledge the messages of frames 1..``through``."""
        if self.alive:
            self.stdin.write(frame(b"K", through.to_bytes(8, "big")))

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.stdin.is_closing()


class MqttProcess:
    """The hub's broker session, run by a child process; an :class:`MqttLink` to the hub.

    ``on_batch`` gets every received message in order, in batches, on the loop; it may wait
    (backpressure: no more frames are read from the child until it returns, so the child's
    buffer fills and paho stops reading the socket). ``will_topic``: a :func:`hub_offline_will`
    on that topic for every connection.
    """

    def __init__(
        self,
        url: BrokerUrl,
        *,
        client_id: str,
        username: str | None,
        password: str | None,
        subscriptions: Sequence[Subscription],
        on_batch: BatchHandler,
        on_connect: Callable[[], None] | None = None,
        will_topic: str | None = None,
        persistent_session: bool = True,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        python: str = sys.executable,
    ) -> None:
        self.url = url
        self.client_id = client_id
        self._config = {
            "url": {**asdict(url), "password": None},
            "client_id": client_id,
            "username": username if username is not None else url.username,
            "password": password if password is not None else url.password,
            "subscriptions": [asdict(s) for s in subscriptions],
            "will_topic": will_topic,
            "persistent_session": persistent_session,
            "max_buffer": max_buffer,
        }
        self._on_batch = on_batch
        self._on_connect = on_connect
        self._python = python
        self._decoder = msgspec.msgpack.Decoder(list[tuple[str, bytes, bool]])
        self._answer_decoder = msgspec.msgpack.Decoder(tuple[int, str, str])
        self._child: _Child | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._ids = itertools.count(1)
        self._waiters: dict[int, tuple[asyncio.Future[None], str]] = {}
        self._stopping = False
        self.connects = 0
        self.disconnects = 0
        #: the child died on its own and was started again
        self.restarts = 0
        self.messages = 0
        self.batches = 0

    # lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the child, which starts connecting; returns at once (see
        :meth:`wait_connected`)."""
        self._stopping = False
        self._child = await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="mqtt-process")

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected; False on timeout."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @property
    def connected(self) -> bool:
        """True while the child's broker session is up."""
        return self._connected.is_set()

    @property
    def process_up(self) -> bool:
        """True while the child runs."""
        return self._child is not None and self._child.alive

    async def stop(self) -> None:
        """Disconnect cleanly (no will) and hand every message received to ``on_batch``."""
        self._stopping = True
        child = self._child
        if child is not None and child.alive:
            child.stdin.write(frame(b"S"))
            with contextlib.suppress(ConnectionError):
                await child.stdin.drain()
        if self._supervisor is not None:
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await asyncio.shield(self._supervisor)
            except TimeoutError:
                log.error("mqtt process did not stop in %.0f s: killed", STOP_TIMEOUT_S)
                if child is not None:
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.kill()
                self._supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._supervisor
            self._supervisor = None
        self._mark(False)

    # publishing ---------------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> int:
        """Queue a publish (the child reports a failure in its log). Raises
        :class:`NotConnected` when down. Returns 0: message ids are the child's."""
        self._send_publish(0, topic, payload, qos, retain)
        return 0

    async def publish_acked(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and wait for the broker's acknowledgement, as :meth:`MqttLink.publish_acked`
        (:class:`NotConnected`, :class:`PublishRefused`)."""
        if qos == 0:
            self.publish(topic, payload, 0, retain)
            return
        request = next(self._ids)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._send_publish(request, topic, payload, qos, retain)
        self._waiters[request] = (future, topic)
        await future

    def _send_publish(
        self, request: int, topic: str, payload: bytes, qos: int, retain: bool
    ) -> None:
        child = self._child
        if child is None or not child.alive or not self.connected:
            raise NotConnected(f"not connected to {self.url}")
        body = _BATCH_ENCODER.encode([request, topic, payload, qos, retain])
        child.stdin.write(frame(b"P", body))

    # the child's life ---------------------------------------------------------------------------
    async def _spawn(self) -> _Child:
        proc = await asyncio.create_subprocess_exec(
            self._python,
            "-m",
            "hub.mqtt_process",
            "--client-id",
            self.client_id,
            "--log-level",
            logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # not the terminal's process group: Ctrl-C is the hub's to handle (it stops the child)
            start_new_session=True,
            limit=2**26,
        )
        child = _Child(proc)
        # the password goes down the pipe, never on the command line (ps shows that)
        child.stdin.write(frame(b"C", json.dumps(self._config).encode()))
        log.info("mqtt process started pid=%d client=%s", proc.pid, self.client_id)
        return child

    async def _supervise(self) -> None:
        backoff = RESTART_BACKOFF_S[0]
        while True:
            child = self._child
            assert child is not None
            started = time.monotonic()
            try:
                await self._read(child)
            except FrameError as exc:
                log.error("mqtt process sent garbage, restarting it: %s", exc)
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
            code = await child.proc.wait()
            self._mark(False)
            self._fail_waiters(NotConnected("the MQTT process ended before the broker's PUBACK"))
            if self._stopping:
                if not child.stopped:
                    log.warning("mqtt process ended without a clean stop code=%s", code)
                return
            log.error("mqtt process died code=%s; restarting in %.1f s", code, backoff)
            await asyncio.sleep(backoff)
            backoff = (
                RESTART_BACKOFF_S[0]
                if time.monotonic() - started > 60
                else min(backoff * 2, RESTART_BACKOFF_S[1])
            )
            if self._stopping:
                return
            self.restarts += 1
            self._child = await self._spawn()

    async def _read(self, child: _Child) -> None:
        """Frames from the child until its stdout closes."""
        while (got := await read_frame(child.stdout)) is not None:
            kind, payload = got
            if kind == b"M":
                batch = self._decoder.decode(payload)
                self.messages += len(batch)
                self.batches += 1
                child.frames += 1
                await self._on_batch(batch, functools.partial(child.ack, child.frames))
            elif kind == b"L":
                self._mark(payload == b"\x01")
            elif kind == b"A":
                self._answer(*self._answer_decoder.decode(payload))
            elif kind == b"X":
                child.stopped = True
            else:
                raise FrameError(f"unknown frame kind {kind!r}")

    def _mark(self, up: bool) -> None:
        if up and not self._connected.is_set():
            self.connects += 1
            self._connected.set()
            if self._on_connect is not None:
                self._on_connect()
        elif not up and self._connected.is_set():
            self.disconnects += 1
            self._connected.clear()

    def _answer(self, request: int, error: str, text: str) -> None:
        waiter = self._waiters.pop(request, None)
        if waiter is None or waiter[0].done():
            return
        future, topic = waiter
        if not error:
            future.set_result(None)
        elif error == "refused":
            future.set_exception(PublishRefused(topic, text))
        elif error == "not_connected":
            future.set_exception(NotConnected(text))
        else:
            future.set_exception(ConnectionError(text))

    def _fail_waiters(self, exc: BaseException) -> None:
        waiters, self._waiters = self._waiters, {}
        for future, _topic in waiters.values():
            if not future.done():
                future.set_exception(exc)


# --- the child's side ----------------------------------------------------------------------------
class _ChildSide:
    """Runs the :class:`MqttLink`; received messages go to stdout in batches."""

    def __init__(self, reader: asyncio.StreamReader, config: dict[str, Any]) -> None:
        self._reader = reader
        self._out = sys.stdout.fileno()
        self._out_lock = threading.Lock()
        self._cond = threading.Condition()
        self._buffer: list[RawMessage] = []
        #: (mid, qos, connection) of each buffered message, in the same order
        self._buffer_ids: list[tuple[int, int, int]] = []
        #: per ``M`` frame sent (counted from 1): its messages' ids, until the hub's ``K``
        self._unacked: collections.deque[tuple[int, list[tuple[int, int, int]]]] = (
            collections.deque()
        )
        self._frames_sent = 0
        #: counts connections; an id is acknowledged only on the connection it came on
        self._connection = 0
        self._max_buffer = int(config["max_buffer"])
        self._closing = False
        will_topic = config["will_topic"]
        url = BrokerUrl(**config["url"])
        self.link = MqttLink(
            url,
            client_id=config["client_id"],
            username=config["username"],
            password=config["password"],
            subscriptions=[Subscription(**s) for s in config["subscriptions"]],
            on_acked_message=self._on_message,
            on_connect=self._connected,
            on_disconnect=lambda _reason: self._send(b"L", b"\x00"),
            will_factory=(lambda: hub_offline_will(will_topic)) if will_topic else None,
            persistent_session=bool(config["persistent_session"]),
        )
        self._publish_decoder = msgspec.msgpack.Decoder(tuple[int, str, bytes, int, bool])
        self._tasks: set[asyncio.Task[None]] = set()

    def _send(self, kind: bytes, payload: bytes) -> None:
        data = frame(kind, payload)
        with self._out_lock:
            try:
                write_all(self._out, data)
            except OSError:
                # the hub is gone: leave without a DISCONNECT so the broker sends its will and
                # keeps the undelivered messages for the hub's session
                os._exit(0)

    def _connected(self) -> None:
        with self._cond:
            self._connection += 1
        self._send(b"L", b"\x01")

    # paho's network thread
    def _on_message(self, topic: str, payload: bytes, retained: bool, mid: int, qos: int) -> None:
        with self._cond:
            while len(self._buffer) >= self._max_buffer and not self._closing:
                self._cond.wait(0.5)  # the hub is behind: hold paho (and so the broker)
            self._buffer.append((topic, payload, retained))
            self._buffer_ids.append((mid, qos, self._connection))
            if len(self._buffer) == 1:
                self._cond.notify_all()

    # the loop: the hub's ``K``
    def _acked(self, through: int) -> None:
        """Acknowledge the messages of every frame up to ``through`` (on their connection)."""
        with self._cond:
            connection = self._connection
            done: list[tuple[int, int, int]] = []
            while self._unacked and self._unacked[0][0] <= through:
                done += self._unacked.popleft()[1]
        for mid, qos, conn in done:
            if qos and conn == connection:
                self.link.ack(mid, qos)

    # the writer thread
    def _write_batches(self) -> None:
        last = 0
        while True:
            with self._cond:
                while not self._buffer and not self._closing:
                    self._cond.wait()
                if not self._buffer:
                    return  # closing and everything sent
            time.sleep(BUSY_COALESCE_S if last >= BUSY_BATCH else COALESCE_S)
            with self._cond:
                batch, self._buffer = self._buffer, []
                ids, self._buffer_ids = self._buffer_ids, []
                self._frames_sent += 1
                self._unacked.append((self._frames_sent, ids))
                self._cond.notify_all()
            last = len(batch)
            self._send(b"M", _BATCH_ENCODER.encode(batch))

    # the loop
    async def run(self) -> int:
        writer = threading.Thread(target=self._write_batches, name="mqtt-to-hub", daemon=True)
        writer.start()
        await self.link.start()
        while (got := await read_frame(self._reader)) is not None:
            kind, payload = got
            if kind == b"P":
                self._publish(*self._publish_decoder.decode(payload))
            elif kind == b"K":
                self._acked(int.from_bytes(payload, "big"))
            elif kind == b"S":
                await self._stop(writer)
                return 0
            else:
                log.error("unknown frame kind=%r bytes=%d", kind, len(payload))
        os._exit(0)  # end of file without a stop: the hub died (see _send)

    def _publish(self, request: int, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if request == 0:
            try:
                self.link.publish(topic, payload, qos, retain)
            except ConnectionError as exc:
                log.warning("publish to %s not sent: %s", topic[:120], exc)
            return
        task = asyncio.create_task(self._publish_acked(request, topic, payload, qos, retain))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_acked(
        self, request: int, topic: str, payload: bytes, qos: int, retain: bool
    ) -> None:
        error, text = "", ""
        try:
            await self.link.publish_acked(topic, payload, qos, retain)
        except PublishRefused as exc:
            error, text = "refused", exc.reason
        except NotConnected as exc:
            error, text = "not_connected", str(exc)
        except (ConnectionError, ValueError) as exc:
            error, text = "error", str(exc)
        self._send(b"A", _BATCH_ENCODER.encode([request, error, text]))

    async def _stop(self, writer: threading.Thread) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 2.0)
        await self.link.stop()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        await asyncio.to_thread(writer.join)
        self._send(b"X", b"")


async def _child_main() -> int:
    reader = await stdin_reader()
    first = await read_frame(reader)
    if first is None or first[0] != b"C":
        log.error("no configuration frame: not started by the hub?")
        return 2
    return await _ChildSide(reader, json.loads(first[1])).run()


def main(argv: list[str] | None = None) -> int:
    """``python -m hub.mqtt_process``: the child (started by :class:`MqttProcess`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--client-id", default="?", help="for ps and the log lines")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format=f"%(asctime)s %(levelname)s [mqtt {args.client_id} %(process)d] %(name)s: "
        "%(message)s",
    )
    # the hub ends this process with a stop frame; a signal meant for the whole service
    # (systemd, Ctrl-C) must not cut off the messages it still holds for the hub
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return asyncio.run(_child_main())


if __name__ == "__main__":
    sys.exit(main())
