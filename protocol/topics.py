"""Topic builder and parser for the courthub MQTT contract (v1).

| topic                                    | kind         |
|------------------------------------------|--------------|
| ``courthub/v1/hub/state``                | HUB_STATE    |
| ``courthub/v1/hub/alerts``               | HUB_ALERTS   |
| ``courthub/v1/{agent}/birth``            | BIRTH        |
| ``courthub/v1/{agent}/death``            | DEATH        |
| ``courthub/v1/{agent}/rebirth``          | REBIRTH      |
| ``courthub/v1/{agent}/{device}/state``   | DEVICE_STATE |
| ``courthub/v1/{agent}/{device}/telemetry``| TELEMETRY   |
| ``courthub/v1/{agent}/{device}/event``   | EVENT        |
| ``courthub/v1/{agent}/{device}/cmd``     | COMMAND      |
| ``courthub/v1/{agent}/{device}/cmd/result``| COMMAND_RESULT |
| ``courthub/v1/{agent}/{device}/audio``   | AUDIO        |

Ids are ``[a-z0-9-]{1,64}``. ``hub`` is reserved and cannot be an agent id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from protocol.errors import BadMessage, BadReason

ROOT = "courthub"
VERSION = "v1"
BASE = f"{ROOT}/{VERSION}"
HUB = "hub"
ID_PATTERN = re.compile(r"[a-z0-9-]{1,64}")
RESERVED_AGENT_IDS = frozenset({HUB})


class TopicKind(StrEnum):
    """Every kind of topic in the contract."""

    HUB_STATE = "hub_state"
    HUB_ALERTS = "hub_alerts"
    BIRTH = "birth"
    DEATH = "death"
    REBIRTH = "rebirth"
    DEVICE_STATE = "state"
    TELEMETRY = "telemetry"
    EVENT = "event"
    COMMAND = "cmd"
    COMMAND_RESULT = "cmd_result"
    AUDIO = "audio"


_AGENT_LEVEL = {
    "birth": TopicKind.BIRTH,
    "death": TopicKind.DEATH,
    "rebirth": TopicKind.REBIRTH,
}
_DEVICE_LEVEL = {
    "state": TopicKind.DEVICE_STATE,
    "telemetry": TopicKind.TELEMETRY,
    "event": TopicKind.EVENT,
    "cmd": TopicKind.COMMAND,
    "audio": TopicKind.AUDIO,
}
_HUB_LEVEL = {"state": TopicKind.HUB_STATE, "alerts": TopicKind.HUB_ALERTS}

#: Kinds an agent publishes (the hub accepts only these from agents).
AGENT_TO_HUB = frozenset(
    {
        TopicKind.BIRTH,
        TopicKind.DEATH,
        TopicKind.DEVICE_STATE,
        TopicKind.TELEMETRY,
        TopicKind.EVENT,
        TopicKind.COMMAND_RESULT,
        TopicKind.AUDIO,
    }
)


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic. ``agent`` is ``None`` for hub topics, ``device`` for agent-level ones."""

    kind: TopicKind
    agent: str | None = None
    device: str | None = None

    def __str__(self) -> str:
        return build(self.kind, self.agent, self.device)


def valid_id(value: str) -> bool:
    """True when ``value`` is a legal agent or device id."""
    return ID_PATTERN.fullmatch(value) is not None


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` or raise :class:`BadMessage` when it is not a legal id."""
    if not valid_id(value):
        raise BadMessage(BadReason.BAD_ID, f"{what} {value[:80]!r} is not [a-z0-9-]{{1,64}}")
    return value


def build(kind: TopicKind, agent: str | None = None, device: str | None = None) -> str:
    """Build the topic string for ``kind``; ids are checked."""
    if kind is TopicKind.HUB_STATE:
        return f"{BASE}/{HUB}/state"
    if kind is TopicKind.HUB_ALERTS:
        return f"{BASE}/{HUB}/alerts"
    if agent is None:
        raise ValueError(f"{kind.value} topic needs an agent id")
    check_id(agent, "agent")
    if agent in RESERVED_AGENT_IDS:
        raise ValueError(f"agent id {agent!r} is reserved")
    if kind in (TopicKind.BIRTH, TopicKind.DEATH, TopicKind.REBIRTH):
        return f"{BASE}/{agent}/{kind.value}"
    if device is None:
        raise ValueError(f"{kind.value} topic needs a device id")
    check_id(device, "device")
    if kind is TopicKind.COMMAND_RESULT:
        return f"{BASE}/{agent}/{device}/cmd/result"
    return f"{BASE}/{agent}/{device}/{kind.value}"


def parse(topic: str) -> Topic:
    """Parse a topic string of the contract, or raise :class:`BadMessage`."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != ROOT:
        raise BadMessage(BadReason.UNKNOWN_TOPIC, f"not a courthub topic: {topic[:120]!r}")
    if parts[1] != VERSION:
        raise BadMessage(BadReason.UNSUPPORTED_VERSION, f"contract version {parts[1][:16]!r}")
    rest = parts[2:]
    if rest[0] == HUB:
        if len(rest) == 2 and rest[1] in _HUB_LEVEL:
            return Topic(_HUB_LEVEL[rest[1]])
        raise BadMessage(BadReason.UNKNOWN_TOPIC, f"unknown hub topic: {topic[:120]!r}")
    agent = check_id(rest[0], "agent")
    if len(rest) == 2 and rest[1] in _AGENT_LEVEL:
        return Topic(_AGENT_LEVEL[rest[1]], agent)
    if len(rest) == 3 and rest[2] in _DEVICE_LEVEL:
        return Topic(_DEVICE_LEVEL[rest[2]], agent, check_id(rest[1], "device"))
    if len(rest) == 4 and rest[2] == "cmd" and rest[3] == "result":
        return Topic(TopicKind.COMMAND_RESULT, agent, check_id(rest[1], "device"))
    raise BadMessage(BadReason.UNKNOWN_TOPIC, f"unknown topic: {topic[:120]!r}")


# Subscription filters -------------------------------------------------------------------


def hub_subscriptions() -> list[str]:
    """What the hub subscribes to: everything agents publish."""
    return [
        f"{BASE}/+/birth",
        f"{BASE}/+/death",
        f"{BASE}/+/+/state",
        f"{BASE}/+/+/telemetry",
        f"{BASE}/+/+/event",
        f"{BASE}/+/+/cmd/result",
        f"{BASE}/+/+/audio",
    ]


def agent_subscriptions(agent: str) -> list[str]:
    """What an agent subscribes to: its commands, its rebirth requests and the hub's state."""
    check_id(agent, "agent")
    return [
        f"{BASE}/{agent}/+/cmd",
        f"{BASE}/{agent}/rebirth",
        f"{BASE}/{HUB}/state",
    ]
