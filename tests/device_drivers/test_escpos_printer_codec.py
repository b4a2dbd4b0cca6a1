"""ESC/POS ticket builder (golden bytes), parse_escpos round trips and a decoder fuzz."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_drivers.escpos_printer import (
    Align,
    Bold,
    ChineseMode,
    Cut,
    EscposStream,
    Init,
    PrinterStatus,
    QrData,
    QrPrint,
    QrSetting,
    Size,
    StatusQuery,
    Text,
    Ticket,
    TicketBuilder,
    build_lines,
    build_test_page,
    build_ticket,
    is_status_byte,
    parse_escpos,
    printed_lines,
    status_byte,
)
from protocol.errors import BadMessage

ISSUED = int(datetime(2026, 11, 23, 1, 30, tzinfo=UTC).timestamp() * 1000)  # 09:30 in Shanghai
TICKET = Ticket(
    number="A023",
    service_name="立案",
    waiting_ahead=3,
    estimated_wait_s=290,
    issued_at=ISSUED,
    ticket_id="T20261123-A023",
    court_name="诉讼服务中心",
)


def gb(text: str) -> bytes:
    return text.encode("gb18030")


def test_ticket_golden_bytes() -> None:
    qr_id = b"T20261123-A023"
    expected = (
        b"\x1b\x40"  # ESC @
        b"\x1c\x26"  # FS &: Chinese mode
        b"\x1b\x61\x01"  # centre
        b"\x1b\x45\x01" + gb("诉讼服务中心") + b"\n\x1b\x45\x00"
        b"" + gb("立案") + b"\n"
        b"\x1b\x45\x01\x1d\x21\x11A023\n\x1d\x21\x00\x1b\x45\x00"  # bold, double size
        b"\x1b\x61\x00"  # left
        + gb("前面还有 3 人")
        + b"\n"
        + gb("预计等待约 5 分钟")
        + b"\n"
        + gb("取号时间 2026-11-23 09:30")
        + b"\n"
        b"\x1b\x61\x01"
        b"\x1d\x28\x6b\x04\x00\x31\x41\x32\x00"  # QR model 2
        b"\x1d\x28\x6b\x03\x00\x31\x43\x06"  # module size 6
        b"\x1d\x28\x6b\x03\x00\x31\x45\x31"  # error correction M
        b"\x1d\x28\x6b\x11\x00\x31\x50\x30"
        + qr_id  # store (14 + 3 bytes)
        + b"\x1d\x28\x6b\x03\x00\x31\x51\x30"  # print
        b"\n" + qr_id + b"\n"
        b"\x1d\x56\x42\x03"  # feed 3, partial cut
    )
    assert build_ticket(TICKET) == expected
    assert gb("诉讼服务中心") == bytes.fromhex("cbdfcbcfb7fecef1d6d0d0c4")


def test_ticket_round_trip_with_chinese_and_qr() -> None:
    ops = parse_escpos(build_ticket(TICKET))
    assert ops[:3] == [Init(), ChineseMode(True), Align(1)]
    assert printed_lines(ops) == [
        "诉讼服务中心",
        "立案",
        "A023",
        "前面还有 3 人",
        "预计等待约 5 分钟",
        "取号时间 2026-11-23 09:30",
        "",
        "T20261123-A023",
    ]
    i = ops.index(Text("A023"))
    assert ops[i - 2 : i] == [Bold(True), Size(2, 2)]
    assert [op for op in ops if isinstance(op, QrData)] == [QrData(b"T20261123-A023")]
    assert QrSetting(0x41, 50) in ops and QrPrint() in ops
    assert ops[-1] == Cut(partial=True, feed=3)
    one_line = "诉讼服务中心 A023 立案 前面还有 3 人"
    assert printed_lines(parse_escpos(build_lines([one_line]))) == [one_line]
    # other zones, and no court name
    utc = Ticket(**{**TICKET.__dict__, "timezone": "UTC", "court_name": ""})
    lines = printed_lines(parse_escpos(build_ticket(utc)))
    assert lines[0] == "立案" and "取号时间 2026-11-23 01:30" in lines


def test_stream_decodes_split_chunks_like_the_whole() -> None:
    job = build_ticket(TICKET) + b"\x10\x04\x04" + build_test_page()
    whole = parse_escpos(job)
    for size in (1, 2, 3, 7, 64):
        stream = EscposStream()
        ops = [op for pos in range(0, len(job), size) for op in stream.feed(job[pos : pos + size])]
        # text runs may arrive in pieces: compare the printed lines and the other ops
        assert printed_lines(ops) == printed_lines(whole)
        assert [op for op in ops if not isinstance(op, Text)] == [
            op for op in whole if not isinstance(op, Text)
        ]
    assert StatusQuery(4) in whole


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x1b\x40\xc1\xa2", "outside Chinese mode"),
        (b"\x1c\x26\x80", "not GB18030"),
        (b"\x1b\x45", "cut short"),
        (b"\x1d\x28\x6b\x05\x00\x31\x50", "cut short"),
        (b"\x1d\x28\x6b\x03\x00\x32\x51\x30", "only QR"),
        (b"\x1d\x28\x6b\x03\x00\x31\x43\x00", "value 0"),
        (b"\x1b\x7a\x00", "unknown command"),
        (b"\x07", "unknown control byte"),
        (b"\x10\x04\x09", "DLE 0x04 9"),
        (b"\x1d\x56\x05", "GS V 5"),
    ],
)
def test_decoder_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(BadMessage, match=reason):
        parse_escpos(data)


def test_builder_refuses_control_characters_and_status_bits() -> None:
    with pytest.raises(ValueError, match="U\\+001B"):
        TicketBuilder().line("A\x1b@")
    with pytest.raises(ValueError):
        build_ticket(Ticket(**{**TICKET.__dict__, "service_name": "立案\n"}))
    assert status_byte(0) == 0x12 and is_status_byte(0x12) and not is_status_byte(0x80)
    assert PrinterStatus.from_replies(0x12, 0x16, 0x12) == PrinterStatus(cover_open=True)
    assert PrinterStatus.from_replies(0x1A, 0x32, 0x7E) == PrinterStatus(
        offline=True, paper_out=True, paper_low=True
    )
    assert PrinterStatus.from_replies(0x12, 0x12, 0x1E).faults() == []
    assert PrinterStatus.from_replies(0x12, 0x12, 0x1E).paper_low


@st.composite
def mutated_jobs(draw: st.DrawFn) -> bytes:
    ticket = Ticket(
        number=draw(st.text(alphabet="ABC0123456789", min_size=1, max_size=5)),
        service_name=draw(st.text(alphabet="立案咨询缴费材料 abc", min_size=1, max_size=8)),
        waiting_ahead=draw(st.integers(0, 999)),
        estimated_wait_s=draw(st.floats(0, 1e5)),
        issued_at=draw(st.integers(0, 4_000_000_000_000)),
        ticket_id=draw(st.text(alphabet="ABCXYZ0189-", min_size=1, max_size=30)),
        court_name=draw(st.sampled_from(["", "诉讼服务中心", "𠀀 court"])),
    )
    data = bytearray(build_ticket(ticket))
    for _ in range(draw(st.integers(0, 8))):
        pos = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "drop", "insert"]))
        if action == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif action == "drop" and len(data) > 1:
            del data[pos]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=6))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=2000), mutated_jobs()), st.integers(1, 64))
def test_fuzz_parse_escpos(data: bytes, chunk: int) -> None:
    try:
        ops = parse_escpos(data)
    except BadMessage:
        ops = None
    if ops is not None:
        assert sum(len(op.text) for op in ops if isinstance(op, Text)) <= len(data)
    stream = EscposStream()
    for pos in range(0, len(data), chunk):
        with contextlib.suppress(BadMessage):
            stream.feed(data[pos : pos + chunk])
    assert len(stream._buffer) <= EscposStream.MAX_PENDING
