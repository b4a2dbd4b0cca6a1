"""Kiosk protocol messages: validation at the boundary, and nothing but BadMessage escapes."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_drivers.kiosk_messages import (
    MAX_KIOSK_PAYLOAD,
    OFFLINE_WILL,
    CaseInfo,
    CaseQuery,
    ErrorReply,
    Hello,
    IdCard,
    Offline,
    PrintDone,
    PrintJob,
    ShowMessage,
    Status,
    Ticket,
    TicketRequest,
    UpMessage,
    encode_down,
    encode_up,
    parse_down,
    parse_up,
)
from protocol.errors import BadMessage, BadReason

UP_TYPES = ["hello", "status", "ticket_request", "case_query", "id_card", "print_done", "offline"]
FIELDS = [
    "model",
    "firmware",
    "services",
    "paper_pct",
    "printer",
    "card_reader",
    "cpu_temp_c",
    "uptime_s",
    "request_id",
    "service",
    "id_hash",
    "priority",
    "case_no",
    "name_masked",
    "ok",
    "error",
]

# --- strategies --------------------------------------------------------------------------------
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
near_valid_objects = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=8
).flatmap(
    lambda d: (
        st.sampled_from([*UP_TYPES, "ticket", "", "HELLO"]).map(lambda t: {**d, "type": t})
        | st.just(d)
    )
)

request_ids = st.text("abcdef0123456789-", min_size=1, max_size=64)
services = st.from_regex(r"\A[a-z][a-z0-9_]{0,31}\Z")
hashes = st.text("0123456789abcdef", min_size=8, max_size=128).filter(
    lambda h: not h.isdigit()  # all-digit strings may look like a raw ID number
)
short_text = st.text(max_size=128)
percent = st.floats(min_value=0, max_value=100)

valid_up: st.SearchStrategy[UpMessage] = st.one_of(
    st.builds(
        Hello,
        model=short_text,
        firmware=short_text,
        services=st.lists(services, max_size=32),
    ),
    st.builds(
        Status,
        paper_pct=percent,
        printer=st.sampled_from(["ok", "jam", "no_paper"]),
        card_reader=st.sampled_from(["ok", "fault"]),
        cpu_temp_c=st.floats(min_value=-50, max_value=150),
        uptime_s=st.floats(min_value=0, max_value=10 * 365 * 24 * 3600),
    ),
    st.builds(
        TicketRequest,
        request_id=request_ids,
        service=services,
        priority=st.sampled_from(["normal", "elderly", "disabled"]),
        id_hash=st.none() | hashes,
    ),
    st.builds(CaseQuery, request_id=request_ids, case_no=st.text(min_size=1, max_size=64)),
    st.builds(IdCard, id_hash=hashes, name_masked=st.text(min_size=1, max_size=32)),
    st.builds(PrintDone, request_id=request_ids, ok=st.booleans(), error=st.none() | short_text),
    st.just(Offline()),
)


# --- properties --------------------------------------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_parse_up_on_arbitrary_bytes_raises_only_bad_message(payload: bytes) -> None:
    try:
        msg = parse_up(payload)
    except BadMessage as exc:
        assert exc.reason in {BadReason.MALFORMED_JSON, BadReason.SCHEMA, BadReason.OVERSIZED}
    else:
        assert isinstance(msg, UpMessage)


@settings(max_examples=300, deadline=None)
@given(near_valid_objects)
def test_parse_up_on_arbitrary_json_objects_raises_only_bad_message(obj: dict[str, Any]) -> None:
    payload = json.dumps(obj).encode()
    try:
        msg = parse_up(payload)
    except BadMessage as exc:
        assert exc.reason in {BadReason.SCHEMA, BadReason.OVERSIZED}
    else:
        assert isinstance(msg, UpMessage)
        assert obj["type"] in UP_TYPES


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_parse_up_on_any_json_value_raises_only_bad_message(value: Any) -> None:
    with contextlib.suppress(BadMessage):
        parse_up(json.dumps(value).encode())


@settings(max_examples=400, deadline=None)
@given(valid_up)
def test_valid_up_messages_round_trip(msg: UpMessage) -> None:
    assert parse_up(encode_up(msg)) == msg


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        Ticket,
        request_id=request_ids,
        number=st.text(min_size=1, max_size=16),
        service=services,
        waiting_ahead=st.integers(0, 1_000_000),
        estimated_wait_s=st.integers(0, 7 * 24 * 3600),
        issued_at=st.integers(0, 2**62),
    )
    | st.builds(
        PrintJob,
        request_id=request_ids,
        lines=st.lists(st.text(max_size=200), min_size=1, max_size=20),
    )
    | st.builds(
        ShowMessage,
        text=st.text(min_size=1, max_size=500),
        seconds=st.floats(min_value=0.1, max_value=3600),
    )
    | st.builds(
        ErrorReply,
        request_id=request_ids,
        code=st.text(min_size=1, max_size=64),
        text=st.text(min_size=1, max_size=500),
    )
)
def test_valid_down_messages_round_trip(msg: Any) -> None:
    assert parse_down(encode_down(msg)) == msg


# --- examples ----------------------------------------------------------------------------------
def test_each_up_message_on_the_wire() -> None:
    assert parse_up(
        b'{"type":"hello","model":"K3","firmware":"1.0","services":["filing","consult"]}'
    ) == Hello(model="K3", firmware="1.0", services=["filing", "consult"])
    assert parse_up(OFFLINE_WILL) == Offline()
    assert parse_up(
        b'{"type":"ticket_request","request_id":"r1","service":"filing","priority":"disabled"}'
    ) == TicketRequest(request_id="r1", service="filing", priority="disabled")
    # unknown fields from newer firmware are ignored
    assert parse_up(b'{"type":"print_done","request_id":"r1","ok":true,"ms":120}') == PrintDone(
        request_id="r1", ok=True
    )


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", BadReason.MALFORMED_JSON),
        (b"\xff\xfe{", BadReason.MALFORMED_JSON),
        (b"[1]", BadReason.SCHEMA),
        (b'{"model":"x"}', BadReason.SCHEMA),
        (b'{"type":"ticket"}', BadReason.SCHEMA),  # a down message on the up topic
        (
            b'{"type":"status","paper_pct":101,"printer":"ok","card_reader":"ok",'
            b'"cpu_temp_c":40,"uptime_s":1}',
            BadReason.SCHEMA,
        ),
        (
            b'{"type":"status","paper_pct":50,"printer":"smoking","card_reader":"ok",'
            b'"cpu_temp_c":40,"uptime_s":1}',
            BadReason.SCHEMA,
        ),
        (
            b'{"type":"ticket_request","request_id":"r","service":"filing","priority":"vip"}',
            BadReason.SCHEMA,
        ),
        (b'{"type":"ticket_request","request_id":"r","service":"filing"}', BadReason.SCHEMA),
        (b'{"type":"id_card","id_hash":"110105199001011234","name_masked":"x"}', BadReason.SCHEMA),
        (b'{"type":"hello","model":"' + b"x" * MAX_KIOSK_PAYLOAD + b'"}', BadReason.OVERSIZED),
    ],
)
def test_bad_up_payloads(payload: bytes, reason: BadReason) -> None:
    with pytest.raises(BadMessage) as info:
        parse_up(payload)
    assert info.value.reason == reason


def test_case_info_details_only_when_found() -> None:
    found = CaseInfo(request_id="r", found=True, status="审理中", judge="李法官")
    assert msgspec.json.decode(encode_down(found)) == {
        "type": "case_info",
        "request_id": "r",
        "found": True,
        "status": "审理中",
        "judge": "李法官",
    }
    assert encode_down(CaseInfo(request_id="r", found=False)) == (
        b'{"type":"case_info","request_id":"r","found":false}'
    )
    with pytest.raises(BadMessage, match="status"):
        parse_down(b'{"type":"case_info","request_id":"r","found":true}')
