"""Envelopes: valid messages round-trip; malformed, wrong-schema or oversized ones are refused."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import BadMessage, BadReason
from protocol.messages import (
    MAX_JSON_PAYLOAD,
    SCHEMAS,
    Birth,
    Command,
    CommandResult,
    Death,
    DeviceInfo,
    DeviceState,
    DeviceStatus,
    Event,
    HubState,
    Message,
    Rebirth,
    Telemetry,
    Venue,
    VenueKind,
    decode,
    encode,
    json_schemas,
)
from protocol.topics import TopicKind

SAMPLES: dict[TopicKind, Message] = {
    TopicKind.HUB_STATE: HubState(online=True, ts=1),
    TopicKind.BIRTH: Birth(
        ts=1,
        bdseq=3,
        seq=10,
        venue=Venue(id="hall", kind=VenueKind.LITIGATION_HALL, name="诉讼服务大厅"),
        devices=[DeviceInfo(id="kiosk-1", kind="kiosk", capabilities=["show_message"])],
    ),
    TopicKind.DEATH: Death(bdseq=3),
    TopicKind.REBIRTH: Rebirth(ts=5, reason="gap"),
    TopicKind.DEVICE_STATE: DeviceState(ts=1, state=DeviceStatus.FAULT, reason="printer jam"),
    TopicKind.TELEMETRY: Telemetry(ts=1, seq=7, metrics={"paper_pct": 42.0}),
    TopicKind.EVENT: Event(ts=1, seq=8, type="ticket_request", data={"service": "filing"}),
    TopicKind.COMMAND: Command(id="c1", name="reboot", deadline_ms=99),
    TopicKind.COMMAND_RESULT: CommandResult(id="c1", ok=False, error="deadline expired"),
}


def test_every_kind_with_a_schema_has_a_sample() -> None:
    assert set(SAMPLES) == set(SCHEMAS)


@pytest.mark.parametrize("kind", list(SAMPLES))
def test_samples_round_trip(kind: TopicKind) -> None:
    assert decode(kind, encode(SAMPLES[kind])) == SAMPLES[kind]


def test_chinese_text_survives_as_utf8() -> None:
    raw = encode(SAMPLES[TopicKind.BIRTH])
    assert "诉讼服务大厅".encode() in raw


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", BadReason.MALFORMED_JSON),
        (b"\xff\xfe", BadReason.MALFORMED_JSON),
        (b'{"ts": 1, "metrics": {}}', BadReason.SCHEMA),  # seq missing
        (b'{"ts": 1, "seq": "7", "metrics": {}}', BadReason.SCHEMA),
        (b'{"ts": 1, "seq": 7, "metrics": {"t": "hot"}}', BadReason.SCHEMA),
        (b'{"ts": 1, "seq": -1, "metrics": {}}', BadReason.SCHEMA),
        (b"[1, 2, 3]", BadReason.SCHEMA),
    ],
)
def test_bad_telemetry_is_refused_with_its_reason(payload: bytes, reason: BadReason) -> None:
    with pytest.raises(BadMessage) as info:
        decode(TopicKind.TELEMETRY, payload)
    assert info.value.reason is reason


def test_oversized_payload_is_refused_before_parsing() -> None:
    big = json.dumps({"ts": 1, "seq": 1, "metrics": {"x": 1.0}, "pad": "x" * MAX_JSON_PAYLOAD})
    with pytest.raises(BadMessage) as info:
        decode(TopicKind.TELEMETRY, big.encode())
    assert info.value.reason is BadReason.OVERSIZED


def test_unknown_venue_kind_is_a_schema_error() -> None:
    raw = encode(SAMPLES[TopicKind.BIRTH]).replace(b"litigation_hall", b"swimming_pool")
    with pytest.raises(BadMessage) as info:
        decode(TopicKind.BIRTH, raw)
    assert info.value.reason is BadReason.SCHEMA


def test_audio_topic_has_no_json_envelope() -> None:
    with pytest.raises(BadMessage):
        decode(TopicKind.AUDIO, b"{}")


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    msg = decode(TopicKind.TELEMETRY, b'{"ts":1,"seq":2,"metrics":{},"added_in_v1_1":true}')
    assert isinstance(msg, Telemetry)
    assert msg.seq == 2


def test_json_schemas_describe_every_topic() -> None:
    schemas = json_schemas()
    assert set(schemas["topics"]) == {k.value for k in SCHEMAS}
    assert "Telemetry" in schemas["$defs"]


@given(kind=st.sampled_from(list(SCHEMAS)), data=st.binary(max_size=512))
def test_random_bytes_never_raise_anything_but_bad_message(kind: TopicKind, data: bytes) -> None:
    with contextlib.suppress(BadMessage):
        decode(kind, data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(
    kind=st.sampled_from(list(SCHEMAS)),
    obj=st.dictionaries(
        st.sampled_from(["ts", "seq", "metrics", "bdseq", "id", "ok", "state", "type", "x"]),
        json_values,
    ),
)
def test_random_json_objects_never_raise_anything_but_bad_message(
    kind: TopicKind, obj: dict[str, object]
) -> None:
    with contextlib.suppress(BadMessage):
        decode(kind, json.dumps(obj).encode())


@given(
    seq=st.integers(0, 2**62),
    metrics=st.dictionaries(
        st.from_regex(r"[a-z_]{1,20}", fullmatch=True),
        st.floats(allow_nan=False, allow_infinity=False),
        max_size=8,
    ),
)
def test_any_valid_telemetry_round_trips(seq: int, metrics: dict[str, float]) -> None:
    msg = Telemetry(ts=1, seq=seq, metrics=metrics)
    assert decode(TopicKind.TELEMETRY, encode(msg)) == msg


def test_event_sample_is_an_event() -> None:
    assert isinstance(SAMPLES[TopicKind.EVENT], Event)
