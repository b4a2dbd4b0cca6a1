"""Device commands: hub → agent ``cmd``, agent → hub ``cmd/result``, matched by id.

``await router.call(agent, device, name, args, timeout_s)`` checks the device first (known, not
offline, ``name`` among its capabilities) and publishes nothing when a check fails. The command
carries an absolute ``deadline_ms``; the agent never runs it after that (CONTRACT-NOTES.md), and
the hub stops waiting at the same moment. A result that comes later is logged and ignored.

The agent judges the deadline on its own clock, so ``deadline_ms`` and ``ts`` are written on
the agent's clock as the hub measured it (``clock_offset``, :mod:`hub.clock_skew`): an agent an
hour ahead would otherwise refuse every command as expired, one an hour behind would run stale
ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from hub.registry import HealthState, Registry
from protocol.messages import Command, CommandResult, encode, now_ms
from protocol.mqtt_link import NotConnected, PublishRefused
from protocol.topics import TopicKind, build

log = logging.getLogger(__name__)

#: Publishes ``(topic, payload)`` at QoS 1 and returns once the broker acknowledged it.
Publisher = Callable[[str, bytes], Awaitable[None]]


class CommandStatus(StrEnum):
    """How a command call ended; the API maps these to HTTP status codes."""

    OK = "ok"  # the agent ran it
    FAILED = "failed"  # the agent answered ok=false
    UNKNOWN_DEVICE = "unknown_device"
    OFFLINE = "offline"
    UNSUPPORTED = "unsupported"  # not among the device's capabilities
    BAD_REQUEST = "bad_request"
    DEADLINE = "deadline_exceeded"
    NOT_CONNECTED = "not_connected"  # the hub could not publish


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """The result of :meth:`CommandRouter.call`."""

    ok: bool
    result: Any = None
    error: str | None = None
    id: str = ""
    elapsed_ms: float = 0.0
    status: CommandStatus = CommandStatus.OK

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "ok": self.ok,
            "status": self.status.value,
            "result": self.result,
            "error": self.error,
            "id": self.id,
            "elapsed_ms": round(self.elapsed_ms, 3),
        }


@dataclass(slots=True)
class _Pending:
    agent: str
    device: str
    name: str
    future: asyncio.Future[CommandResult]


class CommandRouter:
    """Sends commands and waits for their results (loop only)."""

    def __init__(
        self,
        registry: Registry,
        publish: Publisher,
        *,
        max_timeout_s: float = 300,
        clock_offset: Callable[[str], int] = lambda agent: 0,
    ) -> None:
        """``clock_offset(agent)``: the agent's clock minus the hub's, in ms."""
        self._registry = registry
        self._publish = publish
        self._clock_offset = clock_offset
        self.max_timeout_s = max_timeout_s
        self._pending: dict[str, _Pending] = {}
        self.sent = 0
        self.succeeded = 0
        self.failed = 0
        self.expired = 0
        self.late_results = 0

    @property
    def pending(self) -> int:
        """Commands waiting for their result."""
        return len(self._pending)

    async def call(
        self,
        agent: str,
        device: str,
        name: str,
        args: dict[str, Any] | None = None,
        timeout_s: float = 5.0,
    ) -> CommandOutcome:
        """Run ``name`` on a device and wait at most ``timeout_s`` for its result."""
        started = time.perf_counter()
        rejected = self._check(agent, device, name, timeout_s)
        if rejected is not None:
            return rejected
        agent_now = now_ms() + self._clock_offset(agent)  # the agent's clock judges the deadline
        command = Command(
            id=uuid.uuid4().hex,
            name=name,
            args=dict(args or {}),
            deadline_ms=agent_now + int(timeout_s * 1000),
            ts=agent_now,
        )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CommandResult] = loop.create_future()
        self._pending[command.id] = _Pending(agent, device, name, future)
        try:
            return await self._send_and_wait(
                command,
                agent=agent,
                device=device,
                future=future,
                timeout_s=timeout_s,
                started=started,
            )
        finally:
            self._pending.pop(command.id, None)

    def on_result(self, agent: str, device: str, result: CommandResult) -> bool:
        """A ``cmd/result`` arrived; False when nobody waits for it (late or unknown id)."""
        pending = self._pending.get(result.id)
        if pending is None or pending.future.done():
            self.late_results += 1
            log.info(
                "command result ignored (late or unknown id) agent=%s device=%s id=%s ok=%s",
                agent,
                device,
                result.id[:64],
                result.ok,
            )
            return False
        if (pending.agent, pending.device) != (agent, device):
            log.warning(
                "command result from the wrong device ignored id=%s expected=%s/%s got=%s/%s",
                result.id[:64],
                pending.agent,
                pending.device,
                agent,
                device,
            )
            return False
        pending.future.set_result(result)
        return True

    # internals ----------------------------------------------------------------------------------
    def _check(self, agent: str, device: str, name: str, timeout_s: float) -> CommandOutcome | None:
        record = self._registry.device(agent, device)
        if record is None:
            return _rejected(CommandStatus.UNKNOWN_DEVICE, f"unknown device {agent}/{device}")
        if record.state is HealthState.OFFLINE:
            why = record.state_reason or "offline"
            return _rejected(CommandStatus.OFFLINE, f"device {agent}/{device} is offline ({why})")
        if name not in record.capabilities:
            offered = ", ".join(record.capabilities) or "none"
            return _rejected(
                CommandStatus.UNSUPPORTED,
                f"device {agent}/{device} has no command {name[:64]!r} (offers: {offered})",
            )
        if not 0 < timeout_s <= self.max_timeout_s:
            return _rejected(
                CommandStatus.BAD_REQUEST, f"timeout_s must be in (0, {self.max_timeout_s:g}]"
            )
        return None

    async def _send_and_wait(
        self,
        command: Command,
        *,
        agent: str,
        device: str,
        future: asyncio.Future[CommandResult],
        timeout_s: float,
        started: float,
    ) -> CommandOutcome:
        topic = build(TopicKind.COMMAND, agent, device)

        def elapsed() -> float:
            return (time.perf_counter() - started) * 1000

        try:
            async with asyncio.timeout(timeout_s):
                await self._publish(topic, encode(command))
                self.sent += 1
                log.info(
                    "command sent agent=%s device=%s name=%s id=%s",
                    agent,
                    device,
                    command.name,
                    command.id,
                )
                result = await future
        except TimeoutError:
            self.expired += 1
            log.warning(
                "command deadline exceeded agent=%s device=%s name=%s id=%s",
                agent,
                device,
                command.name,
                command.id,
            )
            return CommandOutcome(
                False, None, "deadline exceeded", command.id, elapsed(), CommandStatus.DEADLINE
            )
        except (NotConnected, PublishRefused) as exc:
            return CommandOutcome(
                False, None, str(exc), command.id, elapsed(), CommandStatus.NOT_CONNECTED
            )
        if result.ok:
            self.succeeded += 1
            return CommandOutcome(True, result.result, None, command.id, elapsed())
        self.failed += 1
        return CommandOutcome(
            False,
            result.result,
            result.error or "failed",
            command.id,
            elapsed(),
            CommandStatus.FAILED,
        )


def _rejected(status: CommandStatus, error: str) -> CommandOutcome:
    return CommandOutcome(False, None, error, "", 0.0, status)
