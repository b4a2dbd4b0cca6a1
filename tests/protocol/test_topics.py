"""Topic builder/parser: every topic of the DESIGN table round-trips; anything else is refused."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import BadMessage, BadReason
from protocol.topics import (
    Topic,
    TopicKind,
    agent_subscriptions,
    build,
    hub_subscriptions,
    parse,
)

DEVICE_KINDS = [
    TopicKind.DEVICE_STATE,
    TopicKind.TELEMETRY,
    TopicKind.EVENT,
    TopicKind.COMMAND,
    TopicKind.COMMAND_RESULT,
    TopicKind.AUDIO,
]


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("courthub/v1/hub/state", Topic(TopicKind.HUB_STATE)),
        ("courthub/v1/hub/alerts", Topic(TopicKind.HUB_ALERTS)),
        ("courthub/v1/hall-1/birth", Topic(TopicKind.BIRTH, "hall-1")),
        ("courthub/v1/hall-1/death", Topic(TopicKind.DEATH, "hall-1")),
        ("courthub/v1/hall-1/rebirth", Topic(TopicKind.REBIRTH, "hall-1")),
        ("courthub/v1/hall-1/kiosk-1/state", Topic(TopicKind.DEVICE_STATE, "hall-1", "kiosk-1")),
        ("courthub/v1/hall-1/kiosk-1/telemetry", Topic(TopicKind.TELEMETRY, "hall-1", "kiosk-1")),
        ("courthub/v1/hall-1/kiosk-1/event", Topic(TopicKind.EVENT, "hall-1", "kiosk-1")),
        ("courthub/v1/hall-1/kiosk-1/cmd", Topic(TopicKind.COMMAND, "hall-1", "kiosk-1")),
        (
            "courthub/v1/hall-1/kiosk-1/cmd/result",
            Topic(TopicKind.COMMAND_RESULT, "hall-1", "kiosk-1"),
        ),
        ("courthub/v1/court-1/mic-1/audio", Topic(TopicKind.AUDIO, "court-1", "mic-1")),
    ],
)
def test_every_design_topic_parses_and_rebuilds(topic: str, expected: Topic) -> None:
    assert parse(topic) == expected
    assert str(expected) == topic


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("kiosk/k1/up", BadReason.UNKNOWN_TOPIC),
        ("courthub/v2/hall-1/birth", BadReason.UNSUPPORTED_VERSION),
        ("courthub/v1/Hall_1/birth", BadReason.BAD_ID),
        ("courthub/v1/hall-1/kiosk-1/firmware", BadReason.UNKNOWN_TOPIC),
        ("courthub/v1/hall-1/kiosk-1/cmd/other", BadReason.UNKNOWN_TOPIC),
        ("courthub/v1/hub/config", BadReason.UNKNOWN_TOPIC),
        ("courthub/v1/hall-1", BadReason.UNKNOWN_TOPIC),
        ("courthub/v1/" + "a" * 65 + "/birth", BadReason.BAD_ID),
    ],
)
def test_topics_outside_the_contract_are_refused_with_a_reason(
    topic: str, reason: BadReason
) -> None:
    with pytest.raises(BadMessage) as info:
        parse(topic)
    assert info.value.reason is reason


def test_builder_refuses_bad_ids_and_the_reserved_hub_id() -> None:
    with pytest.raises(BadMessage):
        build(TopicKind.TELEMETRY, "Bad Id", "dev")
    with pytest.raises(ValueError, match="reserved"):
        build(TopicKind.BIRTH, "hub")
    with pytest.raises(ValueError, match="device"):
        build(TopicKind.TELEMETRY, "hall-1")


def test_subscriptions_cover_what_each_side_must_receive() -> None:
    assert "courthub/v1/+/+/telemetry" in hub_subscriptions()
    assert agent_subscriptions("hall-1") == [
        "courthub/v1/hall-1/+/cmd",
        "courthub/v1/hall-1/rebirth",
        "courthub/v1/hub/state",
    ]


ids = st.from_regex(r"[a-z0-9-]{1,64}", fullmatch=True)


@given(agent=ids, device=ids, kind=st.sampled_from(DEVICE_KINDS))
def test_any_valid_device_topic_round_trips(agent: str, device: str, kind: TopicKind) -> None:
    if agent == "hub":
        return
    assert parse(build(kind, agent, device)) == Topic(kind, agent, device)


@given(st.text(max_size=200))
def test_parser_never_raises_anything_but_bad_message(topic: str) -> None:
    with contextlib.suppress(BadMessage):
        parse(topic)
