"""Test harness for the hub: a fake edge agent speaking the real contract, and polling helpers."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from protocol.messages import (
    Birth,
    Command,
    CommandResult,
    Death,
    DeviceInfo,
    DeviceState,
    DeviceStatus,
    Event,
    Rebirth,
    Telemetry,
    Venue,
    VenueKind,
    decode,
    encode,
    now_ms,
)
from protocol.mqtt_link import BrokerUrl, MqttLink, Subscription, Will
from protocol.topics import TopicKind, agent_subscriptions, build, parse

if TYPE_CHECKING:
    from hub.service import HubService

CommandAnswer = Callable[[str, Command], CommandResult | None]
#: ``make_hub(**health)`` and ``make_agent(agent_id, **kwargs)`` fixtures (tests/hub/conftest.py).
HubFactory = Callable[..., Awaitable["HubService"]]
AgentFactory = Callable[..., Awaitable["FakeAgent"]]


async def wait_until(
    condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``condition`` every 10 ms until it is truthy; fail the test after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def echo_answer(device: str, command: Command) -> CommandResult:
    """A fake agent's command handler that runs every command and echoes it."""
    return CommandResult(id=command.id, ok=True, result={"device": device, "args": command.args})


def default_devices() -> list[DeviceInfo]:
    """A kiosk with two commands and a printer, both heartbeating every 10 s."""
    return [
        DeviceInfo(id="kiosk-1", kind="kiosk", model="K100", capabilities=["reboot", "message"]),
        DeviceInfo(id="printer-1", kind="ticket_printer", model="P58", capabilities=["print"]),
    ]


class FakeAgent:
    """An edge agent reduced to its wire behaviour: birth, death will, streams, commands."""

    def __init__(
        self,
        url: BrokerUrl,
        agent_id: str,
        password: str | None = None,
        *,
        bdseq: int = 0,
        devices: Sequence[DeviceInfo] | None = None,
        venue: Venue | None = None,
        with_will: bool = True,
        answer: CommandAnswer | None = None,
    ) -> None:
        self.id = agent_id
        self.bdseq = bdseq
        self.seq = 0
        self.devices = list(devices if devices is not None else default_devices())
        self.venue = venue or Venue(
            id=f"venue-{agent_id}", kind=VenueKind.LITIGATION_HALL, name=f"Hall of {agent_id}"
        )
        self.answer = answer
        self.commands: list[tuple[str, Command]] = []
        self.rebirths: list[Rebirth] = []
        self._lock = threading.Lock()
        self.link = MqttLink(
            url,
            client_id=f"fake-{agent_id}-{uuid.uuid4().hex[:8]}",
            username=agent_id,
            password=password if password is not None else f"pw-{agent_id}",
            subscriptions=[Subscription(f) for f in agent_subscriptions(agent_id)],
            on_message=self._on_message,
            will_factory=(
                (
                    lambda: Will(
                        build(TopicKind.DEATH, agent_id),
                        encode(Death(bdseq=self.bdseq, ts=now_ms())),
                        qos=1,
                        retain=True,
                    )
                )
                if with_will
                else None
            ),
        )

    async def start(self) -> FakeAgent:
        """Connect (and wait for it)."""
        await self.link.start()
        assert await self.link.wait_connected(5), f"fake agent {self.id} could not connect"
        return self

    async def stop(self) -> None:
        """Disconnect cleanly (the broker sends no will)."""
        await self.link.stop()

    def kill_connection(self) -> None:
        """Drop the TCP connection without DISCONNECT, like a crash or a pulled cable."""
        self.link._client.reconnect_delay_set(30, 60)  # stay away while the test looks
        sock = self.link._client._sock  # type: ignore[attr-defined]
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)

    # publishing ---------------------------------------------------------------------------------
    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish raw bytes at QoS 1 and wait for the broker's PUBACK."""
        await self.link.publish_acked(topic, payload, qos=1, retain=retain)

    async def birth(self, *, seq: int | None = None, bdseq: int | None = None) -> Birth:
        """Publish the retained birth certificate."""
        if bdseq is not None:
            self.bdseq = bdseq
        birth = Birth(
            ts=now_ms(),
            bdseq=self.bdseq,
            seq=self.seq if seq is None else seq,
            venue=self.venue,
            devices=self.devices,
            agent_version="fake-1",
        )
        await self.publish(build(TopicKind.BIRTH, self.id), encode(birth), retain=True)
        return birth

    async def death(self, bdseq: int | None = None) -> None:
        """Publish a retained death (a clean goodbye, or a stale one with an old bdseq)."""
        death = Death(bdseq=self.bdseq if bdseq is None else bdseq, ts=now_ms())
        await self.publish(build(TopicKind.DEATH, self.id), encode(death), retain=True)

    async def state(self, device: str, state: DeviceStatus, reason: str = "") -> None:
        """Publish a retained device state."""
        msg = DeviceState(ts=now_ms(), state=state, reason=reason)
        await self.publish(build(TopicKind.DEVICE_STATE, self.id, device), encode(msg), retain=True)

    def next_seq(self, seq: int | None) -> int:
        """The seq to use: the given one, or the agent's next number."""
        if seq is None:
            seq = self.seq
        self.seq = max(self.seq, seq + 1)
        return seq

    async def telemetry(
        self,
        device: str,
        metrics: dict[str, float],
        *,
        seq: int | None = None,
        historical: bool = False,
        ts: int | None = None,
    ) -> int:
        """Publish telemetry; returns its seq."""
        n = self.next_seq(seq)
        msg = Telemetry(
            ts=now_ms() if ts is None else ts, seq=n, metrics=metrics, historical=historical
        )
        await self.publish(build(TopicKind.TELEMETRY, self.id, device), encode(msg))
        return n

    async def event(
        self, device: str, type_: str, data: dict[str, Any] | None = None, *, seq: int | None = None
    ) -> int:
        """Publish an event; returns its seq."""
        n = self.next_seq(seq)
        msg = Event(ts=now_ms(), seq=n, type=type_, data=data or {})
        await self.publish(build(TopicKind.EVENT, self.id, device), encode(msg))
        return n

    async def result(self, device: str, result: CommandResult) -> None:
        """Publish a command result."""
        await self.publish(build(TopicKind.COMMAND_RESULT, self.id, device), encode(result))

    # receiving (paho's thread) -------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        parsed = parse(topic)
        if parsed.kind is TopicKind.COMMAND:
            command = decode(TopicKind.COMMAND, payload)
            assert isinstance(command, Command) and parsed.device is not None
            with self._lock:
                self.commands.append((parsed.device, command))
            if self.answer is not None:
                result = self.answer(parsed.device, command)
                if result is not None:
                    self.link.publish(
                        build(TopicKind.COMMAND_RESULT, self.id, parsed.device),
                        encode(result),
                        qos=1,
                    )
        elif parsed.kind is TopicKind.REBIRTH:
            rebirth = decode(TopicKind.REBIRTH, payload)
            assert isinstance(rebirth, Rebirth)
            with self._lock:
                self.rebirths.append(rebirth)
