"""Binary audio frames: header + PCM round-trips; defects are refused with a reason."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.audio import HEADER, HEADER_SIZE, MAGIC, AudioFrame, decode_frame, encode_frame
from protocol.errors import BadMessage, BadReason


def frame(pcm: bytes = b"\x01\x00\x02\x00" * 160, channels: int = 1) -> AudioFrame:
    return AudioFrame(
        seq=42, capture_ts_us=1_700_000_000_123_456, sample_rate=16000, channels=channels, pcm=pcm
    )


def test_round_trip_keeps_every_field_and_sample() -> None:
    f = frame()
    data = encode_frame(f)
    assert data[:4] == MAGIC
    assert len(data) == HEADER_SIZE + len(f.pcm)
    assert decode_frame(data) == f
    assert f.frames == 320
    assert f.duration_us == 20_000


def test_wrong_magic_is_refused() -> None:
    data = bytearray(encode_frame(frame()))
    data[:4] = b"RIFF"
    with pytest.raises(BadMessage) as info:
        decode_frame(bytes(data))
    assert info.value.reason is BadReason.BAD_MAGIC


def test_truncated_pcm_is_refused() -> None:
    data = encode_frame(frame())
    with pytest.raises(BadMessage) as info:
        decode_frame(data[:-2])
    assert info.value.reason is BadReason.BAD_LENGTH


def test_odd_byte_pcm_is_refused() -> None:
    data = encode_frame(frame()) + b"\x00"
    with pytest.raises(BadMessage) as info:
        decode_frame(data)
    assert info.value.reason is BadReason.BAD_LENGTH


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        (1, 9, BadReason.UNSUPPORTED_VERSION),
        (2, 7, BadReason.BAD_HEADER),
        (3, 0, BadReason.BAD_HEADER),
        (4, 100, BadReason.BAD_HEADER),
    ],
)
def test_bad_header_fields_are_refused(field: int, value: int, reason: BadReason) -> None:
    values = list(HEADER.unpack_from(encode_frame(frame())))
    values[field] = value
    data = HEADER.pack(*values) + frame().pcm
    with pytest.raises(BadMessage) as info:
        decode_frame(data)
    assert info.value.reason is reason


def test_short_input_is_refused() -> None:
    with pytest.raises(BadMessage):
        decode_frame(MAGIC)


@given(st.binary(max_size=256))
def test_random_bytes_never_raise_anything_but_bad_message(data: bytes) -> None:
    with contextlib.suppress(BadMessage):
        decode_frame(data)


@given(st.binary(max_size=128))
def test_random_bytes_after_a_valid_magic_never_crash(rest: bytes) -> None:
    with contextlib.suppress(BadMessage):
        decode_frame(MAGIC + rest)


@given(
    seq=st.integers(0, 2**64 - 1),
    ts=st.integers(0, 2**64 - 1),
    channels=st.integers(1, 8),
    rate=st.sampled_from([8000, 16000, 44100, 48000]),
    samples=st.lists(st.integers(-32768, 32767), max_size=64),
)
def test_any_valid_frame_round_trips(
    seq: int, ts: int, channels: int, rate: int, samples: list[int]
) -> None:
    whole = len(samples) // channels * channels
    pcm = struct.pack(f"<{whole}h", *samples[:whole])
    f = AudioFrame(seq=seq, capture_ts_us=ts, sample_rate=rate, channels=channels, pcm=pcm)
    assert decode_frame(encode_frame(f)) == f
