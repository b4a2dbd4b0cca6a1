"""Fixtures for the edge agent tests: a fake driver, a test hub on the real broker, wait_for.

The test hub is an :class:`MqttLink` with the hub's credentials: it publishes the retained
``hub/state`` (its will says offline), subscribes to ``courthub/v1/#`` with a persistent session
(so a broker restart loses nothing it was owed) and records every message it receives.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from device_drivers.base import (
    CommandError,
    DeviceDescription,
    DeviceDriver,
    DeviceSink,
    DriverConfigError,
    UnknownCommand,
)
from edge_agents.config import AgentConfig, agent_config_from_dict
from edge_agents.runtime import EdgeAgent
from hub.broker import MosquittoBroker
from protocol import topics
from protocol.errors import BadMessage
from protocol.messages import (
    Birth,
    Command,
    CommandResult,
    Death,
    DeviceState,
    DeviceStatus,
    Event,
    HubState,
    Rebirth,
    Telemetry,
    decode,
    encode,
    now_ms,
)
from protocol.mqtt_link import MqttLink, Subscription, Will
from protocol.topics import TopicKind

WaitFor = Callable[..., Awaitable[Any]]


async def _wait_for(
    predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def wait_for() -> WaitFor:
    """``await wait_for(predicate, timeout=5.0, what="...")``."""
    return _wait_for


# fake driver ---------------------------------------------------------------------------------
class FakeOptions(msgspec.Struct, forbid_unknown_fields=True):
    """Options of the fake driver."""

    #: the first N calls of run() raise
    fail_runs: int = 0
    model: str = "fake-1"


class FakeDriver(DeviceDriver[FakeOptions]):
    """A driver the tests drive by hand: telemetry on demand, a few commands."""

    name = "fake"
    Options = FakeOptions

    def __init__(self, device_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(device_id, options)
        self.sink: DeviceSink | None = None
        self.runs = 0
        self.executed: list[str] = []

    @property
    def description(self) -> DeviceDescription:
        return DeviceDescription(
            kind="fake",
            model=self.options.model,
            capabilities=("echo", "slow", "fail", "boom"),
            heartbeat_s=1.0,
        )

    async def run(self, sink: DeviceSink) -> None:
        self.runs += 1
        self.sink = sink
        if self.runs <= self.options.fail_runs:
            raise RuntimeError(f"simulated crash {self.runs}")
        sink.set_state(DeviceStatus.ONLINE)
        await asyncio.Event().wait()  # until cancelled

    async def execute(self, name: str, args: Mapping[str, Any]) -> Any:
        self.executed.append(name)
        if name == "echo":
            return dict(args)
        if name == "slow":
            await asyncio.sleep(float(args.get("s", 10)))
            return "done"
        if name == "fail":
            raise CommandError("paper jam")
        if name == "boom":
            raise ValueError("driver bug")
        raise UnknownCommand(f"unknown command {name!r}")

    def emit(self, count: int, start: int = 0) -> None:
        """Report ``count`` telemetry messages with metric ``i`` = start, start+1, ..."""
        assert self.sink is not None, "driver not running yet"
        for i in range(start, start + count):
            self.sink.telemetry({"i": float(i)})


class FakeDrivers:
    """A ``create_driver`` for EdgeAgent that keeps the latest instance per device id."""

    def __init__(self) -> None:
        self.instances: dict[str, FakeDriver] = {}

    def create(self, name: str, device_id: str, options: Mapping[str, Any]) -> FakeDriver:
        if name != "fake":
            raise DriverConfigError(f"unknown driver {name!r} (known: fake)")
        driver = FakeDriver(device_id, options)
        self.instances[device_id] = driver
        return driver

    def __getitem__(self, device_id: str) -> FakeDriver:
        return self.instances[device_id]


@pytest.fixture
def fake_drivers() -> FakeDrivers:
    return FakeDrivers()


# test hub ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Received:
    """One message the test hub received."""

    kind: TopicKind
    agent: str | None
    device: str | None
    msg: Any  # the decoded envelope, or None when it did not decode
    payload: bytes
    retained: bool


class HubProbe:
    """Acts as the hub: publishes hub/state, records what agents publish, sends commands."""

    _ids = itertools.count()

    def __init__(self, broker: MosquittoBroker, *, persistent: bool = True) -> None:
        self.online = True
        self.received: list[Received] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.link = MqttLink(
            broker.url,
            client_id=f"test-hub-{next(self._ids)}",
            username="hub",
            password="pw-hub",
            subscriptions=[Subscription(f"{topics.BASE}/#", qos=1)],
            on_message=self._on_message,
            on_connect=self._publish_state,
            will_factory=lambda: Will(
                topics.build(TopicKind.HUB_STATE),
                encode(HubState(online=False, ts=0)),
                qos=1,
                retain=True,
            ),
            persistent_session=persistent,
        )

    async def start(self, online: bool = True) -> None:
        self.online = online
        self._loop = asyncio.get_running_loop()
        await self.link.start()
        assert await self.link.wait_connected(10), "test hub could not connect"

    async def stop(self) -> None:
        await self.link.stop()

    def set_online(self, online: bool) -> None:
        """Publish the retained hub/state (also re-published on every reconnect)."""
        self.online = online
        self._publish_state()

    def _publish_state(self) -> None:
        payload = encode(HubState(online=self.online, ts=now_ms()))
        self.link.publish(topics.build(TopicKind.HUB_STATE), payload, qos=1, retain=True)

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._record, topic, payload, retained)

    def _record(self, topic: str, payload: bytes, retained: bool) -> None:
        parsed = topics.parse(topic)
        try:
            msg: Any = decode(parsed.kind, payload)
        except BadMessage:
            msg = None
        self.received.append(
            Received(parsed.kind, parsed.agent, parsed.device, msg, payload, retained)
        )

    # queries ---------------------------------------------------------------------------------
    def of(self, kind: TopicKind, agent: str | None = None, device: str | None = None) -> list[Any]:
        """Decoded messages of ``kind`` (from ``agent`` / ``device`` when given), in order."""
        return [
            r.msg
            for r in self.received
            if r.kind is kind
            and (agent is None or r.agent == agent)
            and (device is None or r.device == device)
        ]

    def births(self, agent: str) -> list[Birth]:
        return self.of(TopicKind.BIRTH, agent)

    def deaths(self, agent: str) -> list[Death]:
        return self.of(TopicKind.DEATH, agent)

    def states(self, agent: str, device: str) -> list[DeviceState]:
        return self.of(TopicKind.DEVICE_STATE, agent, device)

    def telemetry(self, agent: str, device: str | None = None) -> list[Telemetry]:
        return self.of(TopicKind.TELEMETRY, agent, device)

    def events(self, agent: str, device: str | None = None) -> list[Event]:
        return self.of(TopicKind.EVENT, agent, device)

    def seqs(self, agent: str, device: str | None = None) -> list[int]:
        """Seqs of telemetry and events received (duplicates kept), in arrival order."""
        return [
            r.msg.seq
            for r in self.received
            if r.kind in (TopicKind.TELEMETRY, TopicKind.EVENT)
            and r.agent == agent
            and (device is None or r.device == device)
        ]

    # commands --------------------------------------------------------------------------------
    def send_command_raw(self, agent: str, device: str, payload: bytes) -> None:
        self.link.publish(topics.build(TopicKind.COMMAND, agent, device), payload, qos=1)

    async def command(
        self,
        agent: str,
        device: str,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        deadline_ms: int | None = None,
        timeout: float = 5.0,
    ) -> CommandResult:
        """Send a command and wait for its result."""
        cmd_id = f"c{next(self._ids)}"
        cmd = Command(
            id=cmd_id,
            name=name,
            args=args or {},
            deadline_ms=deadline_ms if deadline_ms is not None else now_ms() + 5000,
            ts=now_ms(),
        )
        self.send_command_raw(agent, device, encode(cmd))
        return await self.result(agent, device, cmd_id, timeout)

    async def result(
        self, agent: str, device: str, cmd_id: str, timeout: float = 5.0
    ) -> CommandResult:
        results: list[CommandResult] = await _wait_for(
            lambda: [
                r
                for r in self.of(TopicKind.COMMAND_RESULT, agent, device)
                if r is not None and r.id == cmd_id
            ],
            timeout,
            f"result of command {cmd_id}",
        )
        return results[0]

    def request_rebirth(self, agent: str) -> None:
        payload = encode(Rebirth(ts=now_ms(), reason="test"))
        self.link.publish(topics.build(TopicKind.REBIRTH, agent), payload, qos=1)


@pytest.fixture
async def hub(broker: MosquittoBroker) -> AsyncIterator[HubProbe]:
    """A connected test hub; call ``hub.set_online(...)`` to change the retained hub/state."""
    probe = HubProbe(broker)
    await probe.start(online=True)
    yield probe
    await probe.stop()


@pytest.fixture
async def offline_hub(broker: MosquittoBroker) -> AsyncIterator[HubProbe]:
    """A connected test hub whose retained hub/state says offline."""
    probe = HubProbe(broker)
    await probe.start(online=False)
    yield probe
    await probe.stop()


@pytest.fixture
def new_probe(broker: MosquittoBroker) -> Callable[[], HubProbe]:
    """A factory for extra probes (e.g. a late subscriber that sees only retained messages)."""
    return lambda: HubProbe(broker, persistent=False)


# agents ------------------------------------------------------------------------------------
def agent_config(
    broker: MosquittoBroker,
    data_dir: Path,
    agent_id: str = "agent-a",
    devices: tuple[str, ...] = ("dev-1",),
    *,
    heartbeat_s: float = 3600.0,
    max_messages: int = 100_000,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> AgentConfig:
    """A config for ``agent_id`` (whose broker password is ``pw-{id}``) with fake devices."""
    options = options or {}
    return agent_config_from_dict(
        {
            "agent": {"id": agent_id, "data_dir": str(data_dir), "heartbeat_s": heartbeat_s},
            "venue": {"id": "hall", "kind": "litigation_hall", "name": "诉讼服务大厅"},
            "broker": {"url": f"mqtt://{broker.host}:{broker.port}", "password": f"pw-{agent_id}"},
            "outbox": {"max_messages": max_messages},
            "devices": [
                {"id": d, "driver": "fake", "options": dict(options.get(d, {}))} for d in devices
            ],
        },
        source="test",
    )


MakeAgent = Callable[..., EdgeAgent]


@pytest.fixture
async def make_agent(
    broker: MosquittoBroker, tmp_path: Path, fake_drivers: FakeDrivers
) -> AsyncIterator[MakeAgent]:
    """``make_agent(agent_id="agent-a", devices=("dev-1",), data_dir=..., **config_and_agent_kw)``.

    Every agent made here is stopped at teardown (a no-op for ones the test stopped).
    """
    made: list[EdgeAgent] = []

    def factory(
        agent_id: str = "agent-a",
        devices: tuple[str, ...] = ("dev-1",),
        *,
        data_dir: Path | None = None,
        heartbeat_s: float = 3600.0,
        max_messages: int = 100_000,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> EdgeAgent:
        config = agent_config(
            broker,
            data_dir or tmp_path / "agents" / agent_id,
            agent_id,
            devices,
            heartbeat_s=heartbeat_s,
            max_messages=max_messages,
            options=options,
        )
        kwargs.setdefault("restart_backoff", (0.05, 0.5))
        agent = EdgeAgent(config, create_driver=fake_drivers.create, **kwargs)
        made.append(agent)
        return agent

    yield factory
    for agent in made:
        await agent.stop()
