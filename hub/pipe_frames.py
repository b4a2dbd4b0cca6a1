"""Frames on a pipe between the hub and one of its child processes.

A frame is ``<u32 length><u8 kind><payload>`` (little-endian length of the payload only). The
hub's children — a telemetry sink (:mod:`hub.sink_process`) and the MQTT connection
(:mod:`hub.mqtt_process`) — read their orders from stdin this way; each module documents its own
kinds. One module so both ends of both pipes agree on the bytes.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
from typing import Final

HEADER: Final = struct.Struct("<IB")
#: a frame's payload at most: a bug or garbage on the pipe must not make the reader allocate GBs
MAX_PAYLOAD: Final = 256 * 1024 * 1024


class FrameError(ValueError):
    """Bytes on the pipe that are not a frame (a bug on the other side)."""


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    """One frame's bytes: ``kind`` is a single ASCII letter."""
    return HEADER.pack(len(payload), kind[0]) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """The next ``(kind, payload)``, or None at the pipe's end (a frame cut short counts as the
    end: the writer died mid-frame). Raises :class:`FrameError` for an impossible length."""
    try:
        head = await reader.readexactly(HEADER.size)
        length, kind = HEADER.unpack(head)
        if length > MAX_PAYLOAD:
            raise FrameError(f"frame of {length} bytes (kind {kind!r}) is over the limit")
        return bytes([kind]), await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        return None


async def stdin_reader(limit: int = 2**26) -> asyncio.StreamReader:
    """This process's stdin as a stream reader (for a child reading its parent's frames)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    return reader


def write_all(fd: int, data: bytes) -> None:
    """Blocking write of all of ``data`` to ``fd`` (a pipe may take it in pieces). Raises
    ``OSError`` (``BrokenPipeError`` once the reader is gone)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
