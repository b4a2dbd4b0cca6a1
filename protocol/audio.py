"""Binary audio frames: ``courthub/v1/{agent}/{device}/audio``.

Layout (little-endian, 32-byte header, then PCM)::

    offset size field
    0      4    magic          b"CHAF"
    4      1    version        1
    5      1    sample format  1 = signed 16-bit little-endian
    6      2    channels       1..64 (interleaved)
    8      4    sample rate    Hz, 8000..192000
    12     8    seq            frame number, per device stream
    20     8    capture ts     UTC microseconds of the first sample
    28     4    frame count    samples per channel in this frame
    32     ...  PCM            frame count * channels * 2 bytes

Microseconds (not the contract's usual ms) because 20 ms frames need sub-ms alignment.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from protocol.errors import BadMessage, BadReason

MAGIC: Final = b"CHAF"
VERSION: Final = 1
HEADER: Final = struct.Struct("<4sBBHIQQI")
HEADER_SIZE: Final = HEADER.size
#: One second of 16-channel 48 kHz audio; larger frames are refused.
MAX_PCM_BYTES: Final = 48_000 * 16 * 2


class SampleFormat(IntEnum):
    """PCM sample formats of the frame header."""

    S16LE = 1

    @property
    def width(self) -> int:
        """Bytes per sample."""
        return 2


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """A decoded audio frame; ``pcm`` holds interleaved samples."""

    seq: int
    capture_ts_us: int
    sample_rate: int
    channels: int
    pcm: bytes
    sample_format: SampleFormat = SampleFormat.S16LE

    @property
    def frames(self) -> int:
        """Samples per channel."""
        return len(self.pcm) // (self.channels * self.sample_format.width)

    @property
    def duration_us(self) -> int:
        """Length of the frame in microseconds."""
        return self.frames * 1_000_000 // self.sample_rate


def _check(frame: AudioFrame) -> None:
    if not 1 <= frame.channels <= 64:
        raise BadMessage(BadReason.BAD_HEADER, f"channels {frame.channels} not in 1..64")
    if not 8000 <= frame.sample_rate <= 192_000:
        raise BadMessage(BadReason.BAD_HEADER, f"sample rate {frame.sample_rate} not in 8k..192k")
    if not 0 <= frame.seq < 2**64 or not 0 <= frame.capture_ts_us < 2**64:
        raise BadMessage(BadReason.BAD_HEADER, "seq or timestamp out of range")
    if len(frame.pcm) > MAX_PCM_BYTES:
        raise BadMessage(BadReason.OVERSIZED, f"{len(frame.pcm)} PCM bytes > {MAX_PCM_BYTES}")
    if len(frame.pcm) % (frame.channels * frame.sample_format.width):
        raise BadMessage(BadReason.BAD_LENGTH, "PCM length is not a whole number of frames")


def encode_frame(frame: AudioFrame) -> bytes:
    """Serialise a frame (header + PCM); raises :class:`BadMessage` for an invalid frame."""
    _check(frame)
    header = HEADER.pack(
        MAGIC,
        VERSION,
        frame.sample_format,
        frame.channels,
        frame.sample_rate,
        frame.seq,
        frame.capture_ts_us,
        frame.frames,
    )
    return header + frame.pcm


def decode_frame(data: bytes) -> AudioFrame:
    """Parse and validate a frame; raises :class:`BadMessage` on any defect."""
    if len(data) < HEADER_SIZE:
        raise BadMessage(BadReason.BAD_HEADER, f"{len(data)} bytes is shorter than the header")
    if len(data) > HEADER_SIZE + MAX_PCM_BYTES:
        raise BadMessage(BadReason.OVERSIZED, f"{len(data)} bytes")
    magic, version, fmt, channels, rate, seq, ts_us, count = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BadMessage(BadReason.BAD_MAGIC, f"magic {magic!r} is not {MAGIC!r}")
    if version != VERSION:
        raise BadMessage(BadReason.UNSUPPORTED_VERSION, f"audio frame version {version}")
    try:
        sample_format = SampleFormat(fmt)
    except ValueError:
        raise BadMessage(BadReason.BAD_HEADER, f"sample format {fmt}") from None
    frame = AudioFrame(
        seq=seq,
        capture_ts_us=ts_us,
        sample_rate=rate,
        channels=channels,
        pcm=bytes(data[HEADER_SIZE:]),
        sample_format=sample_format,
    )
    _check(frame)
    if frame.frames != count:
        raise BadMessage(
            BadReason.BAD_LENGTH, f"header says {count} frames, PCM holds {frame.frames}"
        )
    return frame
